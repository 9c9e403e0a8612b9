//! The parts of a command that need the cluster: routing ready before a first local subscriber,
//! presence and counts decided cluster-wide, sign-ins routed before they are confirmed. Each is a
//! [`Step`]: a boxed future owning what it needs, which the session loop polls as one more branch, so
//! a slow or stalled Redis never stops the session from writing, reading pings or shutting down.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use herald_core::{ChannelChange, Joined, PreparedInterest, SocketId, Subscribed};

use super::commands::Ctx;
use crate::wire::SubscribeData;

/// How long one cluster round (routing ready, or a count) may take before the session goes ahead
/// with this node's own view.
pub(crate) const CLUSTER_WAIT: Duration = Duration::from_secs(2);

/// A pending cluster step of one session. Boxed: idle connections keep only an empty `Option`.
pub(crate) type Step = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Subscribe once the node receives the channel from the cluster, counting it cluster-wide.
pub(crate) fn subscribe(ctx: &Ctx, data: SubscribeData, mut interest: Option<PreparedInterest>) -> Step {
    let ctx = ctx.clone();
    Box::pin(async move {
        // Wait (bounded) until this node receives the channel from the others, so a confirmed
        // subscriber misses nothing published anywhere in the cluster.
        if let Some(interest) = interest.as_mut() {
            if tokio::time::timeout(CLUSTER_WAIT, interest.ready()).await.is_err() {
                metrics::counter!("herald_errors_total", "kind" => "cluster_subscribe_timeout").increment(1);
            }
        }
        ctx.subscribe_clustered(&data).await;
        // The local subscription (if any) holds the interest from here on.
        drop(interest);
    })
}

/// Uncount a subscription that already ended on this node.
pub(crate) fn leave(ctx: &Ctx, channel: Arc<str>, user: Option<Arc<str>>) -> Step {
    let ctx = ctx.clone();
    Box::pin(async move { ctx.leave_clustered(channel, user, Some(ctx.id)).await })
}

/// Confirm a sign-in once the node receives the user's messages from the cluster.
pub(crate) fn sign_in(ctx: &Ctx, user_data: String, mut interest: PreparedInterest) -> Step {
    let ctx = ctx.clone();
    Box::pin(async move {
        if tokio::time::timeout(CLUSTER_WAIT, interest.ready()).await.is_err() {
            metrics::counter!("herald_errors_total", "kind" => "cluster_subscribe_timeout").increment(1);
        }
        ctx.signed_in(&user_data);
    })
}

impl Ctx {
    /// Subscribes here, then counts the subscription cluster-wide: presence membership and counts are
    /// the cluster's, so `member_added` fires once per cluster and the member list is everyone's.
    pub(crate) async fn subscribe_clustered(&self, data: &SubscribeData) {
        let Some(admitted) = self.admit(data) else { return };
        let channel = data.channel.as_str();
        let Subscribed { already, change, members } = admitted.subscribed;
        let state = match self.hub.state() {
            Some(state) if !already => state.clone(),
            _ => return self.confirm(channel, admitted.cache, members.as_deref(), &change, already),
        };
        let max = self.hub.app().limits.max_presence_members;
        let joined = tokio::time::timeout(CLUSTER_WAIT, state.join(&self.hub.app().id, channel, admitted.member.as_ref(), max)).await;
        match joined {
            Ok(Ok(Joined::Full)) => {
                self.hub.unsubscribe(self.id, channel);
                self.subscription_error(channel, "LimitReached", 403, "The presence channel has its maximum of members");
            }
            Ok(Ok(Joined::Counted { subscribers, member_added, members: everyone })) => {
                let change = ChannelChange::counted_join(change.channel, subscribers, member_added, admitted.member.as_ref());
                self.confirm(channel, admitted.cache, everyone.as_deref(), &change, false);
            }
            Ok(Err(_)) | Err(_) => {
                // The cluster store is unreachable: serve this node's view rather than nothing; the
                // node reconciles its counts once the store is back.
                metrics::counter!("herald_errors_total", "kind" => "cluster_state_unavailable").increment(1);
                self.confirm(channel, admitted.cache, members.as_deref(), &change, false);
            }
        }
    }

    /// Uncounts an ended subscription cluster-wide and announces what that changed.
    pub(crate) async fn leave_clustered(&self, channel: Arc<str>, user: Option<Arc<str>>, actor: Option<SocketId>) {
        let Some(state) = self.hub.state() else { return };
        match tokio::time::timeout(CLUSTER_WAIT, state.leave(&self.hub.app().id, &channel, user.as_deref())).await {
            Ok(Ok(left)) => self.hub.announce(&ChannelChange::counted_leave(channel, left, user), actor),
            Ok(Err(_)) | Err(_) => {
                metrics::counter!("herald_errors_total", "kind" => "cluster_state_unavailable").increment(1);
            }
        }
    }
}
