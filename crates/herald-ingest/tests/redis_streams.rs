//! The Redis Streams source against a real `redis-server`: the seed's messages reach the user's other
//! devices, entries are acked only once accepted, a dead consumer's pending entries are claimed without
//! duplicates, bad entries are dead-lettered, and a Redis outage is survived.

mod common;

use std::time::Duration;

use common::{collect, eventually, take, Node, RedisServer};
use serde_json::json;

fn config(url: &str, extra: &str) -> String {
    format!(
        r#"
[[sources]]
name = "sync"
app = "app-id"
[sources.redis_streams]
url = "{url}"
streams = ["sync"]
group = "herald"
consumer = "node-1"
start = "0"
block = 0.2
{extra}

[[sources.rules]]
when = {{ type = "progress_update" }}
user = "{{user_id}}"
event = "{{type}}"
rename = {{ position_seconds = "position", duration_seconds = "duration" }}
keep = ["type", "content_id", "position", "duration"]
origin_device = "device_id"
"#
    )
}

fn progress(user: &str, device: &str, position: u64) -> String {
    json!({"type":"progress_update","user_id":user,"device_id":device,"content_id":"c1",
           "position_seconds":position,"duration_seconds":7200,"timestamp":{"seconds":1700000000,"nanos":0}})
    .to_string()
}

async fn xadd(conn: &mut redis::aio::MultiplexedConnection, stream: &str, data: &str) -> String {
    common::xadd(conn, stream, "data", data).await
}

async fn pending(conn: &mut redis::aio::MultiplexedConnection) -> u64 {
    let reply: redis::Value = redis::cmd("XPENDING").arg("sync").arg("herald").query_async(conn).await.unwrap();
    match reply {
        redis::Value::Array(parts) => match parts.first() {
            Some(redis::Value::Int(n)) => *n as u64,
            _ => panic!("XPENDING: {parts:?}"),
        },
        other => panic!("XPENDING: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_messages_reach_the_users_other_devices_and_are_acked() {
    let redis = RedisServer::start().await;
    let node = Node::start(&config(&redis.url(), ""));
    let (a, b, c, other) =
        (node.device("u1", "device-a"), node.device("u1", "device-b"), node.device("u1", "device-c"), node.device("u2", "x"));
    eventually(10, "source up", || async { node.up().then_some(()) }).await;
    let mut conn = redis.conn().await;
    for position in [1, 2, 3] {
        xadd(&mut conn, "sync", &progress("u1", "device-a", position)).await;
    }
    let expected: Vec<_> = (1..=3).map(|p| json!({"type":"progress_update","content_id":"c1","position":p,"duration":7200})).collect();
    let got_b = collect(&b, 3, 10).await;
    assert_eq!(got_b, expected, "in order, mapped");
    assert_eq!(take(&c).await, expected);
    // A marker from device-b reaches device-a: had a's three been queued, they would be before it.
    xadd(&mut conn, "sync", &progress("u1", "device-b", 9)).await;
    let marker = eventually(10, "device-a got the marker", || async { Some(take(&a).await).filter(|f| !f.is_empty()) }).await;
    assert_eq!(marker.len(), 1, "device-a got none of its own changes: {marker:?}");
    assert!(take(&other).await.is_empty(), "another user got nothing");
    eventually(10, "everything acked", || {
        let mut conn = conn.clone();
        async move { (pending(&mut conn).await == 0).then_some(()) }
    })
    .await;
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_a_dead_consumer_left_pending_are_claimed_and_not_delivered_twice() {
    let redis = RedisServer::start().await;
    let mut conn = redis.conn().await;
    let _: () = redis::cmd("XGROUP").arg("CREATE").arg("sync").arg("herald").arg("0").arg("MKSTREAM").query_async(&mut conn).await.unwrap();
    let mut ids = Vec::new();
    for position in 1..=5 {
        ids.push(xadd(&mut conn, "sync", &progress("u1", "device-a", position)).await);
    }
    // A node read all five and died before acking; it had delivered the first two already.
    let _: redis::Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg("herald")
        .arg("dead-node")
        .arg("STREAMS")
        .arg("sync")
        .arg(">")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(pending(&mut conn).await, 5);
    // Signed in before the source starts: the claimed entries are relayed to it, not to nobody.
    let (node, [b]) = Node::start_with_devices(&config(&redis.url(), "claim_idle = 0.3"), [("u1", "device-b")]);
    for (position, id) in ids.iter().take(2).enumerate() {
        let mut p = herald_core::Publication::new(
            "#server-to-user-u1",
            "progress_update",
            format!("{}", position + 1).into(),
            herald_core::DataKind::Json,
        );
        p.except_device = Some("device-a".into());
        let key = format!("sync:{id}");
        node.hub().publish_to_user_confirmed("u1", &p, Some(&key)).await.unwrap();
    }
    let got = collect(&b, 5, 10).await;
    eventually(10, "claimed entries acked", || {
        let mut conn = conn.clone();
        async move { (pending(&mut conn).await == 0).then_some(()) }
    })
    .await;
    // Nothing more arrives: a marker published after everything is the next frame.
    xadd(&mut conn, "sync", &progress("u1", "device-a", 99)).await;
    let after = eventually(10, "marker", || async { Some(take(&b).await).filter(|f| !f.is_empty()) }).await;
    assert_eq!(after.len(), 1, "no duplicate arrived before the marker: {after:?}");
    let positions: Vec<u64> = got.iter().map(|v| v.as_u64().or_else(|| v["position"].as_u64()).unwrap()).collect();
    assert_eq!(positions, vec![1, 2, 3, 4, 5], "two delivered before the crash, three claimed; none twice");
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unmatched_and_invalid_entries_are_dead_lettered_and_acked() {
    let redis = RedisServer::start().await;
    let node = Node::start(&config(&redis.url(), "dead_letter = \"sync-dead\""));
    let b = node.device("u1", "device-b");
    eventually(10, "source up", || async { node.up().then_some(()) }).await;
    let mut conn = redis.conn().await;
    xadd(&mut conn, "sync", "not json").await;
    xadd(&mut conn, "sync", r#"{"type":"unknown"}"#).await;
    xadd(&mut conn, "sync", r#"{"type":"progress_update"}"#).await;
    common::xadd(&mut conn, "sync", "other", "x").await;
    xadd(&mut conn, "sync", &progress("u1", "device-a", 7)).await;
    let got = eventually(10, "the good entry behind the bad ones", || async { Some(take(&b).await).filter(|f| !f.is_empty()) }).await;
    assert_eq!(got[0]["position"], 7);
    let dead: redis::Value = redis::cmd("XRANGE").arg("sync-dead").arg("-").arg("+").query_async(&mut conn).await.unwrap();
    let text = format!("{dead:?}");
    for reason in ["not_an_object", "unmatched", "missing_field"] {
        assert!(text.contains(reason), "{reason} in {text}");
    }
    let len: u64 = redis::cmd("XLEN").arg("sync-dead").query_async(&mut conn).await.unwrap();
    assert_eq!(len, 4);
    assert_eq!(pending(&mut conn).await, 0, "all acked");
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_outage_is_retried_and_relaying_resumes() {
    let redis = RedisServer::start().await;
    let port = redis.port;
    let node = Node::start(&config(&redis.url(), "timeout = 1"));
    let b = node.device("u1", "device-b");
    eventually(10, "source up", || async { node.up().then_some(()) }).await;
    redis.kill().await;
    eventually(10, "source down", || async { (!node.up()).then_some(()) }).await;
    // The connection is still there; the source keeps retrying.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!b.is_closed(), "connections stay up during the outage");
    let redis = RedisServer::restart(port).await;
    eventually(20, "source up again (group re-created)", || async { node.up().then_some(()) }).await;
    let mut conn = redis.conn().await;
    xadd(&mut conn, "sync", &progress("u1", "device-a", 5)).await;
    let got = eventually(10, "relayed after the outage", || async { Some(take(&b).await).filter(|f| !f.is_empty()) }).await;
    assert_eq!(got[0]["position"], 5);
    node.stop().await;
}
