//! The `Broker` conformance suite: one body of tests, run against every implementation (the in-process
//! `LocalCluster` in `herald-core/tests/cluster_conformance.rs`, Redis in
//! `herald-redis/tests/routing.rs`), so both route the same way: only to nodes with local interest,
//! never back to the publisher, once, in the publisher's order, honouring exclusions of a connection or
//! a device on any node, with prepare/ready/release letting a first subscriber miss nothing.
//!
//! Nodes are driven through the engine's own cluster protocol (`Hub::join`, `Hub::leave`, prepared
//! interest), so nothing here waits on a backend-specific signal except `Node::routes` /
//! `Node::received`, which every harness provides.
//!
//! Include it with `#[path = ".../suite/broker.rs"] #[macro_use] mod broker_suite;` (after
//! `suite/cluster.rs` as `cluster_suite`) and instantiate every test with
//! `broker_conformance!(#[tokio::test(...)] make_cluster().await);`.

#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use herald_core::{ChannelEvent, Codec, CommandInbox, DataKind, Disconnect, Drained, Publication, Topic, UserAction, UserCommand};

use crate::cluster_suite::{eventually, frames, next, signed_in, subscriber, Cluster, Node};

/// Generates one test per conformance test, each on a fresh cluster.
#[macro_export]
macro_rules! broker_conformance {
    (#[$attr:meta] $cluster:expr) => {
        $crate::broker_conformance!(@tests #[$attr] $cluster;
            a_publish_reaches_interested_nodes_once_and_never_its_publisher,
            leaving_stops_routing_and_traffic,
            a_channel_stays_routed_while_any_local_subscriber_remains,
            engine_events_cross_nodes_except_one_connection,
            user_delivery_excludes_a_connection_and_a_device_on_every_node,
            terminate_closes_the_users_connections_on_every_node,
            user_commands_reach_the_targeted_connections_on_every_node,
            publications_of_one_publisher_arrive_in_order,
            a_confirmed_first_subscriber_misses_nothing_published_elsewhere,
            released_interest_without_a_subscriber_stops_routing,
            a_prepare_keeps_a_routed_channel_while_its_last_subscriber_leaves,
        );
    };
    (@tests #[$attr:meta] $cluster:expr; $($name:ident),* $(,)?) => {
        $(
            #[$attr]
            async fn $name() {
                let cluster = $cluster;
                broker_suite::$name(&cluster).await;
            }
        )*
    };
}

fn frame(text: &str) -> Bytes {
    Bytes::from(text.to_owned())
}

/// Whether `node` gets to `n` routed topics in time (a backend may count a route a moment after it
/// reported it ready).
async fn routes(node: &Node, n: usize) -> bool {
    eventually(Duration::from_secs(5), || async { node.routes() == n }).await
}

/// How long a negative check ("nothing more arrives") waits.
const QUIET_MS: u64 = 200;
/// How long a positive check may take.
const ARRIVES_MS: u64 = 2000;

pub async fn a_publish_reaches_interested_nodes_once_and_never_its_publisher(cluster: &impl Cluster) {
    let a = cluster.node().await;
    let b = cluster.node().await;
    let idle = cluster.node().await;
    let (_, local) = subscriber(&a, "news").await;
    let (_, remote) = subscriber(&b, "news").await;
    let (sender, excluded) = subscriber(&b, "news").await;

    // Published on A: A's subscriber directly, B's through the cluster, the sender (on B) excluded.
    let f = frame("{\"event\":\"headline\"}");
    assert_eq!(a.hub().publish_raw("news", &f, Some(sender)), 1, "one local delivery on A");
    assert_eq!(next(&local, ARRIVES_MS).await.as_ref(), Some(&f));
    assert_eq!(next(&remote, ARRIVES_MS).await.as_ref(), Some(&f));
    assert_eq!(next(&excluded, QUIET_MS).await, None, "the excluded connection lives on another node");
    // Exactly once: nothing more arrives anywhere.
    assert_eq!(next(&local, QUIET_MS).await, None);
    assert_eq!(next(&remote, QUIET_MS).await, None);

    // The node without subscribers is not routed and received nothing; the publisher never receives
    // its own publish; B received it once.
    assert_eq!(idle.routes(), 0);
    assert_eq!(idle.received(), 0);
    assert_eq!(a.received(), 0);
    assert_eq!(b.received(), 1);
}

pub async fn leaving_stops_routing_and_traffic(cluster: &impl Cluster) {
    let a = cluster.node().await;
    let b = cluster.node().await;
    let (id, _outbox) = subscriber(&b, "room").await;
    assert!(routes(&b, 1).await);
    assert!(b.hub().leave(id, "room").await.is_some());
    assert!(routes(&b, 0).await, "routing stops after the last leave");
    let before = b.received();
    a.hub().publish_raw("room", &frame("{}"), None);
    tokio::time::sleep(Duration::from_millis(QUIET_MS)).await;
    assert_eq!(b.received(), before, "a node without interest receives nothing");
}

pub async fn a_channel_stays_routed_while_any_local_subscriber_remains(cluster: &impl Cluster) {
    let a = cluster.node().await;
    let b = cluster.node().await;
    let (first, _first_box) = subscriber(&b, "room").await;
    let (_, second_box) = subscriber(&b, "room").await;
    assert!(b.hub().leave(first, "room").await.is_some());
    let f = frame("{\"still\":true}");
    a.hub().publish_raw("room", &f, None);
    assert_eq!(next(&second_box, ARRIVES_MS).await.as_ref(), Some(&f), "the remaining subscriber still receives");
    assert!(routes(&b, 1).await);
}

/// Encodes engine events as `count:N` (and publications as their data), so a test can see them.
struct EventCodec;

impl Codec for EventCodec {
    fn publication(&self, publication: &Publication) -> Option<Bytes> {
        Some(publication.data.clone())
    }

    fn event(&self, _: &str, event: &ChannelEvent) -> Option<Bytes> {
        match event {
            ChannelEvent::Count { subscribers } => Some(Bytes::from(format!("count:{subscribers}"))),
            _ => None,
        }
    }
}

pub async fn engine_events_cross_nodes_except_one_connection(cluster: &impl Cluster) {
    let a = cluster.node().await;
    let b = cluster.node().await;
    let codec_b = b.engine.register_codec(Arc::new(EventCodec)).unwrap();
    let (watcher, watcher_box) = b.hub().connect_with(codec_b).unwrap();
    b.hub().join(watcher, "counted", None).await.unwrap();
    let (actor, actor_box) = b.hub().connect_with(codec_b).unwrap();
    b.hub().join(actor, "counted", None).await.unwrap();

    a.hub().publish_event("counted", &ChannelEvent::Count { subscribers: 7 }, Some(actor));
    assert_eq!(next(&watcher_box, ARRIVES_MS).await, Some(frame("count:7")));
    assert_eq!(next(&actor_box, QUIET_MS).await, None, "the excepted connection lives on another node");
    assert_eq!(next(&watcher_box, QUIET_MS).await, None, "once");
}

pub async fn user_delivery_excludes_a_connection_and_a_device_on_every_node(cluster: &impl Cluster) {
    let a = cluster.node().await;
    let b = cluster.node().await;
    // Alice's phone has a tab on each node; her laptop too; her watch only on B.
    let (phone_a, phone_a_box) = signed_in(&a, "alice", Some("phone")).await;
    let (_, phone_b_box) = signed_in(&b, "alice", Some("phone")).await;
    let (_, laptop_a_box) = signed_in(&a, "alice", Some("laptop")).await;
    let (_, laptop_b_box) = signed_in(&b, "alice", Some("laptop")).await;
    let (watch, watch_box) = signed_in(&b, "alice", Some("watch")).await;

    // A change made on the phone goes to every other device, on both nodes, never back to the phone.
    let f = frame("{\"event\":\"synced\"}");
    let mut change = Publication::new("#server-to-user-alice", "synced", f.clone(), DataKind::Binary);
    change.except_device = Some(Arc::from("phone"));
    assert_eq!(a.hub().publish_to_user("alice", &change), 1, "the laptop's tab on A");
    for (name, outbox) in [("laptop on A", &laptop_a_box), ("laptop on B", &laptop_b_box), ("watch on B", &watch_box)] {
        assert_eq!(next(outbox, ARRIVES_MS).await.as_ref(), Some(&f), "{name}");
    }
    assert_eq!(next(&phone_a_box, QUIET_MS).await, None, "the phone's tab on A");
    assert_eq!(next(&phone_b_box, QUIET_MS).await, None, "the phone's tab on B");

    // Excluding one connection (the watch, on B) from B's other side: everyone else gets it.
    let g = frame("{\"event\":\"progress\"}");
    let mut progress = Publication::new("#server-to-user-alice", "progress", g.clone(), DataKind::Binary);
    progress.except = Some(watch);
    a.hub().publish_to_user("alice", &progress);
    for (name, outbox) in
        [("phone on A", &phone_a_box), ("phone on B", &phone_b_box), ("laptop on A", &laptop_a_box), ("laptop on B", &laptop_b_box)]
    {
        assert_eq!(next(outbox, ARRIVES_MS).await.as_ref(), Some(&g), "{name}");
    }
    assert_eq!(next(&watch_box, QUIET_MS).await, None, "the excluded watch");
    // Another user's publish reaches none of Alice's connections.
    b.hub().publish_to_user("bob", &Publication::new("#server-to-user-bob", "x", frame("{}"), DataKind::Binary));
    assert_eq!(next(&phone_a_box, QUIET_MS).await, None);
    let _ = phone_a;
}

pub async fn terminate_closes_the_users_connections_on_every_node(cluster: &impl Cluster) {
    let a = cluster.node().await;
    let b = cluster.node().await;
    let (_, phone_box) = signed_in(&a, "u1", None).await;
    let (_, tv_box) = signed_in(&b, "u1", None).await;
    let (_, other_box) = signed_in(&a, "u2", None).await;
    b.hub().terminate_user("u1");
    for (name, outbox) in [("phone on A", &phone_box), ("tv on B", &tv_box)] {
        let mut batch = Vec::new();
        let closed = tokio::time::timeout(Duration::from_millis(ARRIVES_MS), outbox.drain(&mut batch)).await;
        assert_eq!(closed.ok(), Some(Drained::Closed(Disconnect::Terminated)), "{name}");
    }
    assert_eq!(next(&other_box, QUIET_MS).await, None, "another user's connection stays open and quiet");
    assert!(!other_box.is_closed());
}

/// The next command `inbox` receives within `ms`.
async fn command(inbox: &CommandInbox, ms: u64) -> Option<UserAction> {
    tokio::time::timeout(Duration::from_millis(ms), inbox.next()).await.ok()
}

pub async fn user_commands_reach_the_targeted_connections_on_every_node(cluster: &impl Cluster) {
    let a = cluster.node().await;
    let b = cluster.node().await;
    let (phone, phone_box) = signed_in(&a, "u1", None).await;
    let (tv, tv_box) = signed_in(&b, "u1", None).await;
    let (_, watch_box) = signed_in(&b, "u1", None).await;
    let (_, other_box) = signed_in(&a, "u2", None).await;
    // A front that takes no commands (here: the watch) ignores them, except a disconnect.
    let [phone_in, tv_in, other_in] = [&phone_box, &tv_box, &other_box].map(|o| o.accept_commands().expect("first inbox"));
    assert!(phone_box.accept_commands().is_none(), "one inbox per connection");

    let unsubscribe = UserAction::Unsubscribe { channel: Arc::from("news") };
    assert_eq!(b.hub().command_user("u1", UserCommand::all(unsubscribe.clone())).unwrap(), 1, "the tv on B; the watch takes none");
    assert_eq!(command(&phone_in, ARRIVES_MS).await, Some(unsubscribe.clone()), "phone on A");
    assert_eq!(command(&tv_in, ARRIVES_MS).await, Some(unsubscribe), "tv on B");

    // One connection, named from the other node.
    let refresh = UserAction::Refresh { expire_at: Some(2_000_000_000), expired: false };
    b.hub().command_user("u1", UserCommand { only: Some(phone), except: Vec::new(), action: refresh.clone() }).unwrap();
    assert_eq!(command(&phone_in, ARRIVES_MS).await, Some(refresh));
    assert_eq!(command(&tv_in, QUIET_MS).await, None, "not the connection named");

    // Every connection but the spared one, with a custom code and reason.
    let bye = UserAction::Disconnect { code: 4001, reason: Arc::from("moved") };
    a.hub().command_user("u1", UserCommand { only: None, except: vec![tv], action: bye.clone() }).unwrap();
    assert_eq!(command(&phone_in, ARRIVES_MS).await, Some(bye));
    let mut batch = Vec::new();
    let closed = tokio::time::timeout(Duration::from_millis(ARRIVES_MS), watch_box.drain(&mut batch)).await;
    assert_eq!(closed.ok(), Some(Drained::Closed(Disconnect::Terminated)), "a connection without an inbox is closed");
    assert_eq!(command(&tv_in, QUIET_MS).await, None, "the spared connection");
    assert!(!tv_box.is_closed());
    assert_eq!(command(&other_in, QUIET_MS).await, None, "another user's connection hears nothing");

    // Out of bounds: refused before anything is sent.
    let long = UserCommand::all(UserAction::Unsubscribe { channel: Arc::from("x".repeat(herald_core::MAX_COMMAND_TEXT + 1)) });
    assert!(a.hub().command_user("u1", long).is_err());
}

pub async fn publications_of_one_publisher_arrive_in_order(cluster: &impl Cluster) {
    let a = cluster.node().await;
    let b = cluster.node().await;
    let c = cluster.node().await;
    let (_, b_box) = subscriber(&b, "ticks").await;
    let (_, c_box) = subscriber(&c, "ticks").await;
    const N: usize = 300;
    let sent: Vec<Bytes> = (0..N).map(|i| frame(&format!("{{\"n\":{i}}}"))).collect();
    for f in &sent {
        a.hub().publish_raw("ticks", f, None);
    }
    for (name, outbox) in [("B", &b_box), ("C", &c_box)] {
        let mut got = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while got.len() < N && tokio::time::Instant::now() < deadline {
            got.extend(frames(outbox, 100).await);
        }
        assert_eq!(got, sent, "node {name}: every publication once, in the publisher's order");
    }
}

pub async fn a_confirmed_first_subscriber_misses_nothing_published_elsewhere(cluster: &impl Cluster) {
    let a = cluster.node().await;
    let b = cluster.node().await;
    for round in 0..5 {
        let channel = format!("fresh-{round}");
        // What Hub::join does: prepare, wait until routed, subscribe, release (the guard's drop).
        let mut interest = b.hub().prepare_channel(&channel).expect("no local subscriber yet: must prepare");
        assert!(tokio::time::timeout(Duration::from_secs(5), interest.ready()).await.unwrap(), "routed");
        assert!(routes(&b, round + 1).await, "routed while prepared, before any subscriber");
        let (id, outbox) = b.hub().connect().unwrap();
        b.hub().subscribe(id, &channel, None).unwrap();
        drop(interest);
        // Published on A right after the subscriber was confirmed on B: it must arrive.
        let f = frame(&format!("{{\"round\":{round}}}"));
        a.hub().publish_raw(&channel, &f, None);
        assert_eq!(next(&outbox, ARRIVES_MS).await.as_ref(), Some(&f), "round {round}");
        // A second subscriber on the same node has nothing to wait for.
        assert!(b.hub().prepare_channel(&channel).expect("a cluster node prepares").routed_now());
    }
    // A node already receiving a user has nothing to prepare either.
    let _ = signed_in(&b, "u1", None).await;
    assert!(b.hub().prepare_user("u1").is_none());
    assert!(b.hub().has_local(&Topic::User(Arc::from("u1"))));
}

/// A subscribe that prepared while the channel was routed here keeps the route, even when the last
/// local subscriber leaves before the new one lands: without that, the route would be dropped and
/// taken again, and what other nodes published in between would be lost to a confirmed subscriber.
pub async fn a_prepare_keeps_a_routed_channel_while_its_last_subscriber_leaves(cluster: &impl Cluster) {
    let a = cluster.node().await;
    let b = cluster.node().await;
    let (first, _first_box) = subscriber(&b, "handover").await;
    assert!(routes(&b, 1).await);
    let mut interest = b.hub().prepare_channel("handover").expect("a cluster node prepares");
    assert!(interest.routed_now(), "routed already: nothing to wait for");
    assert!(b.hub().leave(first, "handover").await.is_some());
    // The backend had time to act on the leave; the prepared subscribe still holds the route.
    tokio::time::sleep(Duration::from_millis(QUIET_MS)).await;
    assert_eq!(b.routes(), 1, "the route is kept while a subscribe is prepared");
    let (id, outbox) = b.hub().connect().unwrap();
    b.hub().subscribe(id, "handover", None).unwrap();
    drop(interest);
    let f = frame("{\"handover\":true}");
    a.hub().publish_raw("handover", &f, None);
    assert_eq!(next(&outbox, ARRIVES_MS).await.as_ref(), Some(&f), "published right after the subscribe was confirmed");
    // Released with a local subscriber: the route stays; without one it goes.
    assert!(routes(&b, 1).await);
    b.hub().unsubscribe(id, "handover");
    assert!(routes(&b, 0).await, "released");
}

pub async fn released_interest_without_a_subscriber_stops_routing(cluster: &impl Cluster) {
    let a = cluster.node().await;
    let b = cluster.node().await;
    {
        let mut interest = b.hub().prepare_channel("abandoned").expect("must prepare");
        assert!(tokio::time::timeout(Duration::from_secs(5), interest.ready()).await.unwrap(), "routed");
        assert!(routes(&b, 1).await);
        // Dropped without subscribing (an error, a cancelled subscribe): the interest goes back.
    }
    assert!(routes(&b, 0).await, "released");
    let before = b.received();
    a.hub().publish_raw("abandoned", &frame("{}"), None);
    tokio::time::sleep(Duration::from_millis(QUIET_MS)).await;
    assert_eq!(b.received(), before);
}
