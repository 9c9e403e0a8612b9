//! Reconcile: a node re-asserts its share of the cluster counts in batches, in its own task, while its
//! lease keeps being renewed; it announces the re-join only when the cluster's clients saw it leave.

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::{eventually, Node, Proxy, RedisServer};
use herald_core::{App, ClusterState, MemberJoin, Transition};

/// An app whose limits allow `conns` members per presence channel.
fn roomy_app(conns: usize) -> App {
    let mut app = App::dev();
    app.limits.max_presence_members = conns.max(100);
    app.limits.max_channels_per_connection = 100;
    app
}

/// Subscriptions counted across the cluster (every channel).
async fn total(state: &Arc<dyn ClusterState>) -> Option<usize> {
    state.channels("app-id", "").await.ok().map(|all| all.iter().map(|(_, info)| info.subscribers).sum())
}

fn member(id: &str) -> MemberJoin {
    MemberJoin { user_id: Arc::from(id), info: Bytes::from(format!("{{\"name\":\"{id}\"}}")) }
}

fn removals(t: &Transition) -> bool {
    matches!(t, Transition::MemberRemoved { .. } | Transition::Vacated)
}

fn additions(t: &Transition) -> bool {
    matches!(t, Transition::MemberAdded(_) | Transition::Occupied)
}

/// Connections on node A: 1,000 by default, each subscribed to 50 public channels and, as its own
/// user, to 50 presence channels: 100k subscriptions, 50k distinct presence members' contributions.
fn connections() -> usize {
    std::env::var("HERALD_TEST_RECONCILE_CONNS").ok().and_then(|v| v.parse().ok()).unwrap_or(1000)
}

/// The nodes' lease: 1 s (the hardest case) unless `HERALD_TEST_RECONCILE_LEASE_MS` says otherwise.
fn lease() -> Duration {
    Duration::from_millis(std::env::var("HERALD_TEST_RECONCILE_LEASE_MS").ok().and_then(|v| v.parse().ok()).unwrap_or(1000))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flushed_redis_is_refilled_without_reaping_live_nodes_or_announcing_members_again() {
    let conns = connections();
    let expected = conns * 100;
    let redis = RedisServer::start().await;
    let lease = lease();
    let a = Node::start(&redis.url(), "rf", lease, roomy_app(conns)).await;
    let b = Node::start(&redis.url(), "rf", lease, roomy_app(conns)).await;
    let (a_said, b_said) = (a.record(), b.record());
    let mut sockets = Vec::with_capacity(conns);
    for i in 0..conns {
        let (id, outbox) = a.hub().connect().unwrap();
        for j in 0..50 {
            a.hub().subscribe(id, &format!("pub-{j}"), None).unwrap();
            a.hub().subscribe(id, &format!("presence-{j}"), Some(member(&format!("u{i}")))).unwrap();
        }
        sockets.push(outbox);
    }
    // Count them in the cluster the way a node re-asserts them: one reconcile.
    a.broker.request_reconcile();
    let state = b.state();
    let counted = eventually(Duration::from_secs(60), || async { total(&state).await == Some(expected) }).await;
    assert!(counted, "counted {:?} of {expected}", total(&state).await);
    a_said.take();
    b_said.take();

    // Redis loses everything. Both nodes find their lease gone, register again, and A re-joins its
    // 100 x conns subscriptions while renewing its 1 s lease.
    let started = std::time::Instant::now();
    redis.cli(&["FLUSHALL"]).await;
    let refilled = eventually(Duration::from_secs(60), || async { total(&state).await == Some(expected) }).await;
    assert!(refilled, "refilled {:?} of {expected}", total(&state).await);
    eprintln!("{expected} subscriptions re-asserted {:?} after FLUSHALL", started.elapsed());
    let members = state.members("app-id", "presence-7").await.unwrap();
    assert_eq!(members.len(), conns);

    // Two more lease periods: A stays registered, nothing was reaped, nobody was announced.
    tokio::time::sleep(2 * lease).await;
    assert_eq!(total(&state).await, Some(expected));
    assert_eq!(b_said.count(removals), 0, "B reaped live node A: {:?}", &b_said.transitions()[..4.min(b_said.transitions().len())]);
    assert_eq!(a_said.count(removals), 0);
    assert_eq!(
        a_said.count(additions),
        0,
        "members who never left were announced again: {:?}",
        &a_said.transitions().iter().filter(|(_, t)| additions(t)).take(6).collect::<Vec<_>>()
    );
    assert!(a.healthy() && b.healthy());
    drop(sockets);
    redis.stop().await;
}

#[tokio::test]
async fn a_reaped_node_announces_its_members_again_when_it_comes_back() {
    let redis = RedisServer::start().await;
    let proxy = Proxy::to(redis.port).await;
    let lease = Duration::from_secs(1);
    let a = Node::start(&proxy.url(), "rp", lease, App::dev()).await;
    let b = Node::start(&redis.url(), "rp", lease, App::dev()).await;
    let (a_said, b_said) = (a.record(), b.record());
    let mut sockets = Vec::new();
    for user in ["alice", "bob"] {
        let (id, outbox) = a.hub().connect().unwrap();
        a.hub().subscribe(id, "presence-lobby", Some(member(user))).unwrap();
        sockets.push(outbox);
    }
    a.broker.request_reconcile();
    let state = b.state();
    let names =
        || async { state.members("app-id", "presence-lobby").await.map(|m| m.iter().map(|m| m.user_id.to_string()).collect::<Vec<_>>()) };
    assert!(eventually(Duration::from_secs(10), || async { names().await == Ok(vec!["alice".into(), "bob".into()]) }).await);
    a_said.take();

    // A is cut off longer than its lease: B reaps it, and B's clients see alice and bob leave.
    proxy.cut();
    assert!(eventually(Duration::from_secs(15), || async { b_said.count(|t| matches!(t, Transition::MemberRemoved { .. })) == 2 }).await);
    assert_eq!(names().await, Ok(vec![]));

    // A comes back, finds it was reaped, and re-joins announcing both members (the clients saw them go).
    proxy.restore();
    assert!(eventually(Duration::from_secs(20), || async { names().await == Ok(vec!["alice".into(), "bob".into()]) }).await);
    assert!(eventually(Duration::from_secs(5), || async { a_said.count(|t| matches!(t, Transition::MemberAdded(_))) == 2 }).await);
    assert_eq!(a_said.count(|t| matches!(t, Transition::Occupied)), 1);
    drop(sockets);
    redis.stop().await;
}

#[tokio::test]
async fn reconcile_after_an_outage_with_the_lease_kept_announces_what_changed() {
    let redis = RedisServer::start().await;
    let a = Node::start(&redis.url(), "ro", Duration::from_secs(10), App::dev()).await;
    let a_said = a.record();
    let state = a.state();
    // Alice is really here and counted; Bob's leave "never reached Redis" during an outage.
    let (alice, _outbox) = a.hub().connect().unwrap();
    a.hub().subscribe(alice, "presence-r", Some(member("alice"))).unwrap();
    state.join("app-id", "presence-r", Some(&member("alice")), 10).await.unwrap();
    state.join("app-id", "presence-r", Some(&member("bob")), 10).await.unwrap();
    assert!(eventually(Duration::from_secs(5), || async { a.broker.subscriptions() == 1 && a.healthy() }).await);

    // The subscriber connection drops (Redis keeps its data and A its lease): the reconcile takes Bob
    // out and tells the clients.
    redis.cli(&["CLIENT", "KILL", "TYPE", "pubsub"]).await;
    assert!(eventually(Duration::from_secs(10), || async { a_said.count(|t| matches!(t, Transition::MemberRemoved { .. })) == 1 }).await);
    let members = state.members("app-id", "presence-r").await.unwrap();
    assert_eq!(members.iter().map(|m| &*m.user_id).collect::<Vec<_>>(), ["alice"]);
    assert_eq!(a_said.count(|t| matches!(t, Transition::MemberAdded(_))), 0, "alice never left");
    redis.stop().await;
}
