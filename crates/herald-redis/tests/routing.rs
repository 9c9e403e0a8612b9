//! The Redis broker against a real `redis-server` started on a free port: several engines ("nodes") in
//! one process, connections registered directly on their hubs (no sockets needed to test routing).
//!
//! The `Broker` conformance suite (`herald-core/tests/suite/broker.rs`: routing to interested nodes
//! only, exclusions, users, terminate, ordering, prepare/ready/release) runs here on Redis; the tests
//! below are what only Redis has: echoes, prefixes, streams, restarts, lost subscriber connections.

mod cluster_harness;
#[path = "../../herald-core/tests/suite/cluster.rs"]
mod cluster_suite;
mod common;
#[path = "../../herald-core/tests/suite/broker.rs"]
#[macro_use]
mod broker_suite;

broker_conformance!(
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    cluster_harness::redis().await
);

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::{eventually, next, raw, RedisServer};
use herald_core::{App, Engine, Hub, MemberJoin, Outbox, SocketId};
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

    /// Waits until this node's Redis subscriptions number `n` (up to 10 s: after a Redis restart the
    /// subscriber reconnects with a backoff of up to 5 s).
    async fn subscriptions(&self, n: usize) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while tokio::time::Instant::now() < deadline {
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
async fn a_node_drops_its_own_echo_and_counts_it() {
    let redis = RedisServer::start().await;
    let a = Node::start(&redis, "t1").await;
    let b = Node::start(&redis, "t1").await;
    let (_, local) = a.subscriber("news");
    let (_, remote) = b.subscriber("news");
    a.subscriptions(1).await;
    b.subscriptions(1).await;
    let frame = Bytes::from_static(b"{\"event\":\"headline\"}");
    assert_eq!(a.hub().publish_raw("news", &frame, None), 1);
    assert_eq!(next(&remote, 1000).await.as_ref(), Some(&frame));
    assert_eq!(next(&local, 1000).await.as_ref(), Some(&frame));
    // A is subscribed to the channel it published on: Redis echoes the publish back, and A drops it.
    assert!(eventually(Duration::from_secs(2), || async { a.broker.stats().echoes.load(Ordering::Relaxed) == 1 }).await);
    assert_eq!(next(&local, 200).await, None, "the echo is not delivered again");
    for n in [&a, &b] {
        assert_eq!(n.broker.stats().unwanted.load(Ordering::Relaxed), 0);
    }
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

/// One thread (the default test runtime): the subscriber task runs only while the test waits, so the
/// test knows what its sync round saw.
#[tokio::test]
async fn a_first_subscriber_racing_the_unsubscribe_of_its_channel_waits_for_routing() {
    let redis = RedisServer::start().await;
    let a = Node::start(&redis, "t8").await;
    let b = Node::start(&redis, "t8").await;
    let (first, _) = b.subscriber("x");
    b.subscriptions(1).await;
    // Redis stalls. B's last subscriber of x leaves as y gets its first: one sync round subscribes y
    // (waiting for Redis) and unsubscribes x after that.
    redis.pause().await;
    let (_, _on_y) = b.subscriber("y");
    b.hub().unsubscribe(first, "x");
    tokio::time::sleep(Duration::from_millis(200)).await;
    // A new first subscriber of x meanwhile: x is on its way out, so it is not routed here.
    let prepared = b.hub().prepare_channel("x");
    redis.resume().await;
    let mut interest = prepared.expect("a healthy node prepares");
    assert!(!interest.routed_now(), "x is being unsubscribed: the subscribe must wait for routing");
    assert!(tokio::time::timeout(Duration::from_secs(5), interest.ready()).await.unwrap(), "routed again");
    let (_, on_x) = b.subscriber("x");
    drop(interest);
    let frame = Bytes::from_static(b"{\"event\":\"after\"}");
    a.hub().publish_raw("x", &frame, None);
    assert_eq!(next(&on_x, 2000).await.as_ref(), Some(&frame), "published after the subscribe was confirmed");
    redis.stop().await;
}
