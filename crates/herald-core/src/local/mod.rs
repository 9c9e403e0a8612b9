//! A cluster inside one process: [`LocalCluster`] connects several [`Engine`]s as if they were nodes
//! sharing a backend, without one.
//!
//! Why: the engine's cluster protocol ([`crate::Hub::join`], [`crate::Hub::leave`],
//! [`crate::Hub::depart`] + [`crate::Hub::settle`]) and everything built on the [`Broker`] and
//! [`ClusterState`] boundaries can then run (in the engine's tests, in embedders' tests) without Redis,
//! and the boundaries' conformance suites run on two implementations, so neither defines the semantics
//! alone.
//!
//! What it implements, with the same semantics as the Redis engine:
//! - [`Broker`] ([`LocalBroker`], one per node): interest-based routing. A node receives a topic while it
//!   has local interest in it (read back with [`crate::Hub::has_local`]) or holds it prepared; a
//!   publish reaches every *other* routed node, never its publisher. Routing changes synchronously, so
//!   [`Broker::prepare`]'s receiver is already fired when it is returned. Delivery is synchronous too
//!   (the other nodes' hubs only queue into bounded outboxes, which never blocks), so publications of one
//!   publisher arrive in the order published.
//! - [`ClusterState`] ([`LocalState`], one per node over shared counts): subscription counts, presence
//!   decided once for the cluster (member added on a user's first connection anywhere, removed on the
//!   last), per-node contributions (a node's leave takes back only what it holds), and the cluster-wide
//!   connection quota.
//! - Channel history shared by every node (one [`MemoryHistory`], appended and delivered to every routed
//!   node, the publishing one included, under one lock: offset order everywhere) and idempotency keys
//!   shared by every node.
//!
//! Bounded: routes (topics routed to some node) and counted channels per app have limits
//! ([`LocalClusterLimits`]); beyond them the policy is *refuse*: a route that can't be made closes the
//! prepared receiver (the waiter goes on without routing, as on a backend outage) and the node receives
//! nothing for that topic; a join that would count one more channel answers [`crate::StateError`] (the
//! hub keeps its own view). Both are counted in `herald_local_cluster_refused_total{kind}`. Presence
//! members are bounded by the caller's `max_members`, connections by the quota.

mod routing;
mod state;

pub use routing::LocalBroker;
pub use state::LocalState;

use std::sync::Arc;

use parking_lot::Mutex;

use crate::broker::Broker;
use crate::engine::Engine;
use crate::history::MemoryHistory;
use crate::idempotency::{Idempotency, IdempotencyLimits};
use crate::state::ClusterState;

/// The limits of a [`LocalCluster`]: what can grow, and how far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalClusterLimits {
    /// Topics (channels and users of every app) routed to at least one node. Beyond it a new route is
    /// refused and counted.
    pub max_routes: usize,
    /// Channels counted in the cluster state, per app. Beyond it a join of a new channel fails with a
    /// [`crate::StateError`] and is counted.
    pub max_channels_per_app: usize,
    /// Channels with history across the cluster, per app (the shared [`MemoryHistory`]'s cap).
    pub max_history_channels_per_app: usize,
}

impl Default for LocalClusterLimits {
    fn default() -> Self {
        LocalClusterLimits { max_routes: 1_000_000, max_channels_per_app: 1_000_000, max_history_channels_per_app: 10_000 }
    }
}

/// Several engines in one process, connected as one cluster. Add each with [`LocalCluster::add`]; it
/// holds them weakly (an engine dropped leaves the cluster's routing; what it counted stays until
/// [`LocalCluster::remove`]).
#[derive(Clone)]
pub struct LocalCluster {
    shared: Arc<Shared>,
}

/// What every node of one cluster shares.
pub(crate) struct Shared {
    pub(crate) limits: LocalClusterLimits,
    /// Every node ever added, by node id (index).
    pub(crate) nodes: Mutex<Vec<Arc<routing::NodeSlot>>>,
    pub(crate) routes: Mutex<routing::Routes>,
    pub(crate) counts: Mutex<state::Counts>,
    /// Appending and delivering history publications happen under this lock, in offset order.
    pub(crate) history_order: Mutex<()>,
    pub(crate) history: Arc<MemoryHistory>,
    idempotency: Arc<Idempotency>,
}

impl LocalCluster {
    /// An empty cluster with these limits.
    pub fn new(limits: LocalClusterLimits) -> LocalCluster {
        let history = Arc::new(MemoryHistory::new(limits.max_history_channels_per_app));
        LocalCluster {
            shared: Arc::new(Shared {
                limits,
                nodes: Mutex::new(Vec::new()),
                routes: Mutex::new(routing::Routes::default()),
                counts: Mutex::new(state::Counts::default()),
                history_order: Mutex::new(()),
                history,
                idempotency: Arc::new(Idempotency::new(IdempotencyLimits::default())),
            }),
        }
    }

    /// Makes `engine` a node of this cluster: attaches a [`LocalBroker`], a [`LocalState`], the shared
    /// history and the shared idempotency keys. `None` if the engine already has a broker (of this or
    /// any other cluster): nothing was attached then.
    pub fn add(&self, engine: &Arc<Engine>) -> Option<Arc<LocalBroker>> {
        if engine.broker().is_some() {
            return None;
        }
        let slot = {
            let mut nodes = self.shared.nodes.lock();
            let slot = Arc::new(routing::NodeSlot::new(nodes.len(), engine));
            nodes.push(slot.clone());
            slot
        };
        let node = slot.id;
        let broker = Arc::new(LocalBroker::new(slot, self.shared.clone()));
        engine.attach(broker.clone() as Arc<dyn Broker>);
        engine.attach_state(Arc::new(LocalState::new(node, self.shared.clone())) as Arc<dyn ClusterState>);
        engine.attach_history(self.shared.history.clone(), broker.clone());
        engine.attach_idempotency(self.shared.idempotency.clone());
        Some(broker)
    }

    /// Takes node `broker`'s share out of the cluster, as a reaper does for a dead node: its routes, its
    /// counted subscriptions and presence (announcing, through a surviving node's hub, every member that
    /// leaves the cluster with it and every channel it vacates) and its connections. The node receives
    /// nothing more; its engine should be dropped.
    pub fn remove(&self, broker: &LocalBroker) {
        let node = broker.node();
        self.shared.routes.lock().remove_node(node);
        let changes = self.shared.counts.lock().remove_node(node);
        let survivor = {
            let nodes = self.shared.nodes.lock();
            if let Some(slot) = nodes.get(node) {
                slot.remove();
            }
            nodes.iter().find_map(|slot| slot.engine())
        };
        if let Some(engine) = survivor {
            for (app, change) in changes {
                if let Some(hub) = engine.by_id(&app) {
                    hub.announce(&change, None);
                }
            }
        }
    }

    /// Nodes added and not removed whose engine is still alive.
    pub fn nodes(&self) -> usize {
        self.shared.nodes.lock().iter().filter(|slot| slot.engine().is_some()).count()
    }
}

impl Default for LocalCluster {
    fn default() -> Self {
        LocalCluster::new(LocalClusterLimits::default())
    }
}

impl std::fmt::Debug for LocalCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalCluster").field("nodes", &self.nodes()).field("limits", &self.shared.limits).finish()
    }
}
