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

pub mod api;
mod app;
pub mod codec;
pub mod codes;
pub mod json;
pub mod jwks;
pub mod options;
pub mod protobuf;
pub mod protocol;
pub mod ratelimit;
mod session;
pub mod token;
pub mod viewers;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, Request, State};
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use futures_util::future::Either;
use herald_core::{CodecId, Engine};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

pub use app::CentrifugoApp;
pub use codec::{JsonCodec, ProtobufCodec, UniJsonCodec};
pub use options::{ChannelOptions, Namespace};
pub use ratelimit::PublishLimits;
pub use token::{KeyError, TokenError, Verifier};

use app::{Apps, ReadyApp};
use herald_ws::WsUpgrade;

/// The subprotocol protobuf clients ask for.
pub const PROTOBUF_SUBPROTOCOL: &str = "centrifuge-protobuf";

/// The front's name in the delivery latency histograms (`hub.latency().front(LATENCY_FRONT)`, the
/// `front` label of `herald_delivery_latency_seconds`).
pub const LATENCY_FRONT: &str = "centrifugo";

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
    /// The codec unidirectional (JSON) connections are registered with.
    uni: CodecId,
}

/// Largest frame [`Encoding::join`] makes of several replies.
pub(crate) const MAX_JOINED_FRAME: usize = 64 * 1024;

/// The encoding of one connection, chosen by its WebSocket subprotocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Encoding {
    /// JSON text frames.
    Json,
    /// Varint-delimited protobuf in binary frames (`centrifuge-protobuf`).
    Protobuf,
    /// A unidirectional connection: a connect request in, JSON pushes out.
    UniJson,
}

impl Encoding {
    /// A reply's frame; `None` where this encoding has none (a unidirectional client gets only its
    /// connect result).
    pub(crate) fn reply(self, id: u32, reply: &protocol::Reply) -> Option<bytes::Bytes> {
        match (self, reply) {
            (Encoding::Json, _) => Some(json::encode_reply(id, reply)),
            (Encoding::Protobuf, _) => Some(protobuf::encode_reply(id, reply)),
            (Encoding::UniJson, protocol::Reply::Connect(result)) => Some(json::encode_uni_connect(result)),
            (Encoding::UniJson, _) => None,
        }
    }

    /// A push's frame about `channel`.
    pub(crate) fn push(self, channel: &str, push: &protocol::Push) -> bytes::Bytes {
        match self {
            Encoding::Json => json::encode_push(channel, push),
            Encoding::Protobuf => protobuf::encode_push(channel, push),
            Encoding::UniJson => json::encode_uni_push(channel, push),
        }
    }

    /// Whether several replies may share one frame (JSON: newline-separated; protobuf: each
    /// varint-delimited). A unidirectional connection gets one push per message.
    pub(crate) fn joins(self) -> bool {
        matches!(self, Encoding::Json | Encoding::Protobuf)
    }

    /// `frames` (replies or pushes of this encoding) as few frames of at most [`MAX_JOINED_FRAME`]
    /// bytes as they fit in (a larger one goes alone), where the encoding allows it.
    pub(crate) fn join(self, frames: impl IntoIterator<Item = bytes::Bytes>) -> Vec<bytes::Bytes> {
        if !self.joins() {
            return frames.into_iter().collect();
        }
        let separator: &[u8] = if self == Encoding::Json { b"\n" } else { b"" };
        let mut out = Vec::new();
        let mut current = bytes::BytesMut::new();
        for frame in frames {
            if !current.is_empty() && current.len() + separator.len() + frame.len() > MAX_JOINED_FRAME {
                out.push(current.split().freeze());
            }
            if !current.is_empty() {
                current.extend_from_slice(separator);
            }
            current.extend_from_slice(&frame);
        }
        if !current.is_empty() {
            out.push(current.freeze());
        }
        out
    }

    pub(crate) fn ping(self) -> bytes::Bytes {
        bytes::Bytes::from_static(match self {
            Encoding::Json | Encoding::UniJson => json::PING,
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
            Encoding::UniJson => match std::str::from_utf8(frame).map_err(|_| json::DecodeError::Invalid("not UTF-8".into())) {
                Ok(text) => match json::decode_connect_request(text) {
                    Ok(connect) => (vec![protocol::Command { id: 1, method: protocol::Method::Connect(connect) }], None),
                    Err(e) => (Vec::new(), Some(e)),
                },
                Err(e) => (Vec::new(), Some(e)),
            },
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
        // Each JWKS is fetched now and kept fresh until shutdown.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            for jwks in ready.iter().filter_map(|app| app.verifier.jwks().cloned()) {
                tasks.spawn_on(jwks.keep_fresh(shutdown.clone()), &runtime);
            }
        }
        let admission = Arc::new(Semaphore::new(config.max_connections.min(Semaphore::MAX_PERMITS)));
        // Each served app's delivery-latency histogram for this front exists from the start (sessions
        // look it up lock-free with `hub.latency().get(LATENCY_FRONT)` when they open).
        for app in &ready {
            if let Some(hub) = engine.by_id(&app.settings.id) {
                hub.latency().front(LATENCY_FRONT);
            }
        }
        let json = engine.register_codec(Arc::new(JsonCodec)).expect("the engine has room for the Centrifugo JSON codec");
        let protobuf = engine.register_codec(Arc::new(ProtobufCodec)).expect("the engine has room for the Centrifugo protobuf codec");
        let uni = engine.register_codec(Arc::new(UniJsonCodec)).expect("the engine has room for the Centrifugo unidirectional codec");
        let apps = Arc::new(Apps::new(ready));
        for app in apps.iter().filter(|app| app.settings.has_viewer_counts()) {
            if let Some(hub) = engine.by_id(&app.settings.id) {
                hub.listen(Arc::new(viewers::Listener {
                    app: app.clone(),
                    hub: Arc::downgrade(hub),
                    counts: Arc::default(),
                    tasks: tasks.clone(),
                    shutdown: shutdown.clone(),
                }));
            }
        }
        Arc::new(Centrifugo { engine, apps, config, shutdown, tasks, admission, json, protobuf, uni })
    }

    /// The engine this front serves.
    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    /// The routes: `GET /connection/websocket` and `GET /connection/uni_websocket` (the default
    /// app: the first configured) and their per-app forms `GET /apps/{id}/connection/...`, and the
    /// server HTTP API `POST /api/{method}` and `POST /apps/{id}/api/{method}` ([`api`]).
    pub fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/connection/websocket", get(connect_default))
            .route("/apps/{id}/connection/websocket", get(connect_app))
            .route("/connection/uni_websocket", get(uni_default))
            .route("/apps/{id}/connection/uni_websocket", get(uni_app))
            .merge(api::routes())
            .with_state(self.clone())
    }
}

/// The `cf_connect` URL parameter of a unidirectional connection: its connect request.
#[derive(serde::Deserialize)]
struct UniQuery {
    cf_connect: Option<String>,
}

async fn connect_default(State(front): State<Arc<Centrifugo>>, request: Request) -> Response {
    let app = front.apps.default_app().cloned();
    connect(front, app, request, None)
}

async fn connect_app(State(front): State<Arc<Centrifugo>>, Path(id): Path<String>, request: Request) -> Response {
    let app = front.apps.by_id(&id).cloned();
    connect(front, app, request, None)
}

async fn uni_default(State(front): State<Arc<Centrifugo>>, Query(q): Query<UniQuery>, request: Request) -> Response {
    let app = front.apps.default_app().cloned();
    connect(front, app, request, Some(q.cf_connect))
}

async fn uni_app(State(front): State<Arc<Centrifugo>>, Path(id): Path<String>, Query(q): Query<UniQuery>, request: Request) -> Response {
    let app = front.apps.by_id(&id).cloned();
    connect(front, app, request, Some(q.cf_connect))
}

/// Upgrades a connection; `uni` is `Some` for a unidirectional one (with its `cf_connect`, if any).
fn connect(front: Arc<Centrifugo>, app: Option<Arc<ReadyApp>>, mut request: Request, uni: Option<Option<String>>) -> Response {
    let upgrade = match WsUpgrade::from_request(&mut request, &[PROTOBUF_SUBPROTOCOL]) {
        Ok(upgrade) => upgrade,
        Err(response) => return response,
    };
    let encoding = match (&uni, upgrade.protocol().is_some()) {
        (Some(_), _) => Encoding::UniJson,
        (None, true) => Encoding::Protobuf,
        (None, false) => Encoding::Json,
    };
    let initial = uni.flatten().map(bytes::Bytes::from);
    let app = app.and_then(|app| Some((front.engine.by_id(&app.settings.id)?.clone(), app)));
    let max_frame = front.config.max_frame;
    let outbox_bytes = app.as_ref().map_or(0, |(h, _)| h.app().limits.outbox.max_bytes);
    let refusal: Option<codes::DisconnectCode> = if front.shutdown.is_cancelled() {
        Some(codes::SHUTDOWN)
    } else if app.is_none() {
        Some((3503, "unknown app"))
    } else {
        None
    };
    let permit = front.admission.clone().try_acquire_owned().ok();
    let config = herald_ws::config(max_frame, outbox_bytes);
    let tasks = front.tasks.clone();
    upgrade.accept(config, &tasks, move |socket| {
        let opened = match (refusal, app, permit) {
            (Some(refusal), _, _) => Err(refusal),
            (None, Some((hub, app)), Some(permit)) => session::open(front, hub, app, permit, encoding, initial),
            (None, _, _) => Err(codes::CONNECTION_LIMIT),
        };
        match opened {
            Ok(session) => {
                let span = session.span();
                let socket = session.share(socket);
                Either::Left(session.serve(socket).instrument(span))
            }
            Err(refusal) => Either::Right(session::refuse(socket, refusal)),
        }
    })
}

/// The version the server reports in connect replies.
pub const VERSION: &str = concat!("herald ", env!("CARGO_PKG_VERSION"));

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn replies_are_joined_per_encoding_up_to_the_frame_limit() {
        let frames = || [Bytes::from_static(b"{\"a\":1}"), Bytes::from_static(b"{\"b\":2}")];
        assert_eq!(Encoding::Json.join(frames()), [Bytes::from_static(b"{\"a\":1}\n{\"b\":2}")]);
        assert_eq!(Encoding::Protobuf.join(frames()), [Bytes::from_static(b"{\"a\":1}{\"b\":2}")]);
        assert_eq!(Encoding::UniJson.join(frames()), frames(), "a unidirectional client gets one push per message");
        let half = Bytes::from(vec![b'x'; MAX_JOINED_FRAME / 2]);
        let joined = Encoding::Protobuf.join([half.clone(), half.clone(), half.clone()]);
        assert_eq!(joined.iter().map(Bytes::len).collect::<Vec<_>>(), [MAX_JOINED_FRAME, MAX_JOINED_FRAME / 2]);
        let huge = Bytes::from(vec![b'y'; MAX_JOINED_FRAME + 1]);
        assert_eq!(Encoding::Json.join([huge.clone(), half.clone()]).len(), 2, "a frame over the limit goes alone");
    }
}
