//! Every app's hub, looked up by id, and what they share: the codecs fronts registered, the
//! broker and the cluster state.

use std::collections::HashMap;
use std::sync::Arc;

use crate::app::App;
use crate::broker::Broker;
use crate::codec::{Codec, CodecId, Codecs};
use crate::history::{HistoryBroadcast, HistoryStore, MemoryHistory};
use crate::hub::{EngineListener, Hub};
use crate::idempotency::{Idempotency, IdempotencyLimits, IdempotencyStore};
use crate::outbox::Disconnect;
use crate::state::ClusterState;

/// Every app's hub, looked up by id (fronts map their own credentials to it).
pub struct Engine {
    by_id: HashMap<String, Arc<Hub>>,
    codecs: Arc<Codecs>,
}

impl Engine {
    /// An engine serving these apps.
    pub fn new(apps: impl IntoIterator<Item = App>) -> Self {
        let codecs = Codecs::new();
        let apps: Vec<App> = apps.into_iter().collect();
        // One store for every app; its channel cap is the largest any app allows.
        let max_channels = apps.iter().map(|a| a.limits.max_history_channels).max().unwrap_or(0);
        let history = Arc::new(MemoryHistory::new(max_channels));
        let idempotency = Arc::new(Idempotency::new(IdempotencyLimits::default()));
        let mut by_id = HashMap::new();
        for app in apps {
            let hub = Arc::new(Hub::with_shared(app, codecs.clone(), history.clone(), idempotency.clone()));
            by_id.insert(hub.app().id.clone(), hub);
        }
        Engine { by_id, codecs }
    }

    /// The hub of the app with this id.
    pub fn by_id(&self, id: &str) -> Option<&Arc<Hub>> {
        self.by_id.get(id)
    }

    /// Every hub.
    pub fn hubs(&self) -> impl Iterator<Item = &Arc<Hub>> {
        self.by_id.values()
    }

    /// Registers a front's wire encoding; its subscribers connect with the returned id. `None` when the
    /// engine holds its maximum of codecs (8).
    pub fn register_codec(&self, codec: Arc<dyn Codec>) -> Option<CodecId> {
        self.codecs.register(codec)
    }

    /// Adds a listener for every hub's channel changes (a front turning them into its events and
    /// webhooks). Every listener hears every change.
    pub fn listen(&self, listener: Arc<dyn EngineListener>) {
        for hub in self.hubs() {
            hub.listen(listener.clone());
        }
    }

    /// Connects every hub to other nodes through `broker`. Only the first call takes effect; returns
    /// whether this one did.
    pub fn attach(&self, broker: Arc<dyn Broker>) -> bool {
        // Every hub, even after one refuses (no short circuit).
        self.hubs().map(|hub| hub.attach(broker.clone())).fold(true, |all, ok| all & ok)
    }

    /// Keeps counts and presence in `state`, shared by every node. Only the first call takes effect.
    pub fn attach_state(&self, state: Arc<dyn ClusterState>) -> bool {
        self.hubs().map(|hub| hub.attach_state(state.clone())).fold(true, |all, ok| all & ok)
    }

    /// Keeps channel history in `store`, appended and broadcast by `broadcast` (every node's), instead of
    /// this node's memory. Only the first call takes effect.
    pub fn attach_history(&self, store: Arc<dyn HistoryStore>, broadcast: Arc<dyn HistoryBroadcast>) -> bool {
        self.hubs().map(|hub| hub.attach_history(store.clone(), broadcast.clone())).fold(true, |all, ok| all & ok)
    }

    /// Remembers idempotency keys in `store`, shared by every node, instead of this node's memory. Only
    /// the first call takes effect.
    pub fn attach_idempotency(&self, store: Arc<dyn IdempotencyStore>) -> bool {
        self.hubs().map(|hub| hub.attach_idempotency(store.clone())).fold(true, |all, ok| all & ok)
    }

    /// The attached broker, if this node is part of a cluster.
    pub fn broker(&self) -> Option<&Arc<dyn Broker>> {
        self.hubs().next().and_then(|hub| hub.broker())
    }

    /// Asks every connection of every app to close for `reason`. Returns how many were asked.
    pub fn close_all(&self, reason: Disconnect) -> usize {
        self.hubs().map(|hub| hub.close_all(reason)).sum()
    }
}
