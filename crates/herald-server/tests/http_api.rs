//! The Pusher HTTP API over real sockets: signatures, validation, queries.

mod common;

use common::*;
use serde_json::json;

#[tokio::test]
async fn signatures_are_checked() {
    let server = start_dev().await;
    let body = json!({"name":"e","channel":"c","data":"{}"});
    let (status, _) = api(server.addr, "app-key", "wrong-secret", "POST", "/apps/app-id/events", "", Some(body.clone())).await;
    assert_eq!(status, 401);
    let (status, _) = api(server.addr, "other-key", "app-secret", "POST", "/apps/app-id/events", "", Some(body.clone())).await;
    assert_eq!(status, 401);
    let (status, err) = api(server.addr, "app-key", "app-secret", "POST", "/apps/nope/events", "", Some(body.clone())).await;
    assert_eq!(status, 404);
    assert!(err["error"].as_str().unwrap().contains("unknown app"));
    let (status, _) =
        http_raw(server.addr, "POST /apps/app-id/events HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}").await;
    assert_eq!(status, 401, "unsigned requests are refused");
}

#[tokio::test]
async fn validation_errors() {
    let server = start_dev().await;
    let post = |b| server.api("POST", "/apps/app-id/events", "", Some(b));
    assert_eq!(post(json!({"name":"e","data":"{}"})).await.0, 400, "no channel");
    let many: Vec<String> = (0..101).map(|i| format!("c{i}")).collect();
    assert_eq!(post(json!({"name":"e","channels":many,"data":"{}"})).await.0, 400);
    assert_eq!(post(json!({"name":"e","channel":"c","data":"x".repeat(10 * 1024 + 1)})).await.0, 413);
    assert_eq!(post(json!({"name":"e","channel":"private-encrypted-x","data":"plain"})).await.0, 400);
    assert_eq!(post(json!({"name":"e","channel":"c","data":"{}","socket_id":"garbage"})).await.0, 400);
    let batch: Vec<_> = (0..11).map(|_| json!({"name":"e","channel":"c","data":"{}"})).collect();
    assert_eq!(server.api("POST", "/apps/app-id/batch_events", "", Some(json!({"batch":batch}))).await.0, 400);
    assert_eq!(server.api("GET", "/apps/app-id/channels/news/users", "", None).await.0, 400);
    assert_eq!(server.api("GET", "/apps/app-id/channels", "info=user_count", None).await.0, 400);
}

#[tokio::test]
async fn channel_queries_and_info() {
    let server = start_dev().await;
    let mut a = server.client().await;
    let mut b = server.client().await;
    a.subscribe("news").await;
    b.subscribe("news").await;
    a.subscribe_presence("presence-room", "alice").await;
    b.subscribe_presence("presence-room", "bob").await;
    a.expect("pusher_internal:member_added").await;

    let (_, r) = server.api("GET", "/apps/app-id/channels", "", None).await;
    assert_eq!(r, json!({"channels":{"news":{},"presence-room":{}}}));
    let (_, r) = server.api("GET", "/apps/app-id/channels", "filter_by_prefix=presence-&info=user_count", None).await;
    assert_eq!(r, json!({"channels":{"presence-room":{"user_count":2}}}));
    let (_, r) = server.api("GET", "/apps/app-id/channels/news", "info=subscription_count", None).await;
    assert_eq!(r, json!({"occupied":true,"subscription_count":2}));
    let (_, r) = server.api("GET", "/apps/app-id/channels/empty", "", None).await;
    assert_eq!(r, json!({"occupied":false}));
    let (_, r) = server.api("GET", "/apps/app-id/channels/presence-room", "info=user_count,subscription_count", None).await;
    assert_eq!(r, json!({"occupied":true,"subscription_count":2,"user_count":2}));

    let (status, r) = server
        .api(
            "POST",
            "/apps/app-id/events",
            "",
            Some(json!({"name":"e","channels":["news","presence-room"],"data":"{}","info":"subscription_count,user_count"})),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(r, json!({"channels":{"news":{"subscription_count":2},"presence-room":{"subscription_count":2,"user_count":2}}}));
    let batch = json!({"batch":[{"name":"one","channel":"news","data":"1"},{"name":"two","channel":"news","data":"2","info":"subscription_count"}]});
    let (status, r) = server.api("POST", "/apps/app-id/batch_events", "", Some(batch)).await;
    assert_eq!((status, r), (200, json!({"batch":[{},{"subscription_count":2}]})));
    assert_eq!(a.expect("e").await["channel"], "news");
    assert_eq!(a.expect("e").await["channel"], "presence-room");
    a.expect("one").await;
    a.expect("two").await;
}

/// A signed request with a raw (not necessarily JSON) body; returns (status, headers, body).
async fn raw_api(server: &Server, method: &str, path: &str, body: &str) -> RawResponse {
    http_full(server.addr, &signed_request("app-key", "app-secret", method, path, "", body)).await
}

#[tokio::test]
async fn api_bodies_must_be_json_objects() {
    let server = start_dev().await;
    let mut c = server.client().await;
    c.subscribe("x").await;
    for (path, body) in [
        ("/apps/app-id/events", r#"["e","x","arr"]"#),
        ("/apps/app-id/events", r#""e""#),
        ("/apps/app-id/batch_events", r#"[{"name":"e","channel":"x","data":"d"}]"#),
        ("/apps/app-id/batch_events", r#"{"batch":[["e","x","arr"]]}"#),
        ("/apps/app-id/batch_events", r#"{"batch":[{"name":"e","channel":"x","data":"d"},["e","x","arr"]]}"#),
        ("/apps/app-id/users/u1/terminate_connections", "[1]"),
    ] {
        let r = raw_api(&server, "POST", path, body).await;
        assert_eq!(r.status, 400, "{path} {body}");
        let json: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        assert!(json["error"].as_str().unwrap().contains("object"), "{path} {body}: {json}");
    }
    c.silent(200).await; // nothing was published
                         // Objects still work.
    let r = raw_api(&server, "POST", "/apps/app-id/events", r#"{"name":"e","channel":"x","data":"d"}"#).await;
    assert_eq!(r.status, 200);
    assert_eq!(c.expect("e").await["data"], "d");
}

#[tokio::test]
async fn names_channels_and_socket_ids_are_checked_on_every_path() {
    let server = start_dev().await;
    let post = |path: &'static str, b: serde_json::Value| server.api("POST", path, "", Some(b));
    let long = "e".repeat(201);
    let ok_name = "e".repeat(200);
    assert_eq!(post("/apps/app-id/events", json!({"name":long,"channel":"c","data":"{}"})).await.0, 400);
    assert_eq!(post("/apps/app-id/events", json!({"name":ok_name,"channel":"c","data":"{}"})).await.0, 200);
    assert_eq!(post("/apps/app-id/events", json!({"name":"","channel":"c","data":"{}"})).await.0, 400);
    let batch = |e: serde_json::Value| json!({"batch":[{"name":"ok","channel":"c","data":"1"}, e]});
    assert_eq!(post("/apps/app-id/batch_events", batch(json!({"name":long,"channel":"c","data":"{}"}))).await.0, 400);
    assert_eq!(post("/apps/app-id/batch_events", batch(json!({"name":"e","channel":"bad name","data":"{}"}))).await.0, 400);
    assert_eq!(post("/apps/app-id/batch_events", batch(json!({"name":"e","channel":"c","data":"{}","socket_id":"1.x"}))).await.0, 400);
    assert_eq!(post("/apps/app-id/batch_events", batch(json!({"name":"e","channel":"c","data":"{}","socket_id":1}))).await.0, 400);
    assert_eq!(post("/apps/app-id/events", json!({"name":"e","channel":"c","data":"{}","socket_id":"12.34"})).await.0, 200);
    let long_channel = "c".repeat(165);
    for path in [format!("/apps/app-id/channels/{long_channel}"), "/apps/app-id/channels/a%20b".to_string()] {
        let (status, body) = server.api("GET", &path, "", None).await;
        assert_eq!(status, 400, "{path}");
        assert!(body["error"].as_str().unwrap().contains("channel"), "{path}: {body}");
    }
    let (status, _) = server.api("GET", &format!("/apps/app-id/channels/presence-{long_channel}/users"), "", None).await;
    assert_eq!(status, 400);
    let long_user = "u".repeat(165);
    let (status, _) = server.api("POST", &format!("/apps/app-id/users/{long_user}/terminate_connections"), "", Some(json!({}))).await;
    assert_eq!(status, 400, "user ids are bounded as on the WebSocket");
    let ok_user = "u".repeat(164);
    let (status, _) = server.api("POST", &format!("/apps/app-id/users/{ok_user}/terminate_connections"), "", Some(json!({}))).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn every_api_error_is_json() {
    let server = start_dev().await;
    let assert_json = |r: &RawResponse, status: u16, what: &str| {
        assert_eq!(r.status, status, "{what}");
        assert!(r.headers.contains("content-type: application/json"), "{what}: {}", r.headers);
        let json: serde_json::Value = serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("{what}: {e}: {:?}", r.body));
        assert!(json["error"].as_str().is_some_and(|e| !e.is_empty()), "{what}: {json}");
    };
    // 413: the body is over max_request_body (256 KiB by default).
    let big = format!(r#"{{"name":"e","channel":"c","data":"{}"}}"#, "x".repeat(300 * 1024));
    assert_json(&raw_api(&server, "POST", "/apps/app-id/events", &big).await, 413, "oversized body");
    // 413 also when the body is streamed without a Content-Length.
    let chunked = format!(
        "POST /apps/app-id/events HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{:x}\r\n{big}\r\n0\r\n\r\n",
        big.len()
    );
    let (head, _) = signed_head("app-key", "app-secret", "POST", "/apps/app-id/events", "", &big, big.len());
    let path_and_query = head.lines().next().unwrap().split(' ').nth(1).unwrap().to_string();
    let chunked = chunked.replacen("/apps/app-id/events", &path_and_query, 1);
    assert_json(&http_full(server.addr, &chunked).await, 413, "oversized chunked body");
    // 400: not JSON.
    assert_json(&raw_api(&server, "POST", "/apps/app-id/events", "{not json").await, 400, "bad JSON");
    // 401: bad signature.
    let unsigned = "POST /apps/app-id/events HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}";
    assert_json(&http_full(server.addr, unsigned).await, 401, "unsigned");
    // 404: unknown app, unknown routes under /apps.
    assert_json(&raw_api(&server, "POST", "/apps/nope/events", "{}").await, 404, "unknown app");
    for path in ["/apps", "/apps/", "/apps/app-id", "/apps/app-id/nothing", "/apps/app-id/channels/a/b/c"] {
        let r = http_full(server.addr, &format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")).await;
        assert_json(&r, 404, path);
    }
    // 405: a known route with the wrong method.
    for (method, path) in [("GET", "/apps/app-id/events"), ("DELETE", "/apps/app-id/channels"), ("PUT", "/apps/app-id/batch_events")] {
        let r =
            http_full(server.addr, &format!("{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")).await;
        assert_json(&r, 405, &format!("{method} {path}"));
    }
    // 400: a path segment that is not UTF-8.
    let r = http_full(server.addr, "GET /apps/%FF/channels HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
    assert_json(&r, 400, "non-UTF-8 path");
}

#[tokio::test]
async fn publish_with_info_answers_200_when_redis_is_gone() {
    let redis = RedisServer::start().await;
    let config = herald_server::Config {
        host: [127, 0, 0, 1].into(),
        port: 0,
        log: "info".into(),
        apps: vec![herald_server::AppConfig::dev()],
        pusher: herald_pusher::PusherConfig::default(),
        centrifugo: herald_centrifugo::CentrifugoConfig::default(),
        http: herald_server::HttpConfig::default(),
        shutdown_grace: std::time::Duration::from_secs(5),
        engine: herald_server::EngineConfig::Redis(herald_redis::RedisConfig { url: redis.url(), ..Default::default() }),
        ..herald_server::Config::default()
    };
    let server = serve(herald_server::Herald::start(&config).await.unwrap()).await;
    let mut c = server.client().await;
    c.subscribe("news").await;
    let event = json!({"name":"e","channel":"news","data":"{}","info":"subscription_count"});
    let (status, r) = server.api("POST", "/apps/app-id/events", "", Some(event.clone())).await;
    assert_eq!((status, r), (200, json!({"channels":{"news":{"subscription_count":1}}})), "cluster-wide counts while Redis is up");

    redis.stop().await;
    // The event is published (accepted); the counts are this node's own, not a 503 that makes SDKs retry.
    let started = tokio::time::Instant::now();
    let (status, r) = server.api("POST", "/apps/app-id/events", "", Some(event)).await;
    assert_eq!((status, r), (200, json!({"channels":{"news":{"subscription_count":1}}})));
    let batch = json!({"batch":[{"name":"e","channel":"news","data":"1","info":"subscription_count"}]});
    let (status, r) = server.api("POST", "/apps/app-id/batch_events", "", Some(batch)).await;
    assert_eq!((status, r), (200, json!({"batch":[{"subscription_count":1}]})));
    assert!(started.elapsed() < std::time::Duration::from_secs(8), "answered within the counts deadline: {:?}", started.elapsed());
    assert!(metrics_text(server.addr).await.contains("herald_api_info_fallback_total{app=\"app-id\"}"), "the fallback is counted");
}
