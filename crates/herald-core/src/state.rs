//! Cluster-wide state: subscription counts and presence members kept where every node sees them, so
//! that any node answers the HTTP API alone and presence is one list across the cluster.
//!
//! Every decision that produces an event is taken atomically by the store (a count going 0 -> 1 or
//! 1 -> 0), so `member_added` / `member_removed` (and later webhooks) happen once per cluster, not once
//! per node. The local [`crate::Hub`] still owns which local connection is subscribed where; the store
//! only counts.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::change::MemberJoin;
use crate::hub::ChannelInfo;
use crate::presence::Member;

/// A boxed future, so the trait can be used as `dyn ClusterState`.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The store could not be reached or answered nonsense.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cluster state unavailable: {0}")]
pub struct StateError(pub String);

/// The cluster after a subscription was counted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Joined {
    /// Counted.
    Counted {
        /// Subscriptions to the channel across the cluster, this one included.
        subscribers: usize,
        /// The user became a member (their first connection in the cluster).
        member_added: bool,
        /// Presence channels: every member across the cluster.
        members: Option<Vec<Member>>,
    },
    /// A presence channel already has the app's maximum of members; nothing was counted.
    Full,
}

/// The cluster after a subscription ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Left {
    /// Subscriptions left across the cluster.
    pub subscribers: usize,
    /// The user stopped being a member (their last connection in the cluster left).
    pub member_removed: bool,
}

/// Cluster-wide counts and presence.
pub trait ClusterState: Send + Sync + 'static {
    /// Counts a new subscription to `channel` of `app_id`; `member` makes it a presence subscription,
    /// refused with [`Joined::Full`] when `max_members` other users are present.
    fn join<'a>(
        &'a self,
        app_id: &'a str,
        channel: &'a str,
        member: Option<&'a MemberJoin>,
        max_members: usize,
    ) -> BoxFuture<'a, Result<Joined, StateError>>;
    /// Ends a subscription counted by [`ClusterState::join`].
    fn leave<'a>(&'a self, app_id: &'a str, channel: &'a str, user_id: Option<&'a str>) -> BoxFuture<'a, Result<Left, StateError>>;
    /// Counts of one channel across the cluster; `None` when nobody is subscribed.
    fn channel<'a>(&'a self, app_id: &'a str, channel: &'a str) -> BoxFuture<'a, Result<Option<ChannelInfo>, StateError>>;
    /// Every occupied channel whose name starts with `prefix`, with its counts.
    #[allow(clippy::type_complexity)]
    fn channels<'a>(&'a self, app_id: &'a str, prefix: &'a str) -> BoxFuture<'a, Result<Vec<(Arc<str>, ChannelInfo)>, StateError>>;
    /// Members of a presence channel across the cluster.
    fn members<'a>(&'a self, app_id: &'a str, channel: &'a str) -> BoxFuture<'a, Result<Vec<Member>, StateError>>;
    /// Admits one connection of `app_id` if fewer than `limit` are open across the cluster, and counts
    /// it as this node's (so a reaper can take it back if this node dies). `Ok(false)`: at the limit,
    /// nothing was counted.
    fn connect<'a>(&'a self, app_id: &'a str, limit: usize) -> BoxFuture<'a, Result<bool, StateError>>;
    /// Uncounts a connection admitted by [`ClusterState::connect`].
    fn disconnect<'a>(&'a self, app_id: &'a str) -> BoxFuture<'a, Result<(), StateError>>;
}
