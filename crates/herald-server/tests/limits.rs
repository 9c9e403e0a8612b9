//! Limits over real sockets: per-IP connections and connect rate, per-user connections, the HTTP API
//! rate limit (429 + Retry-After), the user-auth timeout (4009), per-app name and channel-count limits.

mod common;

use std::time::{Duration, Instant};

use common::*;
use herald_core::{App, AppLimits};
use herald_pusher::{PusherApp, PusherConfig};
use herald_server::{AppConfig, Herald, HttpConfig, IpLimits};
use serde_json::{json, Value};

fn with_ip(ip: IpLimits) -> Herald {
    Herald::new(vec![AppConfig::dev()], PusherConfig::default()).with_http(HttpConfig { ip, ..HttpConfig::default() })
}

/// Connects and returns what the server said first: the `pusher:error` frame (if any) and the close.
async fn refused(addr: std::net::SocketAddr) -> (Value, u16) {
    let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/app/app-key?protocol=7")).await.unwrap();
    let mut c = Client { ws, socket_id: String::new() };
    let error = c.event().await;
    (error, c.closed().await)
}

#[tokio::test]
async fn connections_per_ip_are_capped_with_a_clear_close() {
    let server = serve(with_ip(IpLimits { max_connections_per_ip: Some(2), connects_per_ip_per_minute: None })).await;
    let first = server.client().await;
    let _second = server.client().await;
    let (error, code) = refused(server.addr).await;
    assert_eq!(error["event"], "pusher:error");
    assert!(error["data"].to_string().contains("Too many connections from this address"), "{error}");
    assert_eq!(code, 4100, "over capacity: pusher-js reconnects with backoff");
    // The HTTP API from the same address still works.
    assert_eq!(server.api("GET", "/apps/app-id/channels", "", None).await.0, 200);
    drop(first);
    // Once a socket closes, its place is free again (the server notices the close first).
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/app/app-key?protocol=7", server.addr)).await.unwrap();
        let mut c = Client { ws, socket_id: String::new() };
        if c.event().await["event"] == "pusher:connection_established" {
            break;
        }
        assert!(Instant::now() < deadline, "the freed place was never given back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn connect_rate_per_ip_is_limited() {
    let server = serve(with_ip(IpLimits { max_connections_per_ip: None, connects_per_ip_per_minute: Some(3) })).await;
    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(server.client().await);
    }
    let (error, code) = refused(server.addr).await;
    assert!(error["data"].to_string().contains("Connecting too fast"), "{error}");
    assert_eq!(code, 4100);
}

fn app_with(limits: AppLimits, pusher: PusherApp) -> AppConfig {
    AppConfig { app: App { limits, ..App::dev() }, pusher, centrifugo: AppConfig::dev().centrifugo }
}

#[tokio::test]
async fn connections_per_user_are_capped() {
    let app = app_with(AppLimits { max_connections_per_user: Some(2), ..AppLimits::default() }, PusherApp::dev());
    let server = start(vec![app], PusherConfig::default()).await;
    let mut a = server.client().await;
    let mut b = server.client().await;
    let mut c = server.client().await;
    a.sign_in("alice").await;
    b.sign_in("alice").await;
    let user_data = json!({"id": "alice"}).to_string();
    let auth = format!("app-key:{}", sign("app-secret", &format!("{}::user::{user_data}", c.socket_id)));
    c.send(json!({"event":"pusher:signin","data":{"auth":auth,"user_data":user_data}})).await;
    let error = c.expect("pusher:error").await;
    assert_eq!(error["data"]["code"], 4004, "{error}");
    assert!(error["data"]["message"].as_str().unwrap().contains("connection limit"), "{error}");
    assert_eq!(c.closed().await, 4009);
    // Another user is not affected.
    let mut d = server.client().await;
    d.sign_in("bob").await;
    // When one of alice's connections closes, she may sign in again.
    drop(a);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut e = server.client().await;
        let user_data = json!({"id": "alice"}).to_string();
        let auth = format!("app-key:{}", sign("app-secret", &format!("{}::user::{user_data}", e.socket_id)));
        e.send(json!({"event":"pusher:signin","data":{"auth":auth,"user_data":user_data}})).await;
        if e.event().await["event"] == "pusher:signin_success" {
            break;
        }
        assert!(Instant::now() < deadline, "alice's freed place was never given back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn api_requests_are_rate_limited_with_retry_after() {
    let app = app_with(AppLimits::default(), PusherApp { api_requests_per_minute: Some(3), ..PusherApp::dev() });
    let server = start(vec![app], PusherConfig::default()).await;
    let body = json!({"name":"e","channel":"c","data":"x"});
    for _ in 0..3 {
        assert_eq!(server.api("POST", "/apps/app-id/events", "", Some(body.clone())).await.0, 200);
    }
    let (status, error) = server.api("POST", "/apps/app-id/events", "", Some(body.clone())).await;
    assert_eq!(status, 429, "{error}");
    let retry = error["retry_after"].as_u64().unwrap();
    assert!((1..=120).contains(&retry), "{error}");
    // The header says the same.
    let request = signed_request("app-key", "app-secret", "GET", "/apps/app-id/channels", "", "");
    let response = http_full(server.addr, &request).await;
    assert_eq!(response.status, 429);
    assert!(response.headers.contains("retry-after: "), "{}", response.headers);
    // Unauthenticated requests are not counted against the app (nobody can spend its budget).
    let other = start(
        vec![app_with(AppLimits::default(), PusherApp { api_requests_per_minute: Some(1), ..PusherApp::dev() })],
        PusherConfig::default(),
    )
    .await;
    for _ in 0..3 {
        assert_eq!(api(other.addr, "app-key", "wrong", "POST", "/apps/app-id/events", "", Some(body.clone())).await.0, 401);
    }
    assert_eq!(other.api("POST", "/apps/app-id/events", "", Some(body)).await.0, 200);
}

#[tokio::test]
async fn connections_that_must_sign_in_are_closed_with_4009_when_they_do_not() {
    let pusher = PusherApp { require_user_authentication: true, user_auth_timeout: Duration::from_millis(300), ..PusherApp::dev() };
    let server = start(vec![app_with(AppLimits::default(), pusher)], PusherConfig::default()).await;
    let mut signed = server.client().await;
    signed.sign_in("alice").await;
    let mut lazy = server.client().await;
    let started = Instant::now();
    let error = lazy.expect("pusher:error").await;
    assert_eq!(error["data"]["code"], 4009, "{error}");
    assert_eq!(error["data"]["message"], "Connection not authorized within timeout");
    assert_eq!(lazy.closed().await, 4009);
    assert!(started.elapsed() >= Duration::from_millis(250), "not before the timeout");
    // The signed-in connection is still served.
    signed.subscribe("news").await;
}

#[tokio::test]
async fn per_app_name_and_channel_count_limits() {
    let limits = AppLimits { max_channel_name: 8, max_event_name: 5, max_channels_per_publish: 2, ..AppLimits::default() };
    let server = start(vec![app_with(limits, PusherApp::dev())], PusherConfig::default()).await;
    let post = |b: Value| server.api("POST", "/apps/app-id/events", "", Some(b));
    assert_eq!(post(json!({"name":"e","channel":"12345678","data":"x"})).await.0, 200);
    assert_eq!(post(json!({"name":"e","channel":"123456789","data":"x"})).await.0, 400, "channel name over 8");
    assert_eq!(post(json!({"name":"abcdef","channel":"c","data":"x"})).await.0, 400, "event name over 5");
    assert_eq!(post(json!({"name":"e","channels":["a","b"],"data":"x"})).await.0, 200);
    let (status, error) = post(json!({"name":"e","channels":["a","b","c"],"data":"x"})).await;
    assert_eq!(status, 400, "{error}");
    let mut c = server.client().await;
    c.send(json!({"event":"pusher:subscribe","data":{"channel":"123456789"}})).await;
    let refused = c.expect("pusher:subscription_error").await;
    assert_eq!(refused["channel"], "123456789");
    c.subscribe("12345678").await;
}
