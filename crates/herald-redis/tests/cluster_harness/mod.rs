//! The conformance suites' cluster factory on Redis: every node of one harness is a Herald engine
//! with its own `RedisBroker` on the test's own `redis-server`.

use std::sync::atomic::Ordering;
use std::time::Duration;

use herald_core::App;

use crate::cluster_suite::{Cluster, Node};
use crate::common::{self, RedisServer};

/// Nodes sharing one `redis-server` (killed with the harness).
pub struct Redis {
    pub server: RedisServer,
}

pub async fn redis() -> Redis {
    Redis { server: RedisServer::start().await }
}

impl Cluster for Redis {
    async fn node(&self) -> Node {
        let node = common::Node::start(&self.server.url(), "conf", Duration::from_secs(10), App::dev()).await;
        let (stats, subscriptions) = (node.broker.clone(), node.broker.clone());
        Node {
            engine: node.engine.clone(),
            // What reached this node's hubs from others: everything received but its own echoes.
            received: Box::new(move || stats.stats().received.load(Ordering::Relaxed) - stats.stats().echoes.load(Ordering::Relaxed)),
            routes: Box::new(move || subscriptions.subscriptions()),
            keep: Box::new(node),
        }
    }
}
