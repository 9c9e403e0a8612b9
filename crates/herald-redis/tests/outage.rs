//! Outages: health and counts recover without traffic, and client-path calls answer within their
//! deadline (then fail fast) while Redis is unreachable or stalled.

mod common;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{eventually, Node, RedisServer};
use herald_core::{App, MemberJoin};
use herald_redis::RedisConfig;

fn alice() -> MemberJoin {
    MemberJoin { user_id: Arc::from("alice"), info: Bytes::from_static(b"{}") }
}

#[tokio::test]
async fn health_and_counts_recover_after_an_outage_without_any_publish() {
    let redis = RedisServer::start().await;
    let port = redis.port;
    let a = Node::start(&redis.url(), "hr", Duration::from_secs(2), App::dev()).await;
    let state = a.state();
    let (id, _outbox) = a.hub().connect().unwrap();
    a.hub().subscribe(id, "presence-room", Some(alice())).unwrap();
    state.join("app-id", "presence-room", Some(&alice()), 10).await.unwrap();
    assert!(eventually(Duration::from_secs(5), || async { a.healthy() }).await);

    // Redis goes away; the node publishes during the outage (which fails), then Redis comes back
    // empty on the same port, and nothing is published any more.
    redis.stop().await;
    assert!(eventually(Duration::from_secs(10), || async { !a.healthy() }).await);
    let dropped = || a.broker.stats().dropped.load(Ordering::Relaxed);
    let published = eventually(Duration::from_secs(30), || async {
        a.hub().publish_raw("presence-room", &Bytes::from_static(b"{\"during\":1}"), None);
        tokio::time::sleep(Duration::from_millis(200)).await;
        dropped() > 0
    })
    .await;
    assert!(published, "a publish during the outage failed and was counted");
    let redis = RedisServer::on(port).await;

    // Healthy again (the lease probe, not a publish, proves Redis answers), and the node's presence is
    // re-asserted in the empty Redis.
    assert!(eventually(Duration::from_secs(15), || async { a.healthy() }).await, "node stays degraded");
    let restored = eventually(Duration::from_secs(15), || async {
        state.channel("app-id", "presence-room").await.ok().flatten().map(|c| (c.subscribers, c.users)) == Some((1, Some(1)))
    })
    .await;
    assert!(restored, "counts were not re-asserted");
    let members = state.members("app-id", "presence-room").await.unwrap();
    assert_eq!(members.iter().map(|m| &*m.user_id).collect::<Vec<_>>(), ["alice"]);
    redis.stop().await;
}

#[tokio::test]
async fn a_stalled_redis_answers_within_the_deadline_then_fails_fast_and_recovers() {
    let redis = RedisServer::start().await;
    let deadline = Duration::from_secs(1);
    let config = RedisConfig { url: redis.url(), prefix: "st".into(), timeout: deadline, ..RedisConfig::default() };
    let a = Node::with(config.clone(), App::dev()).await;
    // A listen-only node that makes no calls of its own: only its lease renewal can notice the stall.
    let quiet = Node::with(config, App::dev()).await;
    let state = a.state();
    let (id, _outbox) = a.hub().connect().unwrap();
    a.hub().subscribe(id, "room", None).unwrap();
    assert!(eventually(Duration::from_secs(5), || async { a.healthy() && a.broker.subscriptions() == 1 }).await);
    assert!(state.channel("app-id", "room").await.is_ok());

    redis.pause().await;
    let started = Instant::now();
    let stalled = state.channel("app-id", "room").await;
    let first = started.elapsed();
    assert!(stalled.is_err(), "a stalled redis answered {stalled:?}");
    assert!(first < 3 * deadline, "the first call took {first:?} (deadline {deadline:?})");
    let started = Instant::now();
    assert!(state.join("app-id", "room", None, 10).await.is_err());
    assert!(state.members("app-id", "presence-x").await.is_err());
    assert!(state.connect("app-id", 5).await.is_err());
    let next = started.elapsed();
    assert!(next < deadline / 2, "calls while redis is known unreachable took {next:?}");
    // The node notices by itself (the lease renewal has the deadline too), and a subscribe does not
    // wait for routing meanwhile.
    assert!(eventually(3 * deadline, || async { !a.healthy() }).await);
    assert!(a.hub().prepare_channel("fresh").is_none());
    // Within one renewal period (a third of the 10 s lease) plus the deadline.
    assert!(eventually(Duration::from_secs(10) / 3 + 2 * deadline, || async { !quiet.healthy() }).await, "the stall went unnoticed");

    redis.resume().await;
    assert!(eventually(Duration::from_secs(10), || async { state.channel("app-id", "room").await.is_ok() }).await);
    assert!(eventually(Duration::from_secs(10), || async { a.healthy() && quiet.healthy() }).await);
    let mut interest = a.hub().prepare_channel("fresh").expect("routing is confirmed again once redis answers");
    assert!(tokio::time::timeout(Duration::from_secs(5), interest.ready()).await.unwrap(), "routed");
    drop(interest);
    redis.stop().await;
}
