//! The reaper against data it did not write: malformed fields are skipped (and the rest reaped), one
//! dead node's broken data does not stop the reaping of another; and the cluster-wide connection quota,
//! whose dead node's share the reaper frees.

mod common;

use std::time::Duration;

use common::{eventually, Node, Proxy, RedisServer};
use herald_core::{App, Transition};

#[tokio::test]
async fn malformed_contribution_fields_are_skipped_and_the_rest_reaped() {
    let redis = RedisServer::start().await;
    let p = "rm";
    let tag = "{rm:app-id}";
    // A live contribution of another node (1 in `room`) and what two dead nodes left behind: `good`'s
    // hash has malformed fields next to well-formed ones; `broken`'s "hash" is not even a hash.
    let setup: &[&[&str]] = &[
        &["SADD", "rm:nodes", "good", "broken"],
        &["HSET", &format!("{tag}:node:good"), "room\0", "2", "presence-x\0alice", "1", "no-separator", "1", "room2\0", "many"],
        &["SET", &format!("{tag}:node:broken"), "not a hash"],
        &["HSET", &format!("{tag}:subs"), "room", "3", "presence-x", "1", "room2", "1"],
        &["HSET", &format!("{tag}:n:presence-x"), "alice", "1"],
        &["HSET", &format!("{tag}:m:presence-x"), "alice", "{}"],
        &["HSET", &format!("{tag}:conns"), "good", "4", "broken", "1"],
    ];
    // Through a client (field names hold NUL bytes, which a command line cannot).
    let mut conn = redis::Client::open(redis.url()).unwrap().get_multiplexed_async_connection().await.unwrap();
    for cmd in setup {
        let _: redis::Value = redis::cmd(cmd[0]).arg(&cmd[1..]).query_async(&mut conn).await.unwrap();
    }
    let live = Node::start(&redis.url(), p, Duration::from_millis(600), App::dev()).await;
    let said = live.record();
    let state = live.state();
    let reaped = eventually(Duration::from_secs(10), || async { !redis.cli(&["SMEMBERS", "rm:nodes"]).await.contains("good") }).await;
    assert!(reaped, "the node with malformed fields was not reaped");
    let info = state.channel("app-id", "room").await.unwrap().unwrap();
    assert_eq!(info.subscribers, 1, "the live node's subscription stays");
    assert_eq!(state.channel("app-id", "presence-x").await.unwrap(), None);
    assert!(state.members("app-id", "presence-x").await.unwrap().is_empty());
    assert_eq!(redis.cli(&["EXISTS", &format!("{tag}:node:good")]).await.trim(), "0", "malformed fields removed too");
    assert_eq!(redis.cli(&["HEXISTS", &format!("{tag}:conns"), "good"]).await.trim(), "0");
    assert!(said.transitions().contains(&("presence-x".into(), Transition::MemberRemoved { user_id: "alice".into() })));
    assert!(said.transitions().contains(&("presence-x".into(), Transition::Vacated)));
    // The broken node cannot be reaped; it stays registered (retried each round) and did not stop the
    // other one.
    assert!(redis.cli(&["SMEMBERS", "rm:nodes"]).await.contains("broken"));
    redis.stop().await;
}

#[tokio::test]
async fn the_connection_quota_is_cluster_wide_and_a_dead_nodes_share_is_freed() {
    let redis = RedisServer::start().await;
    let proxy = Proxy::to(redis.port).await;
    let mut app = App::dev();
    app.limits.max_connections = Some(1);
    let lease = Duration::from_secs(1);
    let a = Node::start(&proxy.url(), "cq", lease, app.clone()).await;
    let b = Node::start(&redis.url(), "cq", lease, app).await;
    let (sa, sb) = (a.state(), b.state());

    // What a front does for an app with max_connections: ask the cluster, then register locally.
    assert_eq!(sa.connect("app-id", 1).await, Ok(true));
    let _on_a = a.hub().connect().unwrap();
    assert_eq!(sb.connect("app-id", 1).await, Ok(false), "the quota is cluster-wide");

    // A dies (cut off past its lease): B reaps it, which frees A's connection.
    proxy.cut();
    assert!(eventually(Duration::from_secs(15), || async { sb.connect("app-id", 1).await == Ok(true) }).await);
    let on_b = b.hub().connect().unwrap();
    assert_eq!(sb.connect("app-id", 1).await, Ok(false));
    // Disconnecting frees the slot.
    b.hub().disconnect(on_b.0);
    sb.disconnect("app-id").await.unwrap();
    assert_eq!(sb.connect("app-id", 1).await, Ok(true));
    let _again = b.hub().connect().unwrap();

    // A comes back: its reconcile re-asserts its live connection (the cluster now counts both).
    proxy.restore();
    let both = eventually(Duration::from_secs(20), || async {
        let all = redis.cli(&["HVALS", "{cq:app-id}:conns"]).await;
        all.split_whitespace().filter_map(|v| v.parse::<i64>().ok()).sum::<i64>() == 2
    })
    .await;
    assert!(both, "A's connection count was not re-asserted");
    redis.stop().await;
}
