//! Regression tests for how a session treats a misbehaving client: WebSocket protocol violations get
//! the right close frame (and it reaches the client), a client that stops reading is disconnected, a
//! ping flood is closed, names and ids are bounded, and the protocol's objects must be objects.

mod common;

use std::time::Duration;

use common::*;
use futures_util::SinkExt;
use herald_core::{App, AppLimits, OutboxLimits, OverflowPolicy};
use herald_pusher::{PusherConfig, Trigger};
use herald_server::AppConfig;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data as OpData, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::Message;

/// Polls `condition` every 20 ms until it holds or `within` passes.
async fn eventually(within: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    while tokio::time::Instant::now() < deadline {
        if condition() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    condition()
}

fn connections(server: &Server) -> usize {
    server.herald.pusher().engine().hubs().map(|h| h.connection_count()).sum()
}

/// A raw socket after the WebSocket handshake, for frames a well-behaved client library won't send.
async fn raw_upgrade(server: &Server) -> TcpStream {
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    let request = format!(
        "GET /app/app-key?protocol=7 HTTP/1.1\r\nHost: {}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        server.addr
    );
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        tcp.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"), "{}", String::from_utf8_lossy(&head));
    tcp
}

/// Reads server frames until a close frame and returns its code (0 if the socket ended without one).
async fn raw_close_code(tcp: &mut TcpStream) -> u16 {
    let read = async {
        loop {
            let mut head = [0u8; 2];
            if tcp.read_exact(&mut head).await.is_err() {
                return 0;
            }
            let len = match head[1] & 0x7f {
                126 => tcp.read_u16().await.unwrap_or(0) as usize,
                127 => tcp.read_u64().await.unwrap_or(0) as usize,
                n => n as usize,
            };
            let mut payload = vec![0u8; len];
            if tcp.read_exact(&mut payload).await.is_err() {
                return 0;
            }
            if head[0] & 0x0f == 0x8 {
                return if len >= 2 { u16::from_be_bytes([payload[0], payload[1]]) } else { 0 };
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(5), read).await.expect("no close within 5 s")
}

/// A masked client frame with `first` as its first byte (FIN, RSV, opcode).
fn masked(first: u8, payload: &[u8]) -> Vec<u8> {
    assert!(payload.len() < 126);
    let mask = [1u8, 2, 3, 4];
    let mut out = vec![first, 0x80 | payload.len() as u8];
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

#[tokio::test]
async fn a_client_close_frame_is_echoed() {
    let server = start_dev().await;
    let mut c = server.client().await;
    c.ws.send(Message::Close(Some(tokio_tungstenite::tungstenite::protocol::CloseFrame { code: 1000.into(), reason: "bye".into() })))
        .await
        .unwrap();
    assert_eq!(c.closed().await, 1000, "the server answers a close with a close");
}

#[tokio::test]
async fn an_oversized_frame_gets_1009_even_with_unread_input() {
    let server = start_dev().await;
    for _ in 0..5 {
        let mut c = server.client().await;
        // Much more than the limit: most of it is still unread when the server gives up on the frame.
        c.ws.send(Message::text("x".repeat(512 * 1024))).await.unwrap();
        assert_eq!(c.closed().await, 1009);
    }
}

#[tokio::test]
async fn invalid_utf8_text_gets_1007() {
    let server = start_dev().await;
    let mut c = server.client().await;
    let frame = Frame::message(vec![0xff, 0xfe, 0xfd], OpCode::Data(OpData::Text), true);
    c.ws.send(Message::Frame(frame)).await.unwrap();
    assert_eq!(c.closed().await, 1007);
}

#[tokio::test]
async fn protocol_violations_get_1002() {
    let server = start_dev().await;
    // RSV1 set without an extension.
    let mut tcp = raw_upgrade(&server).await;
    tcp.write_all(&masked(0x80 | 0x40 | 0x1, b"{}")).await.unwrap();
    assert_eq!(raw_close_code(&mut tcp).await, 1002);
    // An unmasked client frame.
    let mut tcp = raw_upgrade(&server).await;
    tcp.write_all(&[0x81, 0x02, b'{', b'}']).await.unwrap();
    assert_eq!(raw_close_code(&mut tcp).await, 1002);
    // A control frame longer than 125 bytes.
    let mut tcp = raw_upgrade(&server).await;
    let mut ping = vec![0x89, 0x80 | 126, 0, 200, 0, 0, 0, 0];
    ping.extend(std::iter::repeat_n(0u8, 200));
    tcp.write_all(&ping).await.unwrap();
    assert_eq!(raw_close_code(&mut tcp).await, 1002);
    // A close frame with a code no endpoint may send.
    let mut tcp = raw_upgrade(&server).await;
    tcp.write_all(&masked(0x88, &1005u16.to_be_bytes())).await.unwrap();
    assert_eq!(raw_close_code(&mut tcp).await, 1002);
    assert!(eventually(Duration::from_secs(5), || connections(&server) == 0).await, "every violator is gone");
}

#[tokio::test]
async fn a_ping_flood_is_closed_with_1008() {
    let server = start_dev().await;
    let mut c = server.client().await;
    for _ in 0..200 {
        c.ws.feed(Message::Ping(vec![7u8; 125].into())).await.unwrap();
    }
    c.ws.flush().await.unwrap();
    assert_eq!(c.closed().await, 1008);
}

#[tokio::test]
async fn a_client_that_stops_reading_is_disconnected() {
    let limits = AppLimits {
        outbox: OutboxLimits { max_messages: 10_000, max_bytes: 64 << 20, overflow: OverflowPolicy::DisconnectSlowConsumer },
        ..AppLimits::default()
    };
    let app = AppConfig { app: App { limits, ..App::dev() }, ..AppConfig::dev() };
    let config = PusherConfig { write_timeout: Duration::from_millis(500), ..PusherConfig::default() };
    let server = start(vec![app], config).await;
    let mut stalled = server.client().await;
    stalled.subscribe("firehose").await;
    let mut healthy = server.client().await;
    healthy.subscribe("other").await;
    // The stalled client never reads again: kernel buffers fill, then the server's writes stall.
    let data = "y".repeat(8 * 1024);
    let channels = vec!["firehose".to_string()];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while connections(&server) != 1 && tokio::time::Instant::now() < deadline {
        for _ in 0..50 {
            let _ = server.herald.trigger("app-id", &Trigger { name: "big", data: &data, channels: &channels, socket_id: None }).await;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let gone = connections(&server) == 1;
    assert!(gone, "the stalled reader was disconnected");
    server.api("POST", "/apps/app-id/events", "", Some(json!({"name":"fine","channel":"other","data":"x"}))).await;
    healthy.expect("fine").await;
    drop(stalled);
}

#[tokio::test]
async fn names_and_user_ids_are_bounded_on_every_path() {
    let server = start_dev().await;
    let mut c = server.client().await;
    c.subscribe_private("private-room").await;
    let long_name = format!("client-{}", "n".repeat(300));
    c.send(json!({"event": long_name, "channel": "private-room", "data": {}})).await;
    let err = c.expect("pusher:error").await;
    assert!(err["data"]["message"].as_str().unwrap().contains("at most"), "{err}");

    let long_user = "u".repeat(300);
    let data = json!({"user_id": long_user}).to_string();
    let auth = format!("app-key:{}", sign("app-secret", &format!("{}:presence-room:{data}", c.socket_id)));
    c.send(json!({"event":"pusher:subscribe","data":{"channel":"presence-room","auth":auth,"channel_data":data}})).await;
    assert_eq!(c.expect("pusher:subscription_error").await["data"]["status"], 400);

    let user_data = json!({"id": long_user}).to_string();
    let auth = format!("app-key:{}", sign("app-secret", &format!("{}::user::{user_data}", c.socket_id)));
    c.send(json!({"event":"pusher:signin","data":{"auth":auth,"user_data":user_data}})).await;
    assert_eq!(c.expect("pusher:error").await["data"]["code"], 4009);
}

#[tokio::test]
async fn the_protocols_objects_must_be_objects() {
    let server = start_dev().await;
    let mut c = server.client().await;
    // Signed, but an array: it would decode as user "1".
    let data = "[1,2]";
    let auth = format!("app-key:{}", sign("app-secret", &format!("{}:presence-room:{data}", c.socket_id)));
    c.send(json!({"event":"pusher:subscribe","data":{"channel":"presence-room","auth":auth,"channel_data":data}})).await;
    assert_eq!(c.expect("pusher:subscription_error").await["data"]["status"], 400);

    let user_data = r#"["bob"]"#;
    let auth = format!("app-key:{}", sign("app-secret", &format!("{}::user::{user_data}", c.socket_id)));
    c.send(json!({"event":"pusher:signin","data":{"auth":auth,"user_data":user_data}})).await;
    assert_eq!(c.expect("pusher:error").await["data"]["code"], 4009);

    c.ws.send(Message::text(r#"["pusher:subscribe",{"channel":"news"}]"#)).await.unwrap();
    assert!(c.expect("pusher:error").await["data"]["message"].as_str().unwrap().contains("Invalid JSON"));
    let users = server.api("GET", "/apps/app-id/channels/presence-room/users", "", None).await;
    assert_eq!(users.1["users"], json!([]));
}
