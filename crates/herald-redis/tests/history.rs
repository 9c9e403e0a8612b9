//! [`herald_redis::RedisHistory`] against a real `redis-server` of the test's own: the `HistoryStore`
//! conformance suite shared with memory (`herald-core/tests/suite/history.rs`), and what only Redis
//! has: a flushed Redis, corrupt entries and meta, the broadcast in the append script, key names,
//! deadlines, and [`herald_redis::RedisIdempotency`].

mod common;

#[path = "../../herald-core/tests/suite/history.rs"]
#[macro_use]
mod history_suite;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{eventually, RedisServer};
use futures_util::StreamExt;
use herald_core::{DataKind, HistoryError, HistoryOptions, HistoryStore, IdempotencyLimits, Publication, StreamPosition};
use herald_redis::{HistoryPublish, IdempotencyError, RedisHistory, RedisIdempotency, MAX_IDEMPOTENCY_KEY};
use history_suite::{Harness, APP, CAP};
use redis::aio::ConnectionManager;

const PREFIX: &str = "hx";

/// XRANGE's answer: entries of (id, [(field, value)]).
type Entries = Vec<(String, Vec<(String, Vec<u8>)>)>;

/// A store on a redis-server of its own (killed with the harness).
struct Redis {
    server: RedisServer,
    conn: ConnectionManager,
    store: Arc<RedisHistory>,
}

async fn redis() -> Redis {
    let server = RedisServer::start().await;
    let conn = connect(&server).await;
    let store = Arc::new(RedisHistory::new(conn.clone(), PREFIX, CAP, Duration::from_secs(2)));
    Redis { server, conn, store }
}

async fn connect(server: &RedisServer) -> ConnectionManager {
    redis::Client::open(server.url()).unwrap().get_connection_manager().await.unwrap()
}

impl Harness for Redis {
    fn store(&self) -> Arc<dyn HistoryStore> {
        self.store.clone()
    }

    async fn wait_expired(&self, channel: &str) {
        let meta = format!("{{{PREFIX}:{APP}}}:hm:{channel}");
        let gone = eventually(Duration::from_secs(5), || {
            let mut conn = self.conn.clone();
            let meta = meta.clone();
            async move { !redis::cmd("EXISTS").arg(meta).query_async::<bool>(&mut conn).await.unwrap() }
        })
        .await;
        assert!(gone, "the stream expired within 5 s");
    }
}

history_conformance!(
    #[tokio::test]
    redis().await
);

const OPTIONS: HistoryOptions = HistoryOptions { size: 10, ttl: Duration::from_secs(60) };

fn publication(channel: &str, n: u64) -> Publication {
    Publication::new(channel, "e", Bytes::from(n.to_string()), DataKind::Text)
}

#[tokio::test]
async fn a_flushed_redis_starts_a_new_epoch_and_old_positions_do_not_recover() {
    let h = redis().await;
    let mut old = None;
    for i in 1..=3 {
        old = Some(h.store.append(APP, &publication("c", i), OPTIONS).await.unwrap());
    }
    let old = old.unwrap();
    h.server.cli(&["FLUSHALL"]).await;
    let missed = h.store.since(APP, "c", Some(&old), 10).await.unwrap();
    assert!(!missed.recovered);
    assert!(missed.publications.is_empty());
    assert_eq!(missed.position.offset, 0);
    assert_ne!(missed.position.epoch, old.epoch);
    // Publications after the flush never pass for the old ones, even once the offset is back past them.
    for i in 1..=5 {
        h.store.append(APP, &publication("c", i), OPTIONS).await.unwrap();
    }
    let later = h.store.since(APP, "c", Some(&old), 10).await.unwrap();
    assert!(!later.recovered && later.publications.is_empty(), "an old epoch never recovers");
    assert_eq!(later.position, StreamPosition { offset: 5, epoch: missed.position.epoch });
}

#[tokio::test]
async fn corrupt_entries_are_skipped_and_counted_and_leave_the_recovery_incomplete() {
    let h = redis().await;
    let first = h.store.append(APP, &publication("c", 1), OPTIONS).await.unwrap();
    let (stream, meta) = (format!("{{{PREFIX}:{APP}}}:h:c"), format!("{{{PREFIX}:{APP}}}:hm:c"));
    let mut conn = h.conn.clone();
    // Offsets 2..=5 written behind the store's back: garbage, a missing field, a known version with a
    // truncated body, another channel's publication.
    let mut other = Vec::new();
    {
        // Another channel's valid entry, copied from a real append.
        h.store.append(APP, &publication("elsewhere", 1), OPTIONS).await.unwrap();
        let raw: Entries =
            redis::cmd("XRANGE").arg(format!("{{{PREFIX}:{APP}}}:h:elsewhere")).arg("-").arg("+").query_async(&mut conn).await.unwrap();
        other.extend_from_slice(&raw[0].1[0].1);
    }
    let entries: [(&str, &str, &[u8]); 4] =
        [("2-1", "d", b"\xff\xfe garbage"), ("3-1", "x", b"no d field"), ("4-1", "d", b"\x01\x00\x00\x00\x00\xff"), ("5-1", "d", &other)];
    for (id, field, value) in entries {
        let _: String = redis::cmd("XADD").arg(&stream).arg(id).arg(field).arg(value).query_async(&mut conn).await.unwrap();
    }
    let _: i64 = redis::cmd("HINCRBY").arg(&meta).arg("offset").arg(4).query_async(&mut conn).await.unwrap();
    let sixth = h.store.append(APP, &publication("c", 6), OPTIONS).await.unwrap();
    assert_eq!(sixth.offset, 6);

    let all = h.store.since(APP, "c", None, 10).await.unwrap();
    let offsets: Vec<u64> = all.publications.iter().map(|p| p.position.as_ref().unwrap().offset).collect();
    assert_eq!(offsets, [1, 6], "the four bad entries are skipped");
    assert!(!all.recovered, "their offsets are a gap");
    assert_eq!(h.store.corrupt_entries(), 4);
    let from_first = h.store.since(APP, "c", Some(&first), 10).await.unwrap();
    assert!(!from_first.recovered);

    // A meta that is not a number, and a stream key of another type: errors, not panics.
    let _: () = redis::cmd("HSET").arg(&meta).arg("offset").arg("many").query_async(&mut conn).await.unwrap();
    assert!(matches!(h.store.since(APP, "c", None, 10).await, Err(HistoryError::Corrupt(_))));
    assert!(matches!(h.store.append(APP, &publication("c", 7), OPTIONS).await, Err(HistoryError::Corrupt(_))));
    let _: () = redis::cmd("DEL").arg(&meta).arg(&stream).query_async(&mut conn).await.unwrap();
    let _: () = redis::cmd("HSET").arg(&meta).arg("offset").arg(3).arg("epoch").arg("e").query_async(&mut conn).await.unwrap();
    let _: () = redis::cmd("SET").arg(&stream).arg("not a stream").query_async(&mut conn).await.unwrap();
    assert!(matches!(h.store.since(APP, "c", None, 10).await, Err(HistoryError::Corrupt(_))));
}

#[tokio::test]
async fn a_stream_that_outlived_its_meta_is_started_over() {
    let h = redis().await;
    for i in 1..=3 {
        h.store.append(APP, &publication("c", i), OPTIONS).await.unwrap();
    }
    h.server.cli(&["DEL", &format!("{{{PREFIX}:{APP}}}:hm:c")]).await;
    let restarted = h.store.append(APP, &publication("c", 1), OPTIONS).await.unwrap();
    assert_eq!(restarted.offset, 1);
    let all = h.store.since(APP, "c", None, 10).await.unwrap();
    assert_eq!(all.publications.len(), 1, "the old entries went with their epoch");
    assert!(all.recovered);
}

#[tokio::test]
async fn append_and_publish_broadcasts_with_the_position_in_the_same_script() {
    let h = redis().await;
    let client = redis::Client::open(h.server.url()).unwrap();
    let mut pubsub = client.get_async_pubsub().await.unwrap();
    pubsub.subscribe("hx:app:c:room").await.unwrap();
    let payload = b"\x00\x01binary envelope";
    let publish = HistoryPublish { channel: "hx:app:c:room", payload, sharded: false };
    let first = h.store.append_and_publish(APP, &publication("room", 1), OPTIONS, Some(publish)).await.unwrap();
    let second = h.store.append_and_publish(APP, &publication("room", 2), OPTIONS, Some(publish)).await.unwrap();
    let mut messages = pubsub.on_message();
    for position in [first, second] {
        let message = tokio::time::timeout(Duration::from_secs(5), messages.next()).await.expect("published").unwrap();
        let mut expected = format!("{}:{}:", position.offset, position.epoch).into_bytes();
        expected.extend_from_slice(payload);
        assert_eq!(message.get_payload_bytes(), &expected[..]);
    }
    assert_eq!(h.store.since(APP, "room", None, 10).await.unwrap().publications.len(), 2, "and both are in the stream");
}

#[tokio::test]
async fn keys_carry_the_app_hash_tag_and_expire_with_the_stream() {
    let h = redis().await;
    h.store.append(APP, &publication("c", 1), OPTIONS).await.unwrap();
    let mut keys: Vec<String> = h.server.cli(&["KEYS", "*"]).await.lines().map(str::to_owned).collect();
    keys.sort();
    assert_eq!(keys, ["{hx:app}:h:c", "{hx:app}:hc", "{hx:app}:hm:c"]);
    for key in &keys {
        let ttl: i64 = h.server.cli(&["PTTL", key]).await.trim().parse().unwrap();
        assert!(ttl > 0 && ttl <= 60_000, "{key} expires ({ttl} ms)");
    }
    assert_eq!(h.server.cli(&["XLEN", "{hx:app}:h:c"]).await.trim(), "1");
}

#[tokio::test]
async fn a_stalled_redis_fails_within_the_timeout() {
    let server = RedisServer::start().await;
    let conn = connect(&server).await;
    let store = RedisHistory::new(conn, PREFIX, CAP, Duration::from_millis(300));
    store.append(APP, &publication("c", 1), OPTIONS).await.unwrap();
    server.pause().await;
    let started = Instant::now();
    assert!(matches!(store.append(APP, &publication("c", 2), OPTIONS).await, Err(HistoryError::Unavailable(_))));
    assert!(matches!(store.since(APP, "c", None, 10).await, Err(HistoryError::Unavailable(_))));
    assert!(started.elapsed() < Duration::from_secs(2), "two deadlines of 300 ms, not a hang: {:?}", started.elapsed());
    server.resume().await;
    let ok = eventually(Duration::from_secs(5), || async { store.since(APP, "c", None, 10).await.is_ok() }).await;
    assert!(ok, "answers again once Redis does");
}

fn idempotency(conn: &ConnectionManager, limits: IdempotencyLimits) -> RedisIdempotency {
    RedisIdempotency::new(conn.clone(), PREFIX, limits, Duration::from_secs(2))
}

#[tokio::test]
async fn an_idempotency_key_seen_on_one_node_is_a_repeat_on_another() {
    let server = RedisServer::start().await;
    let (a, b) = (connect(&server).await, connect(&server).await);
    let (a, b) = (idempotency(&a, IdempotencyLimits::default()), idempotency(&b, IdempotencyLimits::default()));
    assert!(a.first_seen(APP, "k1").await.unwrap());
    assert!(!b.first_seen(APP, "k1").await.unwrap(), "the retry reached another node");
    assert!(b.first_seen("other-app", "k1").await.unwrap(), "keys are per app");
    let long = "x".repeat(MAX_IDEMPOTENCY_KEY + 1);
    assert_eq!(
        a.first_seen(APP, &long).await,
        Err(IdempotencyError::KeyTooLong { len: MAX_IDEMPOTENCY_KEY + 1, max: MAX_IDEMPOTENCY_KEY })
    );
}

#[tokio::test]
async fn redis_idempotency_forgets_the_oldest_key_at_the_limit_and_every_key_after_the_window() {
    let server = RedisServer::start().await;
    let conn = connect(&server).await;
    let seen = idempotency(&conn, IdempotencyLimits { window: Duration::from_secs(1), max_keys_per_app: 3 });
    for key in ["k1", "k2", "k3", "k4"] {
        assert!(seen.first_seen(APP, key).await.unwrap());
        tokio::time::sleep(Duration::from_millis(2)).await; // distinct first-seen milliseconds
    }
    assert_eq!(server.cli(&["ZCARD", "{hx:app}:idem"]).await.trim(), "3", "bounded");
    assert!(!seen.first_seen(APP, "k4").await.unwrap());
    assert!(seen.first_seen(APP, "k1").await.unwrap(), "the oldest was forgotten");
    let forgotten = eventually(Duration::from_secs(5), || async { seen.first_seen(APP, "k3").await.unwrap() }).await;
    assert!(forgotten, "a key is new again after the window");
}
