//! The `ClusterState` conformance suite: one body of tests, run against every implementation (the
//! in-process `LocalCluster` in `herald-core/tests/cluster_conformance.rs`, Redis in
//! `herald-redis/tests/state.rs`): counts and presence are one view across nodes, every transition
//! (member added/removed, occupied/vacated) is decided once for the cluster even under concurrent joins
//! and leaves from several nodes, a node takes back only what it counted, the member limit and the
//! connection quota are cluster-wide; and the engine's cluster protocol (`Hub::join`, `Hub::depart` +
//! `Hub::settle`) announces each change once.
//!
//! Include it with `#[path = ".../suite/state.rs"] #[macro_use] mod state_suite;` (after
//! `suite/cluster.rs` as `cluster_suite`) and instantiate every test with
//! `state_conformance!(#[tokio::test(flavor = "multi_thread", ...)] make_cluster().await);`.

#![allow(dead_code)]

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use herald_core::{ChannelChange, Hub, Joined, MemberJoin, SocketId, Transition};

use crate::cluster_suite::{Cluster, Node, APP};

/// Generates one test per conformance test, each on a fresh cluster.
#[macro_export]
macro_rules! state_conformance {
    (#[$attr:meta] $cluster:expr) => {
        $crate::state_conformance!(@tests #[$attr] $cluster;
            presence_is_one_list_across_nodes_and_transitions_happen_once,
            channel_counts_are_cluster_wide,
            concurrent_joins_and_leaves_of_one_user_decide_membership_once,
            concurrent_joins_of_distinct_users_respect_the_member_limit,
            a_node_takes_back_only_what_it_counted,
            the_connection_quota_is_cluster_wide,
            the_cluster_protocol_announces_each_change_once,
        );
    };
    (@tests #[$attr:meta] $cluster:expr; $($name:ident),* $(,)?) => {
        $(
            #[$attr]
            async fn $name() {
                let cluster = $cluster;
                state_suite::$name(&cluster).await;
            }
        )*
    };
}

fn member(id: &str) -> MemberJoin {
    MemberJoin { user_id: Arc::from(id), info: Bytes::from(format!("{{\"name\":\"{id}\"}}")) }
}

fn counted(j: Joined) -> (usize, bool, Vec<String>) {
    match j {
        Joined::Counted { subscribers, member_added, members } => {
            (subscribers, member_added, members.unwrap_or_default().iter().map(|m| m.user_id.to_string()).collect())
        }
        Joined::Full => panic!("unexpected Full"),
    }
}

pub async fn presence_is_one_list_across_nodes_and_transitions_happen_once(cluster: &impl Cluster) {
    let (na, nb) = (cluster.node().await, cluster.node().await);
    let (a, b) = (na.state(), nb.state());
    let ch = "presence-room";
    let (alice, bob, carol) = (member("alice"), member("bob"), member("carol"));

    // Alice's first tab (node A) adds her; her second tab (node B) does not.
    assert_eq!(counted(a.join(APP, ch, Some(&alice), 2).await.unwrap()), (1, true, vec!["alice".into()]));
    assert_eq!(counted(b.join(APP, ch, Some(&alice), 2).await.unwrap()), (2, false, vec!["alice".into()]));
    assert_eq!(counted(b.join(APP, ch, Some(&bob), 2).await.unwrap()), (3, true, vec!["alice".into(), "bob".into()]));
    // The member limit is cluster-wide; the refused join counts nothing.
    assert_eq!(a.join(APP, ch, Some(&carol), 2).await.unwrap(), Joined::Full);
    let info = a.channel(APP, ch).await.unwrap().unwrap();
    assert_eq!((info.subscribers, info.users), (3, Some(2)));
    let members = b.members(APP, ch).await.unwrap();
    assert_eq!(members.iter().map(|m| &*m.user_id).collect::<Vec<_>>(), ["alice", "bob"]);
    assert_eq!(&members[0].info[..], b"{\"name\":\"alice\"}");

    // Alice's first tab leaving keeps her; her last tab leaving removes her, once.
    let left = a.leave(APP, ch, Some("alice")).await.unwrap();
    assert_eq!((left.subscribers, left.member_removed), (2, false));
    let left = b.leave(APP, ch, Some("alice")).await.unwrap();
    assert_eq!((left.subscribers, left.member_removed), (1, true));
    let left = b.leave(APP, ch, Some("bob")).await.unwrap();
    assert_eq!((left.subscribers, left.member_removed), (0, true));
    assert_eq!(a.channel(APP, ch).await.unwrap(), None);
    assert!(a.members(APP, ch).await.unwrap().is_empty());
}

pub async fn channel_counts_are_cluster_wide(cluster: &impl Cluster) {
    let (na, nb) = (cluster.node().await, cluster.node().await);
    let (a, b) = (na.state(), nb.state());
    assert_eq!(counted(a.join(APP, "stream-1", None, 100).await.unwrap()).0, 1);
    assert_eq!(counted(b.join(APP, "stream-1", None, 100).await.unwrap()).0, 2);
    assert_eq!(counted(b.join(APP, "other", None, 100).await.unwrap()).0, 1);
    let listed = a.channels(APP, "stream-").await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!((&*listed[0].0, listed[0].1.subscribers, listed[0].1.users), ("stream-1", 2, None));
    assert_eq!(b.channels(APP, "").await.unwrap().len(), 2);
    assert_eq!(a.leave(APP, "stream-1", None).await.unwrap().subscribers, 1);
    assert_eq!(b.channel(APP, "stream-1").await.unwrap().unwrap().subscribers, 1);
    assert_eq!(b.leave(APP, "stream-1", None).await.unwrap().subscribers, 0);
    assert_eq!(a.channel(APP, "stream-1").await.unwrap(), None, "a channel nobody is subscribed to is not listed");
    assert_eq!(a.channels(APP, "").await.unwrap().len(), 1);
}

/// Nodes that run joins and leaves at the same time.
const NODES: usize = 4;
/// Joins (or leaves) each node runs at once.
const EACH: usize = 10;

async fn nodes(cluster: &impl Cluster, n: usize) -> Vec<Node> {
    let mut nodes = Vec::new();
    for _ in 0..n {
        nodes.push(cluster.node().await);
    }
    nodes
}

pub async fn concurrent_joins_and_leaves_of_one_user_decide_membership_once(cluster: &impl Cluster) {
    let nodes = nodes(cluster, NODES).await;
    let ch = "presence-busy";
    // Alice opens EACH tabs on every node at once: she is added exactly once.
    let joins: Vec<_> = nodes
        .iter()
        .flat_map(|n| (0..EACH).map(move |_| n.state()))
        .map(|state| tokio::spawn(async move { state.join(APP, ch, Some(&member("alice")), 100).await.unwrap() }))
        .collect();
    let mut added = 0;
    let mut counts = Vec::new();
    for j in joins {
        let (subscribers, member_added, members) = counted(j.await.unwrap());
        added += usize::from(member_added);
        counts.push(subscribers);
        assert_eq!(members, ["alice"]);
    }
    assert_eq!(added, 1, "member_added decided once for the cluster");
    counts.sort_unstable();
    assert_eq!(counts, (1..=NODES * EACH).collect::<Vec<_>>(), "every join saw a distinct count");

    // All her tabs close at once: she is removed exactly once, by the last leave.
    let leaves: Vec<_> = nodes
        .iter()
        .flat_map(|n| (0..EACH).map(move |_| n.state()))
        .map(|state| tokio::spawn(async move { state.leave(APP, ch, Some("alice")).await.unwrap() }))
        .collect();
    let mut removed = Vec::new();
    for l in leaves {
        let left = l.await.unwrap();
        if left.member_removed {
            removed.push(left.subscribers);
        }
    }
    assert_eq!(removed, [0], "member_removed decided once, by the leave that emptied the channel");
    assert_eq!(nodes[0].state().channel(APP, ch).await.unwrap(), None);
}

pub async fn concurrent_joins_of_distinct_users_respect_the_member_limit(cluster: &impl Cluster) {
    let nodes = nodes(cluster, NODES).await;
    let ch = "presence-limited";
    const MAX: usize = 5;
    let joins: Vec<_> = (0..NODES * 3)
        .map(|i| {
            let state = nodes[i % NODES].state();
            tokio::spawn(async move { state.join(APP, ch, Some(&member(&format!("user-{i}"))), MAX).await.unwrap() })
        })
        .collect();
    let (mut added, mut full) = (0, 0);
    for j in joins {
        match j.await.unwrap() {
            Joined::Counted { member_added: true, .. } => added += 1,
            Joined::Full => full += 1,
            other => panic!("a new user is either added or refused: {other:?}"),
        }
    }
    assert_eq!((added, full), (MAX, NODES * 3 - MAX));
    let info = nodes[1].state().channel(APP, ch).await.unwrap().unwrap();
    assert_eq!((info.subscribers, info.users), (MAX, Some(MAX)), "refused joins counted nothing");
    assert_eq!(nodes[2].state().members(APP, ch).await.unwrap().len(), MAX);
}

pub async fn a_node_takes_back_only_what_it_counted(cluster: &impl Cluster) {
    let (na, nb) = (cluster.node().await, cluster.node().await);
    let (a, b) = (na.state(), nb.state());
    let ch = "presence-own";
    a.join(APP, ch, Some(&member("alice")), 10).await.unwrap();
    // B never counted Alice here: its leave changes nothing.
    let left = b.leave(APP, ch, Some("alice")).await.unwrap();
    assert_eq!((left.subscribers, left.member_removed), (1, false));
    assert_eq!(a.members(APP, ch).await.unwrap().len(), 1);
    // A's leave takes her out; a second one has nothing left to take.
    let left = a.leave(APP, ch, Some("alice")).await.unwrap();
    assert_eq!((left.subscribers, left.member_removed), (0, true));
    let left = a.leave(APP, ch, Some("alice")).await.unwrap();
    assert_eq!((left.subscribers, left.member_removed), (0, false));
    assert_eq!(a.channel(APP, ch).await.unwrap(), None);
}

pub async fn the_connection_quota_is_cluster_wide(cluster: &impl Cluster) {
    let (na, nb) = (cluster.node().await, cluster.node().await);
    let (a, b) = (na.state(), nb.state());
    assert!(a.connect(APP, 3).await.unwrap());
    assert!(b.connect(APP, 3).await.unwrap());
    assert!(b.connect(APP, 3).await.unwrap());
    assert!(!a.connect(APP, 3).await.unwrap(), "three open across the cluster");
    assert!(!b.connect(APP, 3).await.unwrap());
    a.disconnect(APP).await.unwrap();
    assert!(b.connect(APP, 3).await.unwrap(), "a disconnect anywhere frees a place");
    assert!(!a.connect(APP, 3).await.unwrap());
    // Each node holds only its own: A has none left to give back, so its disconnect frees nothing.
    a.disconnect(APP).await.unwrap();
    assert!(!b.connect(APP, 3).await.unwrap());
}

/// Every change announced on a hub, as a front's listener would hear it.
#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Vec<ChannelChange>>>);

impl Recorder {
    fn on(node: &Node) -> Recorder {
        let recorder = Recorder::default();
        let changes = recorder.0.clone();
        node.hub().listen(Arc::new(move |_: &Hub, change: &ChannelChange, _: Option<SocketId>| {
            changes.lock().unwrap().push(change.clone());
        }));
        recorder
    }

    fn transitions(&self) -> Vec<Transition> {
        self.0.lock().unwrap().iter().flat_map(|c| c.transitions.clone()).collect()
    }
}

fn count(recorders: &[&Recorder], wanted: impl Fn(&Transition) -> bool) -> usize {
    recorders.iter().map(|r| r.transitions().iter().filter(|t| wanted(t)).count()).sum()
}

fn added(user: &str) -> impl Fn(&Transition) -> bool + '_ {
    move |t| matches!(t, Transition::MemberAdded(m) if &*m.user_id == user)
}

fn removed(user: &str) -> impl Fn(&Transition) -> bool + '_ {
    move |t| matches!(t, Transition::MemberRemoved { user_id } if &**user_id == user)
}

pub async fn the_cluster_protocol_announces_each_change_once(cluster: &impl Cluster) {
    let (a, b) = (cluster.node().await, cluster.node().await);
    let (ra, rb) = (Recorder::on(&a), Recorder::on(&b));
    let ch = "presence-team";
    // What a front does: join (the cluster decides), then announce the decided change.
    let mut sockets = Vec::new();
    for (node, user) in [(&a, "alice"), (&b, "alice"), (&b, "bob")] {
        let (id, outbox) = node.hub().connect().unwrap();
        let joined = node.hub().join(id, ch, Some(member(user))).await.unwrap();
        node.hub().announce(&joined.change, Some(id));
        sockets.push((node, id, outbox));
    }
    let both = [&ra, &rb];
    assert_eq!(count(&both, |t| *t == Transition::Occupied), 1);
    assert_eq!(count(&both, added("alice")), 1, "Alice's second tab on another node adds nobody");
    assert_eq!(count(&both, added("bob")), 1);
    let members = b.hub().state().unwrap().members(APP, ch).await.unwrap();
    assert_eq!(members.iter().map(|m| &*m.user_id).collect::<Vec<_>>(), ["alice", "bob"]);

    // Every connection goes away (closed sockets): depart, then settle with the cluster.
    for (node, id, _) in &sockets {
        let departure = node.hub().depart(*id, false).expect("in a cluster a departure is settled");
        node.hub().settle(departure).await;
    }
    assert_eq!(count(&both, removed("alice")), 1, "removed once, when her last tab (on either node) left");
    assert_eq!(count(&both, removed("bob")), 1);
    assert_eq!(count(&both, |t| *t == Transition::Vacated), 1);
    assert_eq!(a.state().channel(APP, ch).await.unwrap(), None);
}
