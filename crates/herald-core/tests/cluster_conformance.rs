//! The `Broker` and `ClusterState` conformance suites (`suite/broker.rs`, `suite/state.rs`) on the
//! in-process [`LocalCluster`], plus what only it has: its limits, removing a node, and history and
//! idempotency shared by its nodes.

#[path = "suite/cluster.rs"]
mod cluster_suite;
#[path = "suite/broker.rs"]
#[macro_use]
mod broker_suite;
#[path = "suite/state.rs"]
#[macro_use]
mod state_suite;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use cluster_suite::{next, subscriber, Cluster, Node, APP};
use herald_core::{
    App, DataKind, Engine, HistoryOptions, LocalCluster, LocalClusterLimits, MemberJoin, Publication, Published, StreamPosition, Transition,
};

/// Nodes of one [`LocalCluster`].
struct Local(LocalCluster);

fn local() -> Local {
    Local(LocalCluster::default())
}

fn limited(limits: LocalClusterLimits) -> Local {
    Local(LocalCluster::new(limits))
}

impl Cluster for Local {
    async fn node(&self) -> Node {
        let engine = Arc::new(Engine::new([App::dev()]));
        let broker = self.0.add(&engine).expect("a fresh engine joins");
        let (received, routes) = (broker.clone(), broker.clone());
        Node { engine, received: Box::new(move || received.received()), routes: Box::new(move || routes.routes()), keep: Box::new(broker) }
    }
}

broker_conformance!(
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    local()
);

state_conformance!(
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    local()
);

#[tokio::test]
async fn an_engine_joins_one_cluster_once() {
    let cluster = LocalCluster::default();
    let other = LocalCluster::default();
    let engine = Arc::new(Engine::new([App::dev()]));
    assert!(cluster.add(&engine).is_some());
    assert!(cluster.add(&engine).is_none(), "already a node");
    assert!(other.add(&engine).is_none(), "already a node of another cluster");
    assert_eq!(cluster.nodes(), 1);
    drop(engine);
    assert_eq!(cluster.nodes(), 0, "held weakly");
}

#[tokio::test]
async fn beyond_max_routes_a_topic_is_refused_and_the_waiter_goes_on() {
    let cluster = limited(LocalClusterLimits { max_routes: 1, ..LocalClusterLimits::default() });
    let (a, b) = (cluster.node().await, cluster.node().await);
    let (_, first) = subscriber(&b, "first").await;
    // The second topic cannot be routed: prepared interest resolves `false`, the join still succeeds
    // (local delivery works), and nothing from other nodes arrives for it.
    let mut interest = b.hub().prepare_channel("second").expect("not routed");
    assert!(!interest.ready().await, "refused");
    drop(interest);
    let (_, second) = subscriber(&b, "second").await;
    assert_eq!(b.routes(), 1);
    a.hub().publish_raw("second", &Bytes::from_static(b"lost"), None);
    assert_eq!(next(&second, 100).await, None);
    a.hub().publish_raw("first", &Bytes::from_static(b"routed"), None);
    assert_eq!(next(&first, 1000).await, Some(Bytes::from_static(b"routed")));
    assert_eq!(b.received(), 1, "only the routed topic");
}

#[tokio::test]
async fn beyond_max_channels_a_join_is_refused_and_the_hub_keeps_its_own_view() {
    let cluster = limited(LocalClusterLimits { max_channels_per_app: 2, ..LocalClusterLimits::default() });
    let a = cluster.node().await;
    let state = a.state();
    state.join(APP, "one", None, 10).await.unwrap();
    state.join(APP, "two", None, 10).await.unwrap();
    assert!(state.join(APP, "three", None, 10).await.is_err(), "a third channel is refused");
    assert!(state.join(APP, "two", None, 10).await.is_ok(), "an existing channel still counts");
    // Through the hub: the subscription is made, with this node's own view.
    let (id, _outbox) = a.hub().connect().unwrap();
    let joined = a.hub().join(id, "three", None).await.unwrap();
    assert_eq!(joined.change.subscribers, 1);
    assert!(a.hub().is_subscribed(id, "three"));
    assert_eq!(state.channel(APP, "three").await.unwrap(), None);
}

#[tokio::test]
async fn removing_a_node_takes_its_share_back_and_announces_it_once() {
    let cluster = LocalCluster::default();
    let survivor = Arc::new(Engine::new([App::dev()]));
    let dead = Arc::new(Engine::new([App::dev()]));
    cluster.add(&survivor).unwrap();
    let dead_broker = cluster.add(&dead).unwrap();
    let changes = Arc::new(std::sync::Mutex::new(Vec::new()));
    let heard = changes.clone();
    survivor.by_id(APP).unwrap().listen(Arc::new(move |_: &herald_core::Hub, c: &herald_core::ChannelChange, _| {
        heard.lock().unwrap().extend(c.transitions.clone());
    }));
    let member = |id: &str| MemberJoin { user_id: Arc::from(id), info: Bytes::from_static(b"{}") };
    let (alice, _a_box) = survivor.by_id(APP).unwrap().connect().unwrap();
    survivor.by_id(APP).unwrap().join(alice, "presence-x", Some(member("alice"))).await.unwrap();
    let dead_hub = dead.by_id(APP).unwrap();
    for user in ["alice", "bob"] {
        let (id, _) = dead_hub.connect().unwrap();
        dead_hub.join(id, "presence-x", Some(member(user))).await.unwrap();
    }
    let state = survivor.by_id(APP).unwrap().state().unwrap().clone();
    assert!(dead.by_id(APP).unwrap().state().unwrap().connect(APP, 10).await.unwrap());

    cluster.remove(&dead_broker);
    assert_eq!(cluster.nodes(), 1);
    let members: Vec<_> = state.members(APP, "presence-x").await.unwrap().iter().map(|m| m.user_id.to_string()).collect();
    assert_eq!(members, ["alice"], "Bob left with the node; Alice stays (her tab on the survivor)");
    assert_eq!(state.channel(APP, "presence-x").await.unwrap().unwrap().subscribers, 1);
    let heard = changes.lock().unwrap().clone();
    assert_eq!(heard, vec![Transition::MemberRemoved { user_id: Arc::from("bob") }]);
    assert!(state.connect(APP, 1).await.unwrap(), "the removed node's connection was taken back");
    // The removed node receives nothing any more.
    let (_, dead_box) = dead_hub.connect().unwrap();
    survivor.by_id(APP).unwrap().publish_raw("presence-x", &Bytes::from_static(b"x"), None);
    assert_eq!(next(&dead_box, 100).await, None);
    assert_eq!(dead_broker.received(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_is_one_stream_delivered_in_offset_order_on_every_node() {
    let cluster = local();
    let nodes = [cluster.node().await, cluster.node().await, cluster.node().await];
    let (_, b_box) = subscriber(&nodes[1], "feed").await;
    let (_, c_box) = subscriber(&nodes[2], "feed").await;
    let options = HistoryOptions { size: 100, ttl: Duration::from_secs(60) };
    // Publishes through every node, concurrently.
    let tasks: Vec<_> = (0..60)
        .map(|i| {
            let hub = nodes[i % 3].hub().clone();
            tokio::spawn(async move {
                let p = Publication::new("feed", "e", Bytes::from(format!("{i}")), DataKind::Text);
                hub.publish_with_history(&p, options).await.unwrap()
            })
        })
        .collect();
    let mut offsets = Vec::new();
    for t in tasks {
        offsets.push(t.await.unwrap().offset);
    }
    offsets.sort_unstable();
    assert_eq!(offsets, (1..=60).collect::<Vec<_>>(), "one stream: distinct consecutive offsets");
    // Every node delivered in offset order: the same sequence as the stream holds.
    let kept = nodes[0].hub().history("feed", None, 100).await.unwrap();
    assert!(kept.recovered);
    let stream: Vec<Bytes> = kept.publications.iter().map(|p| p.data.clone()).collect();
    for outbox in [&b_box, &c_box] {
        let got = cluster_suite::frames(outbox, 200).await;
        assert_eq!(got, stream);
    }
    let position: StreamPosition = nodes[2].hub().stream_position("feed").await.unwrap();
    assert_eq!(position.offset, 60);
}

#[tokio::test]
async fn an_idempotency_key_is_seen_once_across_nodes() {
    let cluster = local();
    let (a, b) = (cluster.node().await, cluster.node().await);
    let (_, b_box) = subscriber(&b, "orders").await;
    let p = Publication::new("orders", "e", Bytes::from_static(b"once"), DataKind::Text);
    assert_eq!(a.hub().publish_confirmed(&p, None, Some("key-1")).await.unwrap(), Published::Delivered { position: None });
    assert_eq!(b.hub().publish_confirmed(&p, None, Some("key-1")).await.unwrap(), Published::Repeat, "a retry through another node");
    assert_eq!(next(&b_box, 500).await, Some(Bytes::from_static(b"once")));
    assert_eq!(next(&b_box, 100).await, None);
}
