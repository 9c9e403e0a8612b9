//! Herald's Centrifugo front: the Centrifugo client protocol v2 (JSON, and protobuf with the
//! `centrifuge-protobuf` subprotocol) over WebSocket, on the same engine and channels as the Pusher
//! front, so centrifuge-js and pusher-js clients share channels, presence and publications.
//!
//! This crate translates between Centrifugo's wire format and the engine (`herald-core`): it owns the
//! protocol's error and disconnect codes, its JWT rules and channel options (namespaces with
//! Centrifugo v5's option names). The engine never sees JSON or protobuf.
//!
//! Each app's token keys, API key and channel options are this crate's [`CentrifugoApp`]; the engine
//! knows apps only by id. Mount [`Centrifugo::router`] in an axum application.

mod app;
pub mod codec;
pub mod codes;
pub mod json;
pub mod options;
pub mod protobuf;
pub mod protocol;
mod session;
pub mod token;
mod upgrade;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Request, State};
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use futures_util::future::Either;
use herald_core::{CodecId, Engine};
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

pub use app::CentrifugoApp;
pub use codec::{JsonCodec, ProtobufCodec};
pub use options::{ChannelOptions, Namespace};
pub use token::{KeyError, TokenError, Verifier};

use app::{Apps, ReadyApp};
use upgrade::WsUpgrade;

/// Settings of the Centrifugo front that are not per app.
#[derive(Debug, Clone)]
pub struct CentrifugoConfig {
    /// How often the server pings a connected client (Centrifugo's `ping_interval`, 25 s). A client
    /// that sent nothing, not even a pong, for a whole interval after a ping is closed with 3012.
    pub ping_interval: Duration,
    /// How long a client may take to send its `connect` command (3502 "stale" after it).
    pub stale_timeout: Duration,
    /// How long a connection whose token expired may stay without a refresh (Centrifugo's 25 s).
    pub expired_grace: Duration,
    /// Connections this front accepts across all apps; beyond it new sessions are closed with 3504.
    pub max_connections: usize,
    /// How long a connection may take to accept one batch of frames (then: a slow consumer).
    pub write_timeout: Duration,
    /// Largest client frame in bytes (1009 beyond).
    pub max_frame: usize,
}

impl Default for CentrifugoConfig {
    fn default() -> Self {
        CentrifugoConfig {
            ping_interval: Duration::from_secs(25),
            stale_timeout: Duration::from_secs(10),
            expired_grace: Duration::from_secs(25),
            max_connections: 1_000_000,
            write_timeout: Duration::from_secs(10),
            max_frame: 64 * 1024,
        }
    }
}

/// The Centrifugo front: shared by every connection.
pub struct Centrifugo {
    engine: Arc<Engine>,
    apps: Arc<Apps>,
    config: CentrifugoConfig,
    shutdown: CancellationToken,
    tasks: TaskTracker,
    admission: Arc<Semaphore>,
    /// The codec JSON connections are registered with.
    json: CodecId,
    /// The codec protobuf connections are registered with.
    protobuf: CodecId,
}

/// The encoding of one connection, chosen by its WebSocket subprotocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Encoding {
    /// JSON text frames.
    Json,
    /// Varint-delimited protobuf in binary frames (`centrifuge-protobuf`).
    Protobuf,
}

impl Encoding {
    pub(crate) fn reply(self, id: u32, reply: &protocol::Reply) -> bytes::Bytes {
        match self {
            Encoding::Json => json::encode_reply(id, reply),
            Encoding::Protobuf => protobuf::encode_reply(id, reply),
        }
    }

    pub(crate) fn ping(self) -> bytes::Bytes {
        bytes::Bytes::from_static(match self {
            Encoding::Json => json::PING,
            Encoding::Protobuf => protobuf::PING,
        })
    }

    /// The commands of one frame (text for JSON, binary for protobuf).
    pub(crate) fn decode(self, frame: &[u8]) -> (Vec<protocol::Command>, Option<json::DecodeError>) {
        match self {
            Encoding::Json => match std::str::from_utf8(frame) {
                Ok(text) => json::decode_frame(text),
                Err(_) => (Vec::new(), Some(json::DecodeError::Invalid("not UTF-8".into()))),
            },
            Encoding::Protobuf => protobuf::decode_frame(frame),
        }
    }
}

impl Centrifugo {
    /// A front over `engine` serving `apps` (each names an engine app by id; settings for an app the
    /// engine does not have are logged and ignored). Sessions are spawned on `tasks` and close with
    /// 3001 when `shutdown` fires. An app whose public key can't be read is logged and not served
    /// (check keys at start-up with [`Verifier::new`]: herald-server's config does).
    pub fn new(
        engine: Arc<Engine>,
        apps: Vec<CentrifugoApp>,
        config: CentrifugoConfig,
        shutdown: CancellationToken,
        tasks: TaskTracker,
    ) -> Arc<Self> {
        let mut ready = Vec::new();
        for app in apps {
            if engine.by_id(&app.id).is_none() {
                tracing::warn!(app = %app.id, "Centrifugo settings for an app the engine does not serve; ignored");
                continue;
            }
            match ReadyApp::new(app) {
                Ok(app) => ready.push(app),
                Err(e) => tracing::error!(error = %e, "Centrifugo settings refused; the app is not served on this front"),
            }
        }
        let admission = Arc::new(Semaphore::new(config.max_connections.min(Semaphore::MAX_PERMITS)));
        let json = engine.register_codec(Arc::new(JsonCodec)).expect("the engine has room for the Centrifugo JSON codec");
        let protobuf = engine.register_codec(Arc::new(ProtobufCodec)).expect("the engine has room for the Centrifugo protobuf codec");
        Arc::new(Centrifugo { engine, apps: Arc::new(Apps::new(ready)), config, shutdown, tasks, admission, json, protobuf })
    }

    /// The engine this front serves.
    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    /// The routes: `GET /connection/websocket` (the default app: the first configured) and
    /// `GET /apps/{id}/connection/websocket`.
    pub fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/connection/websocket", get(connect_default))
            .route("/apps/{id}/connection/websocket", get(connect_app))
            .with_state(self.clone())
    }
}

async fn connect_default(State(front): State<Arc<Centrifugo>>, request: Request) -> Response {
    let app = front.apps.default_app().cloned();
    connect(front, app, request)
}

async fn connect_app(State(front): State<Arc<Centrifugo>>, Path(id): Path<String>, request: Request) -> Response {
    let app = front.apps.by_id(&id).cloned();
    connect(front, app, request)
}

fn connect(front: Arc<Centrifugo>, app: Option<Arc<ReadyApp>>, mut request: Request) -> Response {
    let upgrade = match WsUpgrade::from_request(&mut request) {
        Ok(upgrade) => upgrade,
        Err(response) => return response,
    };
    let protobuf = upgrade.protobuf;
    let app = app.and_then(|app| Some((front.engine.by_id(&app.settings.id)?.clone(), app)));
    let max_frame = front.config.max_frame;
    let max_write = WRITE_BATCH.saturating_add(app.as_ref().map_or(64 * 1024, |(h, _)| h.app().limits.outbox.max_bytes.max(64 * 1024)));
    let refusal: Option<codes::DisconnectCode> = if front.shutdown.is_cancelled() {
        Some(codes::SHUTDOWN)
    } else if app.is_none() {
        Some((3503, "unknown app"))
    } else {
        None
    };
    let permit = front.admission.clone().try_acquire_owned().ok();
    let config = WebSocketConfig::default()
        .max_message_size(Some(max_frame))
        .max_frame_size(Some(max_frame))
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BATCH)
        .max_write_buffer_size(max_write);
    let tasks = front.tasks.clone();
    upgrade.accept(config, &tasks, move |socket| {
        let opened = match (refusal, app, permit) {
            (Some(refusal), _, _) => Err(refusal),
            (None, Some((hub, app)), Some(permit)) => {
                session::open(front, hub, app, permit, if protobuf { Encoding::Protobuf } else { Encoding::Json })
            }
            (None, _, _) => Err(codes::CONNECTION_LIMIT),
        };
        match opened {
            Ok(session) => {
                let span = session.span();
                Either::Left(session.serve(socket).instrument(span))
            }
            Err(refusal) => Either::Right(session::refuse(socket, refusal)),
        }
    })
}

/// Bytes tungstenite reads at a time (and keeps per connection).
const READ_BUFFER: usize = 256;
/// Queued outgoing bytes after which tungstenite writes without waiting for a flush.
const WRITE_BATCH: usize = 8192;

/// The version the server reports in connect replies.
pub const VERSION: &str = concat!("herald ", env!("CARGO_PKG_VERSION"));
