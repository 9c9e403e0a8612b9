//! Test harness: a Herald on 127.0.0.1:0 and a raw Pusher WebSocket client.

#![allow(dead_code, missing_docs)]

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use herald_pusher::PusherConfig;
use herald_server::{AppConfig, Herald, HttpConfig};
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;

pub struct Server {
    pub addr: std::net::SocketAddr,
    pub herald: Herald,
    pub done: tokio::task::JoinHandle<std::io::Result<()>>,
}

pub async fn start(apps: Vec<AppConfig>, config: PusherConfig) -> Server {
    start_with(apps, config, HttpConfig::default()).await
}

/// A Herald with these HTTP server limits.
pub async fn start_with(apps: Vec<AppConfig>, config: PusherConfig, http: HttpConfig) -> Server {
    serve(Herald::new(apps, config).with_http(http)).await
}

/// Serves `herald` on 127.0.0.1:0 with `Herald::serve` (drain grace 5 s).
pub async fn serve(herald: Herald) -> Server {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let token = herald.shutdown_token();
    let serving = herald.clone();
    let done = tokio::spawn(async move { serving.serve(listener, async move { token.cancelled().await }, Duration::from_secs(5)).await });
    Server { addr, herald, done }
}

pub async fn start_dev() -> Server {
    start(vec![AppConfig::dev()], PusherConfig::default()).await
}

impl Server {
    pub fn stop(&self) -> CancellationToken {
        let t = self.herald.shutdown_token();
        t.cancel();
        t
    }

    pub async fn client(&self) -> Client {
        Client::connect(self.addr, "app-key").await
    }

    /// A signed HTTP API request; returns (status, JSON body).
    pub async fn api(&self, method: &str, path: &str, query: &str, body: Option<Value>) -> (u16, Value) {
        api(self.addr, "app-key", "app-secret", method, path, query, body).await
    }
}

pub fn sign(secret: &str, message: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(message.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

pub async fn api(
    addr: std::net::SocketAddr,
    key: &str,
    secret: &str,
    method: &str,
    path: &str,
    extra_query: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    http_raw(addr, &signed_request(key, secret, method, path, extra_query, &body)).await
}

/// A complete signed HTTP/1.1 request (`Connection: close`) with `body` as given (any text).
pub fn signed_request(key: &str, secret: &str, method: &str, path: &str, extra_query: &str, body: &str) -> String {
    let (head, body) = signed_head(key, secret, method, path, extra_query, body, body.len());
    format!("{head}{body}")
}

/// The head of a signed request whose body is `body` (signed with its `body_md5`), announcing
/// `content_length` bytes; returns (head, body).
pub fn signed_head(
    key: &str,
    secret: &str,
    method: &str,
    path: &str,
    extra_query: &str,
    body: &str,
    content_length: usize,
) -> (String, String) {
    use md5::Digest;
    let ts = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    let mut params = vec![format!("auth_key={key}"), format!("auth_timestamp={ts}"), "auth_version=1.0".to_string()];
    if !body.is_empty() {
        params.push(format!("body_md5={}", hex::encode(md5::Md5::digest(body.as_bytes()))));
    }
    if !extra_query.is_empty() {
        params.extend(extra_query.split('&').map(String::from));
    }
    params.sort();
    let query = params.join("&");
    let signature = sign(secret, &format!("{method}\n{path}\n{query}"));
    let head = format!(
        "{method} {path}?{query}&auth_signature={signature} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {content_length}\r\nConnection: close\r\n\r\n"
    );
    (head, body.to_string())
}

/// Sends a raw HTTP/1.1 request and returns (status, JSON body or Null).
pub async fn http_raw(addr: std::net::SocketAddr, request: &str) -> (u16, Value) {
    let r = http_full(addr, request).await;
    (r.status, serde_json::from_str(&r.body).unwrap_or(Value::Null))
}

/// A response as read off the socket.
pub struct RawResponse {
    pub status: u16,
    /// Header lines, lower-cased.
    pub headers: String,
    pub body: String,
}

/// Sends a raw HTTP/1.1 request (which should say `Connection: close`) and reads the whole response.
pub async fn http_full(addr: std::net::SocketAddr, request: &str) -> RawResponse {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response)).await.expect("response within 10 s").unwrap();
    parse_response(&response)
}

/// Parses a response read off a socket (status line, headers, body).
pub fn parse_response(response: &[u8]) -> RawResponse {
    let text = String::from_utf8_lossy(response);
    let status: u16 = text.split(' ').nth(1).unwrap_or_else(|| panic!("not an HTTP response: {text:?}")).parse().unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    RawResponse { status, headers: head.to_lowercase(), body: body.to_string() }
}

/// Reads from `stream` until the peer closes it (EOF or reset), for at most `within`; returns
/// whatever arrived, or `None` if the socket was still open at the deadline.
pub async fn read_until_closed(stream: &mut TcpStream, within: Duration) -> Option<Vec<u8>> {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + within;
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(got),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

/// The `/metrics` text.
pub async fn metrics_text(addr: std::net::SocketAddr) -> String {
    http_full(addr, "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.body
}

/// Redis test helpers shared with herald-redis's tests (a `redis-server` of the test's own, SIGSTOP).
#[path = "../../../herald-redis/tests/common/mod.rs"]
pub mod redis;
#[allow(unused_imports)]
pub use redis::RedisServer;

pub struct Client {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    pub socket_id: String,
}

pub enum Received {
    Event(Value),
    Closed(u16),
}

impl Client {
    pub async fn connect(addr: std::net::SocketAddr, key: &str) -> Client {
        let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/app/{key}?protocol=7&client=test&version=1")).await.unwrap();
        let mut c = Client { ws, socket_id: String::new() };
        let established = c.expect("pusher:connection_established").await;
        let data: Value = serde_json::from_str(established["data"].as_str().unwrap()).unwrap();
        c.socket_id = data["socket_id"].as_str().unwrap().to_string();
        c
    }

    pub async fn send(&mut self, v: Value) {
        self.ws.send(Message::text(v.to_string())).await.unwrap();
    }

    pub async fn next(&mut self) -> Received {
        loop {
            let msg = tokio::time::timeout(Duration::from_secs(5), self.ws.next()).await.expect("timed out waiting for a frame");
            match msg {
                Some(Ok(Message::Text(t))) => return Received::Event(serde_json::from_str(t.as_str()).unwrap()),
                Some(Ok(Message::Close(Some(frame)))) => return Received::Closed(frame.code.into()),
                Some(Ok(Message::Close(None))) | None | Some(Err(_)) => return Received::Closed(0),
                Some(Ok(_)) => continue,
            }
        }
    }

    pub async fn event(&mut self) -> Value {
        match self.next().await {
            Received::Event(v) => v,
            Received::Closed(code) => panic!("connection closed with {code} while waiting for an event"),
        }
    }

    /// Waits for an event with this name, failing on any other.
    pub async fn expect(&mut self, name: &str) -> Value {
        let v = self.event().await;
        assert_eq!(v["event"], name, "unexpected frame {v}");
        v
    }

    pub async fn closed(&mut self) -> u16 {
        loop {
            if let Received::Closed(code) = self.next().await {
                return code;
            }
        }
    }

    /// Nothing arrives within `ms`.
    pub async fn silent(&mut self, ms: u64) {
        if let Ok(Some(Ok(Message::Text(t)))) = tokio::time::timeout(Duration::from_millis(ms), self.ws.next()).await {
            panic!("expected silence, got {t}");
        }
    }

    pub async fn subscribe(&mut self, channel: &str) -> Value {
        self.send(json!({"event":"pusher:subscribe","data":{"channel":channel}})).await;
        self.expect("pusher_internal:subscription_succeeded").await
    }

    pub async fn subscribe_private(&mut self, channel: &str) -> Value {
        let auth = format!("app-key:{}", sign("app-secret", &format!("{}:{channel}", self.socket_id)));
        self.send(json!({"event":"pusher:subscribe","data":{"channel":channel,"auth":auth}})).await;
        self.expect("pusher_internal:subscription_succeeded").await
    }

    pub async fn subscribe_presence(&mut self, channel: &str, user: &str) -> Value {
        let data = json!({"user_id": user, "user_info": {"name": user}}).to_string();
        let auth = format!("app-key:{}", sign("app-secret", &format!("{}:{channel}:{data}", self.socket_id)));
        self.send(json!({"event":"pusher:subscribe","data":{"channel":channel,"auth":auth,"channel_data":data}})).await;
        self.expect("pusher_internal:subscription_succeeded").await
    }

    pub async fn sign_in(&mut self, user: &str) {
        let user_data = json!({"id": user}).to_string();
        let auth = format!("app-key:{}", sign("app-secret", &format!("{}::user::{user_data}", self.socket_id)));
        self.send(json!({"event":"pusher:signin","data":{"auth":auth,"user_data":user_data}})).await;
        self.expect("pusher:signin_success").await;
    }
}
