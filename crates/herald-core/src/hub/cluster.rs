//! The hub's side of the cluster: handing publications to the broker, local interest, prepared routing
//! for first subscribers, applying what other nodes sent, and the distributed part of joining, leaving
//! and disconnecting (fronts only encode what the cluster decided).

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;

use crate::broker::{Broker, PreparedInterest, Remote, Topic};
use crate::change::{ChannelChange, MemberJoin};
use crate::error::SubscribeError;
use crate::ids::SocketId;
use crate::state::{ClusterState, Joined};

use super::{Delivery, Hub, Subscribed};

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

    /// Before a connection subscribes to `channel`: if this node is in a cluster, makes sure it receives
    /// the channel from other nodes. The guard resolves ([`PreparedInterest::ready`]) when that is
    /// live, at once if it already is; keep it until the local subscribe is done. Asked even when the
    /// channel has local subscribers: the last of them may leave before this subscribe lands, and the
    /// guard keeps the route meanwhile.
    pub fn prepare_channel(&self, channel: &str) -> Option<PreparedInterest> {
        PreparedInterest::new(self.broker.get()?, &self.app.id, Topic::Channel(Arc::from(channel)))
    }

    /// After `user_id` signed in here: if this node is in a cluster and does not yet receive that user's
    /// messages from other nodes, returns a guard that resolves when it does. (The sign-in is local
    /// interest already, so an existing route needs no guard.)
    pub fn prepare_user(&self, user_id: &str) -> Option<PreparedInterest> {
        let mut interest = PreparedInterest::new(self.broker.get()?, &self.app.id, Topic::User(Arc::from(user_id)))?;
        (!interest.routed_now()).then_some(interest)
    }

    /// Applies a message another node published (called by the broker). Returns local deliveries.
    pub fn receive(&self, topic: &Topic, message: Remote) -> usize {
        match (topic, message) {
            (Topic::Channel(channel), Remote::Publish { mut publication }) => {
                // The topic routes: a publication names the channel it was received for.
                publication.channel = channel.clone();
                self.deliver_in_order(&publication)
            }
            (Topic::Channel(channel), Remote::Event { event, except }) => self.deliver_event(channel, &event, except),
            (Topic::User(user), Remote::Publish { publication }) => self.deliver_to_user(user, &publication),
            (Topic::User(user), Remote::Terminate) => self.terminate_local(user),
            (Topic::User(user), Remote::Command(command)) => self.command_local(user, &command),
            (Topic::Channel(_), Remote::Terminate | Remote::Command(_)) | (Topic::User(_), Remote::Event { .. }) => 0,
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

/// How long one cluster round (routing ready, or a count) may take before the hub goes ahead with this
/// node's own view.
pub const CLUSTER_WAIT: Duration = Duration::from_secs(2);

/// Cluster leaves of one departing connection that run at once.
const LEAVE_CONCURRENCY: usize = 16;

/// A connection that left this node but whose subscriptions (and place in the app's connection
/// quota) the cluster still counts: settle it with [`Hub::settle`] (a front runs that on a tracked
/// task, so nothing waits for Redis).
#[must_use = "the cluster still counts these subscriptions until the departure is settled"]
#[derive(Debug)]
pub struct Departure {
    subscriptions: Vec<(Arc<str>, Option<Arc<str>>)>,
    /// The connection holds a place in the cluster-wide quota ([`Admission::Counted`]).
    counted: bool,
}

/// A new connection against its app's cluster-wide connection quota ([`Hub::admit`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Counted in the cluster: give the place back with the connection's [`Departure`].
    Counted,
    /// Admitted without a cluster count: no quota, no cluster, or the cluster could not be asked in
    /// time (then this node's own count is the only limit; counted in `herald_errors_total`).
    Uncounted,
    /// The app is at its quota across the cluster: refuse the connection.
    OverQuota,
}

impl Hub {
    /// Subscribes `socket` to `channel` (`member` makes it a presence subscription) and, in a cluster,
    /// does the whole distributed part: makes this node receive the channel from the others before
    /// subscribing (bounded wait), counts the subscription cluster-wide, and returns the cluster's
    /// decision (its subscriber count, whether the member is new, every member). The caller confirms to
    /// its client, then announces the returned change ([`Hub::announce`]). If the cluster can't be
    /// asked in time, this node's own view is returned (counted; reconciled later).
    pub async fn join(&self, socket: SocketId, channel: &str, member: Option<MemberJoin>) -> Result<Subscribed, SubscribeError> {
        self.join_with(socket, channel, member, Delivery::default()).await
    }

    /// [`Hub::join`] with a choice of how the subscription takes deliveries ([`Delivery`]: held until
    /// [`Hub::release`], member events or not).
    pub async fn join_with(
        &self,
        socket: SocketId,
        channel: &str,
        member: Option<MemberJoin>,
        delivery: Delivery,
    ) -> Result<Subscribed, SubscribeError> {
        let mut interest = self.prepare_channel(channel);
        if let Some(interest) = interest.as_mut() {
            if !interest.routed_now() && !matches!(tokio::time::timeout(CLUSTER_WAIT, interest.ready()).await, Ok(true)) {
                metrics::counter!("herald_errors_total", "kind" => "cluster_subscribe_timeout").increment(1);
            }
        }
        let subscribed = self.subscribe_with(socket, channel, member.clone(), delivery)?;
        // From here the local subscription holds the interest.
        drop(interest);
        let state = match self.state() {
            Some(state) if !subscribed.already => state.clone(),
            _ => return Ok(subscribed),
        };
        let max = self.app.limits.max_presence_members;
        match tokio::time::timeout(CLUSTER_WAIT, state.join(&self.app.id, channel, member.as_ref(), max)).await {
            Ok(Ok(Joined::Full)) => {
                self.unsubscribe(socket, channel);
                Err(SubscribeError::TooManyMembers { limit: max })
            }
            Ok(Ok(Joined::Counted { subscribers, member_added, members })) => Ok(Subscribed {
                already: false,
                change: ChannelChange::counted_join(subscribed.change.channel, subscribers, member_added, member.as_ref()),
                members: members.or(subscribed.members),
            }),
            Ok(Err(_)) | Err(_) => {
                metrics::counter!("herald_errors_total", "kind" => "cluster_state_unavailable").increment(1);
                Ok(subscribed)
            }
        }
    }

    /// Unsubscribes `socket` from `channel` and, in a cluster, uncounts it cluster-wide. Returns the
    /// decided change for the caller to announce; `None` if it was not subscribed (or the cluster could
    /// not be asked in time: counted, reconciled later).
    pub async fn leave(&self, socket: SocketId, channel: &str) -> Option<ChannelChange> {
        let user = self.member_of(socket, channel);
        let change = self.unsubscribe(socket, channel)?;
        match self.state() {
            Some(_) => self.uncount(change.channel, user).await,
            None => Some(change),
        }
    }

    /// Counts a new connection against the app's cluster-wide connection quota, when the app has one
    /// and this node is in a cluster (bounded by [`CLUSTER_WAIT`]). Both fronts share the quota.
    pub async fn admit(&self) -> Admission {
        let (Some(state), Some(limit)) = (self.state(), self.app.limits.max_connections) else { return Admission::Uncounted };
        match tokio::time::timeout(CLUSTER_WAIT, state.connect(&self.app.id, limit)).await {
            Ok(Ok(true)) => Admission::Counted,
            Ok(Ok(false)) => Admission::OverQuota,
            Ok(Err(_)) | Err(_) => {
                metrics::counter!("herald_errors_total", "kind" => "cluster_state_unavailable").increment(1);
                Admission::Uncounted
            }
        }
    }

    /// Unregisters `socket` from this node. Without a cluster, announces what that changed and returns
    /// `None`; in a cluster returns the [`Departure`] to [`Hub::settle`] (`counted`: the connection
    /// was [`Admission::Counted`]), or `None` when the cluster holds nothing of it.
    pub fn depart(&self, socket: SocketId, counted: bool) -> Option<Departure> {
        if self.state().is_none() {
            for change in self.disconnect(socket) {
                self.announce(&change, None);
            }
            return None;
        }
        let subscriptions = self.subscriptions_of(socket);
        self.disconnect(socket);
        (!subscriptions.is_empty() || counted).then_some(Departure { subscriptions, counted })
    }

    /// Takes a departed connection's subscriptions out of the cluster counts, concurrently (bounded),
    /// each under a deadline, announces what the cluster decided, and gives back its quota place.
    pub async fn settle(&self, departure: Departure) {
        futures_util::stream::iter(departure.subscriptions)
            .for_each_concurrent(LEAVE_CONCURRENCY, |(channel, user)| async move {
                if let Some(change) = self.uncount(channel, user).await {
                    self.announce(&change, None);
                }
            })
            .await;
        if let (true, Some(state)) = (departure.counted, self.state()) {
            if !matches!(tokio::time::timeout(CLUSTER_WAIT, state.disconnect(&self.app.id)).await, Ok(Ok(()))) {
                metrics::counter!("herald_errors_total", "kind" => "cluster_state_unavailable").increment(1);
            }
        }
    }

    /// One cluster leave: the cluster's decision, or `None` (counted) if it could not be asked in time.
    async fn uncount(&self, channel: Arc<str>, user: Option<Arc<str>>) -> Option<ChannelChange> {
        let state = self.state()?;
        match tokio::time::timeout(CLUSTER_WAIT, state.leave(&self.app.id, &channel, user.as_deref())).await {
            Ok(Ok(left)) => Some(ChannelChange::counted_leave(channel, left, user)),
            Ok(Err(_)) | Err(_) => {
                metrics::counter!("herald_errors_total", "kind" => "cluster_state_unavailable").increment(1);
                None
            }
        }
    }
}
