//! Routing between the nodes of a [`super::LocalCluster`]: which node receives which topic, and
//! delivery of what one node publishes to the others (and of history publications to every node, in
//! offset order).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use tokio::sync::oneshot;

use crate::broker::{Broker, Remote, Topic};
use crate::engine::Engine;
use crate::history::{HistoryBroadcast, HistoryError, HistoryOptions};
use crate::hub::Hub;
use crate::publication::{Publication, StreamPosition};
use crate::state::BoxFuture;

use super::Shared;

/// One node of a local cluster: its engine (held weakly) and what it received.
pub(crate) struct NodeSlot {
    pub(crate) id: usize,
    engine: Weak<Engine>,
    removed: AtomicBool,
    received: AtomicU64,
}

impl NodeSlot {
    pub(crate) fn new(id: usize, engine: &Arc<Engine>) -> NodeSlot {
        NodeSlot { id, engine: Arc::downgrade(engine), removed: AtomicBool::new(false), received: AtomicU64::new(0) }
    }

    /// The node's engine, unless it was dropped or removed from the cluster.
    pub(crate) fn engine(&self) -> Option<Arc<Engine>> {
        if self.removed.load(Ordering::Acquire) {
            return None;
        }
        self.engine.upgrade()
    }

    pub(crate) fn remove(&self) {
        self.removed.store(true, Ordering::Release);
    }
}

/// Which nodes receive which topic, and what is prepared where.
#[derive(Default)]
pub(crate) struct Routes {
    /// App -> topic -> the nodes it is routed to (a few, so a vector).
    by_app: HashMap<Arc<str>, HashMap<Topic, Vec<usize>>>,
    /// Topics routed to at least one node (bounded by [`super::LocalClusterLimits::max_routes`]).
    len: usize,
    /// Prepared interest: (node, app, topic) -> pending first subscribes.
    prepared: HashMap<(usize, Arc<str>, Topic), usize>,
}

/// A route could not be made: the cluster holds its maximum of routes.
struct Refused;

impl Routes {
    fn is_routed(&self, node: usize, app: &str, topic: &Topic) -> bool {
        self.by_app.get(app).and_then(|topics| topics.get(topic)).is_some_and(|nodes| nodes.contains(&node))
    }

    /// Routes `topic` to `node` (`wanted`) or stops routing it there.
    fn set(&mut self, node: usize, app: &str, topic: &Topic, wanted: bool, max: usize) -> Result<(), Refused> {
        if wanted {
            let topics = match self.by_app.get_mut(app) {
                Some(topics) => topics,
                None => self.by_app.entry(Arc::from(app)).or_default(),
            };
            match topics.get_mut(topic) {
                Some(nodes) => {
                    if !nodes.contains(&node) {
                        nodes.push(node);
                    }
                }
                None if self.len >= max => return Err(Refused),
                None => {
                    topics.insert(topic.clone(), vec![node]);
                    self.len += 1;
                }
            }
        } else if let Some(topics) = self.by_app.get_mut(app) {
            if let Some(nodes) = topics.get_mut(topic) {
                nodes.retain(|n| *n != node);
                if nodes.is_empty() {
                    topics.remove(topic);
                    self.len -= 1;
                }
            }
            if topics.is_empty() {
                self.by_app.remove(app);
            }
        }
        Ok(())
    }

    fn nodes(&self, app: &str, topic: &Topic) -> Vec<usize> {
        self.by_app.get(app).and_then(|topics| topics.get(topic)).cloned().unwrap_or_default()
    }

    fn prepared(&self, node: usize, app: &str, topic: &Topic) -> usize {
        // Only looked up while something is prepared (rare: first subscribers), so the key is built.
        if self.prepared.is_empty() {
            return 0;
        }
        self.prepared.get(&(node, Arc::from(app), topic.clone())).copied().unwrap_or(0)
    }

    /// Forgets every route and preparation of `node`.
    pub(crate) fn remove_node(&mut self, node: usize) {
        let mut emptied = 0;
        for topics in self.by_app.values_mut() {
            topics.retain(|_, nodes| {
                nodes.retain(|n| *n != node);
                let keep = !nodes.is_empty();
                emptied += usize::from(!keep);
                keep
            });
        }
        self.by_app.retain(|_, topics| !topics.is_empty());
        self.len -= emptied;
        self.prepared.retain(|(n, _, _), _| *n != node);
    }

    /// Topics routed to `node`.
    fn count(&self, node: usize) -> usize {
        self.by_app.values().flat_map(|topics| topics.values()).filter(|nodes| nodes.contains(&node)).count()
    }
}

/// The [`Broker`] of one node of a [`super::LocalCluster`] (and its [`HistoryBroadcast`]). Never
/// blocks: delivery to another node is that node's hub queueing into bounded outboxes.
pub struct LocalBroker {
    slot: Arc<NodeSlot>,
    shared: Arc<Shared>,
}

impl LocalBroker {
    pub(crate) fn new(slot: Arc<NodeSlot>, shared: Arc<Shared>) -> LocalBroker {
        LocalBroker { slot, shared }
    }

    /// This node's id in its cluster.
    pub fn node(&self) -> usize {
        self.slot.id
    }

    /// Messages this node received from other nodes (history publications included).
    pub fn received(&self) -> u64 {
        self.slot.received.load(Ordering::Relaxed)
    }

    /// Topics routed to this node now (its local interest plus what it prepared).
    pub fn routes(&self) -> usize {
        self.shared.routes.lock().count(self.slot.id)
    }

    /// Re-reads this node's interest in `topic` and routes it here or not. Runs under the routes lock,
    /// so racing updates of one topic end with the last state read.
    fn update(&self, app_id: &str, topic: &Topic) -> Result<(), Refused> {
        let mut routes = self.shared.routes.lock();
        let wanted = match self.slot.engine() {
            Some(engine) => {
                routes.prepared(self.slot.id, app_id, topic) > 0 || engine.by_id(app_id).is_some_and(|hub| hub.has_local(topic))
            }
            None => false,
        };
        let result = routes.set(self.slot.id, app_id, topic, wanted, self.shared.limits.max_routes);
        if result.is_err() {
            metrics::counter!("herald_local_cluster_refused_total", "kind" => "route").increment(1);
        }
        result
    }

    /// The hubs of app `app_id` on the nodes `topic` is routed to (this one too when `include_self`),
    /// each with its slot. Collected under the routes lock, delivered to after it is released.
    fn targets(&self, app_id: &str, topic: &Topic, include_self: bool) -> Vec<(Arc<NodeSlot>, Arc<Hub>)> {
        let nodes = self.shared.routes.lock().nodes(app_id, topic);
        if nodes.is_empty() {
            return Vec::new();
        }
        let slots = self.shared.nodes.lock();
        nodes
            .into_iter()
            .filter(|n| include_self || *n != self.slot.id)
            .filter_map(|n| {
                let slot = slots.get(n)?.clone();
                let hub = slot.engine()?.by_id(app_id)?.clone();
                Some((slot, hub))
            })
            .collect()
    }

    fn deliver(&self, targets: Vec<(Arc<NodeSlot>, Arc<Hub>)>, topic: &Topic, message: Remote) {
        let mut message = Some(message);
        let last = targets.len().saturating_sub(1);
        for (i, (slot, hub)) in targets.into_iter().enumerate() {
            let m = if i == last { message.take() } else { message.clone() };
            if let Some(m) = m {
                if slot.id != self.slot.id {
                    slot.received.fetch_add(1, Ordering::Relaxed);
                }
                hub.receive(topic, m);
            }
        }
    }
}

impl Broker for LocalBroker {
    /// Delivers `message` at once to every other node the topic is routed to (their hubs queue it).
    fn publish(&self, app_id: &str, topic: &Topic, message: Remote) {
        let targets = self.targets(app_id, topic, false);
        self.deliver(targets, topic, message);
    }

    fn interest_changed(&self, app_id: &str, topic: Topic) {
        let _ = self.update(app_id, &topic);
    }

    /// Routing is made at once: the receiver returned has already fired. If the route is refused (the
    /// cluster holds [`super::LocalClusterLimits::max_routes`]) the receiver is closed instead, so the
    /// waiter goes on without routing.
    fn prepare(&self, app_id: &str, topic: &Topic) -> Option<oneshot::Receiver<()>> {
        let (tx, rx) = oneshot::channel();
        {
            let mut routes = self.shared.routes.lock();
            // Counted even when routed already: the route then stays while the caller subscribes.
            *routes.prepared.entry((self.slot.id, Arc::from(app_id), topic.clone())).or_default() += 1;
            if routes.is_routed(self.slot.id, app_id, topic) {
                let _ = tx.send(());
                return Some(rx);
            }
        }
        if self.update(app_id, topic).is_ok() {
            let _ = tx.send(());
        }
        Some(rx)
    }

    fn release(&self, app_id: &str, topic: &Topic) {
        let last = {
            let mut routes = self.shared.routes.lock();
            let key = (self.slot.id, Arc::from(app_id), topic.clone());
            match routes.prepared.get_mut(&key) {
                Some(n) if *n > 1 => {
                    *n -= 1;
                    false
                }
                Some(_) => {
                    routes.prepared.remove(&key);
                    true
                }
                None => false,
            }
        };
        // While other prepares hold the route, whether it is wanted can't have changed.
        if last {
            let _ = self.update(app_id, topic);
        }
    }

    /// Always: nothing outside the process can fail.
    fn healthy(&self) -> bool {
        true
    }

    fn name(&self) -> &'static str {
        "local"
    }
}

impl HistoryBroadcast for LocalBroker {
    /// Appends to the cluster's shared memory history and delivers the positioned publication to every
    /// node the channel is routed to (this one included), all under one lock: every node sees the
    /// channel's offsets in order.
    fn append_and_broadcast<'a>(
        &'a self,
        app_id: &'a str,
        publication: &'a Publication,
        options: HistoryOptions,
    ) -> BoxFuture<'a, Result<StreamPosition, HistoryError>> {
        let result = {
            let _in_order = self.shared.history_order.lock();
            self.shared.history.append_now(app_id, publication, options).inspect(|position| {
                let mut positioned = publication.clone();
                positioned.position = Some(position.clone());
                let topic = Topic::Channel(publication.channel.clone());
                let targets = self.targets(app_id, &topic, true);
                self.deliver(targets, &topic, Remote::Publish { publication: positioned });
            })
        };
        Box::pin(std::future::ready(result))
    }
}

impl std::fmt::Debug for LocalBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalBroker").field("node", &self.slot.id).finish()
    }
}
