//! Redis Streams: one consumer group shared by every Herald node, so each entry goes to one node.
//!
//! The loop, one step at a time (nothing runs beside it, so at most one batch is in flight):
//! 1. after start-up or any error, re-read this consumer's own pending entries (`XREADGROUP ... 0`):
//!    what it read and did not ack before;
//! 2. every `claim_idle / 2`, take over entries another consumer read and left pending longer than
//!    `claim_idle` (`XAUTOCLAIM`: a node that died mid-batch);
//! 3. otherwise read new entries (`XREADGROUP ... >`, `COUNT batch`, `BLOCK block`).
//!
//! A batch's entries are relayed together ([`Relay::relay_batch`]: one target's in order, different
//! targets concurrently, so their engine round trips overlap), then acked (`XACK`, once per stream per
//! batch) only if the engine accepted them (delivered, or a repeat of an idempotency key) or they are
//! skipped (unmatched or invalid: first copied to the dead-letter stream if one is configured). If the
//! engine refuses one, the accepted ones are acked, it and the later ones of its target stay pending,
//! and the loop backs off and starts again at 1. Entries the
//! stream trimmed while pending are acked (nothing is left to relay). Redis unreachable: the source is
//! down on `/up`, connections stay up, and it reconnects with backoff.
//!
//! Replies are parsed defensively: a reply of an unexpected shape is an error of that step (counted,
//! retried), never a panic.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Value};
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::config::{seconds, RedisStreamsConfig};
use crate::health::SourceHealth;
use crate::mapping::BusMessage;
use crate::relay::{Outcome, Relay};

/// One stream entry: its id and its field/value pairs (`None`: trimmed while pending).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Entry {
    pub(crate) id: String,
    pub(crate) fields: Option<Vec<(Vec<u8>, Vec<u8>)>>,
}

/// Why a step stopped.
#[derive(Debug, thiserror::Error)]
enum StepError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("redis call timed out")]
    Timeout,
    #[error("unexpected reply to {0}")]
    Malformed(&'static str),
    #[error("engine refused a publication: {0}")]
    Engine(herald_core::ConfirmError),
}

/// The settings in their working form.
struct Settings {
    streams: Vec<String>,
    group: String,
    consumer: String,
    start: String,
    field: Vec<u8>,
    batch: usize,
    block: Duration,
    claim_idle: Duration,
    timeout: Duration,
    dead_letter: Option<String>,
    dead_letter_maxlen: usize,
}

/// The default consumer name: `herald-{hostname}-{pid}`.
fn default_consumer() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| format!("{:x}", fastrand::u64(..)));
    format!("herald-{host}-{}", std::process::id())
}

/// Runs the source until `shutdown`.
pub(crate) async fn run(config: RedisStreamsConfig, relay: Relay, health: Arc<SourceHealth>, shutdown: CancellationToken) {
    let settings = Settings {
        streams: config.streams.clone(),
        group: config.group.clone(),
        consumer: config.consumer.clone().unwrap_or_else(default_consumer),
        start: config.start.clone(),
        field: config.field.as_bytes().to_vec(),
        batch: config.batch,
        // Validated at start-up; the fallbacks are never used.
        block: seconds("block", config.block).unwrap_or(Duration::from_secs(2)),
        claim_idle: seconds("claim_idle", config.claim_idle).unwrap_or(Duration::from_secs(30)),
        timeout: seconds("timeout", config.timeout).unwrap_or(Duration::from_secs(5)),
        dead_letter: config.dead_letter.clone(),
        dead_letter_maxlen: config.dead_letter_maxlen,
    };
    let client = match redis::Client::open(config.url.as_str()) {
        Ok(client) => client,
        Err(e) => {
            // Checked at start-up too: only reachable if the URL changed meaning.
            tracing::error!(source = relay.source(), error = e.category(), "invalid redis url; source stopped");
            return;
        }
    };
    tracing::info!(source = relay.source(), consumer = %settings.consumer, group = %settings.group, "redis streams source starting");
    let mut consumer = Consumer { settings, relay, health, conn: None, own_pending: true, claim: ClaimState::default() };
    let mut backoff = Backoff::default();
    while !shutdown.is_cancelled() {
        let result = match consumer.conn.clone() {
            Some(conn) => consumer.step(conn, &shutdown).await,
            None => consumer.connect(&client).await,
        };
        match result {
            Ok(()) => {
                consumer.health.up();
                backoff.reset();
            }
            Err(StepError::Engine(e)) => {
                tracing::warn!(source = consumer.relay.source(), error = %e, "engine refused a publication; retrying after backoff");
                consumer.own_pending = true;
                if !backoff.wait(&shutdown).await {
                    break;
                }
            }
            Err(e) => {
                consumer.health.down(&e);
                consumer.conn = None;
                consumer.own_pending = true;
                if !backoff.wait(&shutdown).await {
                    break;
                }
            }
        }
    }
    tracing::info!(source = consumer.relay.source(), "redis streams source stopped");
}

#[derive(Default)]
struct ClaimState {
    /// When the last round of claims over every stream finished.
    last_round: Option<Instant>,
    /// Per stream (by index), the `XAUTOCLAIM` cursor of the round in progress.
    cursors: Vec<Option<String>>,
}

struct Consumer {
    settings: Settings,
    relay: Relay,
    health: Arc<SourceHealth>,
    conn: Option<MultiplexedConnection>,
    /// Re-read this consumer's own pending entries before new ones.
    own_pending: bool,
    claim: ClaimState,
}

impl Consumer {
    async fn call(&self, conn: &mut MultiplexedConnection, cmd: &redis::Cmd, wait: Duration) -> Result<Value, StepError> {
        match tokio::time::timeout(wait, cmd.query_async::<Value>(conn)).await {
            Ok(result) => Ok(result?),
            Err(_) => Err(StepError::Timeout),
        }
    }

    async fn connect(&mut self, client: &redis::Client) -> Result<(), StepError> {
        let s = &self.settings;
        let config = AsyncConnectionConfig::new().set_connection_timeout(Some(s.timeout)).set_response_timeout(Some(s.block + s.timeout));
        let mut conn = match tokio::time::timeout(s.timeout * 2, client.get_multiplexed_async_connection_with_config(&config)).await {
            Ok(conn) => conn?,
            Err(_) => return Err(StepError::Timeout),
        };
        for stream in &s.streams {
            let mut create = redis::cmd("XGROUP");
            create.arg("CREATE").arg(stream).arg(&s.group).arg(&s.start).arg("MKSTREAM");
            match self.call(&mut conn, &create, s.timeout).await {
                Ok(_) => tracing::info!(source = self.relay.source(), stream, group = %s.group, "consumer group created"),
                Err(StepError::Redis(e)) if e.code() == Some("BUSYGROUP") => {}
                Err(e) => return Err(e),
            }
        }
        self.conn = Some(conn);
        self.own_pending = true;
        Ok(())
    }

    /// One batch: own pending entries, claimed ones, or new ones.
    async fn step(&mut self, mut conn: MultiplexedConnection, shutdown: &CancellationToken) -> Result<(), StepError> {
        let s = &self.settings;
        if self.own_pending {
            let mut read = redis::cmd("XREADGROUP");
            read.arg("GROUP").arg(&s.group).arg(&s.consumer).arg("COUNT").arg(s.batch).arg("STREAMS").arg(&s.streams);
            s.streams.iter().for_each(|_| {
                read.arg("0");
            });
            let batches = parse_read(self.call(&mut conn, &read, s.timeout).await?).ok_or(StepError::Malformed("XREADGROUP"))?;
            if batches.iter().all(|(_, entries)| entries.is_empty()) {
                self.own_pending = false;
                return Ok(());
            }
            return self.process(&mut conn, batches, true).await;
        }
        let claim_every = s.claim_idle / 2;
        if self.claim.last_round.is_none_or(|at| at.elapsed() >= claim_every) {
            if self.claim.cursors.len() != s.streams.len() {
                self.claim.cursors = vec![Some("0-0".to_owned()); s.streams.len()];
            }
            if let Some(index) = self.claim.cursors.iter().position(Option::is_some) {
                let cursor = self.claim.cursors[index].clone().unwrap_or_default();
                let stream = s.streams[index].clone();
                let mut claim = redis::cmd("XAUTOCLAIM");
                claim
                    .arg(&stream)
                    .arg(&s.group)
                    .arg(&s.consumer)
                    .arg(s.claim_idle.as_millis() as u64)
                    .arg(&cursor)
                    .arg("COUNT")
                    .arg(s.batch);
                let (next, entries) =
                    parse_autoclaim(self.call(&mut conn, &claim, s.timeout).await?).ok_or(StepError::Malformed("XAUTOCLAIM"))?;
                self.claim.cursors[index] = (next != "0-0").then_some(next);
                if self.claim.cursors.iter().all(Option::is_none) {
                    self.claim = ClaimState { last_round: Some(Instant::now()), cursors: Vec::new() };
                }
                if !entries.is_empty() {
                    tracing::info!(source = self.relay.source(), stream = %stream, claimed = entries.len(), "claimed entries left pending by another consumer");
                    return self.process(&mut conn, vec![(stream, entries)], true).await;
                }
                return Ok(());
            }
        }
        let mut read = redis::cmd("XREADGROUP");
        read.arg("GROUP")
            .arg(&s.group)
            .arg(&s.consumer)
            .arg("COUNT")
            .arg(s.batch)
            .arg("BLOCK")
            .arg(s.block.as_millis() as u64)
            .arg("STREAMS")
            .arg(&s.streams);
        s.streams.iter().for_each(|_| {
            read.arg(">");
        });
        let reply = tokio::select! {
            // Shutdown while blocked: nothing was read yet (or the read's entries stay pending and are
            // taken back by this consumer's restart or claimed by another).
            _ = shutdown.cancelled() => return Ok(()),
            reply = self.call(&mut conn, &read, s.block + s.timeout) => reply?,
        };
        let batches = parse_read(reply).ok_or(StepError::Malformed("XREADGROUP"))?;
        self.health.up();
        self.process(&mut conn, batches, false).await
    }

    /// Relays each entry and acks what may be forgotten; stops at the first one the engine refused.
    async fn process(
        &mut self,
        conn: &mut MultiplexedConnection,
        batches: Vec<(String, Vec<Entry>)>,
        redelivered: bool,
    ) -> Result<(), StepError> {
        let source = self.relay.source().to_owned();
        let mut refused = None;
        for (stream, entries) in batches {
            let mut acks: Vec<String> = Vec::with_capacity(entries.len());
            // The entries still in the stream, relayed together (see `Relay::relay_batch`).
            let mut present: Vec<(&Entry, &[u8])> = Vec::with_capacity(entries.len());
            for entry in &entries {
                let Some(fields) = &entry.fields else {
                    // Trimmed from the stream while pending: nothing left to relay.
                    metrics::counter!("herald_ingest_skipped_total", "source" => source.clone(), "reason" => "trimmed").increment(1);
                    self.relay.health().skipped("trimmed");
                    acks.push(entry.id.clone());
                    continue;
                };
                if redelivered {
                    self.relay.health().redelivered();
                }
                let payload = fields.iter().find(|(name, _)| *name == self.settings.field).map_or(&[][..], |(_, value)| value.as_slice());
                present.push((entry, payload));
            }
            let messages: Vec<(BusMessage<'_>, Option<SystemTime>)> = present
                .iter()
                .map(|(entry, payload)| (BusMessage { origin: &stream, id: &entry.id, payload }, entry_time(&entry.id)))
                .collect();
            let outcomes = self.relay.relay_batch(&messages).await;
            for ((entry, payload), outcome) in present.iter().zip(outcomes) {
                match outcome {
                    Some(Ok(Outcome::Skipped(skip))) => {
                        if let Some(dead) = &self.settings.dead_letter {
                            let mut add = redis::cmd("XADD");
                            add.arg(dead)
                                .arg("MAXLEN")
                                .arg("~")
                                .arg(self.settings.dead_letter_maxlen)
                                .arg("*")
                                .arg("source")
                                .arg(&source)
                                .arg("stream")
                                .arg(&stream)
                                .arg("id")
                                .arg(&entry.id)
                                .arg("reason")
                                .arg(skip.reason())
                                .arg(&self.settings.field[..])
                                .arg(*payload);
                            if let Err(e) = self.call(conn, &add, self.settings.timeout).await {
                                self.ack(conn, &stream, &acks).await?;
                                return Err(e);
                            }
                            metrics::counter!("herald_ingest_dead_lettered_total", "source" => source.clone()).increment(1);
                        }
                        acks.push(entry.id.clone());
                    }
                    Some(Ok(_)) => acks.push(entry.id.clone()),
                    Some(Err(e)) => refused = refused.or(Some(e)),
                    // Behind a refused one of its target: stays pending, retried in order with it.
                    None => {}
                }
            }
            self.ack(conn, &stream, &acks).await?;
            if refused.is_some() {
                break;
            }
        }
        match refused {
            Some(e) => Err(StepError::Engine(e)),
            None => Ok(()),
        }
    }

    async fn ack(&self, conn: &mut MultiplexedConnection, stream: &str, ids: &[String]) -> Result<(), StepError> {
        let Some(last) = ids.last() else { return Ok(()) };
        let mut ack = redis::cmd("XACK");
        ack.arg(stream).arg(&self.settings.group).arg(ids);
        self.call(conn, &ack, self.settings.timeout).await?;
        if let Some(at) = entry_millis(last) {
            self.relay.health().position(at as f64);
        }
        Ok(())
    }
}

/// The milliseconds part of an entry id (`1700000000000-0`).
fn entry_millis(id: &str) -> Option<u64> {
    id.split_once('-').map_or(id, |(ms, _)| ms).parse().ok()
}

/// When Redis added the entry (its id's time).
fn entry_time(id: &str) -> Option<SystemTime> {
    entry_millis(id).and_then(|ms| UNIX_EPOCH.checked_add(Duration::from_millis(ms)))
}

fn text(value: &Value) -> Option<String> {
    match value {
        Value::BulkString(bytes) => String::from_utf8(bytes.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        Value::VerbatimString { text, .. } => Some(text.clone()),
        _ => None,
    }
}

fn bytes(value: Value) -> Option<Vec<u8>> {
    match value {
        Value::BulkString(bytes) => Some(bytes),
        Value::SimpleString(s) => Some(s.into_bytes()),
        Value::Int(n) => Some(n.to_string().into_bytes()),
        _ => None,
    }
}

/// `[id, [field, value, ...] | nil]`.
pub(crate) fn parse_entry(value: Value) -> Option<Entry> {
    let Value::Array(parts) = value else { return None };
    let [id, fields]: [Value; 2] = parts.try_into().ok()?;
    let id = text(&id)?;
    let fields = match fields {
        Value::Nil => None,
        Value::Array(flat) if flat.len() % 2 == 0 => {
            let mut pairs = Vec::with_capacity(flat.len() / 2);
            let mut it = flat.into_iter();
            while let (Some(name), Some(value)) = (it.next(), it.next()) {
                pairs.push((bytes(name)?, bytes(value)?));
            }
            Some(pairs)
        }
        Value::Map(pairs) => Some(pairs.into_iter().map(|(k, v)| Some((bytes(k)?, bytes(v)?))).collect::<Option<_>>()?),
        _ => return None,
    };
    Some(Entry { id, fields })
}

fn parse_entries(value: Value) -> Option<Vec<Entry>> {
    match value {
        Value::Array(entries) => entries.into_iter().map(parse_entry).collect(),
        Value::Nil => Some(Vec::new()),
        _ => None,
    }
}

/// An `XREADGROUP` reply: nil (nothing), or per stream its entries (RESP2 array of pairs or RESP3 map).
pub(crate) fn parse_read(value: Value) -> Option<Vec<(String, Vec<Entry>)>> {
    let pairs: Vec<(Value, Value)> = match value {
        Value::Nil => return Some(Vec::new()),
        Value::Map(pairs) => pairs,
        Value::Array(streams) => streams
            .into_iter()
            .map(|s| match s {
                Value::Array(pair) => <[Value; 2]>::try_from(pair).ok().map(|[k, v]| (k, v)),
                _ => None,
            })
            .collect::<Option<_>>()?,
        _ => return None,
    };
    pairs.into_iter().map(|(stream, entries)| Some((text(&stream)?, parse_entries(entries)?))).collect()
}

/// An `XAUTOCLAIM` reply: `[next cursor, entries, deleted ids]` (Redis 7; 6.2 has no third element).
/// Deleted ids are dropped from the pending list by Redis itself.
pub(crate) fn parse_autoclaim(value: Value) -> Option<(String, Vec<Entry>)> {
    let Value::Array(parts) = value else { return None };
    let mut parts = parts.into_iter();
    let next = text(&parts.next()?)?;
    let entries = parse_entries(parts.next()?)?;
    Some((next, entries))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn parses_read_and_autoclaim_replies() {
        let entry = Value::Array(vec![bulk("1-0"), Value::Array(vec![bulk("data"), bulk("{}")])]);
        let trimmed = Value::Array(vec![bulk("2-0"), Value::Nil]);
        let reply = Value::Array(vec![Value::Array(vec![bulk("sync"), Value::Array(vec![entry.clone(), trimmed])])]);
        let read = parse_read(reply).unwrap();
        assert_eq!(read[0].0, "sync");
        assert_eq!(read[0].1[0], Entry { id: "1-0".into(), fields: Some(vec![(b"data".to_vec(), b"{}".to_vec())]) });
        assert_eq!(read[0].1[1].fields, None);
        assert_eq!(parse_read(Value::Nil), Some(vec![]));
        let resp3 = Value::Map(vec![(bulk("s"), Value::Array(vec![entry.clone()]))]);
        assert_eq!(parse_read(resp3).unwrap()[0].1.len(), 1);
        let claimed = Value::Array(vec![bulk("0-0"), Value::Array(vec![entry]), Value::Array(vec![])]);
        assert_eq!(parse_autoclaim(claimed).unwrap().0, "0-0");
    }

    /// Any reply shape (nested arrays, maps, nils, numbers, bytes) parses or is refused.
    fn reply() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            Just(Value::Nil),
            any::<i64>().prop_map(Value::Int),
            prop::collection::vec(any::<u8>(), 0..8).prop_map(Value::BulkString),
            "[0-9]{1,3}-[0-9]".prop_map(|s| Value::BulkString(s.into_bytes())),
            Just(Value::Okay),
        ];
        leaf.prop_recursive(4, 64, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::vec((inner.clone(), inner), 0..3).prop_map(Value::Map),
            ]
        })
    }

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config { failure_persistence: None, ..Default::default() })]
        #[test]
        fn any_reply_parses_or_is_refused(value in reply()) {
            let _ = parse_read(value.clone());
            let _ = parse_autoclaim(value.clone());
            let _ = parse_entry(value);
        }
    }

    #[test]
    fn odd_replies_are_refused_not_panicked_on() {
        assert!(parse_read(Value::Int(3)).is_none());
        assert!(parse_read(Value::Array(vec![Value::Array(vec![bulk("s")])])).is_none());
        assert!(parse_entry(Value::Array(vec![bulk("1-0"), Value::Array(vec![bulk("odd")])])).is_none());
        assert!(parse_autoclaim(Value::Array(vec![])).is_none());
        assert_eq!(entry_millis("1700000000000-3"), Some(1_700_000_000_000));
        assert_eq!(entry_millis("x"), None);
    }
}
