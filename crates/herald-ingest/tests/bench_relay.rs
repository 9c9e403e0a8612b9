//! Relay throughput and latency from Redis Streams, in-process (engine + source, no sockets): 10 000
//! users × 3 devices signed in; run with
//! `cargo test --release -p herald-ingest --test bench_relay -- --ignored --nocapture`.
//!
//! 1. Backlog: N entries written before the group exists; time until every one is acked (messages/s).
//! 2. Paced: entries written at a fixed rate; probe users' devices record bus write → queued to the
//!    device's outbox (p50/p95/p99).
//!
//! Ignored by default: a measurement, not a test (no timing is asserted).

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{Node, RedisServer};
use herald_core::Drained;
use parking_lot::Mutex;

const USERS: usize = 10_000;
const DEVICES: [&str; 3] = ["phone", "tv", "web"];

fn config(url: &str) -> String {
    format!(
        r#"
[[sources]]
name = "bench"
app = "app-id"
[sources.redis_streams]
url = "{url}"
streams = ["sync"]
group = "herald"
consumer = "bench"
start = "0"
batch = 500
block = 0.1

[[sources.rules]]
user = "{{user_id}}"
event = "{{type}}"
keep = ["type", "position", "sent_us"]
origin_device = "device_id"
"#
    )
}

fn now_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_micros() as u64
}

fn entry(i: usize) -> String {
    let user = i % USERS;
    format!(r#"{{"type":"progress_update","user_id":"u{user}","device_id":"phone","position":{i},"sent_us":{}}}"#, now_us())
}

async fn write(conn: &mut redis::aio::MultiplexedConnection, from: usize, n: usize) {
    let mut pipe = redis::pipe();
    for i in from..from + n {
        pipe.cmd("XADD").arg("sync").arg("*").arg("data").arg(entry(i)).ignore();
    }
    let () = pipe.query_async(conn).await.unwrap();
}

/// The group read up to the stream's last entry and acked everything.
async fn acked_all(conn: &mut redis::aio::MultiplexedConnection) -> bool {
    fn text(v: &redis::Value) -> Option<String> {
        match v {
            redis::Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
            redis::Value::SimpleString(s) => Some(s.clone()),
            _ => None,
        }
    }
    let groups: redis::Value = redis::cmd("XINFO").arg("GROUPS").arg("sync").query_async(conn).await.unwrap();
    let redis::Value::Array(groups) = groups else { return false };
    let Some(redis::Value::Array(fields)) = groups.first() else { return false };
    let mut delivered = None;
    let mut pending = None;
    for pair in fields.chunks(2) {
        match text(&pair[0]).as_deref() {
            Some("last-delivered-id") => delivered = text(&pair[1]),
            Some("pending") => pending = if let redis::Value::Int(n) = pair[1] { Some(n) } else { None },
            _ => {}
        }
    }
    let last: redis::Value = redis::cmd("XREVRANGE").arg("sync").arg("+").arg("-").arg("COUNT").arg(1).query_async(conn).await.unwrap();
    let last_id = match last {
        redis::Value::Array(entries) => match entries.first() {
            Some(redis::Value::Array(entry)) => entry.first().and_then(text),
            _ => None,
        },
        _ => None,
    };
    pending == Some(0) && delivered.is_some() && delivered == last_id
}

fn quantile(sorted: &[u64], q: f64) -> f64 {
    sorted[((sorted.len() as f64 * q) as usize).min(sorted.len() - 1)] as f64 / 1000.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: run with --release -- --ignored --nocapture"]
async fn relay_throughput_and_latency_to_10k_users_with_3_devices() {
    measure(false).await;
}

/// The same with the Redis engine attached (idempotency key and cross-node PUBLISH in one script per
/// message, as a cluster node does).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: run with --release -- --ignored --nocapture"]
async fn relay_throughput_and_latency_with_the_redis_engine() {
    measure(true).await;
}

async fn measure(redis_engine: bool) {
    println!("engine: {}", if redis_engine { "redis" } else { "memory" });
    let redis = RedisServer::start().await;
    let mut conn = redis.conn().await;
    // 1. Backlog.
    let backlog = 50_000;
    for chunk in (0..backlog).step_by(5_000) {
        write(&mut conn, chunk, 5_000).await;
    }
    let engine = Arc::new(herald_core::Engine::new([herald_core::App::dev()]));
    let broker_shutdown = tokio_util::sync::CancellationToken::new();
    if redis_engine {
        let config = herald_redis::RedisConfig { url: redis.url(), prefix: "bench".into(), ..Default::default() };
        herald_redis::RedisBroker::start(config, &engine, broker_shutdown.clone(), &tokio_util::task::TaskTracker::new()).await.unwrap();
    }
    let hub = engine.by_id("app-id").unwrap().clone();
    let mut outboxes = Vec::with_capacity(USERS * 3);
    for user in 0..USERS {
        for device in DEVICES {
            let (id, outbox) = hub.connect().unwrap();
            hub.sign_in(id, &format!("u{user}"), Some(device)).unwrap();
            outboxes.push(outbox);
        }
    }
    let started = Instant::now();
    let node = Node::start_on(engine, &config(&redis.url()));
    while !acked_all(&mut conn).await {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let took = started.elapsed();
    let queued: usize = outboxes.iter().map(|o| o.len().0).sum();
    println!(
        "backlog: {backlog} messages relayed and acked in {took:?} ({:.0} msg/s), {queued} frames queued",
        backlog as f64 / took.as_secs_f64()
    );
    for o in outboxes.iter().filter(|o| !o.is_empty()) {
        let _ = o.drain(&mut Vec::new()).await;
    }

    // 2. Paced: 5 000 msg/s for 5 s; 200 probe users' tv devices record the latency.
    let samples = Arc::new(Mutex::new(Vec::new()));
    let mut probes = Vec::new();
    for user in 0..200 {
        let outbox = outboxes[user * 3 + 1].clone();
        let samples = samples.clone();
        probes.push(tokio::spawn(async move {
            let mut frames = Vec::new();
            loop {
                frames.clear();
                if outbox.drain(&mut frames).await != Drained::Frames {
                    return;
                }
                let now = now_us();
                for frame in &frames {
                    let v: serde_json::Value = serde_json::from_slice(frame).unwrap();
                    samples.lock().push(now.saturating_sub(v["sent_us"].as_u64().unwrap()));
                }
            }
        }));
    }
    let rate = 5_000;
    let mut next = backlog;
    let paced = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    while paced.elapsed() < Duration::from_secs(5) {
        tick.tick().await;
        write(&mut conn, next, rate / 100).await;
        next += rate / 100;
    }
    while !acked_all(&mut conn).await {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut sorted = samples.lock().clone();
    sorted.sort_unstable();
    println!(
        "paced {rate} msg/s for 5 s: {} probe deliveries; bus write -> device outbox p50 {:.2} ms, p95 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        sorted.len(),
        quantile(&sorted, 0.5),
        quantile(&sorted, 0.95),
        quantile(&sorted, 0.99),
        quantile(&sorted, 1.0)
    );
    for p in probes {
        p.abort();
    }
    node.stop().await;
    broker_shutdown.cancel();
}
