//! Cluster-wide counts and presence ([`herald_redis::RedisState`]) against a real `redis-server`: two
//! nodes, decisions taken once for the whole cluster.

mod common;

use std::sync::Arc;

use bytes::Bytes;
use common::RedisServer;
use herald_core::{App, ClusterState, Engine, Joined, MemberJoin};
use herald_redis::{RedisBroker, RedisConfig};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// A node's engine (kept alive by the caller) and its cluster state.
async fn node(url: &str, shutdown: &CancellationToken) -> (Arc<Engine>, Arc<dyn ClusterState>) {
    let engine = Arc::new(Engine::new([App::dev()]));
    let config = RedisConfig { url: url.into(), prefix: "st".into(), ..RedisConfig::default() };
    RedisBroker::start(config, &engine, shutdown.clone(), &TaskTracker::new()).await.unwrap();
    let state = engine.by_id("app-id").unwrap().state().unwrap().clone();
    (engine, state)
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

#[tokio::test]
async fn presence_is_one_list_across_nodes_and_transitions_happen_once() {
    let redis = RedisServer::start().await;
    let url = redis.url();
    let shutdown = CancellationToken::new();
    let ((_ea, a), (_eb, b)) = (node(&url, &shutdown).await, node(&url, &shutdown).await);
    let (app, ch) = ("app-id", "presence-room");
    let (alice, bob, carol) = (member("alice"), member("bob"), member("carol"));

    // Alice's first tab (node A) adds her; her second tab (node B) does not.
    assert_eq!(counted(a.join(app, ch, Some(&alice), 2).await.unwrap()), (1, true, vec!["alice".into()]));
    assert_eq!(counted(b.join(app, ch, Some(&alice), 2).await.unwrap()), (2, false, vec!["alice".into()]));
    assert_eq!(counted(b.join(app, ch, Some(&bob), 2).await.unwrap()), (3, true, vec!["alice".into(), "bob".into()]));
    // The member limit is cluster-wide; the refused join counts nothing.
    assert_eq!(a.join(app, ch, Some(&carol), 2).await.unwrap(), Joined::Full);
    let info = a.channel(app, ch).await.unwrap().unwrap();
    assert_eq!((info.subscribers, info.users), (3, Some(2)));
    let members = b.members(app, ch).await.unwrap();
    assert_eq!(members.iter().map(|m| &*m.user_id).collect::<Vec<_>>(), ["alice", "bob"]);
    assert_eq!(&members[0].info[..], b"{\"name\":\"alice\"}");

    // Alice's first tab leaving keeps her; her last tab leaving removes her, once.
    let left = a.leave(app, ch, Some("alice")).await.unwrap();
    assert_eq!((left.subscribers, left.member_removed), (2, false));
    let left = b.leave(app, ch, Some("alice")).await.unwrap();
    assert_eq!((left.subscribers, left.member_removed), (1, true));
    let left = b.leave(app, ch, Some("bob")).await.unwrap();
    assert_eq!((left.subscribers, left.member_removed), (0, true));
    assert_eq!(a.channel(app, ch).await.unwrap(), None);
    shutdown.cancel();
}

#[tokio::test]
async fn channel_counts_are_cluster_wide() {
    let redis = RedisServer::start().await;
    let url = redis.url();
    let shutdown = CancellationToken::new();
    let ((_ea, a), (_eb, b)) = (node(&url, &shutdown).await, node(&url, &shutdown).await);
    let app = "app-id";
    assert_eq!(counted(a.join(app, "stream-1", None, 100).await.unwrap()).0, 1);
    assert_eq!(counted(b.join(app, "stream-1", None, 100).await.unwrap()).0, 2);
    assert_eq!(counted(b.join(app, "other", None, 100).await.unwrap()).0, 1);
    let mut listed = a.channels(app, "stream-").await.unwrap();
    listed.sort_by(|x, y| x.0.cmp(&y.0));
    assert_eq!(listed.len(), 1);
    assert_eq!((&*listed[0].0, listed[0].1.subscribers, listed[0].1.users), ("stream-1", 2, None));
    assert_eq!(b.channels(app, "").await.unwrap().len(), 2);
    assert_eq!(a.leave(app, "stream-1", None).await.unwrap().subscribers, 1);
    assert_eq!(b.channel(app, "stream-1").await.unwrap().unwrap().subscribers, 1);
    shutdown.cancel();
}
