//! Webhook delivery over real sockets: one broken receiver must not hold back another.

mod common;

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use herald_pusher::{PusherConfig, WebhookTarget};
use herald_server::AppConfig;
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// A well-behaved receiver: answers 200 with an empty body and passes on every event it gets.
async fn receiver() -> (String, mpsc::UnboundedReceiver<Value>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let tx = tx.clone();
            let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let tx = tx.clone();
                async move {
                    let body = req.into_body().collect().await.unwrap().to_bytes();
                    let payload: Value = serde_json::from_slice(&body).unwrap();
                    for event in payload["events"].as_array().unwrap() {
                        let _ = tx.send(event.clone());
                    }
                    Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::new())))
                }
            });
            tokio::spawn(http1::Builder::new().serve_connection(TokioIo::new(stream), service));
        }
    });
    (url, rx)
}

/// A receiver that answers its headers at once and then trickles its body, a byte every 100 ms,
/// forever. Counts requests and connections the client dropped.
async fn trickling_receiver() -> (String, Arc<AtomicUsize>, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let requests = Arc::new(AtomicUsize::new(0));
    let abandoned = Arc::new(AtomicUsize::new(0));
    let (r, a) = (requests.clone(), abandoned.clone());
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            let (r, a) = (r.clone(), a.clone());
            tokio::spawn(async move {
                if !read_head(&mut stream).await {
                    return;
                }
                r.fetch_add(1, Ordering::SeqCst);
                let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 1000000\r\n\r\n").await;
                loop {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    if stream.write_all(b"x").await.is_err() {
                        a.fetch_add(1, Ordering::SeqCst);
                        return;
                    }
                }
            });
        }
    });
    (url, requests, abandoned)
}

#[tokio::test]
async fn a_trickling_receiver_does_not_hold_back_other_targets() {
    let (slow_url, slow_requests, slow_abandoned) = trickling_receiver().await;
    let (url, mut events) = receiver().await;
    // The trickling target comes first: served one after another, it would stall the other forever.
    let targets = vec![
        WebhookTarget { url: slow_url, event_types: vec![], headers: vec![] },
        WebhookTarget { url, event_types: vec![], headers: vec![] },
    ];
    let config = PusherConfig { webhooks: HashMap::from([("app-id".to_string(), targets)]), ..PusherConfig::default() };
    let server = start(vec![AppConfig::dev()], config).await;
    let mut client = server.client().await;

    for i in 0..5 {
        let channel = format!("room-{i}");
        client.subscribe(&channel).await;
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            let event = tokio::time::timeout_at(deadline, events.recv())
                .await
                .unwrap_or_else(|_| panic!("the healthy receiver got no channel_occupied for {channel} within 3 s"))
                .unwrap();
            if event["name"] == "channel_occupied" && event["channel"] == channel.as_str() {
                break;
            }
        }
    }
    assert!(slow_requests.load(Ordering::SeqCst) >= 1, "the trickling receiver was sent webhooks too");

    // The trickling exchange is abandoned (its connection dropped) once its deadline passes.
    let deadline = Instant::now() + herald_pusher::webhooks::EXCHANGE_TIMEOUT + Duration::from_secs(5);
    while slow_abandoned.load(Ordering::SeqCst) == 0 {
        assert!(Instant::now() < deadline, "the trickling receiver's connection was never dropped");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A receiver that answers with a 100 MB body as fast as it can; reports when its connection was
/// dropped, and how much of the body it got out.
async fn flooding_receiver() -> (String, mpsc::UnboundedReceiver<usize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            let tx = tx.clone();
            tokio::spawn(async move {
                if !read_head(&mut stream).await {
                    return;
                }
                let total = 100 * 1024 * 1024;
                let _ = stream.write_all(format!("HTTP/1.1 200 OK\r\nContent-Length: {total}\r\n\r\n").as_bytes()).await;
                let chunk = vec![b'x'; 64 * 1024];
                let mut sent = 0;
                while sent < total {
                    if stream.write_all(&chunk).await.is_err() {
                        let _ = tx.send(sent);
                        return;
                    }
                    sent += chunk.len();
                }
            });
        }
    });
    (url, rx)
}

#[tokio::test]
async fn a_flooding_response_body_is_cut_at_the_cap() {
    let (url, mut dropped) = flooding_receiver().await;
    let targets = vec![WebhookTarget { url, event_types: vec![], headers: vec![] }];
    let config = PusherConfig { webhooks: HashMap::from([("app-id".to_string(), targets)]), ..PusherConfig::default() };
    let server = start(vec![AppConfig::dev()], config).await;
    let mut client = server.client().await;
    client.subscribe("room").await;
    // Dropped after the cap, well before the exchange deadline (reading 100 MB on loopback would be
    // done in well under that too, so only the cap explains an early drop).
    let sent = tokio::time::timeout(Duration::from_secs(4), dropped.recv())
        .await
        .expect("the flooding receiver's connection was dropped before the exchange deadline")
        .unwrap();
    assert!(sent < 50 * 1024 * 1024, "the client stopped reading early: {sent} bytes were written");
}

/// Reads a request head (up to the blank line); false if the connection ended first.
async fn read_head(stream: &mut tokio::net::TcpStream) -> bool {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    true
}

/// A receiver that reports each request: its `x-receiver-token` header and how many events it carried.
async fn request_receiver() -> (String, mpsc::UnboundedReceiver<(Option<String>, usize)>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let tx = tx.clone();
            let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let tx = tx.clone();
                async move {
                    let token = req.headers().get("x-receiver-token").map(|v| v.to_str().unwrap().to_string());
                    let body = req.into_body().collect().await.unwrap().to_bytes();
                    let payload: Value = serde_json::from_slice(&body).unwrap();
                    let _ = tx.send((token, payload["events"].as_array().unwrap().len()));
                    Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::new())))
                }
            });
            tokio::spawn(http1::Builder::new().serve_connection(TokioIo::new(stream), service));
        }
    });
    (url, rx)
}

/// Starts a Herald whose app batches webhooks or not, with one target sending a custom header, and
/// makes 20 channel_occupied events at once; returns the events per request the receiver saw.
async fn events_per_request(batch: bool) -> Vec<usize> {
    let (url, mut requests) = request_receiver().await;
    let headers = vec![("X-Receiver-Token".to_string(), "t0ken".to_string())];
    let targets = vec![WebhookTarget { url, event_types: vec!["channel_occupied".into()], headers }];
    let config = PusherConfig { webhooks: HashMap::from([("app-id".to_string(), targets)]), ..PusherConfig::default() };
    let app =
        AppConfig { pusher: herald_pusher::PusherApp { batch_webhooks: batch, ..herald_pusher::PusherApp::dev() }, ..AppConfig::dev() };
    let server = start(vec![app], config).await;
    let mut client = server.client().await;
    for i in 0..20 {
        client.send(serde_json::json!({"event":"pusher:subscribe","data":{"channel":format!("room-{i}")}})).await;
    }
    let mut counts = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while counts.iter().sum::<usize>() < 20 {
        let (token, n) = tokio::time::timeout_at(deadline, requests.recv()).await.expect("20 events within 10 s").unwrap();
        assert_eq!(token.as_deref(), Some("t0ken"), "the custom header is sent");
        counts.push(n);
    }
    counts
}

#[tokio::test]
async fn webhooks_are_one_event_per_request_unless_the_app_batches() {
    let unbatched = events_per_request(false).await;
    assert_eq!(unbatched, vec![1; 20], "Pusher's default: one event per request");
    let batched = events_per_request(true).await;
    assert!(batched.len() < 20 && batched.iter().any(|&n| n > 1), "batched: {batched:?}");
}

/// A receiver that answers 500 to its first request and 200 after, counting requests.
async fn flaky_receiver() -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let requests = Arc::new(AtomicUsize::new(0));
    let counted = requests.clone();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let counted = counted.clone();
            let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let counted = counted.clone();
                async move {
                    let _ = req.into_body().collect().await;
                    let mut response = hyper::Response::new(Full::new(Bytes::new()));
                    if counted.fetch_add(1, Ordering::SeqCst) == 0 {
                        *response.status_mut() = hyper::StatusCode::INTERNAL_SERVER_ERROR;
                    }
                    Ok::<_, Infallible>(response)
                }
            });
            tokio::spawn(http1::Builder::new().serve_connection(TokioIo::new(stream), service));
        }
    });
    (url, requests)
}

#[tokio::test]
async fn webhook_outcomes_and_queue_depth_are_counted() {
    // An app of its own, so the process-wide counters of other tests do not mix in.
    let id = "webhook-outcomes";
    let (url, requests) = flaky_receiver().await;
    let targets = vec![WebhookTarget { url, event_types: vec!["channel_occupied".into()], headers: vec![] }];
    let config = PusherConfig { webhooks: HashMap::from([(id.to_string(), targets)]), ..PusherConfig::default() };
    let mut app = AppConfig::dev();
    app.app.id = id.into();
    app.pusher.id = id.into();
    let server = start(vec![app], config).await;
    let line = |text: &str, name: &str| {
        let prefix = format!("{name}{{app=\"{id}\"}} ");
        text.lines().find_map(|l| l.strip_prefix(&prefix).map(|v| v.to_string()))
    };
    let text = metrics_text(server.addr).await;
    for name in
        ["herald_webhooks_failed_total", "herald_webhooks_retried_total", "herald_webhooks_sent_total", "herald_webhooks_queue_depth"]
    {
        assert_eq!(line(&text, name).as_deref(), Some("0"), "{name} present from start at 0:\n{text}");
        assert!(text.contains(&format!("# HELP {name} ")), "{name} has HELP");
    }
    let mut client = server.client().await;
    client.subscribe("room").await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = metrics_text(server.addr).await;
        if line(&text, "herald_webhooks_sent_total").as_deref() == Some("1") {
            assert_eq!(line(&text, "herald_webhooks_failed_total").as_deref(), Some("1"), "{text}");
            assert_eq!(line(&text, "herald_webhooks_retried_total").as_deref(), Some("1"), "{text}");
            assert_eq!(line(&text, "herald_webhooks_queue_depth").as_deref(), Some("0"), "{text}");
            break;
        }
        assert!(Instant::now() < deadline, "the retried webhook was not delivered:\n{text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(requests.load(Ordering::SeqCst), 2);
}
