//! What the `Broker` and `ClusterState` conformance suites (`suite/broker.rs`, `suite/state.rs`) share:
//! the factory a harness implements to build the nodes of one cluster, and helpers to drive them.
//!
//! Include it with `#[path = ".../suite/cluster.rs"] mod cluster_suite;`.

#![allow(dead_code)]

use std::any::Any;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use herald_core::{ClusterState, Drained, Engine, Hub, Outbox, SocketId};

/// The app every node serves (`App::dev()`).
pub const APP: &str = "app-id";

/// Builds the nodes of one cluster (every node of one harness shares its backend; harnesses of
/// different tests do not).
pub trait Cluster {
    /// A new node: an engine serving `App::dev()`, attached to the cluster.
    fn node(&self) -> impl Future<Output = Node>;
}

/// One node under test.
pub struct Node {
    /// Its engine.
    pub engine: Arc<Engine>,
    /// Messages it received from other nodes (its own publishes echoed back not included).
    pub received: Box<dyn Fn() -> u64 + Send + Sync>,
    /// Topics routed to it now.
    pub routes: Box<dyn Fn() -> usize + Send + Sync>,
    /// Whatever keeps the node running (dropped with it).
    pub keep: Box<dyn Any + Send + Sync>,
}

impl Node {
    /// The hub of [`APP`].
    pub fn hub(&self) -> &Arc<Hub> {
        self.engine.by_id(APP).expect("every node serves App::dev()")
    }

    /// The cluster state the node's hub uses.
    pub fn state(&self) -> Arc<dyn ClusterState> {
        self.hub().state().expect("a cluster node has cluster state").clone()
    }

    pub fn received(&self) -> u64 {
        (self.received)()
    }

    pub fn routes(&self) -> usize {
        (self.routes)()
    }
}

/// A connection joined to `channel` through the engine's cluster protocol (routing ready, counted).
pub async fn subscriber(node: &Node, channel: &str) -> (SocketId, Outbox) {
    let (id, outbox) = node.hub().connect().unwrap();
    node.hub().join(id, channel, None).await.unwrap();
    (id, outbox)
}

/// A connection signed in as `user` (on `device`), once the node receives the user's messages.
pub async fn signed_in(node: &Node, user: &str, device: Option<&str>) -> (SocketId, Outbox) {
    let (id, outbox) = node.hub().connect().unwrap();
    node.hub().sign_in(id, user, device).unwrap();
    if let Some(mut interest) = node.hub().prepare_user(user) {
        assert!(tokio::time::timeout(Duration::from_secs(5), interest.ready()).await.unwrap(), "user routed");
    }
    (id, outbox)
}

/// The next frame in `outbox`, or `None` after `ms`. Tests read one frame at a time, so a second
/// frame queued with it (a duplicate delivery) fails the test instead of being dropped unseen.
pub async fn next(outbox: &Outbox, ms: u64) -> Option<Bytes> {
    let mut batch = Vec::new();
    match tokio::time::timeout(Duration::from_millis(ms), outbox.drain(&mut batch)).await {
        Ok(Drained::Frames) => {
            assert_eq!(batch.len(), 1, "one frame expected, more were queued: {batch:?}");
            batch.pop()
        }
        _ => None,
    }
}

/// Every frame queued in `outbox` within `ms` (waits the whole time).
pub async fn frames(outbox: &Outbox, ms: u64) -> Vec<Bytes> {
    let mut all = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_millis(ms);
    loop {
        let mut batch = Vec::new();
        match tokio::time::timeout_at(deadline, outbox.drain(&mut batch)).await {
            Ok(Drained::Frames) => all.append(&mut batch),
            _ => return all,
        }
    }
}

/// Polls `check` every 20 ms until it returns true or `within` passes; true if it did.
pub async fn eventually<F, Fut>(within: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
