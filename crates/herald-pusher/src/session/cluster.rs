//! The parts of a command that need the cluster, which the engine does ([`Hub::join`],
//! [`Hub::leave`], prepared routing for sign-ins): each is a [`Step`], a boxed future owning what it
//! needs, which the session loop polls as one more branch, so a slow or stalled Redis never stops the
//! session from writing, reading pings or shutting down. The front only encodes what was decided.
//!
//! [`Hub::join`]: herald_core::Hub::join
//! [`Hub::leave`]: herald_core::Hub::leave

use std::future::Future;
use std::pin::Pin;

use herald_core::{PreparedInterest, CLUSTER_WAIT};

use super::commands::{last, Admitted, Cached, Ctx};

/// A pending cluster step of one session. Boxed: idle connections keep only an empty `Option`.
pub(crate) type Step = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Join the channel cluster-wide, then confirm and announce what the cluster decided.
pub(crate) fn subscribe(ctx: &Ctx, channel: String, admitted: Admitted) -> Step {
    let ctx = ctx.clone();
    Box::pin(async move {
        let result = ctx.hub.join(ctx.id, &channel, admitted.member).await;
        let cached = match admitted.cache && result.is_ok() {
            true => Cached::Channel(last(ctx.hub.history(&channel, None, usize::MAX).await)),
            false => Cached::No,
        };
        ctx.subscribed(&channel, cached, result);
    })
}

/// Leave the channel cluster-wide and announce what the cluster decided.
pub(crate) fn leave(ctx: &Ctx, channel: String) -> Step {
    let ctx = ctx.clone();
    Box::pin(async move {
        if let Some(change) = ctx.hub.leave(ctx.id, &channel).await {
            ctx.hub.announce(&change, Some(ctx.id));
        }
    })
}

/// Confirm a sign-in once the node receives the user's messages from the cluster.
pub(crate) fn sign_in(ctx: &Ctx, user_data: String, mut interest: PreparedInterest) -> Step {
    let ctx = ctx.clone();
    Box::pin(async move {
        if !matches!(tokio::time::timeout(CLUSTER_WAIT, interest.ready()).await, Ok(true)) {
            metrics::counter!("herald_errors_total", "kind" => "cluster_subscribe_timeout").increment(1);
        }
        ctx.signed_in(&user_data);
    })
}
