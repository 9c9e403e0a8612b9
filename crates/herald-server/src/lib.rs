//! The Herald server: the `herald` binary's building blocks, usable as a library.
//!
//! [`Herald`] ties the engine, the Pusher front, operational endpoints (`/up`, `/health`, `/metrics`)
//! and graceful shutdown together. An axum application can mount [`Herald::router`] and publish
//! in-process with [`Herald::trigger`] (see `examples/embedded.rs`).

mod api_metrics;
pub mod config;
mod dashboard;
mod ip_limits;
mod listener;
mod metrics_http;
mod stats;
mod tls;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use herald_centrifugo::{Centrifugo, CentrifugoConfig};
use herald_core::{Disconnect, Engine};
use herald_ingest::{Ingest, IngestConfigError};
use herald_pusher::{Pusher, PusherConfig, Trigger, TriggerError};
use herald_redis::{RedisBroker, RedisBrokerError};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use config::{AppConfig, Cli, Config, ConfigError, EngineConfig, EngineKind, LogFormat, RedisUrl, Secret, DEV_APP_ID};
pub use ip_limits::IpLimits;
pub use listener::HttpConfig;
pub use tls::{Tls, TlsError, TlsFiles};

/// Why [`Herald::start`] failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The Redis engine could not start.
    #[error(transparent)]
    Redis(#[from] RedisBrokerError),
    /// A bus source is misconfigured.
    #[error("invalid source config: {0}")]
    Ingest(#[from] IngestConfigError),
}

/// A running Herald: engine, fronts, and the shutdown signal every task watches.
#[derive(Clone)]
pub struct Herald {
    pusher: Arc<Pusher>,
    centrifugo: Arc<Centrifugo>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
    http: HttpConfig,
    /// One permit per open socket accepted by [`Herald::serve`], WebSocket sessions included.
    sockets: Arc<Semaphore>,
    /// The bus sources relaying into the engine.
    ingest: Ingest,
    /// When this Herald was created (uptime in stats and metrics).
    started: Instant,
    /// The operator's token for `/stats` and the dashboard; without one they answer 404.
    admin_token: Option<Arc<str>>,
    /// TLS for [`Herald::serve`]'s listener, when configured.
    tls: Option<Arc<Tls>>,
}

impl Herald {
    /// A Herald serving `apps` with the in-memory engine and the default [`HttpConfig`]: each
    /// [`AppConfig`]'s engine app goes to the engine, its Pusher settings to the Pusher front, its
    /// Centrifugo settings to the Centrifugo front (with [`CentrifugoConfig`]'s defaults, sharing the
    /// Pusher front's connection cap and write timeout).
    pub fn new(apps: Vec<AppConfig>, pusher: PusherConfig) -> Herald {
        let centrifugo = CentrifugoConfig {
            max_connections: pusher.max_connections,
            write_timeout: pusher.write_timeout,
            ..CentrifugoConfig::default()
        };
        Herald::with_fronts(apps, pusher, centrifugo)
    }

    /// A Herald serving `apps` with both fronts' settings given.
    pub fn with_fronts(apps: Vec<AppConfig>, pusher: PusherConfig, centrifugo: CentrifugoConfig) -> Herald {
        metrics_http::install();
        let mut engine_apps = Vec::with_capacity(apps.len());
        let mut pusher_apps = Vec::with_capacity(apps.len());
        let mut centrifugo_apps = Vec::with_capacity(apps.len());
        for a in apps {
            engine_apps.push(a.app);
            pusher_apps.push(a.pusher);
            centrifugo_apps.push(a.centrifugo);
        }
        let engine = Arc::new(Engine::new(engine_apps));
        let shutdown = CancellationToken::new();
        let tasks = TaskTracker::new();
        let sockets = Arc::new(Semaphore::new(pusher.max_connections.min(Semaphore::MAX_PERMITS)));
        let pusher = Pusher::new(engine.clone(), pusher_apps, pusher, shutdown.clone(), tasks.clone());
        let centrifugo = Centrifugo::new(engine, centrifugo_apps, centrifugo, shutdown.clone(), tasks.clone());
        metrics_http::register_zero_series(pusher.engine());
        Herald {
            pusher,
            centrifugo,
            shutdown,
            tasks,
            http: HttpConfig::default(),
            sockets,
            ingest: Ingest::default(),
            started: Instant::now(),
            admin_token: None,
            tls: None,
        }
    }

    /// Serves TLS (`wss://`, `https://`) with this certificate; see [`Herald::reload_tls`].
    pub fn with_tls(mut self, tls: Arc<Tls>) -> Herald {
        self.tls = Some(tls);
        self
    }

    /// Reads the TLS certificate and key again: new connections use them, established ones keep
    /// theirs. `Ok(false)` without TLS; on error the current certificate stays.
    pub fn reload_tls(&self) -> Result<bool, TlsError> {
        match &self.tls {
            Some(tls) => tls.reload().map(|()| true),
            None => Ok(false),
        }
    }

    /// Reloads the TLS certificate on every SIGHUP until shutdown (a tracked task), logging the
    /// outcome. Without TLS, or off Unix, does nothing.
    pub fn reload_tls_on_hangup(&self) {
        #[cfg(unix)]
        if self.tls.is_some() {
            let Ok(mut hangup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else { return };
            let (herald, shutdown) = (self.clone(), self.shutdown.clone());
            self.tasks.spawn(async move {
                loop {
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        got = hangup.recv() => if got.is_none() { return },
                    }
                    match herald.reload_tls() {
                        Ok(_) => tracing::info!("TLS certificate reloaded"),
                        Err(e) => tracing::error!(error = %e, "TLS reload failed; keeping the current certificate"),
                    }
                }
            });
        }
    }

    /// Enables `/stats` (and the dashboard) for requests carrying `Authorization: Bearer {token}`.
    pub fn with_admin_token(mut self, token: Option<String>) -> Herald {
        self.admin_token = token.filter(|t| !t.is_empty()).map(Arc::from);
        self
    }

    /// Replaces the HTTP server limits [`Herald::serve`] applies.
    pub fn with_http(mut self, http: HttpConfig) -> Herald {
        self.http = http;
        self
    }

    /// A Herald from a resolved [`Config`], with its engine started (for Redis: connected, so a wrong
    /// URL fails here, at start-up).
    pub async fn start(config: &Config) -> Result<Herald, StartError> {
        let mut herald = Herald::with_fronts(config.apps.clone(), config.pusher.clone(), config.centrifugo.clone())
            .with_http(config.http.clone())
            .with_admin_token(config.admin_token.clone().map(|t| t.0));
        if !config.latency_histograms {
            for hub in herald.pusher.engine().hubs() {
                hub.latency().set_recording(false);
            }
        }
        if let EngineConfig::Redis(redis) = &config.engine {
            RedisBroker::start(redis.clone(), herald.pusher.engine(), herald.shutdown.clone(), &herald.tasks).await?;
        }
        herald.ingest = Ingest::start(&config.sources, herald.pusher.engine(), &herald.shutdown, &herald.tasks)?;
        Ok(herald)
    }

    /// The bus sources relaying into the engine.
    pub fn ingest(&self) -> &Ingest {
        &self.ingest
    }

    /// Every route: the Pusher protocol and API, the Centrifugo client protocol, plus `/up`, `/health`,
    /// `/metrics`, `/stats` and `/dashboard`.
    ///
    /// An application that serves this router with its own `axum::serve` gets the API's own limits
    /// (body size and body deadline, signatures, the process connection cap on WebSocket sessions)
    /// but none of the connection-level protections of [`Herald::serve`]: no header or idle timeout
    /// (silent and slowloris sockets are held forever), no cap on sockets before their upgrade, no
    /// `TCP_NODELAY`. Serve a combined router with [`Herald::serve_router`] to get them.
    pub fn router(&self) -> Router {
        let ops = Router::new()
            .route("/up", get(health))
            .route("/health", get(health))
            .route("/metrics", get(metrics_http::render))
            .merge(stats::routes())
            .merge(dashboard::routes())
            .with_state(self.clone());
        let engine = Arc::downgrade(self.pusher.engine());
        let api = self.pusher.router().layer(axum::middleware::from_fn(move |req, next| api_metrics::count(engine.clone(), req, next)));
        api.merge(self.centrifugo.router()).merge(ops)
    }

    /// Publishes in-process, as `POST /apps/{id}/events` does.
    pub async fn trigger(&self, app_id: &str, trigger: &Trigger<'_>) -> Result<usize, TriggerError> {
        self.pusher.trigger(app_id, trigger).await
    }

    /// The Pusher front (for its engine and API).
    pub fn pusher(&self) -> &Arc<Pusher> {
        &self.pusher
    }

    /// The Centrifugo front.
    pub fn centrifugo(&self) -> &Arc<Centrifugo> {
        &self.centrifugo
    }

    /// The token that, when cancelled, starts a graceful shutdown.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Serves [`Herald::router`] on `listener` until `signal` completes, then drains: stops accepting,
    /// lets in-flight HTTP requests finish, asks every client to reconnect elsewhere (4200), and waits
    /// up to `grace` for sessions to finish.
    ///
    /// Connections get the limits of [`HttpConfig`] (a deadline for each request head, which also
    /// closes silent and idle sockets), every accepted socket counts against
    /// `PusherConfig::max_connections` from accept until it closes (at the cap new sockets are closed
    /// at once), and every accepted socket has `TCP_NODELAY`.
    pub async fn serve(
        self,
        listener: TcpListener,
        signal: impl Future<Output = ()> + Send + 'static,
        grace: Duration,
    ) -> std::io::Result<()> {
        let router = self.router();
        self.serve_router(listener, router, signal, grace).await
    }

    /// Like [`Herald::serve`], with an application's own router (which should include
    /// [`Herald::router`]): the embedding pattern with Herald's connection-level protections.
    pub async fn serve_router(
        self,
        listener: TcpListener,
        router: Router,
        signal: impl Future<Output = ()> + Send + 'static,
        grace: Duration,
    ) -> std::io::Result<()> {
        let token = self.shutdown.clone();
        tokio::spawn({
            let token = token.clone();
            async move {
                tokio::select! {
                    _ = signal => token.cancel(),
                    _ = token.cancelled() => {}
                }
            }
        });
        listener::run(listener, router, self.http.clone(), self.sockets.clone(), self.tls.clone(), token, self.tasks.clone()).await;
        self.drain(grace).await;
        Ok(())
    }

    /// Drains every session: asks clients to reconnect elsewhere (4200) and waits up to `grace` for
    /// their sessions to finish. Call it after the HTTP server has stopped accepting; [`Herald::serve`]
    /// does this itself, an embedding application calls it after its own `axum::serve` returns.
    pub async fn drain(&self, grace: Duration) {
        self.shutdown.cancel();
        let asked = self.pusher.engine().close_all(Disconnect::Shutdown);
        self.tasks.close();
        tracing::info!(connections = asked, "draining");
        let engine = self.pusher.engine();
        let open = || engine.hubs().map(|h| h.connection_count()).sum::<usize>();
        if tokio::time::timeout(grace, self.tasks.wait()).await.is_err() {
            let left = open();
            tracing::warn!(drained = asked.saturating_sub(left), remaining = left, tasks = self.tasks.len(), "drain timed out");
        } else {
            tracing::info!(drained = asked, "drained");
        }
    }
}

async fn health(State(herald): State<Herald>) -> Json<serde_json::Value> {
    let engine = herald.pusher.engine();
    let connections: usize = engine.hubs().map(|h| h.connection_count()).sum();
    let broker = engine.broker();
    let backend_up = broker.is_none_or(|b| b.healthy());
    let sources_up = herald.ingest.healthy();
    let status = if herald.shutdown.is_cancelled() {
        "draining"
    } else if !backend_up || !sources_up {
        "degraded"
    } else {
        "ok"
    };
    let mut body = serde_json::json!({
        "status": status,
        "engine": broker.map_or("memory", |b| b.name()),
        "connections": connections,
    });
    if broker.is_some() {
        body["backend"] = serde_json::json!(if backend_up { "up" } else { "down" });
    }
    if !herald.ingest.sources().is_empty() {
        let sources: serde_json::Map<String, serde_json::Value> = herald
            .ingest
            .sources()
            .iter()
            .map(|s| (s.name().to_owned(), serde_json::json!({ "kind": s.kind(), "bus": if s.is_up() { "up" } else { "down" } })))
            .collect();
        body["sources"] = serde_json::Value::Object(sources);
    }
    Json(body)
}
