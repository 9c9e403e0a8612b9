//! A connection's registration as a guard: dropping it (whatever ended the session: a close, an
//! error, shutdown, cancellation or a panic) unregisters the connection from its hub and announces
//! what that changed. In a cluster, the leaves and the connection count are then taken back from the
//! cluster state by a tracked task, concurrently (bounded) and each under a deadline, so a stalled
//! Redis delays nobody and shutdown waits for them within its grace.

use std::ops::Deref;
use std::sync::Arc;

use futures_util::StreamExt;

use super::cluster::CLUSTER_WAIT;
use super::commands::Ctx;
use crate::codes;

/// Cluster leaves of one closing connection that run at once.
const LEAVE_CONCURRENCY: usize = 16;

/// A registered connection; unregistered on drop.
pub(crate) struct Registered {
    ctx: Ctx,
    /// The connection is counted in the cluster's per-app connection total.
    counted: bool,
}

impl Registered {
    /// Guards `ctx`, whose connection the hub has just registered.
    pub(crate) fn new(ctx: Ctx) -> Registered {
        Registered { ctx, counted: false }
    }

    /// Counts the connection against the app's cluster-wide quota, when the app has one and this node
    /// is in a cluster. Refused: the close code and reason. If the cluster can't be asked in time, the
    /// connection is admitted on this node's own count (counted in `herald_errors_total`).
    pub(crate) async fn count_in_cluster(&mut self) -> Result<(), (u16, &'static str)> {
        let (Some(state), Some(limit)) = (self.ctx.hub.state(), self.ctx.hub.app().limits.max_connections) else {
            return Ok(());
        };
        match tokio::time::timeout(CLUSTER_WAIT, state.connect(&self.ctx.hub.app().id, limit)).await {
            Ok(Ok(true)) => {
                self.counted = true;
                Ok(())
            }
            Ok(Ok(false)) => Err((codes::OVER_QUOTA, "App is over its connection quota")),
            Ok(Err(_)) | Err(_) => {
                metrics::counter!("herald_errors_total", "kind" => "cluster_state_unavailable").increment(1);
                Ok(())
            }
        }
    }
}

impl Deref for Registered {
    type Target = Ctx;

    fn deref(&self) -> &Ctx {
        &self.ctx
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        let ctx = &self.ctx;
        let Some(state) = ctx.hub.state().cloned() else {
            for change in ctx.hub.disconnect(ctx.id) {
                ctx.front.announcer.announce(&ctx.hub, &change, None);
            }
            return;
        };
        // In a cluster the local view only decides routing; the cluster decides what to announce.
        let subscriptions = ctx.hub.subscriptions_of(ctx.id);
        ctx.hub.disconnect(ctx.id);
        if subscriptions.is_empty() && !self.counted {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        let (ctx, counted) = (ctx.clone(), self.counted);
        let tasks = ctx.front.tasks.clone();
        tasks.spawn_on(
            async move {
                futures_util::stream::iter(subscriptions)
                    .for_each_concurrent(LEAVE_CONCURRENCY, |(channel, user)| ctx.leave_clustered(channel, user, None))
                    .await;
                if counted {
                    let app: Arc<str> = Arc::from(ctx.hub.app().id.as_str());
                    if !matches!(tokio::time::timeout(CLUSTER_WAIT, state.disconnect(&app)).await, Ok(Ok(()))) {
                        metrics::counter!("herald_errors_total", "kind" => "cluster_state_unavailable").increment(1);
                    }
                }
            },
            &runtime,
        );
    }
}
