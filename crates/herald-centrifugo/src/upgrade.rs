//! The HTTP/1.1 WebSocket upgrade with subprotocol negotiation (`centrifuge-protobuf` selects the
//! protobuf encoding). Done by hand, as the Pusher front does, so the session keeps the raw stream
//! (its close frame can reach the client after a protocol error) and the waiting task is tracked.

use std::future::Future;

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, Method, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::WebSocketStream;
use tokio_util::task::TaskTracker;

/// The subprotocol protobuf clients ask for.
pub const PROTOBUF_SUBPROTOCOL: &str = "centrifuge-protobuf";

/// An upgraded WebSocket connection, server side.
pub(crate) type Socket = WebSocketStream<TokioIo<Upgraded>>;

/// A request that asked for a WebSocket, ready to be accepted.
pub(crate) struct WsUpgrade {
    key: HeaderValue,
    on_upgrade: OnUpgrade,
    /// The client asked for `centrifuge-protobuf`.
    pub(crate) protobuf: bool,
}

fn header_has(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(',')).any(|v| v.trim().eq_ignore_ascii_case(token))
}

impl WsUpgrade {
    /// Checks the upgrade headers (RFC 6455 section 4.2.1); a request that is not a valid upgrade gets
    /// a 400 (or 426 for a wrong version).
    #[allow(clippy::result_large_err)]
    pub(crate) fn from_request(request: &mut Request<Body>) -> Result<WsUpgrade, Response> {
        let refuse = |status: StatusCode, message: &str| (status, axum::Json(serde_json::json!({ "error": message }))).into_response();
        let headers = request.headers();
        if request.method() != Method::GET {
            return Err(refuse(StatusCode::METHOD_NOT_ALLOWED, "WebSocket upgrades use GET"));
        }
        if !header_has(headers, header::CONNECTION, "upgrade") || !header_has(headers, header::UPGRADE, "websocket") {
            return Err(refuse(StatusCode::BAD_REQUEST, "expected a WebSocket upgrade (Connection: upgrade, Upgrade: websocket)"));
        }
        if headers.get(header::SEC_WEBSOCKET_VERSION).is_none_or(|v| v != "13") {
            let mut response = refuse(StatusCode::UPGRADE_REQUIRED, "unsupported Sec-WebSocket-Version, expected 13");
            response.headers_mut().insert(header::SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
            return Err(response);
        }
        let Some(key) = headers.get(header::SEC_WEBSOCKET_KEY).cloned() else {
            return Err(refuse(StatusCode::BAD_REQUEST, "missing Sec-WebSocket-Key"));
        };
        let protobuf = header_has(headers, header::SEC_WEBSOCKET_PROTOCOL, PROTOBUF_SUBPROTOCOL);
        let Some(on_upgrade) = request.extensions_mut().remove::<OnUpgrade>() else {
            return Err(refuse(StatusCode::UPGRADE_REQUIRED, "this connection cannot be upgraded"));
        };
        Ok(WsUpgrade { key, on_upgrade, protobuf })
    }

    /// Answers 101 (naming the protobuf subprotocol when it was chosen) and, once hyper hands the
    /// connection over, runs `serve` with the socket on a task tracked by `tasks`.
    pub(crate) fn accept<F, Fut>(self, config: WebSocketConfig, tasks: &TaskTracker, serve: F) -> Response
    where
        F: FnOnce(Socket) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(self.key.as_bytes());
        let on_upgrade = self.on_upgrade;
        tasks.spawn(async move {
            let Ok(upgraded) = on_upgrade.await else {
                metrics::counter!("herald_errors_total", "kind" => "upgrade_failed").increment(1);
                return;
            };
            let socket = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(config)).await;
            serve(socket).await;
        });
        let mut response = Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header(header::CONNECTION, "upgrade")
            .header(header::UPGRADE, "websocket")
            .header(header::SEC_WEBSOCKET_ACCEPT, accept);
        if self.protobuf {
            response = response.header(header::SEC_WEBSOCKET_PROTOCOL, PROTOBUF_SUBPROTOCOL);
        }
        response.body(Body::empty()).unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
    }
}
