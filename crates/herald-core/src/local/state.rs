//! Cluster-wide counts of a [`super::LocalCluster`]: every decision (first member, last member, first
//! and last subscriber, connection admitted) is taken under one lock, so it is taken once for the
//! cluster, as the Redis engine's scripts do.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use bytes::Bytes;

use crate::change::{ChannelChange, MemberJoin};
use crate::hub::ChannelInfo;
use crate::presence::Member;
use crate::state::{BoxFuture, ClusterState, Joined, Left, StateError};

use super::Shared;

/// Counts of every app.
#[derive(Default)]
pub(crate) struct Counts {
    apps: HashMap<Arc<str>, AppCounts>,
}

#[derive(Default)]
struct AppCounts {
    channels: HashMap<Arc<str>, ChannelCounts>,
    /// Open connections per node, for the connection quota.
    connections: HashMap<usize, usize>,
}

#[derive(Default)]
struct ChannelCounts {
    subscribers: usize,
    /// Presence: user -> (info of their first connection, their connections across the cluster).
    members: BTreeMap<Arc<str>, (Bytes, usize)>,
    /// What each node counted: (node, presence user) -> subscriptions. A node's leave takes back only
    /// what it holds; removing a node takes its share back.
    contributions: HashMap<(usize, Option<Arc<str>>), usize>,
}

impl ChannelCounts {
    fn info(&self) -> Option<ChannelInfo> {
        (self.subscribers > 0)
            .then(|| ChannelInfo { subscribers: self.subscribers, users: (!self.members.is_empty()).then_some(self.members.len()) })
    }

    fn members(&self) -> Vec<Member> {
        self.members.iter().map(|(user_id, (info, _))| Member { user_id: user_id.clone(), info: info.clone() }).collect()
    }

    /// Takes `n` subscriptions of `user` back; whether the user stopped being a member.
    fn uncount(&mut self, user: Option<&Arc<str>>, n: usize) -> bool {
        self.subscribers = self.subscribers.saturating_sub(n);
        let Some(user) = user else { return false };
        match self.members.get_mut(user) {
            Some((_, conns)) if *conns > n => {
                *conns -= n;
                false
            }
            Some(_) => self.members.remove(user).is_some(),
            None => false,
        }
    }
}

impl Counts {
    fn join(
        &mut self,
        node: usize,
        app: &str,
        channel: &str,
        member: Option<&MemberJoin>,
        max_members: usize,
        max_channels: usize,
    ) -> Result<Joined, StateError> {
        let counts = self.apps.entry(Arc::from(app)).or_default();
        if !counts.channels.contains_key(channel) && counts.channels.len() >= max_channels {
            metrics::counter!("herald_local_cluster_refused_total", "kind" => "channel").increment(1);
            return Err(StateError(format!("the local cluster counts its maximum of {max_channels} channels for app {app}")));
        }
        let ch = counts.channels.entry(Arc::from(channel)).or_default();
        let mut member_added = false;
        if let Some(m) = member {
            if !ch.members.contains_key(&m.user_id) && ch.members.len() >= max_members {
                if ch.subscribers == 0 {
                    counts.channels.remove(channel);
                }
                return Ok(Joined::Full);
            }
            match ch.members.get_mut(&m.user_id) {
                Some((_, conns)) => *conns += 1,
                None => {
                    ch.members.insert(m.user_id.clone(), (m.info.clone(), 1));
                    member_added = true;
                }
            }
        }
        ch.subscribers += 1;
        *ch.contributions.entry((node, member.map(|m| m.user_id.clone()))).or_default() += 1;
        Ok(Joined::Counted { subscribers: ch.subscribers, member_added, members: member.map(|_| ch.members()) })
    }

    fn leave(&mut self, node: usize, app: &str, channel: &str, user: Option<&str>) -> Left {
        let Some(counts) = self.apps.get_mut(app) else { return Left { subscribers: 0, member_removed: false } };
        let Some(ch) = counts.channels.get_mut(channel) else { return Left { subscribers: 0, member_removed: false } };
        let user: Option<Arc<str>> = user.map(Arc::from);
        let key = (node, user.clone());
        match ch.contributions.get_mut(&key) {
            Some(own) if *own > 1 => *own -= 1,
            Some(_) => {
                ch.contributions.remove(&key);
            }
            // Not this node's to take back (never counted here, or already taken).
            None => return Left { subscribers: ch.subscribers, member_removed: false },
        }
        let member_removed = ch.uncount(user.as_ref(), 1);
        let subscribers = ch.subscribers;
        if subscribers == 0 {
            counts.channels.remove(channel);
        }
        Left { subscribers, member_removed }
    }

    /// Takes every subscription and connection `node` counted back out; the changes that makes, per
    /// app, for a surviving node to announce.
    pub(crate) fn remove_node(&mut self, node: usize) -> Vec<(Arc<str>, ChannelChange)> {
        let mut changes = Vec::new();
        for (app, counts) in &mut self.apps {
            counts.connections.remove(&node);
            for (channel, ch) in &mut counts.channels {
                let mine: Vec<_> = ch.contributions.keys().filter(|(n, _)| *n == node).cloned().collect();
                for key in mine {
                    let n = ch.contributions.remove(&key).unwrap_or(0);
                    let member_removed = ch.uncount(key.1.as_ref(), n);
                    let left = Left { subscribers: ch.subscribers, member_removed };
                    changes.push((app.clone(), ChannelChange::counted_leave(channel.clone(), left, key.1)));
                }
            }
            counts.channels.retain(|_, ch| ch.subscribers > 0);
        }
        self.apps.retain(|_, counts| !counts.channels.is_empty() || !counts.connections.is_empty());
        changes
    }
}

/// The [`ClusterState`] of one node of a [`super::LocalCluster`]: the cluster's shared counts, with
/// this node's contributions kept apart. Answers at once (an in-memory map under one lock).
pub struct LocalState {
    node: usize,
    shared: Arc<Shared>,
}

impl LocalState {
    pub(crate) fn new(node: usize, shared: Arc<Shared>) -> LocalState {
        LocalState { node, shared }
    }
}

impl std::fmt::Debug for LocalState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalState").field("node", &self.node).finish()
    }
}

fn ready<'a, T: Send + 'a>(value: T) -> BoxFuture<'a, T> {
    Box::pin(std::future::ready(value))
}

impl ClusterState for LocalState {
    fn join<'a>(
        &'a self,
        app_id: &'a str,
        channel: &'a str,
        member: Option<&'a MemberJoin>,
        max_members: usize,
    ) -> BoxFuture<'a, Result<Joined, StateError>> {
        let max_channels = self.shared.limits.max_channels_per_app;
        ready(self.shared.counts.lock().join(self.node, app_id, channel, member, max_members, max_channels))
    }

    fn leave<'a>(&'a self, app_id: &'a str, channel: &'a str, user_id: Option<&'a str>) -> BoxFuture<'a, Result<Left, StateError>> {
        ready(Ok(self.shared.counts.lock().leave(self.node, app_id, channel, user_id)))
    }

    fn channel<'a>(&'a self, app_id: &'a str, channel: &'a str) -> BoxFuture<'a, Result<Option<ChannelInfo>, StateError>> {
        let counts = self.shared.counts.lock();
        let info = counts.apps.get(app_id).and_then(|c| c.channels.get(channel)).and_then(ChannelCounts::info);
        ready(Ok(info))
    }

    fn channels<'a>(&'a self, app_id: &'a str, prefix: &'a str) -> BoxFuture<'a, Result<Vec<(Arc<str>, ChannelInfo)>, StateError>> {
        let counts = self.shared.counts.lock();
        let listed = counts
            .apps
            .get(app_id)
            .map(|c| {
                c.channels
                    .iter()
                    .filter(|(name, _)| name.starts_with(prefix))
                    .filter_map(|(name, ch)| Some((name.clone(), ch.info()?)))
                    .collect()
            })
            .unwrap_or_default();
        ready(Ok(listed))
    }

    fn members<'a>(&'a self, app_id: &'a str, channel: &'a str) -> BoxFuture<'a, Result<Vec<Member>, StateError>> {
        let counts = self.shared.counts.lock();
        let members = counts.apps.get(app_id).and_then(|c| c.channels.get(channel)).map(ChannelCounts::members).unwrap_or_default();
        ready(Ok(members))
    }

    fn connect<'a>(&'a self, app_id: &'a str, limit: usize) -> BoxFuture<'a, Result<bool, StateError>> {
        let mut counts = self.shared.counts.lock();
        let app = counts.apps.entry(Arc::from(app_id)).or_default();
        let admitted = app.connections.values().sum::<usize>() < limit;
        if admitted {
            *app.connections.entry(self.node).or_default() += 1;
        }
        ready(Ok(admitted))
    }

    fn disconnect<'a>(&'a self, app_id: &'a str) -> BoxFuture<'a, Result<(), StateError>> {
        let mut counts = self.shared.counts.lock();
        if let Some(app) = counts.apps.get_mut(app_id) {
            match app.connections.get_mut(&self.node) {
                Some(n) if *n > 1 => *n -= 1,
                Some(_) => {
                    app.connections.remove(&self.node);
                }
                None => {}
            }
        }
        ready(Ok(()))
    }
}
