//! The Redis broker against a real `redis-server` started on a free port: several engines ("nodes") in
//! one process, connections registered directly on their hubs (no sockets needed to test routing).

mod common;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::{next, raw, RedisServer};
use herald_core::{App, Disconnect, Drained, Engine, Hub, MemberJoin, Outbox, SocketId};
use herald_redis::{RedisBroker, RedisConfig};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

struct Node {
    engine: Arc<Engine>,
    broker: Arc<RedisBroker>,
    shutdown: CancellationToken,
}

impl Node {
    async fn start(redis: &RedisServer, prefix: &str) -> Node {
        Node::with_lease(redis, prefix, Duration::from_secs(10)).await
    }

    async fn with_lease(redis: &RedisServer, prefix: &str, lease: Duration) -> Node {
        let engine = Arc::new(Engine::new([App::dev()]));
        let shutdown = CancellationToken::new();
        let config = RedisConfig { url: redis.url(), prefix: prefix.into(), lease, ..RedisConfig::default() };
        let broker = RedisBroker::start(config, &engine, shutdown.clone(), &TaskTracker::new()).await.unwrap();
        Node { engine, broker, shutdown }
    }

    fn hub(&self) -> &Arc<Hub> {
        self.engine.by_id("app-id").unwrap()
    }

    /// A connection subscribed to `channel`.
    fn subscriber(&self, channel: &str) -> (SocketId, Outbox) {
        let (id, outbox) = self.hub().connect().unwrap();
        self.hub().subscribe(id, channel, None).unwrap();
        (id, outbox)
    }

    /// Waits until this node's Redis subscriptions number `n`.
    async fn subscriptions(&self, n: usize) {
        for _ in 0..200 {
            if self.broker.subscriptions() == n && self.broker_healthy() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("expected {n} redis subscriptions, have {}", self.broker.subscriptions());
    }

    fn broker_healthy(&self) -> bool {
        herald_core::Broker::healthy(&*self.broker)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

#[tokio::test]
async fn publish_reaches_other_nodes_once_with_exclusion_and_only_where_interested() {
    let redis = RedisServer::start().await;
    let a = Node::start(&redis, "t1").await;
    let b = Node::start(&redis, "t1").await;
    let idle = Node::start(&redis, "t1").await;

    let (_, local) = a.subscriber("news");
    let (_, remote) = b.subscriber("news");
    let (sender, excluded) = b.subscriber("news");
    a.subscriptions(1).await;
    b.subscriptions(1).await;

    let frame = Bytes::from_static(b"{\"event\":\"headline\"}");
    // Published on A: A's own subscriber directly, B's through Redis, the sender (on B) excluded.
    assert_eq!(a.hub().publish_raw("news", &frame, Some(sender)), 1);
    assert_eq!(next(&local, 1000).await.as_ref(), Some(&frame));
    assert_eq!(next(&remote, 1000).await.as_ref(), Some(&frame));
    assert_eq!(next(&excluded, 200).await, None);
    // Exactly once: nothing further arrives anywhere.
    assert_eq!(next(&local, 200).await, None);
    assert_eq!(next(&remote, 100).await, None);

    // The node with no subscribers never subscribed and received nothing.
    assert_eq!(idle.broker.subscriptions(), 0);
    assert_eq!(idle.broker.stats().received.load(Ordering::Relaxed), 0);
    // A saw its own echo and dropped it; nobody received anything unwanted.
    assert_eq!(a.broker.stats().echoes.load(Ordering::Relaxed), 1);
    for n in [&a, &b, &idle] {
        assert_eq!(n.broker.stats().unwanted.load(Ordering::Relaxed), 0);
    }
    redis.stop().await;
}

#[tokio::test]
async fn leaving_drops_interest_and_traffic() {
    let redis = RedisServer::start().await;
    let a = Node::start(&redis, "t2").await;
    let b = Node::start(&redis, "t2").await;
    let (id, _outbox) = b.subscriber("room");
    b.subscriptions(1).await;
    b.hub().unsubscribe(id, "room");
    b.subscriptions(0).await;
    let before = b.broker.stats().received.load(Ordering::Relaxed);
    a.hub().publish_raw("room", &Bytes::from_static(b"x"), None);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(b.broker.stats().received.load(Ordering::Relaxed), before);
    assert_eq!(a.broker.stats().published.load(Ordering::Relaxed), 1);
    redis.stop().await;
}

#[tokio::test]
async fn users_and_termination_cross_nodes() {
    let redis = RedisServer::start().await;
    let a = Node::start(&redis, "t3").await;
    let b = Node::start(&redis, "t3").await;
    let (phone, phone_box) = a.hub().connect().unwrap();
    let (tv, tv_box) = b.hub().connect().unwrap();
    a.hub().sign_in(phone, "u1", None).unwrap();
    b.hub().sign_in(tv, "u1", None).unwrap();
    a.subscriptions(1).await;
    b.subscriptions(1).await;

    // From the phone's node, excluding the phone: only the TV (on B) gets it.
    let frame = Bytes::from_static(b"{\"event\":\"progress\"}");
    let mut progress = raw("#server-to-user-u1", &frame);
    progress.except = Some(phone);
    assert_eq!(a.hub().publish_to_user("u1", &progress), 0);
    assert_eq!(next(&tv_box, 1000).await.as_ref(), Some(&frame));
    assert_eq!(next(&phone_box, 200).await, None);

    // Terminating from B closes the phone on A too.
    b.hub().terminate_user("u1");
    let mut batch = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(1), phone_box.drain(&mut batch)).await.unwrap();
    assert_eq!(closed, Drained::Closed(Disconnect::Terminated));
    redis.stop().await;
}

#[tokio::test]
async fn channels_with_history_keep_remote_publishes_and_prefixes_isolate() {
    let redis = RedisServer::start().await;
    let a = Node::start(&redis, "blue").await;
    let b = Node::start(&redis, "blue").await;
    let other = Node::start(&redis, "green").await;
    let (_, b_box) = b.subscriber("cache-score");
    let (_, other_box) = other.subscriber("cache-score");
    b.subscriptions(1).await;
    other.subscriptions(1).await;
    let frame = Bytes::from_static(b"{\"event\":\"goal\"}");
    let cached = herald_core::HistoryOptions { size: 1, ttl: Duration::from_secs(60) };
    a.hub().publish_with_history(&raw("cache-score", &frame), cached).await.unwrap();
    assert_eq!(next(&b_box, 1000).await.as_ref(), Some(&frame));
    let kept = b.hub().history("cache-score", None, 10).await.unwrap().publications;
    assert_eq!(kept.iter().map(|p| p.data.clone()).collect::<Vec<_>>(), vec![frame]);
    // Another deployment on the same Redis sees nothing.
    assert_eq!(next(&other_box, 200).await, None);
    assert_eq!(other.broker.stats().received.load(Ordering::Relaxed), 0);
    redis.stop().await;
}

#[tokio::test]
async fn redis_restart_is_survived_without_restarting_nodes() {
    let redis = RedisServer::start().await;
    let port = redis.port;
    let a = Node::start(&redis, "t5").await;
    let b = Node::start(&redis, "t5").await;
    let (_, a_box) = a.subscriber("live");
    let (_, b_box) = b.subscriber("live");
    b.subscriptions(1).await;

    redis.stop().await;
    // During the outage: local delivery continues, the broker reports itself unhealthy.
    let frame = Bytes::from_static(b"{\"event\":\"during\"}");
    for _ in 0..100 {
        if !b.broker_healthy() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!b.broker_healthy());
    assert_eq!(a.hub().publish_raw("live", &frame, None), 1);
    assert_eq!(next(&a_box, 500).await.as_ref(), Some(&frame));

    // Redis comes back on the same port: B reconnects, re-subscribes, and traffic flows again.
    let redis = RedisServer::on(port).await;
    b.subscriptions(1).await;
    let after = Bytes::from_static(b"{\"event\":\"after\"}");
    let mut got = None;
    for _ in 0..50 {
        a.hub().publish_raw("live", &after, None);
        if let Some(f) = next(&b_box, 200).await {
            if f == after {
                got = Some(f);
                break;
            }
        }
    }
    assert_eq!(got, Some(after));
    redis.stop().await;
}

#[tokio::test]
async fn a_confirmed_first_subscriber_misses_nothing_published_elsewhere() {
    let redis = RedisServer::start().await;
    let a = Node::start(&redis, "t6").await;
    let b = Node::start(&redis, "t6").await;
    for round in 0..5 {
        let channel = format!("fresh-{round}");
        // What the session does on subscribe: prepare, wait, subscribe, release (the guard's drop).
        let mut interest = b.hub().prepare_channel(&channel).expect("no local subscriber yet: must wait");
        assert!(tokio::time::timeout(Duration::from_secs(2), interest.ready()).await.unwrap(), "routed");
        let (id, outbox) = b.hub().connect().unwrap();
        b.hub().subscribe(id, &channel, None).unwrap();
        drop(interest);
        // Published on A right after the subscriber was confirmed on B: it must arrive.
        let frame = Bytes::from(format!("{{\"round\":{round}}}"));
        a.hub().publish_raw(&channel, &frame, None);
        assert_eq!(next(&outbox, 1000).await.as_ref(), Some(&frame), "round {round}");
        // A second subscriber on the same node does not wait.
        assert!(b.hub().prepare_channel(&channel).is_none());
    }
    redis.stop().await;
}

#[tokio::test]
async fn counts_are_reconciled_after_the_subscriber_connection_drops() {
    let redis = RedisServer::start().await;
    let a = Node::with_lease(&redis, "t7", Duration::from_millis(600)).await;
    let state = a.hub().state().unwrap().clone();
    // Alice is really here; Bob's leave "never reached Redis" (an outage): Redis still counts him.
    let (alice, _outbox) = a.hub().connect().unwrap();
    let member = |id: &str| MemberJoin { user_id: Arc::from(id), info: Bytes::from_static(b"{}") };
    a.hub().subscribe(alice, "presence-r", Some(member("alice"))).unwrap();
    state.join("app-id", "presence-r", Some(&member("alice")), 10).await.unwrap();
    state.join("app-id", "presence-r", Some(&member("bob")), 10).await.unwrap();
    a.subscriptions(1).await;

    // Drop the node's subscriber connection (Redis keeps its data): on reconnect the node checks its
    // counts against its local subscriptions and takes Bob back out.
    let killed = tokio::process::Command::new("redis-cli")
        .args(["-p", &redis.port.to_string(), "client", "kill", "type", "pubsub"])
        .output()
        .await
        .unwrap();
    assert!(killed.status.success());
    let mut ids = Vec::new();
    for _ in 0..100 {
        ids = state.members("app-id", "presence-r").await.unwrap().iter().map(|m| m.user_id.to_string()).collect();
        if ids == ["alice"] {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(ids, ["alice"]);
    assert_eq!(state.channel("app-id", "presence-r").await.unwrap().map(|c| c.subscribers), Some(1));
    redis.stop().await;
}
