//! Connection-level protections of `Herald::serve`, with raw TCP sockets: silent, slowloris and
//! idle keep-alive sockets are closed, slow bodies time out, unsigned bodies are never buffered, the
//! socket cap counts sockets before their upgrade, and shutdown lets in-flight requests finish.

mod common;

use std::time::Duration;

use common::*;
use herald_pusher::PusherConfig;
use herald_server::{AppConfig, HttpConfig};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::Instant;

const SHORT: Duration = Duration::from_millis(300);

fn short_http() -> HttpConfig {
    HttpConfig { header_timeout: SHORT, ..HttpConfig::default() }
}

async fn start_short() -> Server {
    start_with(vec![AppConfig::dev()], PusherConfig { body_timeout: SHORT, ..PusherConfig::default() }, short_http()).await
}

#[tokio::test]
async fn silent_socket_is_closed_after_the_header_timeout() {
    let server = start_short().await;
    let mut socket = TcpStream::connect(server.addr).await.unwrap();
    let opened = Instant::now();
    let got = read_until_closed(&mut socket, Duration::from_secs(5)).await.expect("a socket that sends nothing is closed");
    assert!(opened.elapsed() >= SHORT - Duration::from_millis(50), "closed before the deadline");
    // hyper may answer 408 before closing; what matters is that nothing else is served.
    assert!(got.is_empty() || parse_response(&got).status == 408);
    assert!(metrics_text(server.addr).await.contains("herald_http_header_timeouts_total"));
}

#[tokio::test]
async fn trickled_request_head_is_closed_after_the_header_timeout() {
    let server = start_short().await;
    let mut socket = TcpStream::connect(server.addr).await.unwrap();
    socket.write_all(b"GET /up HTTP/1.1\r\n").await.unwrap();
    let started = Instant::now();
    // One header byte every 50 ms: the head would take 10 s.
    let trickle = async {
        for _ in 0..200 {
            if socket.write_all(b"X").await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(3), trickle).await;
    let got = read_until_closed(&mut socket, Duration::from_secs(2)).await.expect("the slowloris socket is closed");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(got.is_empty() || parse_response(&got).status != 200, "the trickled request was never served");
}

#[tokio::test]
async fn idle_keep_alive_connection_is_closed() {
    use tokio::io::AsyncReadExt;
    let server = start_short().await;
    let mut socket = TcpStream::connect(server.addr).await.unwrap();
    socket.write_all(b"GET /up HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(2), socket.read(&mut buf)).await.unwrap().unwrap();
    assert_eq!(parse_response(&buf[..n]).status, 200, "served, and the connection stays for another request");
    read_until_closed(&mut socket, Duration::from_secs(5)).await.expect("an idle keep-alive connection is closed");
}

#[tokio::test]
async fn slow_body_gets_a_json_408() {
    let server = start_short().await;
    let body = format!(r#"{{"name":"e","channel":"c","data":"{}"}}"#, "x".repeat(1000));
    let (head, body) = signed_head("app-key", "app-secret", "POST", "/apps/app-id/events", "", &body, body.len());
    let mut socket = TcpStream::connect(server.addr).await.unwrap();
    socket.write_all(head.as_bytes()).await.unwrap();
    socket.write_all(&body.as_bytes()[..10]).await.unwrap();
    let got = read_until_closed(&mut socket, Duration::from_secs(5)).await.expect("a stalled body is answered and closed");
    let response = parse_response(&got);
    assert_eq!(response.status, 408);
    assert!(response.headers.contains("content-type: application/json"), "{}", response.headers);
    let json: serde_json::Value = serde_json::from_str(&response.body).unwrap();
    assert!(json["error"].as_str().unwrap().contains("body"), "{json}");
    assert!(metrics_text(server.addr).await.contains("herald_api_body_timeouts_total{app=\"app-id\"}"));
}

#[tokio::test]
async fn unsigned_body_is_refused_before_it_is_read() {
    // A long body deadline: the refusal must not wait for it.
    let config = PusherConfig { body_timeout: Duration::from_secs(30), ..PusherConfig::default() };
    let server = start_with(vec![AppConfig::dev()], config, HttpConfig::default()).await;
    let mut socket = TcpStream::connect(server.addr).await.unwrap();
    let head = "POST /apps/app-id/events?auth_key=app-key&auth_timestamp=1&auth_version=1.0&auth_signature=00 HTTP/1.1\r\n\
                Host: x\r\nContent-Length: 200000\r\n\r\n";
    socket.write_all(head.as_bytes()).await.unwrap();
    socket.write_all(&[b'x'; 1000]).await.unwrap();
    let got = read_until_closed(&mut socket, Duration::from_secs(3)).await.expect("answered without waiting for the body");
    let response = parse_response(&got);
    assert_eq!(response.status, 401);
    assert!(serde_json::from_str::<serde_json::Value>(&response.body).unwrap()["error"].is_string());
}

#[tokio::test]
async fn sockets_beyond_max_connections_are_closed_at_accept() {
    let config = PusherConfig { max_connections: 3, ..PusherConfig::default() };
    // Long header timeout: the idle sockets below stay open unless the cap closes them.
    let server =
        start_with(vec![AppConfig::dev()], config, HttpConfig { header_timeout: Duration::from_secs(30), ..HttpConfig::default() }).await;
    // Two WebSocket sessions and one socket that has not sent a request yet fill the cap.
    let _a = server.client().await;
    let _b = server.client().await;
    let idle = TcpStream::connect(server.addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await; // let the server accept it
    let mut refused = TcpStream::connect(server.addr).await.unwrap();
    read_until_closed(&mut refused, Duration::from_secs(3)).await.expect("the socket over the cap is closed at once");
    // A socket that closes frees its place.
    drop(idle);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut s = TcpStream::connect(server.addr).await.unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
        if let Some(got) = read_until_closed(&mut s, Duration::from_secs(2)).await {
            if !got.is_empty() {
                let response = parse_response(&got);
                assert_eq!(response.status, 200);
                assert!(response.body.contains("herald_sockets_refused_total"), "refusals are counted");
                break;
            }
        }
        assert!(Instant::now() < deadline, "the freed place was never reused");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn shutdown_lets_an_in_flight_request_finish() {
    let config = PusherConfig { body_timeout: Duration::from_secs(10), ..PusherConfig::default() };
    let server = start_with(vec![AppConfig::dev()], config, HttpConfig::default()).await;
    let body = r#"{"name":"e","channel":"c","data":"{}"}"#;
    let (head, body) = signed_head("app-key", "app-secret", "POST", "/apps/app-id/events", "", body, body.len());
    let mut socket = TcpStream::connect(server.addr).await.unwrap();
    socket.write_all(head.as_bytes()).await.unwrap();
    socket.write_all(&body.as_bytes()[..5]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await; // the handler is waiting for the body
    server.stop();
    // New connections are no longer served.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match TcpStream::connect(server.addr).await {
            Err(_) => break,
            Ok(mut s) => {
                let _ = s.write_all(b"GET /up HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
                if read_until_closed(&mut s, Duration::from_secs(1)).await.is_some_and(|got| got.is_empty()) {
                    break;
                }
            }
        }
        assert!(Instant::now() < deadline, "still accepting after shutdown");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    socket.write_all(&body.as_bytes()[5..]).await.unwrap();
    let got = read_until_closed(&mut socket, Duration::from_secs(5)).await.expect("the in-flight request is answered");
    assert_eq!(parse_response(&got).status, 200);
    let done = tokio::time::timeout(Duration::from_secs(5), server.done).await.expect("server drained");
    assert!(done.unwrap().is_ok());
}
