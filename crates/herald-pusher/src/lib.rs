//! Herald's Pusher Channels v7 front: the WebSocket protocol, auth signatures and the HTTP API.
//!
//! This crate translates between the Pusher wire format and the engine (`herald-core`). It owns the
//! Pusher close and error codes and maps engine errors to them; the engine never sees JSON.
//!
//! Each app's key, secret and protocol switches are this crate's [`PusherApp`]; the engine knows apps
//! only by id.
//!
//! Mount [`Pusher::router`] in an axum application, or publish in-process with [`Pusher::trigger`].

pub mod api;
mod app;
pub mod auth;
mod auth_timeout;
pub mod channel;
pub mod codec;
pub mod codes;
mod events;
pub mod publish;
mod session;
pub mod webhooks;
pub mod wire;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use futures_util::future::Either;
use herald_core::ratelimit::{RateLimit, SlidingWindow};
use herald_core::{CodecId, Engine, KeepalivePolicy};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

pub use app::{PusherApp, DEFAULT_API_REQUESTS_PER_MINUTE, USER_AUTH_TIMEOUT};
pub use codec::PusherCodec;
pub use publish::{PublishError, Trigger};
pub use webhooks::{WebhookTarget, Webhooks};

use app::Apps;
use events::Announcer;
use herald_ws::WsUpgrade;

/// The name this front's delivery latencies are recorded under (`front` label of
/// `herald_delivery_latency_seconds`).
pub const LATENCY_FRONT: &str = "pusher";

/// Settings of the Pusher front that are not per app.
#[derive(Debug, Clone)]
pub struct PusherConfig {
    /// Announced to clients; the server pings a connection silent for this long.
    pub activity_timeout: Duration,
    /// How long to wait for any reply to a server ping before closing with 4201.
    pub pong_timeout: Duration,
    /// Largest HTTP API request body, in bytes (413 beyond).
    pub max_request_body: usize,
    /// Connections this process accepts across all apps; beyond it new sessions are refused with 4004.
    /// herald-server's `Herald::serve` also counts sockets from accept (before their upgrade) against
    /// it and closes new sockets at the cap.
    pub max_connections: usize,
    /// How long an HTTP API request may take to deliver its body once its head has arrived (408
    /// beyond), so stalled bodies do not hold memory.
    pub body_timeout: Duration,
    /// Webhook targets by app id.
    pub webhooks: HashMap<String, Vec<WebhookTarget>>,
    /// How long a connection may take to accept one batch of frames; a client that stops reading is
    /// disconnected after it (counted as a slow consumer).
    pub write_timeout: Duration,
}

impl Default for PusherConfig {
    fn default() -> Self {
        PusherConfig {
            activity_timeout: Duration::from_secs(120),
            pong_timeout: Duration::from_secs(30),
            max_request_body: 256 * 1024,
            max_connections: 1_000_000,
            body_timeout: Duration::from_secs(10),
            webhooks: HashMap::new(),
            write_timeout: Duration::from_secs(10),
        }
    }
}

/// A refusal decided before the WebSocket handler runs (e.g. by the server's per-IP limits), carried
/// as a request extension: the connect handler refuses the upgrade with this `pusher:error` and close
/// code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectRefusal {
    code: u16,
    message: &'static str,
}

impl ConnectRefusal {
    /// A refusal with this Pusher close code and message.
    pub const fn new(code: u16, message: &'static str) -> Self {
        ConnectRefusal { code, message }
    }

    /// The close code.
    pub fn code(&self) -> u16 {
        self.code
    }

    /// The message.
    pub fn message(&self) -> &'static str {
        self.message
    }
}

/// Why an in-process trigger failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TriggerError {
    /// No app has this id.
    #[error("unknown app {0:?}")]
    UnknownApp(String),
    /// The event was refused.
    #[error(transparent)]
    Publish(#[from] PublishError),
}

/// The Pusher front: shared by every connection and API request.
pub struct Pusher {
    engine: Arc<Engine>,
    /// Each app's key, secret and switches.
    apps: Arc<Apps>,
    config: PusherConfig,
    shutdown: CancellationToken,
    tasks: TaskTracker,
    admission: Arc<Semaphore>,
    announcer: Arc<Announcer>,
    /// The codec every Pusher connection is registered with.
    codec: CodecId,
    /// Each rate-limited app's HTTP API window.
    api_rate: HashMap<String, parking_lot::Mutex<SlidingWindow>>,
    /// Connections of apps that require sign-in, waiting for it.
    sign_in_deadlines: Arc<auth_timeout::Deadlines>,
}

impl Pusher {
    /// A front over `engine` serving `apps` (each names an engine app by id; one the engine does not
    /// have is logged and never found). Sessions are spawned on `tasks` and close with 4200 when
    /// `shutdown` fires.
    pub fn new(
        engine: Arc<Engine>,
        apps: Vec<PusherApp>,
        config: PusherConfig,
        shutdown: CancellationToken,
        tasks: TaskTracker,
    ) -> Arc<Self> {
        for app in apps.iter().filter(|app| engine.by_id(&app.id).is_none()) {
            tracing::warn!(app = %app.id, "Pusher settings for an app the engine does not serve; ignored");
        }
        let apps = Arc::new(Apps::new(apps.into_iter().filter(|app| engine.by_id(&app.id).is_some())));
        let admission = Arc::new(Semaphore::new(config.max_connections.min(Semaphore::MAX_PERMITS)));
        let webhooks = Webhooks::start(apps.iter().map(|app| &**app), &config.webhooks, shutdown.clone(), &tasks);
        let announcer = Arc::new(Announcer::new(webhooks, apps.clone()));
        // Every change the engine announces (decided by a session here, or found by the engine itself:
        // a dead node reaped) reaches webhooks and subscription counts.
        engine.listen(announcer.clone());
        let codec = engine.register_codec(Arc::new(PusherCodec)).expect("the engine has room for the Pusher codec");
        // Each app's delivery-latency histogram for this front exists from the start (sessions look it
        // up lock-free with `hub.latency().get(LATENCY_FRONT)` after each written batch).
        for hub in engine.hubs() {
            hub.latency().front(LATENCY_FRONT);
        }
        tasks.spawn(flush_counts(announcer.clone(), Arc::downgrade(&engine), shutdown.clone()));
        let keepalive = KeepalivePolicy {
            codec,
            idle: config.activity_timeout,
            pong_timeout: config.pong_timeout,
            ping: wire::frame_json("pusher:ping", None, &serde_json::json!({})),
        };
        tasks.spawn(keep_alive(keepalive, Arc::downgrade(&engine), shutdown.clone()));
        let api_rate = apps
            .iter()
            .filter_map(|app| {
                let limit = app.api_requests_per_minute?;
                let window = SlidingWindow::new(RateLimit { limit, window: Duration::from_secs(60) });
                Some((app.id.clone(), parking_lot::Mutex::new(window)))
            })
            .collect();
        let sign_in_deadlines = auth_timeout::Deadlines::start(Arc::downgrade(&engine), shutdown.clone(), &tasks);
        Arc::new(Pusher { engine, apps, config, shutdown, tasks, admission, announcer, codec, api_rate, sign_in_deadlines })
    }

    /// The engine this front serves.
    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    /// The routes: `GET /app/{key}` (WebSocket) and the `/apps/{id}/...` HTTP API.
    pub fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/app/{key}", get(connect))
            .merge(api::routes())
            .layer(DefaultBodyLimit::max(self.config.max_request_body))
            .with_state(self.clone())
    }

    /// The Pusher settings (key, secret, switches) of the app with this id.
    pub fn app(&self, id: &str) -> Option<Arc<PusherApp>> {
        self.apps.by_id(id).cloned()
    }

    /// Counts one HTTP API request of app `app_id` against its rate limit; refused: how long until
    /// one would be admitted.
    pub(crate) fn api_rate(&self, app_id: &str) -> Result<(), Duration> {
        match self.api_rate.get(app_id) {
            Some(window) => window.lock().try_acquire(),
            None => Ok(()),
        }
    }

    /// Publishes an event in-process, exactly as `POST /apps/{id}/events` would. Returns how many
    /// connections it was queued to.
    pub async fn trigger(&self, app_id: &str, trigger: &Trigger<'_>) -> Result<usize, TriggerError> {
        let hub = self.engine.by_id(app_id).ok_or_else(|| TriggerError::UnknownApp(app_id.to_string()))?;
        Ok(publish::trigger(hub, trigger).await?)
    }
}

/// Sends coalesced subscription counts every [`events::COUNT_INTERVAL`] until shutdown.
async fn flush_counts(announcer: Arc<Announcer>, engine: std::sync::Weak<Engine>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(events::COUNT_INTERVAL);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let Some(engine) = engine.upgrade() else { return };
        announcer.flush(&engine);
    }
}

/// Pings idle Pusher connections and closes those that don't answer (one sweep for all of them, see
/// [`herald_core::KeepalivePolicy`]); at shutdown, asks every connection to close (4200), so sessions
/// need no timer and no shutdown future of their own.
async fn keep_alive(policy: KeepalivePolicy, engine: std::sync::Weak<Engine>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(policy.sweep_interval());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => {
                if let Some(engine) = engine.upgrade() {
                    engine.close_all(herald_core::Disconnect::Shutdown);
                }
                return;
            }
            _ = tick.tick() => {}
        }
        let Some(engine) = engine.upgrade() else { return };
        let now = herald_core::activity_clock();
        for hub in engine.hubs() {
            let swept = hub.keepalive(&policy, now);
            if swept.closed > 0 {
                metrics::counter!("herald_pong_timeouts_total", "app" => hub.app().id.to_string()).increment(swept.closed as u64);
            }
        }
    }
}

/// Checks the `protocol` query parameter: 5 to 7 are spoken.
fn check_protocol(protocol: Option<&String>) -> Result<(), (u16, &'static str)> {
    let Some(p) = protocol else { return Err((codes::NO_PROTOCOL, "No protocol version supplied")) };
    match p.parse::<u32>() {
        Err(_) => Err((codes::INVALID_VERSION, "Invalid version string format")),
        Ok(5..=7) => Ok(()),
        Ok(_) => Err((codes::UNSUPPORTED_PROTOCOL, "Unsupported protocol version")),
    }
}

async fn connect(
    State(front): State<Arc<Pusher>>,
    Path(key): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    mut request: Request,
) -> Response {
    let upgrade = match WsUpgrade::from_request(&mut request, &[]) {
        Ok(upgrade) => upgrade,
        Err(response) => return response,
    };
    // The app's hub and Pusher settings (settings without a hub were dropped in `Pusher::new`).
    let app = front.apps.by_key(&key).and_then(|app| Some((front.engine.by_id(&app.id)?.clone(), app.clone())));
    let hub = app.as_ref().map(|(hub, _)| hub);
    let max_message = hub.map_or(16 * 1024, |h| h.app().limits.max_event_size.saturating_mul(2).saturating_add(4096));
    // What may wait in tungstenite's write buffer: one batch plus the connection's outbox bound, so
    // a client that never reads (and floods pings) can't grow it without limit.
    let outbox_bytes = hub.map_or(0, |h| h.app().limits.outbox.max_bytes);
    let early = request.extensions().get::<ConnectRefusal>().copied();
    let refusal: Option<(u16, String)> = if let Some(early) = early {
        Some((early.code, early.message.to_string()))
    } else if front.shutdown.is_cancelled() {
        Some((codes::RECONNECT_NOW, "Server is shutting down".into()))
    } else if app.is_none() {
        Some((codes::APP_NOT_FOUND, format!("App key {key} does not exist")))
    } else {
        check_protocol(query.get("protocol")).err().map(|(c, m)| (c, m.to_string()))
    };
    let permit = front.admission.clone().try_acquire_owned().ok();
    // A small read buffer: Pusher client frames are small, tungstenite grows it for larger ones, and
    // every idle connection keeps it (see ARCHITECTURE.md, memory per connection).
    let config = herald_ws::config(max_message, outbox_bytes);
    let tasks = front.tasks.clone();
    upgrade.accept(config, &tasks, move |socket| {
        // Registration is synchronous and the session future is not wrapped in further async blocks:
        // the task holds this future for the connection's whole life.
        let opened = match (refusal, app, permit) {
            (Some(refusal), _, _) => Err(refusal),
            (None, Some((hub, app)), Some(permit)) => session::open(front, hub, app, permit),
            (None, _, _) => Err((codes::OVER_QUOTA, "Server is at its connection limit".to_string())),
        };
        match opened {
            Ok(session) => {
                let span = session.span();
                let socket = session.share(socket);
                Either::Left(session.serve(socket).instrument(span))
            }
            // Boxed: a refusal is rare, and inline it would size every session's task.
            Err((code, message)) => Either::Right(Box::pin(async move { session::refuse(socket, code, &message).await })),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocol_versions() {
        assert_eq!(check_protocol(Some(&"7".into())), Ok(()));
        assert_eq!(check_protocol(None).unwrap_err().0, codes::NO_PROTOCOL);
        assert_eq!(check_protocol(Some(&"x".into())).unwrap_err().0, codes::INVALID_VERSION);
        assert_eq!(check_protocol(Some(&"3".into())).unwrap_err().0, codes::UNSUPPORTED_PROTOCOL);
    }
}
