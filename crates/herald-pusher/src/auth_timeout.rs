//! Pusher's "enforce user authentication": a connection of an app with `require_user_authentication`
//! that has not signed in within `user_auth_timeout` gets `pusher:error` 4009 ("Connection not
//! authorized within timeout") and is closed with 4009.
//!
//! One task serves every such connection from a deadline heap, so a connection carries no timer of
//! its own (idle sessions stay small). The heap is bounded ([`MAX_WAITING`]); at the bound a new
//! connection's deadline is taken as already passed (it is checked at once), counted in
//! `herald_errors_total{kind="sign_in_deadlines_full"}`.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use herald_core::{Disconnect, Engine, Hub, SocketId};
use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::codes;
use crate::wire::{self, Data};

/// Connections waiting for their deadline at once, at most.
const MAX_WAITING: usize = 1 << 20;

struct Waiting {
    at: Instant,
    hub: Arc<Hub>,
    socket: SocketId,
}

impl PartialEq for Waiting {
    fn eq(&self, other: &Self) -> bool {
        self.at == other.at
    }
}
impl Eq for Waiting {}
impl PartialOrd for Waiting {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Waiting {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.at.cmp(&other.at)
    }
}

/// The deadlines of connections that must sign in.
pub(crate) struct Deadlines {
    heap: Mutex<BinaryHeap<Reverse<Waiting>>>,
    wake: Notify,
}

impl Deadlines {
    /// The deadlines and their task (tracked, ends on `shutdown` or when the engine is gone).
    pub(crate) fn start(engine: Weak<Engine>, shutdown: CancellationToken, tasks: &TaskTracker) -> Arc<Deadlines> {
        let deadlines = Arc::new(Deadlines { heap: Mutex::new(BinaryHeap::new()), wake: Notify::new() });
        tasks.spawn(run(deadlines.clone(), engine, shutdown));
        deadlines
    }

    /// `socket` of `hub` must sign in within `timeout`.
    pub(crate) fn add(&self, hub: Arc<Hub>, socket: SocketId, timeout: Duration) {
        let mut heap = self.heap.lock();
        let at = if heap.len() >= MAX_WAITING {
            metrics::counter!("herald_errors_total", "kind" => "sign_in_deadlines_full").increment(1);
            Instant::now()
        } else {
            Instant::now() + timeout
        };
        let earliest = heap.peek().is_none_or(|Reverse(first)| at < first.at);
        heap.push(Reverse(Waiting { at, hub, socket }));
        drop(heap);
        if earliest {
            self.wake.notify_one();
        }
    }

    /// Takes every entry due by `now`; returns when the next one is due.
    fn due(&self, now: Instant, out: &mut Vec<Waiting>) -> Option<Instant> {
        let mut heap = self.heap.lock();
        while heap.peek().is_some_and(|Reverse(first)| first.at <= now) {
            if let Some(Reverse(w)) = heap.pop() {
                out.push(w);
            }
        }
        heap.peek().map(|Reverse(first)| first.at)
    }
}

async fn run(this: Arc<Deadlines>, engine: Weak<Engine>, shutdown: CancellationToken) {
    let mut due = Vec::new();
    loop {
        if engine.strong_count() == 0 {
            return;
        }
        let next = this.due(Instant::now(), &mut due);
        for Waiting { hub, socket, .. } in due.drain(..) {
            expire(&hub, socket);
        }
        let wake = this.wake.notified();
        tokio::pin!(wake);
        // Registered before the heap is read again, so an `add` in between is not missed.
        wake.as_mut().enable();
        if this.heap.lock().peek().is_some_and(|Reverse(first)| first.at <= Instant::now()) {
            continue;
        }
        let sleep = async {
            match next {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = wake => {}
            _ = sleep => {}
        }
    }
}

/// Closes `socket` with 4009 unless it has signed in (or is gone).
fn expire(hub: &Hub, socket: SocketId) {
    if hub.user_of(socket).is_some() {
        return;
    }
    let data = serde_json::json!({ "code": codes::TERMINATED, "message": "Connection not authorized within timeout" });
    let Ok(raw) = serde_json::value::to_raw_value(&data) else { return };
    if hub.send_to(socket, wire::frame("pusher:error", None, Data::Raw(&raw), None)) {
        tracing::debug!(app = %hub.app().id, %socket, "closing: not signed in within the timeout");
        metrics::counter!("herald_errors_total", "kind" => "user_auth_timeout").increment(1);
        hub.close_connection(socket, Disconnect::Terminated);
    }
}
