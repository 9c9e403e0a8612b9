//! Pusher protocol over real sockets: raw WebSocket clients against a Herald on 127.0.0.1.

mod common;

use std::time::Duration;

use common::*;
use futures_util::SinkExt;
use herald_core::{App, AppLimits, OutboxLimits, OverflowPolicy};
use herald_pusher::{PusherApp, PusherConfig};
use herald_server::AppConfig;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

fn data(v: &Value) -> Value {
    serde_json::from_str(v["data"].as_str().unwrap()).unwrap()
}

#[tokio::test]
async fn refuses_unknown_app_and_bad_protocol() {
    let off = AppConfig {
        app: App { id: "off".into(), enabled: false, ..App::dev() },
        pusher: PusherApp { id: "off".into(), key: "off-key".into(), ..PusherApp::dev() },
        centrifugo: herald_centrifugo::CentrifugoApp::with_secret("off", "app-secret"),
    };
    // Pusher settings naming an app the engine does not serve: the key is unknown.
    let ghost = AppConfig {
        app: App { id: "engine-only".into(), ..App::dev() },
        pusher: PusherApp { id: "ghost".into(), key: "ghost-key".into(), ..PusherApp::dev() },
        centrifugo: herald_centrifugo::CentrifugoApp::with_secret("engine-only", "app-secret"),
    };
    let server = start(vec![AppConfig::dev(), off, ghost], PusherConfig::default()).await;
    for (path, code) in [
        ("/app/nope?protocol=7", 4001),
        ("/app/ghost-key?protocol=7", 4001),
        ("/app/off-key?protocol=7", 4003),
        ("/app/app-key", 4008),
        ("/app/app-key?protocol=abc", 4006),
        ("/app/app-key?protocol=2", 4007),
    ] {
        let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{}{path}", server.addr)).await.unwrap();
        let mut c = Client { ws, socket_id: String::new() };
        let err = c.expect("pusher:error").await;
        assert_eq!(err["data"]["code"], code, "{path}");
        assert_eq!(c.closed().await, code, "{path}");
    }
}

#[tokio::test]
async fn over_quota_is_refused_with_4004() {
    let app =
        AppConfig { app: App { limits: AppLimits { max_connections: Some(1), ..AppLimits::default() }, ..App::dev() }, ..AppConfig::dev() };
    let server = start(vec![app], PusherConfig::default()).await;
    let _first = server.client().await;
    let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/app/app-key?protocol=7", server.addr)).await.unwrap();
    let mut second = Client { ws, socket_id: String::new() };
    assert_eq!(second.expect("pusher:error").await["data"]["code"], 4004);
    assert_eq!(second.closed().await, 4004);
}

#[tokio::test]
async fn publish_reaches_subscribers_but_not_the_excluded_socket() {
    let server = start_dev().await;
    let mut a = server.client().await;
    let mut b = server.client().await;
    a.subscribe("news").await;
    b.subscribe("news").await;
    let (status, body) = server
        .api("POST", "/apps/app-id/events", "", Some(json!({"name":"flash","channel":"news","data":"{\"x\":1}","socket_id":a.socket_id})))
        .await;
    assert_eq!((status, body), (200, json!({})));
    let got = b.expect("flash").await;
    assert_eq!(got["channel"], "news");
    assert_eq!(got["data"], "{\"x\":1}", "data string relayed verbatim");
    a.silent(200).await;
}

#[tokio::test]
async fn private_subscription_needs_a_valid_signature() {
    let server = start_dev().await;
    let mut c = server.client().await;
    c.send(json!({"event":"pusher:subscribe","data":{"channel":"private-x","auth":"app-key:deadbeef"}})).await;
    let err = c.expect("pusher:subscription_error").await;
    assert_eq!(err["data"]["status"], 401);
    c.send(json!({"event":"pusher:subscribe","data":{"channel":"private-x"}})).await;
    c.expect("pusher:subscription_error").await;
    c.subscribe_private("private-x").await;
    c.send(json!({"event":"pusher:subscribe","data":{"channel":"bad channel"}})).await;
    assert_eq!(c.expect("pusher:subscription_error").await["data"]["type"], "InvalidChannel");
}

#[tokio::test]
async fn presence_members_join_and_leave_per_user() {
    let server = start_dev().await;
    let mut alice1 = server.client().await;
    let mut alice2 = server.client().await;
    let mut bob = server.client().await;
    let ok = alice1.subscribe_presence("presence-room", "alice").await;
    assert_eq!(data(&ok)["presence"]["count"], 1);
    bob.subscribe_presence("presence-room", "bob").await;
    let added = alice1.expect("pusher_internal:member_added").await;
    assert_eq!(data(&added)["user_id"], "bob");
    assert_eq!(data(&added)["user_info"]["name"], "bob");

    let ok = alice2.subscribe_presence("presence-room", "alice").await;
    assert_eq!(data(&ok)["presence"]["count"], 2);
    bob.silent(200).await; // second tab of alice is not a new member

    drop(alice1);
    bob.silent(300).await;
    alice2.send(json!({"event":"pusher:unsubscribe","data":{"channel":"presence-room"}})).await;
    let removed = bob.expect("pusher_internal:member_removed").await;
    assert_eq!(data(&removed)["user_id"], "alice");
    let (status, users) = server.api("GET", "/apps/app-id/channels/presence-room/users", "", None).await;
    assert_eq!((status, users), (200, json!({"users":[{"id":"bob"}]})));
}

#[tokio::test]
async fn client_events_rules() {
    let app = AppConfig {
        app: App { limits: AppLimits { client_events_per_second: 3, ..AppLimits::default() }, ..App::dev() },
        ..AppConfig::dev()
    };
    let server = start(vec![app], PusherConfig::default()).await;
    let mut a = server.client().await;
    let mut b = server.client().await;
    a.subscribe_private("private-chat").await;
    b.subscribe_private("private-chat").await;
    a.send(json!({"event":"client-typing","channel":"private-chat","data":{"who":"a"}})).await;
    let got = b.expect("client-typing").await;
    assert_eq!(got["data"], json!({"who":"a"}), "client data relayed as the JSON value");
    a.silent(150).await; // not echoed

    a.send(json!({"event":"client-x","channel":"news","data":{}})).await;
    assert_eq!(a.expect("pusher:error").await["data"]["code"], 4300);
    a.send(json!({"event":"client-x","channel":"private-other","data":{}})).await;
    assert!(a.expect("pusher:error").await["data"]["message"].as_str().unwrap().contains("Subscribe"));

    tokio::time::sleep(Duration::from_millis(1100)).await; // a fresh rate window
    for _ in 0..3 {
        a.send(json!({"event":"client-burst","channel":"private-chat","data":{}})).await;
    }
    a.send(json!({"event":"client-burst","channel":"private-chat","data":{}})).await;
    assert_eq!(a.expect("pusher:error").await["data"]["code"], 4301);
    for _ in 0..3 {
        b.expect("client-burst").await;
    }
    b.silent(150).await;
}

#[tokio::test]
async fn bad_input_gets_errors_and_the_connection_survives() {
    let server = start_dev().await;
    let mut c = server.client().await;
    let mut other = server.client().await;
    other.subscribe("news").await;
    c.send(json!({"event":"pusher:nonsense"})).await;
    assert_eq!(c.expect("pusher:error").await["data"]["message"], "Unknown event");
    c.ws.send(Message::text("{not json")).await.unwrap();
    assert!(c.expect("pusher:error").await["data"]["message"].as_str().unwrap().contains("Invalid JSON"));
    c.subscribe_private("private-big").await;
    let big = "x".repeat(11 * 1024);
    c.send(json!({"event":"client-big","channel":"private-big","data":big})).await;
    assert!(c.expect("pusher:error").await["data"]["message"].as_str().unwrap().contains("limit"));
    c.send(json!({"event":"pusher:ping","data":{}})).await;
    c.expect("pusher:pong").await;

    // A frame over the WebSocket limit closes that connection only.
    c.ws.send(Message::text("x".repeat(64 * 1024))).await.unwrap();
    assert_eq!(c.closed().await, 1009);
    server.api("POST", "/apps/app-id/events", "", Some(json!({"name":"still","channel":"news","data":"up"}))).await;
    other.expect("still").await;
}

#[tokio::test]
async fn too_many_channels_per_connection() {
    let app = AppConfig {
        app: App { limits: AppLimits { max_channels_per_connection: 2, ..AppLimits::default() }, ..App::dev() },
        ..AppConfig::dev()
    };
    let server = start(vec![app], PusherConfig::default()).await;
    let mut c = server.client().await;
    c.subscribe("a").await;
    c.subscribe("b").await;
    c.send(json!({"event":"pusher:subscribe","data":{"channel":"c"}})).await;
    assert_eq!(c.expect("pusher:subscription_error").await["data"]["type"], "LimitReached");
}

#[tokio::test]
async fn slow_consumer_is_closed_with_4100_and_others_unaffected() {
    let limits = AppLimits {
        outbox: OutboxLimits { max_messages: 20, max_bytes: 100_000, overflow: OverflowPolicy::DisconnectSlowConsumer },
        ..AppLimits::default()
    };
    let app = AppConfig { app: App { limits, ..App::dev() }, ..AppConfig::dev() };
    let server = start(vec![app], PusherConfig::default()).await;
    let mut slow = server.client().await;
    let mut fast = server.client().await;
    slow.subscribe("firehose").await;
    fast.subscribe("firehose").await;
    // The slow client does not read; a burst of publishes in-process overflows its queue while the
    // socket buffers are full.
    let payload = "y".repeat(9000);
    let channels = vec!["firehose".to_string()];
    let mut received = 0;
    let total = 3000;
    for i in 0..total {
        let t = herald_pusher::Trigger { name: "tick", data: &payload, channels: &channels, socket_id: None };
        server.herald.trigger("app-id", &t).await.unwrap();
        // The fast client keeps up: it reads after every few publishes.
        if i % 5 == 4 {
            while received <= i - 5 {
                futures_util::StreamExt::next(&mut fast.ws).await.unwrap().unwrap();
                received += 1;
            }
        }
    }
    assert_eq!(slow.closed().await, 4100);
    while let Ok(Some(Ok(_))) = tokio::time::timeout(Duration::from_millis(200), futures_util::StreamExt::next(&mut fast.ws)).await {
        received += 1;
    }
    assert_eq!(received, total, "the fast subscriber got every message");
}

#[tokio::test]
async fn server_pings_quiet_connections_and_closes_dead_ones() {
    let config = PusherConfig { activity_timeout: Duration::from_secs(1), pong_timeout: Duration::from_secs(1), ..PusherConfig::default() };
    let server = start(vec![AppConfig::dev()], config).await;
    let mut c = server.client().await;
    c.expect("pusher:ping").await;
    c.send(json!({"event":"pusher:pong","data":{}})).await;
    c.expect("pusher:ping").await;
    // No answer this time.
    assert_eq!(c.closed().await, 4201);
}

#[tokio::test]
async fn user_sign_in_and_per_user_delivery() {
    let server = start_dev().await;
    let mut phone = server.client().await;
    let mut tv = server.client().await;
    let mut web = server.client().await;
    for c in [&mut phone, &mut tv, &mut web] {
        c.sign_in("u1").await;
        c.send(json!({"event":"pusher:subscribe","data":{"channel":"#server-to-user-u1"}})).await;
        c.expect("pusher_internal:subscription_succeeded").await;
    }
    let (status, _) = server
        .api(
            "POST",
            "/apps/app-id/events",
            "",
            Some(json!({"name":"progress","channel":"#server-to-user-u1","data":"42","socket_id":phone.socket_id})),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(tv.expect("progress").await["data"], "42");
    assert_eq!(web.expect("progress").await["data"], "42");
    phone.silent(200).await;

    // Someone else may not subscribe to u1's channel.
    let mut intruder = server.client().await;
    intruder.send(json!({"event":"pusher:subscribe","data":{"channel":"#server-to-user-u1"}})).await;
    intruder.expect("pusher:subscription_error").await;
    // A bad sign-in is refused.
    intruder.send(json!({"event":"pusher:signin","data":{"auth":"app-key:00","user_data":"{\"id\":\"u1\"}"}})).await;
    intruder.expect("pusher:error").await;

    let (status, _) = server.api("POST", "/apps/app-id/users/u1/terminate_connections", "", Some(json!({}))).await;
    assert_eq!(status, 200);
    for c in [&mut phone, &mut tv, &mut web] {
        assert_eq!(c.closed().await, 4009);
    }
}

#[tokio::test]
async fn cache_channels_replay_the_last_event() {
    let server = start_dev().await;
    let mut first = server.client().await;
    first.subscribe("cache-score").await;
    first.expect("pusher:cache_miss").await;
    server.api("POST", "/apps/app-id/events", "", Some(json!({"name":"score","channel":"cache-score","data":"1-0"}))).await;
    server.api("POST", "/apps/app-id/events", "", Some(json!({"name":"score","channel":"cache-score","data":"2-0"}))).await;
    let mut late = server.client().await;
    late.subscribe("cache-score").await;
    assert_eq!(late.expect("score").await["data"], "2-0");
}

#[tokio::test]
async fn subscription_count_when_enabled() {
    let app = AppConfig { pusher: PusherApp { enable_subscription_count: true, ..PusherApp::dev() }, ..AppConfig::dev() };
    let server = start(vec![app], PusherConfig::default()).await;
    let mut a = server.client().await;
    a.subscribe("stream-1").await;
    assert_eq!(data(&a.expect("pusher_internal:subscription_count").await)["subscription_count"], 1);
    let mut b = server.client().await;
    b.subscribe("stream-1").await;
    assert_eq!(data(&a.expect("pusher_internal:subscription_count").await)["subscription_count"], 2);
    drop(b);
    assert_eq!(data(&a.expect("pusher_internal:subscription_count").await)["subscription_count"], 1);
}

#[tokio::test]
async fn graceful_shutdown_asks_clients_to_reconnect() {
    let server = start_dev().await;
    let mut c = server.client().await;
    server.stop();
    assert_eq!(c.closed().await, 4200);
    let result = tokio::time::timeout(Duration::from_secs(5), server.done).await.expect("server drained");
    assert!(result.unwrap().is_ok());
}

#[tokio::test]
async fn subscription_counts_of_big_channels_are_coalesced() {
    let app = AppConfig { pusher: PusherApp { enable_subscription_count: true, ..PusherApp::dev() }, ..AppConfig::dev() };
    let server = start(vec![app], PusherConfig::default()).await;
    let mut first = server.client().await;
    first.subscribe("big-stream").await;
    let mut others = Vec::new();
    for _ in 0..119 {
        let mut c = server.client().await;
        c.subscribe("big-stream").await;
        others.push(c);
    }
    // Up to 100 subscribers every change is sent; above, only the latest count once per interval.
    let mut seen = Vec::new();
    while seen.last() != Some(&120) {
        let v = first.expect("pusher_internal:subscription_count").await;
        seen.push(data(&v)["subscription_count"].as_u64().unwrap());
    }
    assert_eq!(seen[..100], (1..=100).collect::<Vec<_>>()[..]);
    assert!(seen.len() <= 103, "counts above 100 were not coalesced: {seen:?}");
}
