//! The HTTP/1.1 WebSocket upgrade, done here rather than by axum's extractor for two reasons: the
//! session keeps the raw upgraded stream, so after a protocol error (an oversized frame, say) it can
//! drain the unread input and let its close frame (1009, 1002, ...) reach the client instead of
//! resetting the connection; and the task that waits for the upgrade is tracked like every other.

use std::future::Future;

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, Method, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::WebSocketStream;
use tokio_util::task::TaskTracker;

/// An upgraded WebSocket connection, server side.
pub type Socket = WebSocketStream<TokioIo<Upgraded>>;

/// A request that asked for a WebSocket, ready to be accepted.
pub struct WsUpgrade {
    key: HeaderValue,
    on_upgrade: OnUpgrade,
    protocol: Option<&'static str>,
}

fn header_has(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(',')).any(|v| v.trim().eq_ignore_ascii_case(token))
}

impl WsUpgrade {
    /// Checks the upgrade headers (RFC 6455 section 4.2.1); a request that is not a valid upgrade gets
    /// a 400 (405 for a method other than GET, 426 for a wrong version) with a JSON body.
    ///
    /// `subprotocols` are the ones the front speaks, in its order of preference: the first that the
    /// client offers in `Sec-WebSocket-Protocol` is chosen ([`WsUpgrade::protocol`]) and named in the
    /// 101 answer. A client offering none of them still connects, without a subprotocol.
    #[allow(clippy::result_large_err)]
    pub fn from_request(request: &mut Request<Body>, subprotocols: &[&'static str]) -> Result<WsUpgrade, Response> {
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
        let protocol = subprotocols.iter().copied().find(|p| header_has(headers, header::SEC_WEBSOCKET_PROTOCOL, p));
        let Some(on_upgrade) = request.extensions_mut().remove::<OnUpgrade>() else {
            return Err(refuse(StatusCode::UPGRADE_REQUIRED, "this connection cannot be upgraded"));
        };
        Ok(WsUpgrade { key, on_upgrade, protocol })
    }

    /// The subprotocol chosen for this connection, if the client offered one the front speaks.
    pub fn protocol(&self) -> Option<&'static str> {
        self.protocol
    }

    /// Answers 101 (naming the chosen subprotocol, if any) and, once hyper hands the connection over,
    /// runs `serve` with the socket on a task tracked by `tasks`. A connection that fails to upgrade
    /// is counted (`herald_errors_total{kind="upgrade_failed"}`).
    pub fn accept<F, Fut>(self, config: WebSocketConfig, tasks: &TaskTracker, serve: F) -> Response
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
        if let Some(protocol) = self.protocol {
            response = response.header(header::SEC_WEBSOCKET_PROTOCOL, protocol);
        }
        response.body(Body::empty()).unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
    }
}
