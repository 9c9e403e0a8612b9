//! PubNub: the subscribe v2 long-poll (`GET {origin}/v2/subscribe/{sub_key}/{channels}/0?tt=&tr=`),
//! on one node of the cluster at a time.
//!
//! Leadership is a Redis lock (`SET lock_key node NX PX ttl`, renewed every third of the ttl by a
//! script that checks it is still ours, deleted at shutdown): only the leader subscribes, so N nodes
//! don't deliver N times; the others wait and take over when the lock expires. The leader keeps the
//! timetoken cursor in Redis (`{lock_key}:cursor`) after each response whose messages were all
//! accepted, so a new leader resumes where the last one stopped; messages the old leader relayed after
//! its last cursor write are repeats, recognised by their idempotency keys (by default channel and
//! timetoken). Errors (PubNub unreachable, a non-200 answer, a malformed body) are retried with backoff
//! from the same timetoken; the source is down on `/up` meanwhile. Responses are read up to a size
//! bound; bodies are untrusted input (never a panic).
//!
//! Interest (`user_channels`, the seed's `subscribe_user_channel`): instead of (or beside) fixed
//! channels, the leader subscribes to `user.{user}.sync`-like channels of the users connected to the
//! cluster. Every node running the source, leader or not, writes the users signed in on it to the
//! Redis sorted set `{lock_key}:users` every `interest_refresh` (score: when the entry expires, three
//! refreshes later), so the users of a node that died drop out by themselves; the leader reads the live
//! entries at the same pace (at most `max_users`), and when its channel list changes it abandons the
//! running long-poll and polls again from the same timetoken with the new list. With nobody connected
//! and no fixed channels it does not poll at all. Bounded: `max_users` users (the first in id order
//! are kept, so the list does not flap; the rest are counted in `herald_ingest_interest_dropped_users`
//! and logged), at most [`MAX_INTEREST_READ`] entries read, user ids longer than [`MAX_USER_ID`] bytes
//! ignored (the set is in Redis: untrusted).
//!
//! Each request uses its own HTTP/1 connection, driven inside this task (no background tasks).

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use redis::aio::ConnectionManager;
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::config::{seconds, PubNubConfig};
use crate::health::SourceHealth;
use crate::mapping::BusMessage;
use crate::relay::Relay;

/// Largest subscribe response read.
const MAX_RESPONSE: usize = 16 * 1024 * 1024;

/// Longest user id read back from the interest set (longer entries are ignored).
const MAX_USER_ID: usize = 256;

/// Most entries of the interest set read at once (every node writes at most `max_users`).
const MAX_INTEREST_READ: usize = 20_000;

#[derive(Debug, thiserror::Error)]
enum PollError {
    #[error("pubnub unreachable: {0}")]
    Http(String),
    #[error("pubnub answered {0}")]
    Status(u16),
    #[error("pubnub sent a malformed response: {0}")]
    Malformed(String),
    #[error("pubnub request timed out")]
    Timeout,
}

/// Where the subscription is: the timetoken and its region.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub(crate) struct Cursor {
    #[serde(deserialize_with = "timetoken")]
    pub(crate) t: String,
    #[serde(default)]
    pub(crate) r: Option<u32>,
}

/// Timetokens are strings in responses (numbers accepted too).
fn timetoken<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Token {
        Text(String),
        Number(u64),
    }
    let text = match Token::deserialize(d)? {
        Token::Text(t) => t,
        Token::Number(n) => n.to_string(),
    };
    if text.is_empty() || text.len() > 20 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(serde::de::Error::custom("a timetoken is a number"));
    }
    Ok(text)
}

/// One message of a subscribe response.
#[derive(Debug, Deserialize)]
pub(crate) struct Envelope {
    /// The channel.
    pub(crate) c: String,
    /// The message.
    pub(crate) d: Box<RawValue>,
    /// Its publish timetoken.
    #[serde(default)]
    pub(crate) p: Option<Cursor>,
    /// Message type: absent or 0 a message, 1 a signal; others (objects, actions, files) are not relayed.
    #[serde(default)]
    pub(crate) e: Option<i64>,
}

/// A subscribe response: the next cursor and the messages.
#[derive(Debug, Deserialize)]
pub(crate) struct Response {
    pub(crate) t: Cursor,
    #[serde(default)]
    pub(crate) m: Vec<Envelope>,
}

/// Percent-encodes a path segment (keeps unreserved characters and the `*` of wildcards).
fn encode(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for b in segment.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~*".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The request path and query for `cursor`, subscribing to `channels`.
pub(crate) fn subscribe_path(config: &PubNubConfig, channels: &[String], cursor: &Cursor) -> String {
    let channels = if channels.is_empty() { ",".to_owned() } else { channels.iter().map(|c| encode(c)).collect::<Vec<_>>().join(",") };
    let mut path = format!("/v2/subscribe/{}/{}/0?tt={}&uuid={}", encode(&config.subscribe_key), channels, cursor.t, encode(&config.uuid));
    if let Some(region) = cursor.r {
        path.push_str(&format!("&tr={region}"));
    }
    if !config.channel_groups.is_empty() {
        path.push_str(&format!("&channel-group={}", config.channel_groups.iter().map(|g| encode(g)).collect::<Vec<_>>().join(",")));
    }
    path
}

/// When a timetoken (100 ns units since the epoch) was.
fn timetoken_time(t: &str) -> Option<SystemTime> {
    let n: u64 = t.parse().ok()?;
    UNIX_EPOCH.checked_add(Duration::from_secs(n / 10_000_000) + Duration::from_nanos((n % 10_000_000) * 100))
}

struct Subscriber {
    config: PubNubConfig,
    relay: Relay,
    health: Arc<SourceHealth>,
    node: String,
    lock_key: String,
    cursor_key: String,
    lock_ttl: Duration,
    timeout: Duration,
    /// The interest set (`{lock_key}:users`).
    users_key: String,
    interest_refresh: Duration,
}

/// The channels for `users`: the fixed ones, then each user channel template per user; sorted, no
/// repeats.
fn channels_for(config: &PubNubConfig, users: &[String]) -> Vec<String> {
    let mut channels = config.channels.clone();
    for user in users {
        for template in &config.user_channels {
            channels.push(template.replace("{user}", user));
        }
    }
    channels.sort();
    channels.dedup();
    channels
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// Runs the source until `shutdown`.
pub(crate) async fn run(config: PubNubConfig, relay: Relay, health: Arc<SourceHealth>, shutdown: CancellationToken) {
    let lock_key = config.lock_key.clone().unwrap_or_else(|| format!("herald:ingest:{}:leader", relay.source()));
    let subscriber = Subscriber {
        cursor_key: format!("{lock_key}:cursor"),
        users_key: format!("{lock_key}:users"),
        interest_refresh: seconds("interest_refresh", config.interest_refresh).unwrap_or(Duration::from_secs(1)),
        lock_key,
        node: format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..)),
        lock_ttl: seconds("lock_ttl", config.lock_ttl).unwrap_or(Duration::from_secs(10)),
        timeout: seconds("timeout", config.timeout).unwrap_or(Duration::from_secs(310)),
        config,
        relay,
        health,
    };
    let client = match redis::Client::open(subscriber.config.lock_url.as_str()) {
        Ok(client) => client,
        Err(e) => {
            tracing::error!(source = subscriber.relay.source(), error = e.category(), "invalid lock url; source stopped");
            return;
        }
    };
    let lead = subscriber.lead_loop(&client, &shutdown);
    if subscriber.config.user_channels.is_empty() {
        lead.await;
    } else {
        tokio::join!(lead, subscriber.write_interest(&client, &shutdown));
    }
    tracing::info!(source = subscriber.relay.source(), "pubnub source stopped");
}

const RENEW: &str = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) else return 0 end";
const RELEASE: &str = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) else return 0 end";

impl Subscriber {
    /// A Redis connection for the lock (or the interest set), with short timeouts.
    async fn connect(&self, client: &redis::Client) -> Result<ConnectionManager, String> {
        let redis_timeout = Duration::from_secs(2).min(self.lock_ttl / 3);
        let manager_config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(redis_timeout))
            .set_response_timeout(Some(redis_timeout))
            .set_number_of_retries(1);
        let connect = ConnectionManager::new_with_config(client.clone(), manager_config);
        match tokio::time::timeout(redis_timeout * 2, connect).await {
            Ok(Ok(conn)) => Ok(conn),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("redis timed out".into()),
        }
    }

    /// Writes the users signed in on this node to the interest set every `interest_refresh`, until
    /// `shutdown` (every node does, leader or not).
    async fn write_interest(&self, client: &redis::Client, shutdown: &CancellationToken) {
        let mut redis = None;
        let hub = self.relay.hub().clone();
        loop {
            if redis.is_none() {
                redis = self.connect(client).await.ok();
            }
            if let Some(conn) = redis.as_mut() {
                let users = hub.local_users(self.config.max_users);
                if !users.is_empty() {
                    let lifetime = self.interest_refresh * 3;
                    let expires = now_ms() + lifetime.as_millis() as u64;
                    let mut zadd = redis::cmd("ZADD");
                    zadd.arg(&self.users_key);
                    for user in &users {
                        zadd.arg(expires).arg(user.as_ref());
                    }
                    let mut pipe = redis::pipe();
                    pipe.add_command(zadd).ignore();
                    // The whole set goes when no node refreshes it any more.
                    pipe.cmd("PEXPIRE").arg(&self.users_key).arg(lifetime.as_millis() as u64).ignore();
                    let written: redis::RedisResult<()> = pipe.query_async(conn).await;
                    if let Err(e) = written {
                        tracing::debug!(source = self.relay.source(), error = %e, "interest not written");
                    }
                }
            }
            if !crate::backoff::sleep(self.interest_refresh, shutdown).await {
                return;
            }
        }
    }

    /// Reads the users connected to the cluster (live entries of the interest set, at most
    /// `max_users`), sorted.
    async fn read_interest(&self, redis: &mut ConnectionManager) -> redis::RedisResult<Vec<String>> {
        let now = now_ms();
        let (_, total, users): ((), usize, Vec<String>) = redis::pipe()
            .cmd("ZREMRANGEBYSCORE")
            .arg(&self.users_key)
            .arg("-inf")
            .arg(format!("({now}"))
            .cmd("ZCARD")
            .arg(&self.users_key)
            .cmd("ZRANGEBYSCORE")
            .arg(&self.users_key)
            .arg(now)
            .arg("+inf")
            .arg("LIMIT")
            .arg(0)
            .arg(MAX_INTEREST_READ)
            .query_async(redis)
            .await?;
        let mut users: Vec<String> = users.into_iter().filter(|u| !u.is_empty() && u.len() <= MAX_USER_ID).collect();
        // The first in id order, so the list does not flap between refreshes.
        users.sort();
        users.truncate(self.config.max_users);
        let dropped = total.saturating_sub(users.len());
        metrics::gauge!("herald_ingest_interest_dropped_users", "source" => self.relay.source().to_owned()).set(dropped as f64);
        if dropped > 0 {
            tracing::warn!(
                source = self.relay.source(),
                dropped,
                max_users = self.config.max_users,
                "more users connected than pubnub.max_users: some are not subscribed for"
            );
        }
        Ok(users)
    }

    /// Keeps `interest` on the channels of the users connected to the cluster (only changes are sent).
    /// Returns when the interest set can't be read (the caller treats it like a lost lock).
    async fn follow_interest(&self, mut redis: ConnectionManager, interest: watch::Sender<Vec<String>>) {
        loop {
            match self.read_interest(&mut redis).await {
                Ok(users) => {
                    let channels = channels_for(&self.config, &users);
                    metrics::gauge!("herald_ingest_interest_users", "source" => self.relay.source().to_owned()).set(users.len() as f64);
                    interest.send_if_modified(|current| {
                        if *current == channels {
                            return false;
                        }
                        *current = channels;
                        true
                    });
                }
                Err(e) => {
                    tracing::warn!(source = self.relay.source(), error = %e, "interest not read; standing by");
                    return;
                }
            }
            tokio::time::sleep(self.interest_refresh).await;
        }
    }

    /// Connects to Redis, leads or stands by, and again after a Redis error, until `shutdown`.
    async fn lead_loop(&self, client: &redis::Client, shutdown: &CancellationToken) {
        let mut backoff = Backoff::default();
        while !shutdown.is_cancelled() {
            let mut redis = match self.connect(client).await {
                Ok(conn) => conn,
                Err(e) => {
                    self.health.down(&format!("leader lock: {e}"));
                    if !backoff.wait(shutdown).await {
                        break;
                    }
                    continue;
                }
            };
            backoff.reset();
            self.lead_or_wait(&mut redis, shutdown).await;
        }
    }

    /// Takes the lock when free and subscribes while holding it; otherwise waits a third of the ttl.
    /// Returns after a Redis error (the caller reconnects) or at shutdown.
    async fn lead_or_wait(&self, redis: &mut ConnectionManager, shutdown: &CancellationToken) {
        let ttl_ms = self.lock_ttl.as_millis() as u64;
        loop {
            let acquired: redis::RedisResult<Option<String>> =
                redis::cmd("SET").arg(&self.lock_key).arg(&self.node).arg("NX").arg("PX").arg(ttl_ms).query_async(redis).await;
            match acquired {
                Ok(Some(_)) => {
                    tracing::info!(source = self.relay.source(), "leader: subscribing to pubnub");
                    let lost = self.lead(redis, shutdown).await;
                    let released: redis::RedisResult<i64> =
                        redis::Script::new(RELEASE).key(&self.lock_key).arg(&self.node).invoke_async(redis).await;
                    let _ = released;
                    if lost.is_err() || shutdown.is_cancelled() {
                        return;
                    }
                }
                Ok(None) => {
                    // Another node leads; this one is standing by (its link to the lock is fine).
                    self.health.up();
                    if !crate::backoff::sleep(self.lock_ttl / 3, shutdown).await {
                        return;
                    }
                }
                Err(e) => {
                    self.health.down(&format!("leader lock: {e}"));
                    let _ = crate::backoff::sleep(crate::backoff::MIN_DELAY, shutdown).await;
                    return;
                }
            }
        }
    }

    /// Subscribes while renewing the lock. `Err` if the lock could not be renewed (Redis down) or was
    /// lost; `Ok` at shutdown.
    async fn lead(&self, redis: &mut ConnectionManager, shutdown: &CancellationToken) -> Result<(), ()> {
        let cursor = match redis::cmd("GET").arg(&self.cursor_key).query_async::<Option<String>>(redis).await {
            Ok(saved) => saved.and_then(|s| parse_cursor(&s)).unwrap_or(Cursor { t: "0".into(), r: None }),
            Err(_) => return Err(()),
        };
        let mut renewer = redis.clone();
        let renew = async {
            loop {
                tokio::time::sleep(self.lock_ttl / 3).await;
                let renewed: redis::RedisResult<i64> = redis::Script::new(RENEW)
                    .key(&self.lock_key)
                    .arg(&self.node)
                    .arg(self.lock_ttl.as_millis() as u64)
                    .invoke_async(&mut renewer)
                    .await;
                if !matches!(renewed, Ok(1)) {
                    tracing::warn!(source = self.relay.source(), "leader lock lost; standing by");
                    return;
                }
            }
        };
        if self.config.user_channels.is_empty() {
            return tokio::select! {
                _ = shutdown.cancelled() => Ok(()),
                _ = renew => Err(()),
                _ = self.subscribe(cursor, redis.clone(), None, shutdown) => Ok(()),
            };
        }
        // The first list before the first poll, then changes as users come and go.
        let users = self.read_interest(redis).await.map_err(|_| ())?;
        let (interest, channels) = watch::channel(channels_for(&self.config, &users));
        tokio::select! {
            _ = shutdown.cancelled() => Ok(()),
            _ = renew => Err(()),
            _ = self.follow_interest(redis.clone(), interest) => Err(()),
            _ = self.subscribe(cursor, redis.clone(), Some(channels), shutdown) => Ok(()),
        }
    }

    /// The long-poll loop from `cursor` (runs until cancelled by the caller), on the fixed channels or,
    /// with `interest`, on its channel list: a change abandons the running poll (nothing of it was
    /// relayed) and polls again from the same cursor.
    async fn subscribe(
        &self,
        mut cursor: Cursor,
        mut redis: ConnectionManager,
        mut interest: Option<watch::Receiver<Vec<String>>>,
        shutdown: &CancellationToken,
    ) {
        let mut backoff = Backoff::default();
        let source = self.relay.source().to_owned();
        loop {
            let channels = match &mut interest {
                Some(interest) => interest.borrow_and_update().clone(),
                None => self.config.channels.clone(),
            };
            metrics::gauge!("herald_ingest_subscribed_channels", "source" => source.clone()).set(channels.len() as f64);
            let polled = match &mut interest {
                Some(interest) if channels.is_empty() && self.config.channel_groups.is_empty() => {
                    // Nobody connected: nothing to poll for until someone is.
                    self.health.up();
                    if interest.changed().await.is_err() {
                        return;
                    }
                    continue;
                }
                Some(interest) => tokio::select! {
                    polled = self.poll(&cursor, &channels) => polled,
                    changed = interest.changed() => {
                        if changed.is_err() {
                            return;
                        }
                        metrics::counter!("herald_ingest_interest_changes_total", "source" => source.clone()).increment(1);
                        continue;
                    }
                },
                None => self.poll(&cursor, &channels).await,
            };
            let response = match polled {
                Ok(response) => response,
                Err(e) => {
                    self.health.down(&e);
                    if !backoff.wait(shutdown).await {
                        return;
                    }
                    continue;
                }
            };
            self.health.up();
            let mut messages = Vec::with_capacity(response.m.len());
            for envelope in &response.m {
                if envelope.e.is_some_and(|e| e != 0 && e != 1) {
                    metrics::counter!("herald_ingest_skipped_total", "source" => source.clone(), "reason" => "not_a_message").increment(1);
                    self.relay.health().skipped("not_a_message");
                    continue;
                }
                let id = envelope.p.as_ref().map_or(response.t.t.as_str(), |p| p.t.as_str());
                let message = BusMessage { origin: &envelope.c, id, payload: envelope.d.get().as_bytes() };
                messages.push((message, timetoken_time(id).filter(|t| *t <= SystemTime::now())));
            }
            // Relayed together (see `Relay::relay_batch`); any refusal retries the whole response.
            let mut refused = None;
            for outcome in self.relay.relay_batch(&messages).await.into_iter().flatten() {
                match outcome {
                    // Seen again after resuming from an older cursor (a new leader, or a retry).
                    Ok(crate::relay::Outcome::Repeat) => self.relay.health().redelivered(),
                    Ok(_) => {}
                    Err(e) => refused = refused.or(Some(e)),
                }
            }
            if let Some(e) = refused {
                // The same timetoken again after a backoff: what was accepted is a repeat then.
                tracing::warn!(source = %source, error = %e, "engine refused a publication; retrying after backoff");
                if !backoff.wait(shutdown).await {
                    return;
                }
                continue;
            }
            backoff.reset();
            cursor = response.t;
            if let Ok(tt) = cursor.t.parse::<f64>() {
                self.relay.health().position(tt);
            }
            let saved = format!("{}:{}", cursor.t, cursor.r.map_or(String::new(), |r| r.to_string()));
            let stored: redis::RedisResult<()> = redis::cmd("SET").arg(&self.cursor_key).arg(saved).query_async(&mut redis).await;
            if let Err(e) = stored {
                // A new leader would resume from an older cursor: repeats, not losses.
                tracing::debug!(source = %source, error = %e, "cursor not saved");
            }
        }
    }

    /// One long-poll request.
    async fn poll(&self, cursor: &Cursor, channels: &[String]) -> Result<Response, PollError> {
        let uri: hyper::Uri = self.config.origin.parse().map_err(|e| PollError::Http(format!("origin: {e}")))?;
        let host = uri.host().ok_or_else(|| PollError::Http("origin has no host".into()))?.to_owned();
        let port = uri.port_u16().unwrap_or(80);
        let exchange = async {
            let stream = tokio::net::TcpStream::connect((host.as_str(), port)).await.map_err(|e| PollError::Http(e.to_string()))?;
            let _ = stream.set_nodelay(true);
            let (mut sender, connection) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| PollError::Http(e.to_string()))?;
            let request = hyper::Request::get(subscribe_path(&self.config, channels, cursor))
                .header(hyper::header::HOST, format!("{host}:{port}"))
                .body(Empty::<Bytes>::new())
                .map_err(|e| PollError::Http(e.to_string()))?;
            // The sender lives until the body is read; dropping it then lets the connection finish.
            let read = async move {
                let response = sender.send_request(request).await.map_err(|e| PollError::Http(e.to_string()))?;
                let status = response.status();
                let body = Limited::new(response.into_body(), MAX_RESPONSE).collect().await.map_err(|e| PollError::Http(e.to_string()))?;
                drop(sender);
                Ok::<_, PollError>((status, body.to_bytes()))
            };
            let (read, _) = tokio::join!(read, connection);
            let (status, body) = read?;
            if !status.is_success() {
                return Err(PollError::Status(status.as_u16()));
            }
            serde_json::from_slice::<Response>(&body).map_err(|e| PollError::Malformed(e.to_string()))
        };
        tokio::time::timeout(self.timeout, exchange).await.map_err(|_| PollError::Timeout)?
    }
}

/// `"{tt}:{tr}"` as saved.
fn parse_cursor(saved: &str) -> Option<Cursor> {
    let (t, r) = saved.split_once(':')?;
    if t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(Cursor { t: t.to_owned(), r: r.parse().ok() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_responses_and_refuses_malformed_ones() {
        let body = r#"{"t":{"t":"17000000000000001","r":12},"m":[{"a":"1","f":0,"i":"pub","p":{"t":"17000000000000000","r":12},"k":"sub","c":"user.u1.sync","d":{"type":"x"}},{"c":"c","d":"text","e":4}]}"#;
        let r: Response = serde_json::from_str(body).unwrap();
        assert_eq!(r.t, Cursor { t: "17000000000000001".into(), r: Some(12) });
        assert_eq!((r.m[0].c.as_str(), r.m[0].d.get()), ("user.u1.sync", r#"{"type":"x"}"#));
        assert_eq!(r.m[1].e, Some(4));
        for bad in [r#"{"m":[]}"#, r#"{"t":{"t":"x1"}}"#, r#"{"t":{"t":""}}"#, "[]", r#"{"t":{"t":"1"},"m":[{"c":"a"}]}"#] {
            assert!(serde_json::from_str::<Response>(bad).is_err(), "{bad}");
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config { failure_persistence: None, ..Default::default() })]
        #[test]
        fn any_body_parses_or_is_refused(body in proptest::collection::vec(proptest::arbitrary::any::<u8>(), 0..300), text in ".{0,200}") {
            let _ = serde_json::from_slice::<Response>(&body);
            let _ = serde_json::from_str::<Response>(&text);
            let _ = parse_cursor(&text);
            let _ = timetoken_time(&text);
        }
    }

    #[test]
    fn builds_the_documented_request() {
        let config = PubNubConfig {
            origin: "http://ps.pndsn.com".into(),
            subscribe_key: "sub-c-1".into(),
            channels: vec!["user.*".into(), "a b".into()],
            channel_groups: vec!["g1".into()],
            uuid: "herald".into(),
            lock_url: "redis://127.0.0.1".into(),
            lock_key: None,
            lock_ttl: 10.0,
            timeout: 310.0,
            user_channels: vec!["user.{user}.sync".into(), "user.{user}.devices".into()],
            max_users: 10,
            interest_refresh: 1.0,
        };
        let path = subscribe_path(&config, &config.channels, &Cursor { t: "123".into(), r: Some(4) });
        assert_eq!(path, "/v2/subscribe/sub-c-1/user.*,a%20b/0?tt=123&uuid=herald&tr=4&channel-group=g1");
        assert_eq!(parse_cursor("123:4"), Some(Cursor { t: "123".into(), r: Some(4) }));
        assert_eq!(parse_cursor("123:"), Some(Cursor { t: "123".into(), r: None }));
        assert_eq!(parse_cursor("x:1"), None);
        let channels = channels_for(&config, &["u2".into(), "u1".into()]);
        assert_eq!(channels, ["a b", "user.*", "user.u1.devices", "user.u1.sync", "user.u2.devices", "user.u2.sync"]);
        assert_eq!(timetoken_time("17000000000000000"), UNIX_EPOCH.checked_add(Duration::from_secs(1_700_000_000)));
    }
}
