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
//! Each request uses its own HTTP/1 connection, driven inside this task (no background tasks).

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use redis::aio::ConnectionManager;
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::config::{seconds, PubNubConfig};
use crate::health::SourceHealth;
use crate::mapping::BusMessage;
use crate::relay::Relay;

/// Largest subscribe response read.
const MAX_RESPONSE: usize = 16 * 1024 * 1024;

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

/// The request path and query for `cursor`.
pub(crate) fn subscribe_path(config: &PubNubConfig, cursor: &Cursor) -> String {
    let channels =
        if config.channels.is_empty() { ",".to_owned() } else { config.channels.iter().map(|c| encode(c)).collect::<Vec<_>>().join(",") };
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
}

/// Runs the source until `shutdown`.
pub(crate) async fn run(config: PubNubConfig, relay: Relay, health: Arc<SourceHealth>, shutdown: CancellationToken) {
    let lock_key = config.lock_key.clone().unwrap_or_else(|| format!("herald:ingest:{}:leader", relay.source()));
    let subscriber = Subscriber {
        cursor_key: format!("{lock_key}:cursor"),
        lock_key,
        node: format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..)),
        lock_ttl: seconds("lock_ttl", config.lock_ttl).unwrap_or(Duration::from_secs(10)),
        timeout: seconds("timeout", config.timeout).unwrap_or(Duration::from_secs(310)),
        config,
        relay,
        health,
    };
    let mut backoff = Backoff::default();
    let client = match redis::Client::open(subscriber.config.lock_url.as_str()) {
        Ok(client) => client,
        Err(e) => {
            tracing::error!(source = subscriber.relay.source(), error = e.category(), "invalid lock url; source stopped");
            return;
        }
    };
    while !shutdown.is_cancelled() {
        let redis_timeout = Duration::from_secs(2).min(subscriber.lock_ttl / 3);
        let manager_config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(redis_timeout))
            .set_response_timeout(Some(redis_timeout))
            .set_number_of_retries(1);
        let connect = ConnectionManager::new_with_config(client.clone(), manager_config);
        let mut redis = match tokio::time::timeout(redis_timeout * 2, connect).await {
            Ok(Ok(conn)) => conn,
            Ok(Err(e)) => {
                subscriber.health.down(&format!("leader lock: {e}"));
                if !backoff.wait(&shutdown).await {
                    break;
                }
                continue;
            }
            Err(_) => {
                subscriber.health.down(&"leader lock: redis timed out");
                if !backoff.wait(&shutdown).await {
                    break;
                }
                continue;
            }
        };
        backoff.reset();
        subscriber.lead_or_wait(&mut redis, &shutdown).await;
    }
    tracing::info!(source = subscriber.relay.source(), "pubnub source stopped");
}

const RENEW: &str = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) else return 0 end";
const RELEASE: &str = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) else return 0 end";

impl Subscriber {
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
        tokio::select! {
            _ = shutdown.cancelled() => Ok(()),
            _ = renew => Err(()),
            _ = self.subscribe(cursor, redis.clone(), shutdown) => Ok(()),
        }
    }

    /// The long-poll loop from `cursor` (runs until cancelled by the caller).
    async fn subscribe(&self, mut cursor: Cursor, mut redis: ConnectionManager, shutdown: &CancellationToken) {
        let mut backoff = Backoff::default();
        let source = self.relay.source().to_owned();
        loop {
            let response = match self.poll(&cursor).await {
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
            let mut refused = None;
            for envelope in &response.m {
                if envelope.e.is_some_and(|e| e != 0 && e != 1) {
                    metrics::counter!("herald_ingest_skipped_total", "source" => source.clone(), "reason" => "not_a_message").increment(1);
                    continue;
                }
                let id = envelope.p.as_ref().map_or(response.t.t.as_str(), |p| p.t.as_str());
                let message = BusMessage { origin: &envelope.c, id, payload: envelope.d.get().as_bytes() };
                if let Err(e) = self.relay.relay(&message, timetoken_time(id).filter(|t| *t <= SystemTime::now())).await {
                    refused = Some(e);
                    break;
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
                metrics::gauge!("herald_ingest_position", "source" => source.clone()).set(tt);
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
    async fn poll(&self, cursor: &Cursor) -> Result<Response, PollError> {
        let uri: hyper::Uri = self.config.origin.parse().map_err(|e| PollError::Http(format!("origin: {e}")))?;
        let host = uri.host().ok_or_else(|| PollError::Http("origin has no host".into()))?.to_owned();
        let port = uri.port_u16().unwrap_or(80);
        let exchange = async {
            let stream = tokio::net::TcpStream::connect((host.as_str(), port)).await.map_err(|e| PollError::Http(e.to_string()))?;
            let _ = stream.set_nodelay(true);
            let (mut sender, connection) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| PollError::Http(e.to_string()))?;
            let request = hyper::Request::get(subscribe_path(&self.config, cursor))
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
        };
        let path = subscribe_path(&config, &Cursor { t: "123".into(), r: Some(4) });
        assert_eq!(path, "/v2/subscribe/sub-c-1/user.*,a%20b/0?tt=123&uuid=herald&tr=4&channel-group=g1");
        assert_eq!(parse_cursor("123:4"), Some(Cursor { t: "123".into(), r: Some(4) }));
        assert_eq!(parse_cursor("123:"), Some(Cursor { t: "123".into(), r: None }));
        assert_eq!(parse_cursor("x:1"), None);
        assert_eq!(timetoken_time("17000000000000000"), UNIX_EPOCH.checked_add(Duration::from_secs(1_700_000_000)));
    }
}
