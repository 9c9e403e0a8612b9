//! The hub's side of the cluster: handing publications to the broker, local interest, prepared routing
//! for first subscribers, and applying what other nodes sent.

use std::sync::Arc;

use crate::broker::{Broker, PreparedInterest, Remote, Topic};
use crate::state::ClusterState;

use super::Hub;

impl Hub {
    pub(crate) fn attach(&self, broker: Arc<dyn Broker>) -> bool {
        self.broker.set(broker).is_ok()
    }

    pub(crate) fn attach_state(&self, state: Arc<dyn ClusterState>) -> bool {
        self.state.set(state).is_ok()
    }

    /// The broker to other nodes, if this node is part of a cluster.
    pub fn broker(&self) -> Option<&Arc<dyn Broker>> {
        self.broker.get()
    }

    /// Cluster-wide counts and presence, when this node is part of a cluster. Fronts take presence
    /// decisions and answer channel queries from it instead of from this node's own view.
    pub fn state(&self) -> Option<&Arc<dyn ClusterState>> {
        self.state.get()
    }

    /// Hands a message to the broker, if any; topic and message are only built when there is one
    /// (publishing on a single node allocates nothing for the cluster).
    pub(super) fn broadcast(&self, topic: impl FnOnce() -> Topic, message: impl FnOnce() -> Remote) {
        if let Some(broker) = self.broker.get() {
            broker.publish(&self.app.id, &topic(), message());
        }
    }

    pub(super) fn interest_changed(&self, topic: Topic) {
        if let Some(broker) = self.broker.get() {
            broker.interest_changed(&self.app.id, topic);
        }
    }

    /// Before a connection subscribes to `channel`: if this node is in a cluster and has no local
    /// subscriber yet, starts receiving the channel from other nodes. The guard resolves
    /// ([`PreparedInterest::ready`]) when that is live; keep it until the local subscribe is done.
    pub fn prepare_channel(&self, channel: &str) -> Option<PreparedInterest> {
        let broker = self.broker.get()?;
        if self.channels.contains_key(channel) {
            return None;
        }
        PreparedInterest::new(broker, &self.app.id, Topic::Channel(Arc::from(channel)))
    }

    /// After `user_id` signed in here: if this node is in a cluster and does not yet receive that user's
    /// messages from other nodes, returns a guard that resolves when it does.
    pub fn prepare_user(&self, user_id: &str) -> Option<PreparedInterest> {
        PreparedInterest::new(self.broker.get()?, &self.app.id, Topic::User(Arc::from(user_id)))
    }

    /// Applies a message another node published (called by the broker). Returns local deliveries.
    pub fn receive(&self, topic: &Topic, message: Remote) -> usize {
        match (topic, message) {
            (Topic::Channel(channel), Remote::Publish { mut publication, retain }) => {
                // The topic routes: a publication names the channel it was received for.
                publication.channel = channel.clone();
                if retain {
                    self.retain(publication.clone());
                }
                self.deliver(&publication)
            }
            (Topic::Channel(channel), Remote::Event { event, except }) => self.deliver_event(channel, &event, except),
            (Topic::User(user), Remote::Publish { publication, .. }) => self.deliver_to_user(user, &publication),
            (Topic::User(user), Remote::Terminate) => self.terminate_local(user),
            (Topic::Channel(_), Remote::Terminate) | (Topic::User(_), Remote::Event { .. }) => 0,
        }
    }

    /// Whether this node has local subscribers (channel) or signed-in connections (user) for `topic`.
    pub fn has_local(&self, topic: &Topic) -> bool {
        match topic {
            Topic::Channel(name) => self.channels.contains_key(&**name),
            Topic::User(id) => self.users.contains_key(&**id),
        }
    }

    /// Every topic this node has local interest in (a broker re-subscribes them after reconnecting).
    pub fn local_topics(&self) -> Vec<Topic> {
        let channels = self.channels.iter().map(|e| Topic::Channel(e.key().clone()));
        let users = self.users.iter().map(|e| Topic::User(e.key().clone()));
        channels.chain(users).collect()
    }
}
