//! The broker and cluster state on a real local Redis Cluster: three `redis-server --cluster-enabled
//! yes` processes joined with `redis-cli --cluster create`. Sharded pub/sub (SPUBLISH/SSUBSCRIBE) and
//! hash-tagged state keys.

mod common;

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::{eventually, frames, next};
use herald_core::{App, Engine, Hub, Joined, MemberJoin};
use herald_redis::{RedisBroker, RedisConfig};
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

struct RedisCluster {
    _nodes: Vec<Child>,
    _dir: std::path::PathBuf,
    seeds: String,
    /// One cluster at a time in this test binary: clusters starting together can pick the same free
    /// ports and form one cluster of the wrong nodes.
    _turn: tokio::sync::OwnedMutexGuard<()>,
}

static TURN: std::sync::LazyLock<Arc<tokio::sync::Mutex<()>>> = std::sync::LazyLock::new(Default::default);

async fn free_port() -> u16 {
    // Cluster nodes also listen on port + 10000 (the cluster bus), so pick ports with room above.
    loop {
        let p = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        if p < 55_000 && std::net::TcpListener::bind(("127.0.0.1", p + 10_000)).is_ok() {
            return p;
        }
    }
}

impl RedisCluster {
    async fn start() -> RedisCluster {
        let turn = TURN.clone().lock_owned().await;
        // One directory per cluster: tests of this file run concurrently in one process.
        let dir = std::env::temp_dir().join(format!("herald-redis-cluster-{}-{}", std::process::id(), fastrand::u64(..)));
        std::fs::create_dir_all(&dir).unwrap();
        let mut nodes = Vec::new();
        let mut addrs = Vec::new();
        for i in 0..3 {
            let port = free_port().await;
            let child = Command::new("redis-server")
                .current_dir(&dir)
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
                .args(["--cluster-enabled", "yes", "--cluster-config-file", &format!("nodes-{i}-{port}.conf")])
                .stdout(Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .expect("redis-server must be installed");
            nodes.push(child);
            addrs.push(format!("127.0.0.1:{port}"));
        }
        for a in &addrs {
            for _ in 0..100 {
                if tokio::net::TcpStream::connect(a.as_str()).await.is_ok() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        let created = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdout(Stdio::null())
            .status()
            .await
            .unwrap();
        assert!(created.success(), "redis-cli --cluster create failed");
        // Wait until every node reports the cluster up.
        for a in &addrs {
            let (host, port) = a.split_once(':').unwrap();
            for _ in 0..100 {
                let out = Command::new("redis-cli").args(["-h", host, "-p", port, "cluster", "info"]).output().await.unwrap();
                if String::from_utf8_lossy(&out.stdout).contains("cluster_state:ok") {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        let seeds = addrs.iter().map(|a| format!("redis://{a}")).collect::<Vec<_>>().join(",");
        RedisCluster { _nodes: nodes, _dir: dir, seeds, _turn: turn }
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self._dir);
    }
}

async fn node(cluster: &RedisCluster, shutdown: &CancellationToken) -> (Arc<Engine>, Arc<RedisBroker>) {
    node_with(cluster, shutdown, RedisConfig::default().push_queue).await
}

async fn node_with(cluster: &RedisCluster, shutdown: &CancellationToken, push_queue: usize) -> (Arc<Engine>, Arc<RedisBroker>) {
    let engine = Arc::new(Engine::new([App::dev()]));
    let config = RedisConfig { url: cluster.seeds.clone(), prefix: "rc".into(), cluster: true, push_queue, ..RedisConfig::default() };
    let broker = RedisBroker::start(config, &engine, shutdown.clone(), &TaskTracker::new()).await.unwrap();
    (engine, broker)
}

fn hub(engine: &Engine) -> &Arc<Hub> {
    engine.by_id("app-id").unwrap()
}

#[tokio::test]
async fn sharded_routing_and_cluster_state_on_redis_cluster() {
    let cluster = RedisCluster::start().await;
    let shutdown = CancellationToken::new();
    let (a, _) = node(&cluster, &shutdown).await;
    let (b, b_broker) = node(&cluster, &shutdown).await;

    // Many channels, so they land on different shards; B subscribes the way a session does.
    let mut boxes = Vec::new();
    for i in 0..12 {
        let channel = format!("shard-{i}");
        if let Some(mut interest) = hub(&b).prepare_channel(&channel) {
            assert!(tokio::time::timeout(Duration::from_secs(5), interest.ready()).await.unwrap(), "routed");
            let (id, outbox) = hub(&b).connect().unwrap();
            hub(&b).subscribe(id, &channel, None).unwrap();
            drop(interest);
            boxes.push((channel, outbox));
        }
    }
    assert_eq!(b_broker.subscriptions(), 12);
    for (channel, outbox) in &boxes {
        let frame = Bytes::from(format!("{{\"on\":\"{channel}\"}}"));
        hub(&a).publish_raw(channel, &frame, None);
        assert_eq!(next(outbox, 2000).await.as_ref(), Some(&frame), "{channel}");
    }

    // Presence decided once for the cluster, through hash-tagged keys (one slot per app).
    let (sa, sb) = (hub(&a).state().unwrap().clone(), hub(&b).state().unwrap().clone());
    let alice = MemberJoin { user_id: Arc::from("alice"), info: Bytes::from_static(b"{}") };
    match sa.join("app-id", "presence-rc", Some(&alice), 10).await.unwrap() {
        Joined::Counted { member_added, .. } => assert!(member_added),
        Joined::Full => panic!("full"),
    }
    match sb.join("app-id", "presence-rc", Some(&alice), 10).await.unwrap() {
        Joined::Counted { member_added, subscribers, .. } => assert_eq!((member_added, subscribers), (false, 2)),
        Joined::Full => panic!("full"),
    }
    assert_eq!(sb.members("app-id", "presence-rc").await.unwrap().len(), 1);
    let listed = sa.channels("app-id", "presence-").await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!((listed[0].1.subscribers, listed[0].1.users), (2, Some(1)));
    assert_eq!(sb.channel("app-id", "presence-rc").await.unwrap().map(|c| c.subscribers), Some(2));
    assert!(!sa.leave("app-id", "presence-rc", Some("alice")).await.unwrap().member_removed);
    assert!(sb.leave("app-id", "presence-rc", Some("alice")).await.unwrap().member_removed);
    shutdown.cancel();
}

#[tokio::test]
async fn a_full_push_queue_drops_counts_and_recovers_routing() {
    let cluster = RedisCluster::start().await;
    let shutdown = CancellationToken::new();
    let (a, _) = node(&cluster, &shutdown).await;
    // B's push queue holds one message: a burst from A overflows it.
    let (b, b_broker) = node_with(&cluster, &shutdown, 1).await;
    let channel = "burst";
    let mut interest = hub(&b).prepare_channel(channel).expect("first subscriber waits for routing");
    assert!(tokio::time::timeout(Duration::from_secs(5), interest.ready()).await.unwrap(), "routed");
    let (first, _first_box) = hub(&b).connect().unwrap();
    hub(&b).subscribe(first, channel, None).unwrap();
    drop(interest);

    let frame = Bytes::from_static(b"{\"event\":\"burst\"}");
    let overflowed = eventually(Duration::from_secs(20), || async {
        for _ in 0..500 {
            hub(&a).publish_raw(channel, &frame, None);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        b_broker.push_dropped() > 0
    })
    .await;
    assert!(overflowed, "the push queue never overflowed");

    // After the loss B re-subscribes (and reconciles); a new subscriber receives what A publishes next.
    let (late, late_box) = hub(&b).connect().unwrap();
    hub(&b).subscribe(late, channel, None).unwrap();
    let after = Bytes::from_static(b"{\"event\":\"after\"}");
    let recovered = eventually(Duration::from_secs(20), || async {
        hub(&a).publish_raw(channel, &after, None);
        frames(&late_box, 200).await.contains(&after)
    })
    .await;
    assert!(recovered, "routing did not recover after dropped pushes");
    assert_eq!(b_broker.subscriptions(), 1);
    // Reconcile works on the cluster too (its batched script touches only the app's slot): B's two
    // local subscriptions, never joined through the state here, get counted.
    b_broker.request_reconcile();
    let state = hub(&b).state().unwrap().clone();
    let counted = eventually(Duration::from_secs(10), || async {
        state.channel("app-id", channel).await.ok().flatten().map(|c| c.subscribers) == Some(2)
    })
    .await;
    assert!(counted, "reconcile on the cluster: {:?}", state.channel("app-id", channel).await);
    shutdown.cancel();
}

#[tokio::test]
async fn history_publications_work_on_redis_cluster() {
    let cluster = RedisCluster::start().await;
    let shutdown = CancellationToken::new();
    let (a, _) = node(&cluster, &shutdown).await;
    let (b, _) = node(&cluster, &shutdown).await;
    let (id, outbox) = hub(&b).connect().unwrap();
    hub(&b).join(id, "cache-score", None).await.unwrap();
    let options = herald_core::HistoryOptions { size: 1, ttl: Duration::from_secs(60) };
    let mut last = None;
    for n in 1..=3u8 {
        let p = herald_core::Publication::new("cache-score", "goal", Bytes::from(vec![b'0' + n]), herald_core::DataKind::Text);
        last = Some(hub(&a).publish_with_history(&p, options).await.expect("the cluster takes history publishes"));
    }
    assert_eq!(last.as_ref().unwrap().offset, 3);
    // `next` keeps only the first frame of a batch; collect them all.
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while got.len() < 3 && tokio::time::Instant::now() < deadline {
        got.extend(frames(&outbox, 200).await);
    }
    assert_eq!(got, vec![Bytes::from_static(b"1"), Bytes::from_static(b"2"), Bytes::from_static(b"3")], "in offset order");
    let kept = hub(&b).history("cache-score", None, 10).await.unwrap().publications;
    assert_eq!(kept.iter().map(|p| p.data.clone()).collect::<Vec<_>>(), vec![Bytes::from_static(b"3")]);
}
