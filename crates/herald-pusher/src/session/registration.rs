//! A connection's registration as a guard: dropping it (whatever ended the session: a close, an
//! error, shutdown, cancellation or a panic) unregisters the connection from its hub and announces
//! what that changed. In a cluster, the leaves and the connection count are then taken back from the
//! cluster state by a tracked task, concurrently (bounded) and each under a deadline, so a stalled
//! Redis delays nobody and shutdown waits for them within its grace.

use std::ops::Deref;

use herald_core::Admission;

use super::commands::Ctx;
use crate::codes;

/// A registered connection; unregistered on drop.
pub(crate) struct Registered {
    ctx: Ctx,
    /// The connection is counted in the cluster's per-app connection total.
    counted: bool,
}

impl Registered {
    /// Guards `ctx`, whose connection the hub has just registered.
    pub(crate) fn new(ctx: Ctx) -> Registered {
        if ctx.app.require_user_authentication {
            ctx.front.sign_in_deadlines.add(ctx.hub.clone(), ctx.id, ctx.app.user_auth_timeout);
        }
        Registered { ctx, counted: false }
    }

    /// Counts the connection against the app's cluster-wide quota ([`herald_core::Hub::admit`]).
    /// Refused: the close code and reason.
    pub(crate) async fn count_in_cluster(&mut self) -> Result<(), (u16, &'static str)> {
        match self.ctx.hub.admit().await {
            Admission::Counted => self.counted = true,
            Admission::Uncounted => {}
            Admission::OverQuota => return Err((codes::OVER_QUOTA, "App is over its connection quota")),
        }
        Ok(())
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
        // In a cluster, what the connection held is taken back from Redis on a tracked task.
        let Some(departure) = ctx.hub.depart(ctx.id, self.counted) else { return };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        let hub = ctx.hub.clone();
        ctx.front.tasks.spawn_on(async move { hub.settle(departure).await }, &runtime);
    }
}

#[cfg(test)]
mod tests {
    use std::panic::AssertUnwindSafe;
    use std::sync::Arc;

    use bytes::Bytes;
    use herald_core::{App, Drained, Engine, MemberJoin};
    use tokio_util::sync::CancellationToken;
    use tokio_util::task::TaskTracker;

    use super::*;
    use crate::{Pusher, PusherApp, PusherConfig};

    fn member(user: &str) -> Option<MemberJoin> {
        Some(MemberJoin { user_id: Arc::from(user), info: Bytes::new() })
    }

    /// Frames queued for `outbox` so far, as text.
    async fn drained(outbox: &herald_core::Outbox) -> String {
        let mut batch = Vec::new();
        if !outbox.is_empty() {
            assert_eq!(outbox.drain(&mut batch).await, Drained::Frames);
        }
        batch.iter().map(|f| String::from_utf8_lossy(f).into_owned()).collect()
    }

    #[tokio::test]
    async fn registration_is_released_on_panic_and_cancellation() {
        let engine = Arc::new(Engine::new(vec![App::dev()]));
        let front =
            Pusher::new(engine.clone(), vec![PusherApp::dev()], PusherConfig::default(), CancellationToken::new(), TaskTracker::new());
        let hub = engine.by_id("app-id").unwrap().clone();
        let (watcher, watcher_box) = hub.connect_with(front.codec).unwrap();
        hub.subscribe(watcher, "presence-room", member("watcher")).unwrap();

        // A session that panics while registered and present.
        let (id, outbox) = hub.connect().unwrap();
        hub.subscribe(id, "presence-room", member("ghost")).unwrap();
        let registered = Registered::new(Ctx::new(front.clone(), hub.clone(), Arc::new(PusherApp::dev()), id, outbox));
        let panicked = std::panic::catch_unwind(AssertUnwindSafe(move || {
            let _registered = registered;
            panic!("a bug in a session");
        }));
        assert!(panicked.is_err());
        assert_eq!(hub.connection_count(), 1, "the panicked connection is gone");
        assert_eq!(hub.members("presence-room").unwrap().len(), 1, "its member is gone");
        assert!(drained(&watcher_box).await.contains("member_removed"), "and the others were told");

        // A session whose task is cancelled (aborted) while registered.
        let (id, outbox) = hub.connect().unwrap();
        hub.subscribe(id, "news", None).unwrap();
        let registered = Registered::new(Ctx::new(front.clone(), hub.clone(), Arc::new(PusherApp::dev()), id, outbox));
        let task = tokio::spawn(async move {
            let _registered = registered;
            std::future::pending::<()>().await
        });
        task.abort();
        assert!(task.await.unwrap_err().is_cancelled());
        assert_eq!(hub.connection_count(), 1);
        assert!(hub.channel("news").is_none());
    }
}
