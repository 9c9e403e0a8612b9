//! What the front's integration tests share: serving a front on 127.0.0.1, one HTTP/1.1 request, and
//! a Centrifugo JSON client over a real WebSocket.

#![allow(dead_code)]

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use herald_centrifugo::{Centrifugo, CentrifugoApp, CentrifugoConfig};
use herald_core::Engine;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How long a test waits for something that should happen.
pub const DEADLINE: Duration = Duration::from_secs(5);

/// Serves `app`'s front over `engine` on a free port of 127.0.0.1 until `shutdown`; the port.
pub async fn serve(engine: Arc<Engine>, app: CentrifugoApp, shutdown: &CancellationToken) -> u16 {
    let front = Centrifugo::new(engine, vec![app], CentrifugoConfig::default(), shutdown.clone(), TaskTracker::new());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let router = front.router();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        axum::serve(listener, router).with_graceful_shutdown(async move { stop.cancelled().await }).await.unwrap();
    });
    port
}

/// One HTTP/1.1 request; the status and the body parsed as JSON.
pub async fn post(port: u16, path: &str, auth: Option<(&str, &str)>, body: &[u8]) -> (u16, Value) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let auth = auth.map(|(name, value)| format!("{name}: {value}\r\n")).unwrap_or_default();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n{auth}Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    // The server may answer (413) and close before reading a large body.
    let _ = stream.write_all(body).await;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.unwrap();
    let text = String::from_utf8_lossy(&response);
    let status: u16 = text.split(' ').nth(1).unwrap().parse().unwrap();
    let (_, body) = text.split_once("\r\n\r\n").unwrap();
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

/// Calls server API `method` with `body` and API key `api-key`; the answer (HTTP 200 expected).
pub async fn call(port: u16, method: &str, body: Value) -> Value {
    let (status, answer) = post(port, &format!("/api/{method}"), Some(("X-API-Key", "api-key")), body.to_string().as_bytes()).await;
    assert_eq!(status, 200, "{method}: {answer}");
    answer
}

/// A Centrifugo JSON client.
pub struct Client {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// Objects of a frame not yet returned (a frame may carry several, one a line).
    pending: VecDeque<Value>,
}

impl Client {
    /// Connects as `user` (an HS256 token of the dev app) and waits for the connect reply.
    pub async fn connect(port: u16, user: &str) -> Client {
        let (ws, _) = tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{port}/connection/websocket")).await.unwrap();
        let mut client = Client { ws, pending: VecDeque::new() };
        let exp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + 3600;
        let key = jsonwebtoken::EncodingKey::from_secret(b"app-secret");
        let token = jsonwebtoken::encode(&jsonwebtoken::Header::default(), &json!({"sub": user, "exp": exp}), &key).unwrap();
        client.send(json!({"id": 1, "connect": {"token": token}})).await;
        let (_, reply) = client.until(|m| m["id"] == 1).await;
        assert!(reply["connect"]["client"].is_string(), "{reply}");
        client
    }

    /// Sends one command.
    pub async fn send(&mut self, command: Value) {
        self.ws.send(Message::text(command.to_string())).await.unwrap();
    }

    /// Sends a WebSocket ping (its pong comes back from [`Client::next`] as `{"pong": true}`).
    pub async fn ping(&mut self) {
        self.ws.send(Message::Ping(Default::default())).await.unwrap();
    }

    /// The next message from the server (server pings skipped); WebSocket pongs come as `{"pong": true}`.
    pub async fn next(&mut self) -> Value {
        loop {
            if let Some(m) = self.pending.pop_front() {
                if m != json!({}) {
                    return m;
                }
                continue;
            }
            let message = tokio::time::timeout(DEADLINE, self.ws.next()).await.expect("a message in time").expect("open").unwrap();
            match message {
                Message::Text(text) => self.pending.extend(text.lines().map(|line| serde_json::from_str::<Value>(line).unwrap())),
                Message::Pong(_) => return json!({"pong": true}),
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    /// Reads until a message matches `found`: the messages before it, and it.
    pub async fn until(&mut self, found: impl Fn(&Value) -> bool) -> (Vec<Value>, Value) {
        let mut before = Vec::new();
        loop {
            let m = self.next().await;
            if found(&m) {
                return (before, m);
            }
            before.push(m);
        }
    }

    /// Subscribes to `channel` (with `extra` subscribe fields) as command `id`; the reply, after
    /// checking that nothing of the channel came before it.
    pub async fn subscribe(&mut self, id: u32, channel: &str, extra: Value) -> Value {
        let mut request = json!({"channel": channel});
        request.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        self.send(json!({"id": id, "subscribe": request})).await;
        let (before, reply) = self.until(|m| m["id"] == id).await;
        assert!(before.iter().all(|m| m["push"]["channel"] != channel), "nothing of {channel} before its reply: {before:?}");
        reply
    }

    /// The `subscribe` push for `channel` (whatever came before it).
    pub async fn subscribe_push(&mut self, channel: &str) -> Value {
        let (_, push) = self.until(|m| m["push"]["channel"] == channel && m["push"]["subscribe"].is_object()).await;
        push["push"]["subscribe"].clone()
    }

    /// The publications on `channel` up to and including the one with data `{"n": last}`.
    pub async fn publications_until(&mut self, channel: &str, last: u64) -> Vec<Value> {
        let on = |m: &Value| m["push"]["channel"] == channel && m["push"]["pub"].is_object();
        let (before, found) = self.until(|m| on(m) && m["push"]["pub"]["data"]["n"] == last).await;
        before.into_iter().chain([found]).filter(on).map(|m| m["push"]["pub"].clone()).collect()
    }
}
