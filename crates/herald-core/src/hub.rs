//! The per-app hub: who is connected, who is subscribed where, who is present, who is signed in.
//!
//! Concurrency: connections, channels and users live in sharded maps ([`DashMap`]). No code path holds
//! guards of two maps at once, so there is no lock ordering to get wrong. All mutations of one
//! connection's state come from that connection's own task, so subscribe/unsubscribe/disconnect of one
//! connection never race each other.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use bytes::Bytes;
use dashmap::mapref::entry::Entry;
use dashmap::DashMap;
use metrics::{Counter, Gauge};
use parking_lot::Mutex;

use crate::app::App;
use crate::broker::{Broker, PreparedInterest, Remote, Topic};
use crate::error::{ConnectError, SignInError, SubscribeError};
use crate::ids::SocketId;
use crate::outbox::{Disconnect, Outbox};
use crate::presence::{Member, Presence};
use crate::retained::Retained;
use crate::state::ClusterState;

/// Every app's hub, looked up by id (HTTP API) or key (WebSocket path).
pub struct Engine {
    by_id: HashMap<String, Arc<Hub>>,
    by_key: HashMap<String, Arc<Hub>>,
}

impl Engine {
    /// An engine serving these apps.
    pub fn new(apps: impl IntoIterator<Item = App>) -> Self {
        let mut by_id = HashMap::new();
        let mut by_key = HashMap::new();
        for app in apps {
            let hub = Arc::new(Hub::new(app));
            by_key.insert(hub.app.key.clone(), hub.clone());
            by_id.insert(hub.app.id.clone(), hub);
        }
        Engine { by_id, by_key }
    }

    /// The hub of the app with this id.
    pub fn by_id(&self, id: &str) -> Option<&Arc<Hub>> {
        self.by_id.get(id)
    }

    /// The hub of the app with this key.
    pub fn by_key(&self, key: &str) -> Option<&Arc<Hub>> {
        self.by_key.get(key)
    }

    /// Every hub.
    pub fn hubs(&self) -> impl Iterator<Item = &Arc<Hub>> {
        self.by_id.values()
    }

    /// Connects every hub to other nodes through `broker`. Only the first call takes effect; returns
    /// whether this one did.
    pub fn attach(&self, broker: Arc<dyn Broker>) -> bool {
        // Every hub, even after one refuses (no short circuit).
        self.hubs().map(|hub| hub.broker.set(broker.clone()).is_ok()).fold(true, |all, ok| all & ok)
    }

    /// Keeps counts and presence in `state`, shared by every node. Only the first call takes effect.
    pub fn attach_state(&self, state: Arc<dyn ClusterState>) -> bool {
        self.hubs().map(|hub| hub.state.set(state.clone()).is_ok()).fold(true, |all, ok| all & ok)
    }

    /// The attached broker, if this node is part of a cluster.
    pub fn broker(&self) -> Option<&Arc<dyn Broker>> {
        self.hubs().next().and_then(|hub| hub.broker.get())
    }

    /// Asks every connection of every app to close for `reason`. Returns how many were asked.
    pub fn close_all(&self, reason: Disconnect) -> usize {
        self.hubs().map(|hub| hub.close_all(reason)).sum()
    }
}

/// A presence member joining with a subscription.
#[derive(Debug, Clone)]
pub struct MemberJoin {
    /// The user's id.
    pub user_id: Arc<str>,
    /// The user's info, encoded by the front.
    pub info: Bytes,
}

/// A state change that fronts turn into protocol events and webhooks.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Transition {
    /// The channel got its first subscriber.
    Occupied,
    /// The channel lost its last subscriber.
    Vacated,
    /// A user's first connection joined the presence channel.
    MemberAdded(Member),
    /// A user's last connection left the presence channel.
    MemberRemoved {
        /// The user who left.
        user_id: Arc<str>,
    },
}

/// What changed on one channel after a subscribe, unsubscribe or disconnect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelChange {
    /// The channel.
    pub channel: Arc<str>,
    /// Subscribers after the change.
    pub subscribers: usize,
    /// Transitions in the order they happened.
    pub transitions: Vec<Transition>,
}

/// A successful subscription.
#[derive(Debug, Clone)]
pub struct Subscribed {
    /// The connection was already subscribed; nothing changed.
    pub already: bool,
    /// What changed on the channel.
    pub change: ChannelChange,
    /// Presence channels: every member, including the joiner.
    pub members: Option<Vec<Member>>,
}

/// Counts of one channel, for the HTTP API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChannelInfo {
    /// Connections subscribed.
    pub subscribers: usize,
    /// Distinct users (presence channels only).
    pub users: Option<usize>,
}

struct Conn {
    outbox: Outbox,
    user: Option<Arc<str>>,
    channels: Vec<Arc<str>>,
}

struct Subscriber {
    outbox: Outbox,
    user: Option<Arc<str>>,
}

struct Channel {
    subscribers: HashMap<SocketId, Subscriber>,
    presence: Option<Presence>,
}

impl Channel {
    fn info(&self) -> ChannelInfo {
        ChannelInfo { subscribers: self.subscribers.len(), users: self.presence.as_ref().map(Presence::user_count) }
    }
}

struct HubMetrics {
    connections: Gauge,
    channels: Gauge,
    subscriptions: Gauge,
    messages_out: Counter,
    bytes_out: Counter,
}

/// One app's live state.
pub struct Hub {
    app: App,
    connections: DashMap<SocketId, Conn>,
    connection_count: AtomicUsize,
    channels: DashMap<Arc<str>, Channel>,
    users: DashMap<Arc<str>, Vec<(SocketId, Outbox)>>,
    retained: Mutex<Retained>,
    metrics: HubMetrics,
    broker: OnceLock<Arc<dyn Broker>>,
    state: OnceLock<Arc<dyn ClusterState>>,
    announcer: OnceLock<Announcer>,
}

/// Turns a channel change the engine learns about on its own (a dead node reaped by the cluster) into
/// the protocol's events. Set once by the front.
pub type Announcer = Arc<dyn Fn(&Hub, &ChannelChange) + Send + Sync>;

impl Hub {
    /// An empty hub for `app`.
    pub fn new(app: App) -> Self {
        let label = [("app", app.id.clone())];
        let metrics = HubMetrics {
            connections: metrics::gauge!("herald_connections", &label),
            channels: metrics::gauge!("herald_channels", &label),
            subscriptions: metrics::gauge!("herald_subscriptions", &label),
            messages_out: metrics::counter!("herald_messages_out_total", &label),
            bytes_out: metrics::counter!("herald_bytes_out_total", &label),
        };
        Hub {
            retained: Mutex::new(Retained::new(app.limits.retained)),
            app,
            connections: DashMap::new(),
            connection_count: AtomicUsize::new(0),
            channels: DashMap::new(),
            users: DashMap::new(),
            metrics,
            broker: OnceLock::new(),
            state: OnceLock::new(),
            announcer: OnceLock::new(),
        }
    }

    /// The app this hub serves.
    pub fn app(&self) -> &App {
        &self.app
    }

    /// Sets how changes found by the engine itself are announced. Only the first call takes effect.
    pub fn set_announcer(&self, announcer: Announcer) -> bool {
        self.announcer.set(announcer).is_ok()
    }

    /// Announces `change` to the channel's subscribers (on every node) through the front's announcer.
    pub fn announce(&self, change: &ChannelChange) {
        if let Some(announce) = self.announcer.get() {
            announce(self, change);
        }
    }

    /// Cluster-wide counts and presence, when this node is part of a cluster. Fronts take presence
    /// decisions and answer channel queries from it instead of from this node's own view.
    pub fn state(&self) -> Option<&Arc<dyn ClusterState>> {
        self.state.get()
    }

    /// Registers a connection, enforcing the app's switches and quota. Returns its id and the outbox its
    /// socket task drains (bounded by the app's [`crate::OutboxLimits`]).
    pub fn connect(&self) -> Result<(SocketId, Outbox), ConnectError> {
        if !self.app.enabled {
            return Err(ConnectError::AppDisabled);
        }
        let limit = self.app.limits.max_connections.unwrap_or(usize::MAX);
        let admitted = self.connection_count.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < limit).then_some(n + 1));
        if admitted.is_err() {
            return Err(ConnectError::OverQuota { limit });
        }
        let mut id = SocketId::random();
        while self.connections.contains_key(&id) {
            id = SocketId::random();
        }
        let outbox = Outbox::new(self.app.limits.outbox);
        self.connections.insert(id, Conn { outbox: outbox.clone(), user: None, channels: Vec::new() });
        self.metrics.connections.increment(1.0);
        Ok((id, outbox))
    }

    /// Removes a connection and all its subscriptions and sign-in. Returns the channel changes.
    pub fn disconnect(&self, socket: SocketId) -> Vec<ChannelChange> {
        let Some((_, conn)) = self.connections.remove(&socket) else { return Vec::new() };
        self.connection_count.fetch_sub(1, Ordering::AcqRel);
        self.metrics.connections.decrement(1.0);
        if let Some(user) = &conn.user {
            let gone = self.users.remove_if_mut(user, |_, sockets| {
                sockets.retain(|(id, _)| *id != socket);
                sockets.is_empty()
            });
            if gone.is_some() {
                self.interest_changed(Topic::User(user.clone()));
            }
        }
        conn.channels.iter().filter_map(|channel| self.leave_channel(socket, channel)).collect()
    }

    /// Live connections of this app.
    pub fn connection_count(&self) -> usize {
        self.connection_count.load(Ordering::Acquire)
    }

    /// Subscribes `socket` to `channel`; `member` makes it a presence subscription.
    pub fn subscribe(&self, socket: SocketId, channel: &str, member: Option<MemberJoin>) -> Result<Subscribed, SubscribeError> {
        let limits = &self.app.limits;
        let (outbox, count) = {
            let conn = self.connections.get(&socket).ok_or(SubscribeError::UnknownConnection)?;
            (conn.outbox.clone(), conn.channels.len())
        };
        if let Some(m) = &member {
            if m.info.len() > limits.max_presence_member_size {
                return Err(SubscribeError::MemberInfoTooLarge { size: m.info.len(), limit: limits.max_presence_member_size });
            }
        }
        let name: Arc<str> = Arc::from(channel);
        // Everything below runs under the channel's shard lock. A channel entry exists only while it has
        // subscribers (the last leave removes it under the same lock), so `Occupied` is decided by
        // creating the entry and `Vacated` by removing it: racing connections can't both decide either.
        let (mut entry, created) = match self.channels.entry(name.clone()) {
            Entry::Occupied(entry) => {
                let ch = entry.get();
                if ch.subscribers.contains_key(&socket) {
                    let info = ch.info();
                    let members = ch.presence.as_ref().map(Presence::snapshot);
                    return Ok(Subscribed {
                        already: true,
                        change: ChannelChange { channel: name, subscribers: info.subscribers, transitions: Vec::new() },
                        members,
                    });
                }
                if count >= limits.max_channels_per_connection {
                    return Err(SubscribeError::TooManyChannels { limit: limits.max_channels_per_connection });
                }
                (entry.into_ref(), false)
            }
            Entry::Vacant(entry) => {
                if count >= limits.max_channels_per_connection {
                    return Err(SubscribeError::TooManyChannels { limit: limits.max_channels_per_connection });
                }
                let presence = member.as_ref().map(|_| Presence::default());
                (entry.insert(Channel { subscribers: HashMap::new(), presence }), true)
            }
        };
        let ch = entry.value_mut();
        let mut transitions = Vec::new();
        if created {
            transitions.push(Transition::Occupied);
        }
        let mut user = None;
        if let (Some(presence), Some(m)) = (ch.presence.as_mut(), &member) {
            match presence.join(&m.user_id, &m.info, limits.max_presence_members) {
                Ok(true) => transitions.push(Transition::MemberAdded(Member { user_id: m.user_id.clone(), info: m.info.clone() })),
                Ok(false) => {}
                Err(e) => {
                    drop(entry);
                    if created {
                        // Only reachable with a member limit of 0: take back the entry this call made.
                        self.channels.remove_if(&name, |_, ch| ch.subscribers.is_empty());
                    }
                    return Err(e);
                }
            }
            user = Some(m.user_id.clone());
        }
        ch.subscribers.insert(socket, Subscriber { outbox, user });
        let subscribers = ch.subscribers.len();
        let members = ch.presence.as_ref().map(Presence::snapshot);
        drop(entry);
        self.metrics.subscriptions.increment(1.0);
        if let Some(mut conn) = self.connections.get_mut(&socket) {
            conn.channels.push(name.clone());
        }
        if created {
            self.metrics.channels.increment(1.0);
            self.interest_changed(Topic::Channel(name.clone()));
        }
        Ok(Subscribed { already: false, change: ChannelChange { channel: name, subscribers, transitions }, members })
    }

    /// Unsubscribes `socket` from `channel`. `None` if it was not subscribed.
    pub fn unsubscribe(&self, socket: SocketId, channel: &str) -> Option<ChannelChange> {
        {
            let mut conn = self.connections.get_mut(&socket)?;
            let before = conn.channels.len();
            conn.channels.retain(|c| &**c != channel);
            if conn.channels.len() == before {
                return None;
            }
        }
        self.leave_channel(socket, channel)
    }

    fn leave_channel(&self, socket: SocketId, channel: &str) -> Option<ChannelChange> {
        // One shard lock for the whole leave: the subscriber that empties the channel removes it, so
        // `Vacated` is decided once, by the call that removed the entry.
        let mut left = None;
        let removed = self.channels.remove_if_mut(channel, |name, ch| {
            let Some(sub) = ch.subscribers.remove(&socket) else { return false };
            let mut transitions = Vec::new();
            if let (Some(presence), Some(user)) = (ch.presence.as_mut(), &sub.user) {
                if presence.leave(user) {
                    transitions.push(Transition::MemberRemoved { user_id: user.clone() });
                }
            }
            left = Some(ChannelChange { channel: name.clone(), subscribers: ch.subscribers.len(), transitions });
            ch.subscribers.is_empty()
        });
        let mut change = left?;
        self.metrics.subscriptions.decrement(1.0);
        if removed.is_some() {
            self.metrics.channels.decrement(1.0);
            change.transitions.push(Transition::Vacated);
            self.interest_changed(Topic::Channel(change.channel.clone()));
        }
        Some(change)
    }

    /// Every channel `socket` is subscribed to, with the presence user it joined as.
    pub fn subscriptions_of(&self, socket: SocketId) -> Vec<(Arc<str>, Option<Arc<str>>)> {
        let channels = self.connections.get(&socket).map(|c| c.channels.clone()).unwrap_or_default();
        channels
            .into_iter()
            .map(|c| {
                let user = self.member_of(socket, &c);
                (c, user)
            })
            .collect()
    }

    /// Every local subscription (one per connection and channel), with the presence member it joined as:
    /// what a node re-asserts in a cluster store that lost it.
    pub fn local_subscriptions(&self) -> Vec<(Arc<str>, Option<MemberJoin>)> {
        let mut out = Vec::new();
        for entry in self.channels.iter() {
            let ch = entry.value();
            for sub in ch.subscribers.values() {
                let member = match (&sub.user, &ch.presence) {
                    (Some(user), Some(presence)) => {
                        Some(MemberJoin { user_id: user.clone(), info: presence.info(user).unwrap_or_default() })
                    }
                    _ => None,
                };
                out.push((entry.key().clone(), member));
            }
        }
        out
    }

    /// Whether `socket` is subscribed to `channel`.
    pub fn is_subscribed(&self, socket: SocketId, channel: &str) -> bool {
        self.channels.get(channel).is_some_and(|ch| ch.subscribers.contains_key(&socket))
    }

    /// The presence user `socket` joined `channel` as.
    pub fn member_of(&self, socket: SocketId, channel: &str) -> Option<Arc<str>> {
        self.channels.get(channel).and_then(|ch| ch.subscribers.get(&socket).and_then(|s| s.user.clone()))
    }

    /// Queues `frame` to every subscriber of `channel` except `except`, on this node and (through the
    /// broker) on every other. Returns how many local subscribers got it.
    pub fn publish(&self, channel: &str, frame: &Bytes, except: Option<SocketId>) -> usize {
        self.broadcast(|| Topic::Channel(Arc::from(channel)), || Remote::Deliver { frame: frame.clone(), except, retain: false });
        self.deliver(channel, frame, except)
    }

    /// Like [`Hub::publish`], and remembers `frame` as the channel's last event on every node (cache
    /// channels replay it to new subscribers).
    pub fn publish_retained(&self, channel: &str, frame: &Bytes, except: Option<SocketId>) -> usize {
        self.broadcast(|| Topic::Channel(Arc::from(channel)), || Remote::Deliver { frame: frame.clone(), except, retain: true });
        self.retain(channel, frame.clone());
        self.deliver(channel, frame, except)
    }

    fn deliver(&self, channel: &str, frame: &Bytes, except: Option<SocketId>) -> usize {
        let Some(ch) = self.channels.get(channel) else { return 0 };
        self.push_all(ch.subscribers.iter().map(|(id, sub)| (id, &sub.outbox)), frame, except)
    }

    /// Queues `frame` to each target except `except`, and counts what went out.
    fn push_all<'a>(&self, targets: impl Iterator<Item = (&'a SocketId, &'a Outbox)>, frame: &Bytes, except: Option<SocketId>) -> usize {
        let delivered = targets.filter(|(id, outbox)| Some(**id) != except && outbox.push(frame.clone()).is_ok()).count();
        self.count_out(delivered, frame.len());
        delivered
    }

    /// Hands a message to the broker, if any; topic and message are only built when there is one
    /// (publishing on a single node allocates nothing for the cluster).
    fn broadcast(&self, topic: impl FnOnce() -> Topic, message: impl FnOnce() -> Remote) {
        if let Some(broker) = self.broker.get() {
            broker.publish(&self.app.id, &topic(), message());
        }
    }

    fn interest_changed(&self, topic: Topic) {
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
            (Topic::Channel(channel), Remote::Deliver { frame, except, retain }) => {
                if retain {
                    self.retain(channel, frame.clone());
                }
                self.deliver(channel, &frame, except)
            }
            (Topic::User(user), Remote::Deliver { frame, except, .. }) => self.deliver_to_user(user, &frame, except),
            (Topic::User(user), Remote::Terminate) => self.terminate_local(user),
            (Topic::Channel(_), Remote::Terminate) => 0,
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

    fn count_out(&self, delivered: usize, len: usize) {
        self.metrics.messages_out.increment(delivered as u64);
        self.metrics.bytes_out.increment((delivered * len) as u64);
    }

    /// Remembers `frame` as the last event of the cache channel `channel`.
    pub fn retain(&self, channel: &str, frame: Bytes) {
        self.retained.lock().put(channel, frame, Instant::now());
    }

    /// The last event of the cache channel `channel`, if one is remembered and fresh.
    pub fn retained(&self, channel: &str) -> Option<Bytes> {
        self.retained.lock().get(channel, Instant::now())
    }

    /// Queues `frame` to one connection.
    pub fn send_to(&self, socket: SocketId, frame: Bytes) -> bool {
        let Some(outbox) = self.connections.get(&socket).map(|c| c.outbox.clone()) else { return false };
        outbox.push(frame).is_ok()
    }

    /// Signs `socket` in as `user_id`, so it receives that user's messages.
    pub fn sign_in(&self, socket: SocketId, user_id: &str) -> Result<(), SignInError> {
        let user: Arc<str> = Arc::from(user_id);
        let outbox = {
            let mut conn = self.connections.get_mut(&socket).ok_or(SignInError::UnknownConnection)?;
            match &conn.user {
                Some(existing) if **existing == *user_id => return Ok(()),
                Some(_) => return Err(SignInError::AlreadySignedIn),
                None => conn.user = Some(user.clone()),
            }
            conn.outbox.clone()
        };
        let first = {
            let mut sockets = self.users.entry(user.clone()).or_default();
            sockets.push((socket, outbox));
            sockets.len() == 1
        };
        if first {
            self.interest_changed(Topic::User(user));
        }
        Ok(())
    }

    /// The user `socket` is signed in as.
    pub fn user_of(&self, socket: SocketId) -> Option<Arc<str>> {
        self.connections.get(&socket).and_then(|c| c.user.clone())
    }

    /// Queues `frame` to every connection signed in as `user_id` except `except`, on every node.
    /// Returns how many local connections got it.
    pub fn publish_to_user(&self, user_id: &str, frame: &Bytes, except: Option<SocketId>) -> usize {
        self.broadcast(|| Topic::User(Arc::from(user_id)), || Remote::Deliver { frame: frame.clone(), except, retain: false });
        self.deliver_to_user(user_id, frame, except)
    }

    fn deliver_to_user(&self, user_id: &str, frame: &Bytes, except: Option<SocketId>) -> usize {
        let Some(sockets) = self.users.get(user_id) else { return 0 };
        self.push_all(sockets.iter().map(|(id, outbox)| (id, outbox)), frame, except)
    }

    /// Asks every connection signed in as `user_id`, on every node, to close. Returns how many local
    /// ones were asked.
    pub fn terminate_user(&self, user_id: &str) -> usize {
        self.broadcast(|| Topic::User(Arc::from(user_id)), || Remote::Terminate);
        self.terminate_local(user_id)
    }

    fn terminate_local(&self, user_id: &str) -> usize {
        let Some(sockets) = self.users.get(user_id) else { return 0 };
        sockets.iter().for_each(|(_, outbox)| outbox.close(Disconnect::Terminated));
        sockets.len()
    }

    /// Asks every connection to close for `reason`. Returns how many.
    pub fn close_all(&self, reason: Disconnect) -> usize {
        self.connections.iter().map(|c| c.outbox.close(reason)).count()
    }

    /// Counts of one occupied channel.
    pub fn channel(&self, name: &str) -> Option<ChannelInfo> {
        self.channels.get(name).map(|ch| ch.info())
    }

    /// Every occupied channel whose name starts with `prefix`.
    pub fn channels(&self, prefix: &str) -> Vec<(Arc<str>, ChannelInfo)> {
        self.channels.iter().filter(|e| e.key().starts_with(prefix)).map(|e| (e.key().clone(), e.value().info())).collect()
    }

    /// Members of an occupied presence channel.
    pub fn members(&self, name: &str) -> Option<Vec<Member>> {
        self.channels.get(name).and_then(|ch| ch.presence.as_ref().map(Presence::snapshot))
    }
}

#[cfg(test)]
mod tests;
