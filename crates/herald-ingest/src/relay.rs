//! The part every source shares: map a message, publish it through the engine, and say whether the bus
//! may forget it. A source acks a message only when [`Relay::relay`] returned `Ok`: delivered, a repeat
//! (its idempotency key was seen: delivered before, e.g. by a node that died before its ack), or skipped
//! (no rule matched or it is invalid: counted, logged once per reason per minute, never retried, so it
//! cannot block the messages behind it). An `Err` means the engine did not accept it (the idempotency
//! store or history unavailable): the source leaves it unacked and retries after a backoff.
//!
//! Metrics (labels `source`, `app`): `herald_ingest_consumed_total`, `herald_ingest_delivered_total`,
//! `herald_ingest_repeats_total`, `herald_ingest_skipped_total{reason}`,
//! `herald_ingest_engine_errors_total`, and the histogram `herald_ingest_relay_latency_seconds`: from
//! the bus's timestamp of the message (or when it was read, if the bus has none) to the engine
//! accepting it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use futures_util::StreamExt;
use herald_core::{ConfirmError, DataKind, Hub, Publication, Published};
use parking_lot::Mutex;

use crate::health::SourceHealth;
use crate::mapping::{BusMessage, Rules, Skip, Target};

/// The channel name user publications carry: the Pusher front's user channel, which pusher-js
/// delivers to `pusher.user.bind(...)` handlers.
pub const USER_CHANNEL_PREFIX: &str = "#server-to-user-";

/// How often one skip reason is logged per source.
const LOG_EVERY: Duration = Duration::from_secs(60);

/// Targets published to at once by [`Relay::relay_batch`].
pub const MAX_IN_FLIGHT: usize = 64;

/// A mapped message waiting to be published.
struct Prepared {
    mapped: crate::mapping::Mapped,
    /// Where its relay latency starts: the bus's timestamp, or when it was read.
    since: SystemTime,
}

/// What became of a message (each outcome lets the source ack it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Published.
    Delivered,
    /// Its idempotency key was seen within the window: not delivered again.
    Repeat,
    /// Not relayed, for this reason.
    Skipped(Skip),
}

/// One source's mapping and publishing.
pub struct Relay {
    source: String,
    health: Arc<SourceHealth>,
    hub: Arc<Hub>,
    rules: Rules,
    max_message: usize,
    /// When each skip reason was last logged (a handful of static keys: bounded).
    logged: Mutex<HashMap<&'static str, Instant>>,
}

impl Relay {
    /// Relays into `hub` with `rules`; messages above `max_message` bytes are skipped.
    pub fn new(source: &str, hub: Arc<Hub>, rules: Rules, max_message: usize) -> Relay {
        Relay::with_health(source, hub, rules, max_message, Arc::new(SourceHealth::new(source, "test")))
    }

    /// Like [`Relay::new`], counting into `health` (what the stats endpoints show).
    pub fn with_health(source: &str, hub: Arc<Hub>, rules: Rules, max_message: usize, health: Arc<SourceHealth>) -> Relay {
        Relay { source: source.to_owned(), health, hub, rules, max_message, logged: Mutex::new(HashMap::new()) }
    }

    /// The source's health and counters.
    pub fn health(&self) -> &Arc<SourceHealth> {
        &self.health
    }

    /// The source's name.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The app's hub the source publishes into.
    pub fn hub(&self) -> &Arc<Hub> {
        &self.hub
    }

    fn labels(&self) -> [(&'static str, String); 2] {
        [("source", self.source.clone()), ("app", self.hub.app().id.clone())]
    }

    /// Maps and publishes `message`; `sent_at` is the bus's timestamp of it, if it has one.
    pub async fn relay(&self, message: &BusMessage<'_>, sent_at: Option<SystemTime>) -> Result<Outcome, ConfirmError> {
        match self.prepare(message, sent_at) {
            Err(skip) => Ok(Outcome::Skipped(skip)),
            Ok(prepared) => self.publish(&prepared).await,
        }
    }

    /// Relays a batch, several targets at once: messages for one target (user or channel) are
    /// published one after another in batch order, different targets concurrently (at most
    /// [`MAX_IN_FLIGHT`] at a time), so with the Redis engine their scripts share round trips while
    /// every connection still sees its messages in bus order. Returns each message's outcome, `None`
    /// for those not tried because an earlier one of the same target was refused (they stay unacked,
    /// and are retried in order with it).
    pub async fn relay_batch(&self, messages: &[(BusMessage<'_>, Option<SystemTime>)]) -> Vec<Option<Result<Outcome, ConfirmError>>> {
        let mut outcomes: Vec<Option<Result<Outcome, ConfirmError>>> = (0..messages.len()).map(|_| None).collect();
        // Groups of (index, prepared) per target, in order of first appearance.
        let mut groups: Vec<Vec<(usize, Prepared)>> = Vec::new();
        let mut by_target: HashMap<Target, usize> = HashMap::new();
        for (i, (message, sent_at)) in messages.iter().enumerate() {
            match self.prepare(message, *sent_at) {
                Err(skip) => outcomes[i] = Some(Ok(Outcome::Skipped(skip))),
                Ok(prepared) => {
                    let group = *by_target.entry(prepared.mapped.target.clone()).or_insert_with(|| {
                        groups.push(Vec::new());
                        groups.len() - 1
                    });
                    groups[group].push((i, prepared));
                }
            }
        }
        let mut results = futures_util::stream::iter(groups)
            .map(|group| async move {
                let mut done = Vec::with_capacity(group.len());
                for (i, prepared) in &group {
                    let outcome = self.publish(prepared).await;
                    let refused = outcome.is_err();
                    done.push((*i, outcome));
                    if refused {
                        break;
                    }
                }
                done
            })
            .buffer_unordered(MAX_IN_FLIGHT);
        while let Some(done) = results.next().await {
            for (i, outcome) in done {
                outcomes[i] = Some(outcome);
            }
        }
        outcomes
    }

    /// Counts and maps `message` (a skip is counted and logged here).
    fn prepare(&self, message: &BusMessage<'_>, sent_at: Option<SystemTime>) -> Result<Prepared, Skip> {
        let received = SystemTime::now();
        metrics::counter!("herald_ingest_consumed_total", &self.labels()).increment(1);
        self.health.consumed();
        let mapped = if message.payload.len() > self.max_message {
            Err(Skip::TooLarge)
        } else {
            self.rules.map(message, self.hub.app().limits.max_event_size)
        };
        match mapped {
            Ok(mapped) => Ok(Prepared { mapped, since: sent_at.filter(|t| *t <= received).unwrap_or(received) }),
            Err(skip) => {
                self.skipped(message, &skip);
                Err(skip)
            }
        }
    }

    /// Publishes a mapped message through the engine.
    async fn publish(&self, prepared: &Prepared) -> Result<Outcome, ConfirmError> {
        let mapped = &prepared.mapped;
        let key = Some(mapped.idempotency_key.as_str());
        let except_device = mapped.except_device.as_deref().map(Arc::from);
        let published = match &mapped.target {
            Target::Channel(channel) => {
                let mut publication = Publication::new(channel.as_str(), mapped.event.as_str(), mapped.data.clone(), DataKind::Json);
                publication.except_device = except_device;
                self.hub.publish_confirmed(&publication, None, key).await
            }
            Target::User(user) => {
                let channel = format!("{USER_CHANNEL_PREFIX}{user}");
                let mut publication = Publication::new(channel, mapped.event.as_str(), mapped.data.clone(), DataKind::Json);
                publication.except_device = except_device;
                self.hub.publish_to_user_confirmed(user, &publication, key).await
            }
        };
        match published {
            Ok(Published::Repeat) => {
                metrics::counter!("herald_ingest_repeats_total", &self.labels()).increment(1);
                self.health.repeat();
                Ok(Outcome::Repeat)
            }
            Ok(_) => {
                let latency = SystemTime::now().duration_since(prepared.since).unwrap_or_default();
                metrics::histogram!("herald_ingest_relay_latency_seconds", &self.labels()).record(latency.as_secs_f64());
                metrics::counter!("herald_ingest_delivered_total", &self.labels()).increment(1);
                self.health.delivered(latency);
                Ok(Outcome::Delivered)
            }
            Err(e) => {
                metrics::counter!("herald_ingest_engine_errors_total", &self.labels()).increment(1);
                self.health.engine_error();
                Err(e)
            }
        }
    }

    fn skipped(&self, message: &BusMessage<'_>, skip: &Skip) {
        let reason = skip.reason();
        let labels = [("source", self.source.clone()), ("app", self.hub.app().id.clone()), ("reason", reason.to_owned())];
        metrics::counter!("herald_ingest_skipped_total", &labels).increment(1);
        self.health.skipped(reason);
        let now = Instant::now();
        let log = {
            let mut logged = self.logged.lock();
            let due = logged.get(reason).is_none_or(|at| now.duration_since(*at) >= LOG_EVERY);
            if due {
                logged.insert(reason, now);
            }
            due
        };
        if log {
            let detail = match skip {
                Skip::MissingField(field) => field.as_str(),
                _ => "",
            };
            let origin: String = message.origin.chars().take(100).collect();
            let id: String = message.id.chars().take(100).collect();
            tracing::warn!(source = %self.source, reason, detail, %origin, %id,
                "bus message skipped (acked; more of this reason within a minute are only counted)");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RuleConfig;
    use herald_core::{App, Drained};

    fn relay(hub: &Arc<Hub>) -> Relay {
        let rule = RuleConfig {
            user: Some("{user_id}".into()),
            event: "{type}".into(),
            origin_device: Some("device_id".into()),
            ..RuleConfig::default()
        };
        Relay::new("test", hub.clone(), Rules::compile(&[rule]).unwrap(), 1000)
    }

    /// Frames queued to `outbox` since the last call.
    async fn frames(outbox: &herald_core::Outbox) -> usize {
        let queued = outbox.len().0;
        if queued > 0 {
            assert_eq!(outbox.drain(&mut Vec::new()).await, Drained::Frames);
        }
        queued
    }

    #[tokio::test]
    async fn delivers_once_per_key_to_the_users_other_devices() {
        let hub = Arc::new(Hub::new(App::dev()));
        let (phone, phone_box) = hub.connect().unwrap();
        let (tv, tv_box) = hub.connect().unwrap();
        hub.sign_in(phone, "u1", Some("phone")).unwrap();
        hub.sign_in(tv, "u1", Some("tv")).unwrap();
        let relay = relay(&hub);
        let msg = br#"{"type":"progress_update","user_id":"u1","device_id":"phone"}"#;
        let message = BusMessage { origin: "sync", id: "1-0", payload: msg };
        assert_eq!(relay.relay(&message, None).await, Ok(Outcome::Delivered));
        assert_eq!((frames(&phone_box).await, frames(&tv_box).await), (0, 1), "the origin device is excluded");
        assert_eq!(relay.relay(&message, None).await, Ok(Outcome::Repeat), "a redelivery is not delivered again");
        assert_eq!(frames(&tv_box).await, 0);
        let other = BusMessage { id: "2-0", ..message };
        assert_eq!(relay.relay(&other, None).await, Ok(Outcome::Delivered));
        assert_eq!(frames(&tv_box).await, 1);
    }

    #[tokio::test]
    async fn a_batch_keeps_each_users_order_and_reports_each_outcome() {
        let hub = Arc::new(Hub::new(App::dev()));
        let mut boxes = Vec::new();
        for user in ["u1", "u2"] {
            let (id, outbox) = hub.connect().unwrap();
            hub.sign_in(id, user, Some("tv")).unwrap();
            boxes.push(outbox);
        }
        let relay = relay(&hub);
        let payloads: Vec<(String, String)> = (0..200)
            .map(|i| (format!("{i}-0"), format!(r#"{{"type":"n{i}","user_id":"u{}","device_id":"phone"}}"#, 1 + i % 2)))
            .chain([("x-0".to_owned(), "not json".to_owned())])
            .collect();
        let messages: Vec<_> = payloads.iter().map(|(id, p)| (BusMessage { origin: "sync", id, payload: p.as_bytes() }, None)).collect();
        let outcomes = relay.relay_batch(&messages).await;
        assert_eq!(outcomes.len(), 201);
        assert!(outcomes[..200].iter().all(|o| *o == Some(Ok(Outcome::Delivered))), "{outcomes:?}");
        assert!(matches!(&outcomes[200], Some(Ok(Outcome::Skipped(Skip::NotAnObject)))));
        for (k, outbox) in boxes.iter().enumerate() {
            let mut frames = Vec::new();
            assert_eq!(outbox.drain(&mut frames).await, Drained::Frames);
            let events: Vec<String> = frames.iter().map(|f| String::from_utf8_lossy(f).into_owned()).collect();
            let expected: Vec<String> = (0..200).filter(|i| i % 2 == k).map(|i| format!("n{i}")).collect();
            let seen: Vec<String> =
                events.iter().map(|e| expected.iter().find(|x| e.contains(&format!("\"{x}\""))).cloned().unwrap_or_default()).collect();
            assert_eq!(seen, expected, "user {k}: in bus order");
        }
        let again = relay.relay_batch(&messages[..2]).await;
        assert_eq!(again, vec![Some(Ok(Outcome::Repeat)), Some(Ok(Outcome::Repeat))]);
    }

    #[tokio::test]
    async fn invalid_messages_are_skipped() {
        let hub = Arc::new(Hub::new(App::dev()));
        let relay = relay(&hub);
        let big = vec![b' '; 1001];
        let cases: [(&[u8], &str); 3] = [(b"nope", "not_an_object"), (br#"{"type":"x"}"#, "missing_field"), (&big, "too_large")];
        for (payload, reason) in cases {
            let outcome = relay.relay(&BusMessage { origin: "s", id: "1", payload }, None).await.unwrap();
            assert!(matches!(&outcome, Outcome::Skipped(skip) if skip.reason() == reason), "{outcome:?}");
        }
    }
}
