//! Sessions of a Redis-backed node while Redis stalls (SIGSTOP): closing connections free their place
//! at once, and the per-app connection quota is counted across nodes.

mod common;

use std::time::Duration;

use common::*;
use herald_core::{App, AppLimits};
use herald_pusher::PusherConfig;
use herald_redis::RedisConfig;
use herald_server::{AppConfig, Config, EngineConfig, Herald, HttpConfig};

fn config(redis: &RedisServer, apps: Vec<AppConfig>, pusher: PusherConfig, timeout: Duration) -> Config {
    Config {
        host: [127, 0, 0, 1].into(),
        port: 0,
        log: "info".into(),
        apps,
        pusher,
        centrifugo: herald_centrifugo::CentrifugoConfig::default(),
        http: HttpConfig::default(),
        shutdown_grace: Duration::from_secs(5),
        engine: EngineConfig::Redis(RedisConfig { url: redis.url(), timeout, ..Default::default() }),
        ..Config::default()
    }
}

#[tokio::test]
async fn a_closing_connection_frees_its_place_before_its_cluster_leaves_finish() {
    let redis = RedisServer::start().await;
    // One connection per process; Redis calls may take 10 s each before they give up.
    let pusher = PusherConfig { max_connections: 1, ..PusherConfig::default() };
    let server = serve(Herald::start(&config(&redis, vec![AppConfig::dev()], pusher, Duration::from_secs(10))).await.unwrap()).await;
    let mut first = server.client().await;
    for i in 0..40 {
        first.subscribe(&format!("room-{i}")).await;
    }
    redis.pause().await;
    drop(first);
    // The 40 leaves now wait on the stalled Redis. The next client must not wait for them.
    let second = tokio::time::timeout(Duration::from_secs(5), server.client()).await;
    redis.resume().await;
    assert!(second.is_ok(), "the closed connection's place was free while its leaves waited on Redis");
}

#[tokio::test]
async fn an_apps_connection_quota_is_counted_across_nodes() {
    let redis = RedisServer::start().await;
    let app =
        AppConfig { app: App { limits: AppLimits { max_connections: Some(1), ..AppLimits::default() }, ..App::dev() }, ..AppConfig::dev() };
    let node = |redis: &RedisServer| config(redis, vec![app.clone()], PusherConfig::default(), Duration::from_secs(2));
    let a = serve(Herald::start(&node(&redis)).await.unwrap()).await;
    let b = serve(Herald::start(&node(&redis)).await.unwrap()).await;
    let first = a.client().await;
    let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/app/app-key?protocol=7", b.addr)).await.unwrap();
    let mut refused = Client { ws, socket_id: String::new() };
    assert_eq!(refused.expect("pusher:error").await["data"]["code"], 4004, "the app's one connection is on the other node");
    assert_eq!(refused.closed().await, 4004);
    drop(first);
    // Once the first connection is gone (and uncounted), the other node admits one.
    let mut admitted = false;
    for _ in 0..100 {
        let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/app/app-key?protocol=7", b.addr)).await.unwrap();
        let mut c = Client { ws, socket_id: String::new() };
        if c.event().await["event"] == "pusher:connection_established" {
            admitted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(admitted, "the quota was freed when the connection closed");
}

#[tokio::test]
async fn the_centrifugo_front_counts_in_the_same_cluster_wide_quota() {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;

    let redis = RedisServer::start().await;
    let app =
        AppConfig { app: App { limits: AppLimits { max_connections: Some(1), ..AppLimits::default() }, ..App::dev() }, ..AppConfig::dev() };
    let node = |redis: &RedisServer| config(redis, vec![app.clone()], PusherConfig::default(), Duration::from_secs(2));
    let a = serve(Herald::start(&node(&redis)).await.unwrap()).await;
    let b = serve(Herald::start(&node(&redis)).await.unwrap()).await;
    // The close code a Centrifugo connection to `server` gets first (None: it stays open a while).
    let centrifugo_close = |addr: std::net::SocketAddr| async move {
        let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/connection/websocket")).await.unwrap();
        let read = tokio::time::timeout(Duration::from_millis(500), ws.next()).await;
        match read {
            Ok(Some(Ok(Message::Close(Some(frame))))) => (Some(u16::from(frame.code)), ws),
            _ => (None, ws),
        }
    };
    let first = a.client().await;
    let (code, _ws) = centrifugo_close(b.addr).await;
    assert_eq!(code, Some(3504), "a Pusher connection on the other node holds the app's one place");
    drop(first);
    // Once the Pusher connection is uncounted, a Centrifugo connection takes the place...
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let held = loop {
        let (code, ws) = centrifugo_close(b.addr).await;
        if code.is_none() {
            break ws;
        }
        assert!(tokio::time::Instant::now() < deadline, "the quota was never freed");
    };
    // ...and then a Pusher connection on the other node is over the quota.
    let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/app/app-key?protocol=7", a.addr)).await.unwrap();
    let mut refused = Client { ws, socket_id: String::new() };
    assert_eq!(refused.expect("pusher:error").await["data"]["code"], 4004, "the Centrifugo connection counts cluster-wide");
    drop(held);
}

#[tokio::test]
async fn redis_link_health_is_in_metrics_and_stats() {
    let redis = RedisServer::start().await;
    let mut config = config(&redis, vec![AppConfig::dev()], PusherConfig::default(), Duration::from_secs(2));
    config.admin_token = Some(herald_server::Secret("an-admin-token-for-tests".into()));
    let server = serve(Herald::start(&config).await.unwrap()).await;
    let text = metrics_text(server.addr).await;
    for name in [
        "herald_redis_reachable",
        "herald_redis_subscriber_connected",
        "herald_redis_reconnects_total",
        "herald_redis_command_errors_total",
    ] {
        assert!(text.contains(&format!("# HELP {name} ")), "{name} has HELP:\n{text}");
        assert!(text.contains(&format!("# TYPE {name} ")), "{name} has TYPE:\n{text}");
    }
    assert!(text.contains("herald_redis_command_errors_total{kind=\"timeout\"} "), "present from start:\n{text}");
    assert!(text.contains("# TYPE herald_redis_command_duration_seconds histogram"), "{text}");
    let stats = |server: &Server| {
        let addr = server.addr;
        async move {
            let request = "GET /stats HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer an-admin-token-for-tests\r\nConnection: close\r\n\r\n";
            http_raw(addr, request).await.1
        }
    };
    // The subscriber connects (it may take a moment after start).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let before = loop {
        let s = stats(&server).await;
        if s["redis"]["subscriber_connected"] == true {
            break s;
        }
        assert!(tokio::time::Instant::now() < deadline, "subscriber never connected: {s}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(before["redis"]["reachable"], true, "{before}");
    assert_eq!(before["redis"]["connected"], true, "{before}");
    // Redis drops the pub/sub connection (a pub/sub client once it follows a channel): it comes back
    // and is counted as a reconnect.
    let mut client = server.client().await;
    client.subscribe("news").await;
    let subscriber_before = before["redis"]["reconnects"]["subscriber"].as_u64().unwrap();
    redis.cli(&["CLIENT", "KILL", "TYPE", "pubsub"]).await;
    loop {
        let s = stats(&server).await;
        if s["redis"]["reconnects"]["subscriber"].as_u64().unwrap() > subscriber_before && s["redis"]["subscriber_connected"] == true {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline + Duration::from_secs(5), "no subscriber reconnect counted: {s}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
