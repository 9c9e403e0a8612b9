//! Operating Herald over real sockets: the stats endpoints (admin token), metrics hygiene (HELP/TYPE,
//! zero series, process metrics, API responses by status, latency histograms).

mod common;

use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use herald_core::latency::Stamp;
use herald_pusher::PusherConfig;
use herald_server::{AppConfig, Herald};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

const TOKEN: &str = "an-admin-token-for-tests";

async fn start_admin() -> Server {
    serve(Herald::new(vec![AppConfig::dev()], PusherConfig::default()).with_admin_token(Some(TOKEN.into()))).await
}

async fn get(addr: std::net::SocketAddr, path: &str, token: Option<&str>) -> (u16, Value) {
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    http_raw(addr, &format!("GET {path} HTTP/1.1\r\nHost: x\r\n{auth}Connection: close\r\n\r\n")).await
}

/// Polls `f` until it returns `Some`, for at most 5 s.
async fn eventually<T, F, Fut>(mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(tokio::time::Instant::now() < deadline, "condition not met within 5 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn stats_need_the_admin_token() {
    let server = start_admin().await;
    assert_eq!(get(server.addr, "/stats", None).await.0, 401);
    assert_eq!(get(server.addr, "/stats", Some("wrong-token-of-some-length")).await.0, 401);
    assert_eq!(get(server.addr, "/stats/apps/app-id", None).await.0, 401);
    assert_eq!(get(server.addr, "/stats/apps/app-id/channels/news", Some("nope")).await.0, 401);
    let (status, body) = get(server.addr, "/stats", Some(TOKEN)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(get(server.addr, "/stats/apps/nope", Some(TOKEN)).await.0, 404);

    let off = start_dev().await;
    assert_eq!(get(off.addr, "/stats", Some(TOKEN)).await.0, 404, "no admin token configured: no stats");
}

#[tokio::test]
async fn stats_count_connections_messages_and_channels() {
    let server = start_admin().await;
    let mut a = server.client().await;
    let mut b = server.client().await;
    a.subscribe("news").await;
    b.subscribe("news").await;
    a.subscribe_presence("presence-room", "alice").await;
    for i in 0..3 {
        let (status, _) =
            server.api("POST", "/apps/app-id/events", "", Some(json!({"name":"e","channel":"news","data":format!("hello {i}")}))).await;
        assert_eq!(status, 200);
    }
    for _ in 0..3 {
        a.expect("e").await;
        b.expect("e").await;
    }

    let (status, s) = get(server.addr, "/stats", Some(TOKEN)).await;
    assert_eq!(status, 200);
    assert_eq!(s["scope"], "node");
    assert_eq!(s["connections"]["active"], 2, "{s}");
    assert_eq!(s["connections"]["total"], 2, "{s}");
    assert_eq!(s["channels"], 2, "{s}");
    assert_eq!(s["messages"]["published"], 3, "{s}");
    assert!(s["messages"]["out"].as_u64().unwrap() >= 6, "{s}");
    assert!(s["messages"]["in"].as_u64().unwrap() >= 3, "subscribes are frames in: {s}");
    assert!(s["bytes"]["out"].as_u64().unwrap() > 0, "{s}");
    assert_eq!(s["engine"], "memory");
    assert_eq!(s["apps"][0]["id"], "app-id");
    assert!(s["latency"]["count"].is_u64(), "{s}");

    let (status, c) = get(server.addr, "/stats/apps/app-id/channels/news", Some(TOKEN)).await;
    assert_eq!(status, 200);
    assert_eq!(c["occupied"], true);
    assert_eq!(c["subscribers"], 2, "{c}");
    assert_eq!(c["peak_subscribers"], 2, "{c}");
    assert_eq!(c["messages"], 3, "{c}");
    assert_eq!(c["bytes"], 3 * "hello 0".len(), "{c}");
    assert_eq!(c["counts_scope"], "node");

    let (_, c) = get(server.addr, "/stats/apps/app-id/channels/presence-room", Some(TOKEN)).await;
    assert_eq!(c["users"], 1, "{c}");
    let (_, c) = get(server.addr, "/stats/apps/app-id/channels/empty", Some(TOKEN)).await;
    assert_eq!((c["occupied"].clone(), c["subscribers"].clone()), (json!(false), json!(0)));

    let (_, app) = get(server.addr, "/stats/apps/app-id", Some(TOKEN)).await;
    assert_eq!(app["top_channels"][0]["channel"], "news", "{app}");

    drop(b);
    let s = eventually(|| async {
        let (_, s) = get(server.addr, "/stats", Some(TOKEN)).await;
        (s["connections"]["active"] == 1).then_some(s)
    })
    .await;
    assert_eq!(s["connections"]["total"], 2);
    assert_eq!(s["connections"]["peak"], 2);
}

#[tokio::test]
async fn deliveries_over_sockets_are_timed_directly_written_or_batched() {
    let server = start_admin().await;
    let hub = server.herald.pusher().engine().by_id("app-id").unwrap().clone();
    let histogram = hub.latency().front("pusher");
    let before = histogram.snapshot().count();
    let mut a = server.client().await;
    let mut b = server.client().await;
    a.subscribe("timed").await;
    b.subscribe("timed").await;
    for i in 0..20 {
        let (status, _) =
            server.api("POST", "/apps/app-id/events", "", Some(json!({"name":"tick","channel":"timed","data":format!("{i}")}))).await;
        assert_eq!(status, 200);
    }
    for c in [&mut a, &mut b] {
        for _ in 0..20 {
            c.expect("tick").await;
        }
    }
    // Each of the 40 frames is recorded once, whichever task wrote it.
    eventually(|| async { (histogram.snapshot().count() - before == 40).then_some(()) }).await;
    let (_, s) = get(server.addr, "/stats", Some(TOKEN)).await;
    assert!(s["latency"]["count"].as_u64().unwrap() >= 40, "{s}");
    assert!(s["latency_by_front"]["pusher"]["count"].as_u64().unwrap() >= 40, "{s}");
    // The channel's own latency: these 40 deliveries, none of another channel's.
    let mut c = server.client().await;
    c.subscribe("other").await;
    let (status, _) = server.api("POST", "/apps/app-id/events", "", Some(json!({"name":"x","channel":"other","data":"1"}))).await;
    assert_eq!(status, 200);
    c.expect("x").await;
    let (_, ch) = get(server.addr, "/stats/apps/app-id/channels/timed", Some(TOKEN)).await;
    assert_eq!(ch["latency"]["count"], 40, "{ch}");
    assert!(ch["latency"]["p99_ms"].as_f64().unwrap() > 0.0, "{ch}");
    let ch = eventually(|| async {
        let (_, ch) = get(server.addr, "/stats/apps/app-id/channels/other", Some(TOKEN)).await;
        (ch["latency"]["count"] == 1).then_some(ch)
    })
    .await;
    assert_eq!(ch["latency"]["scope"], "node");
    // Gone with the channel.
    drop(c);
    let ch = eventually(|| async {
        let (_, ch) = get(server.addr, "/stats/apps/app-id/channels/other", Some(TOKEN)).await;
        (ch["occupied"] == false).then_some(ch)
    })
    .await;
    assert_eq!(ch["latency"], Value::Null, "{ch}");
}

#[tokio::test]
async fn every_front_histogram_is_listed() {
    let server = start_admin().await;
    let hub = server.herald.pusher().engine().by_id("app-id").unwrap().clone();
    hub.latency().front("relay").record_duration(Duration::from_millis(2));
    let (_, s) = get(server.addr, "/stats", Some(TOKEN)).await;
    assert_eq!(s["latency_by_front"]["relay"]["count"], 1, "{s}");
    assert!(s["latency_by_front"]["pusher"].is_object(), "{s}");
    assert_eq!(s["apps"][0]["latency_by_front"]["relay"]["count"], 1, "{s}");
    let text = metrics_text(server.addr).await;
    assert!(text.contains("herald_delivery_latency_seconds_count{app=\"app-id\",front=\"relay\"} 1"), "{text}");
}

/// A Centrifugo client of the dev app with a server-side subscription to `channel` (the token's
/// `channels` claim), JSON or protobuf, connected and subscribed when this returns.
async fn centrifugo_subscriber(addr: std::net::SocketAddr, channel: &str, protobuf: bool) -> CfClient {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let exp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + 3600;
    let claims = json!({ "sub": "timer", "exp": exp, "channels": [channel] });
    let token =
        jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &jsonwebtoken::EncodingKey::from_secret(b"app-secret")).unwrap();
    let mut request = format!("ws://{addr}/connection/websocket").into_client_request().unwrap();
    if protobuf {
        request.headers_mut().insert("sec-websocket-protocol", "centrifuge-protobuf".parse().unwrap());
    }
    let (ws, response) = tokio_tungstenite::connect_async(request).await.unwrap();
    assert_eq!(response.headers().get("sec-websocket-protocol").is_some(), protobuf);
    let mut client = CfClient { ws, protobuf, pending: Default::default() };
    if protobuf {
        use herald_centrifugo::protobuf::wire;
        use prost::Message as _;
        let connect = wire::ConnectRequest { token, ..Default::default() };
        let command = wire::Command { id: 1, connect: Some(connect), ..Default::default() };
        client.ws.send(WsMessage::Binary(command.encode_length_delimited_to_vec().into())).await.unwrap();
    } else {
        client.ws.send(WsMessage::text(json!({ "id": 1, "connect": { "token": token } }).to_string())).await.unwrap();
    }
    let reply = client.next().await;
    assert_eq!(reply["id"], 1, "connect reply: {reply}");
    assert!(reply["connect"]["subs"][channel].is_object(), "subscribed server-side: {reply}");
    client
}

/// A raw Centrifugo client that reads replies and pushes as JSON values (protobuf ones summarised).
struct CfClient {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    protobuf: bool,
    pending: std::collections::VecDeque<Value>,
}

impl CfClient {
    /// The next reply or push (5 s at most).
    async fn next(&mut self) -> Value {
        use herald_centrifugo::protobuf::wire;
        use prost::Message as _;
        loop {
            if let Some(v) = self.pending.pop_front() {
                return v;
            }
            let message = tokio::time::timeout(Duration::from_secs(5), self.ws.next()).await.expect("a frame within 5 s").unwrap().unwrap();
            match message {
                WsMessage::Text(text) if !self.protobuf => {
                    self.pending.extend(text.lines().filter(|l| !l.trim().is_empty()).map(|l| serde_json::from_str::<Value>(l).unwrap()));
                }
                WsMessage::Binary(mut bytes) if self.protobuf => {
                    while !bytes.is_empty() {
                        let reply = wire::Reply::decode_length_delimited(&mut bytes).unwrap();
                        let subs: serde_json::Map<String, Value> =
                            reply.connect.iter().flat_map(|c| c.subs.keys()).map(|k| (k.clone(), json!({}))).collect();
                        let mut v = json!({ "id": reply.id });
                        if reply.connect.is_some() {
                            v["connect"] = json!({ "subs": subs });
                        }
                        if let Some(pb) = reply.push.as_ref().and_then(|p| p.r#pub.as_ref().map(|pb| (p, pb))) {
                            let data: Value = serde_json::from_slice(&pb.1.data).unwrap_or(Value::Null);
                            v["push"] = json!({ "channel": pb.0.channel, "pub": { "data": data } });
                        }
                        self.pending.push_back(v);
                    }
                }
                WsMessage::Ping(_) | WsMessage::Pong(_) => {}
                other => panic!("unexpected frame: {other:?}"),
            }
        }
    }

    /// The next publication pushed on `channel` (skipping pings).
    async fn publication(&mut self, channel: &str) -> Value {
        loop {
            let v = self.next().await;
            if v["push"]["channel"] == channel && v["push"]["pub"].is_object() {
                return v["push"]["pub"]["data"].clone();
            }
        }
    }
}

#[tokio::test]
async fn centrifugo_deliveries_are_timed_directly_written_or_batched() {
    let server = start_admin().await;
    let hub = server.herald.pusher().engine().by_id("app-id").unwrap().clone();
    let histogram = hub.latency().front("centrifugo");
    let before = histogram.snapshot().count();
    let pusher_before = hub.latency().front("pusher").snapshot().count();
    let mut json_client = centrifugo_subscriber(server.addr, "timed", false).await;
    let mut protobuf_client = centrifugo_subscriber(server.addr, "timed", true).await;
    for i in 0..20 {
        let body = json!({ "channel": "timed", "data": { "i": i } }).to_string();
        let request = format!(
            "POST /api/publish HTTP/1.1\r\nHost: x\r\nX-API-Key: app-secret\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let (status, reply) = http_raw(server.addr, &request).await;
        assert_eq!(status, 200, "{reply}");
    }
    for client in [&mut json_client, &mut protobuf_client] {
        for i in 0..20 {
            assert_eq!(client.publication("timed").await, json!({ "i": i }), "in order, each once");
        }
    }
    // Each of the 40 frames is recorded once in the Centrifugo front's histogram, whichever task
    // (a publisher's direct write or the session's batch) wrote it; none in the Pusher front's.
    eventually(|| async { (histogram.snapshot().count() - before == 40).then_some(()) }).await;
    assert_eq!(hub.latency().front("pusher").snapshot().count(), pusher_before);
    let (_, s) = get(server.addr, "/stats", Some(TOKEN)).await;
    assert!(s["latency"]["count"].as_u64().unwrap() >= 40, "{s}");
    let text = metrics_text(server.addr).await;
    let count = text
        .lines()
        .find_map(|l| l.strip_prefix("herald_delivery_latency_seconds_count{app=\"app-id\",front=\"centrifugo\"} "))
        .unwrap_or_else(|| panic!("the centrifugo histogram in /metrics:\n{text}"));
    assert!(count.trim().parse::<u64>().unwrap() >= 40, "{count}");
}

#[tokio::test]
async fn stats_report_latency_percentiles() {
    let server = start_admin().await;
    let hub = server.herald.pusher().engine().by_id("app-id").unwrap().clone();
    let histogram = hub.latency().front("pusher");
    for _ in 0..99 {
        histogram.record_duration(Duration::from_micros(400));
    }
    histogram.record(Stamp::now());
    let (_, s) = get(server.addr, "/stats", Some(TOKEN)).await;
    assert_eq!(s["latency"]["count"], 100, "{s}");
    let p50 = s["latency"]["p50_ms"].as_f64().unwrap();
    assert!(p50 > 0.25 && p50 <= 0.5, "p50 within the 0.25-0.5 ms bucket: {s}");
    let p99 = s["latency"]["p99_ms"].as_f64().unwrap();
    assert!(p99 <= 0.5, "{s}");
}

#[tokio::test]
async fn metrics_are_described_present_from_start_and_include_the_process() {
    let server = start_admin().await;
    let text = metrics_text(server.addr).await;
    for name in ["herald_messages_out_total", "herald_bytes_out_total", "herald_connections", "herald_api_responses_total"] {
        assert!(text.contains(&format!("# HELP {name} ")), "{name} has HELP:\n{text}");
        assert!(text.contains(&format!("# TYPE {name} ")), "{name} has TYPE:\n{text}");
    }
    assert!(text.contains("herald_messages_out_total{app=\"app-id\"} "), "present from start:\n{text}");
    assert!(text.contains("herald_webhooks_dropped_total{app=\"app-id\"} 0"), "zero from start:\n{text}");
    assert!(text.contains("# TYPE herald_delivery_latency_seconds histogram"), "{text}");
    assert!(text.contains("herald_delivery_latency_seconds_bucket{app=\"app-id\",front=\"pusher\",le=\"0.0001\"}"), "{text}");
    assert!(text.contains("herald_delivery_latency_seconds_count{app=\"app-id\",front=\"pusher\"}"), "{text}");
    assert!(text.contains("herald_delivery_latency_seconds_count{app=\"app-id\",front=\"centrifugo\"} 0"), "{text}");
    for name in ["process_resident_memory_bytes", "process_open_fds", "process_cpu_seconds_total"] {
        assert!(text.lines().any(|l| l.starts_with(name)), "{name}:\n{text}");
    }
    assert!(text.contains("herald_uptime_seconds"), "{text}");
    // Every sample's metric has a TYPE line.
    for line in text.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
        let name = line.split(['{', ' ']).next().unwrap();
        let base = name.trim_end_matches("_bucket").trim_end_matches("_sum").trim_end_matches("_count");
        assert!(text.contains(&format!("# TYPE {name} ")) || text.contains(&format!("# TYPE {base} ")), "{name} has no TYPE line");
    }
}

#[tokio::test]
async fn api_responses_are_counted_by_app_and_status() {
    let server = start_admin().await;
    let (status, _) = server.api("POST", "/apps/app-id/events", "", Some(json!({"name":"e","channel":"c","data":"x"}))).await;
    assert_eq!(status, 200);
    let (status, _) = api(server.addr, "app-key", "wrong", "POST", "/apps/app-id/events", "", Some(json!({}))).await;
    assert_eq!(status, 401);
    let (status, _) = server.api("POST", "/apps/invented-id/events", "", Some(json!({}))).await;
    assert_eq!(status, 404);
    let text = metrics_text(server.addr).await;
    let value = |series: &str| -> f64 {
        text.lines().find_map(|l| l.strip_prefix(series)).and_then(|v| v.trim().parse().ok()).unwrap_or_else(|| panic!("{series}:\n{text}"))
    };
    // Other tests in this process share the recorder: at least this test's requests are there.
    assert!(value("herald_api_responses_total{app=\"app-id\",status=\"200\"}") >= 1.0);
    assert!(value("herald_api_responses_total{app=\"app-id\",status=\"401\"}") >= 1.0);
    assert!(value("herald_api_responses_total{app=\"unknown\",status=\"404\"}") >= 1.0);
    assert!(!text.contains("invented-id"), "unknown app ids do not become labels");
}

#[tokio::test]
async fn dashboard_is_off_without_a_token_and_its_api_needs_the_token() {
    let off = start_dev().await;
    let r = http_full(off.addr, "GET /dashboard HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
    assert_eq!(r.status, 404);
    let r = http_full(off.addr, "GET /dashboard/assets/dashboard.js HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
    assert_eq!(r.status, 404);

    let server = start_admin().await;
    let r = http_full(server.addr, "GET /dashboard HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
    assert_eq!(r.status, 200);
    assert!(r.headers.contains("content-security-policy: default-src 'self'"), "{}", r.headers);
    assert!(r.body.contains("id=\"login-form\""));
    assert!(!r.body.contains(TOKEN));
    for path in ["/dashboard/api/apps", "/dashboard/api/stream"] {
        assert_eq!(get(server.addr, path, None).await.0, 401, "{path}");
        assert_eq!(get(server.addr, path, Some("wrong-token-of-some-length")).await.0, 401, "{path}");
    }
    let (status, apps) = get(server.addr, "/dashboard/api/apps", Some(TOKEN)).await;
    assert_eq!(status, 200);
    assert_eq!(apps["apps"][0]["key"], "app-key");
    assert!(!apps.to_string().contains("app-secret"), "secrets never reach the page");

    let publish = |token: &str, body: Value| {
        let body = body.to_string();
        format!(
            "POST /dashboard/api/publish HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    };
    let mut c = server.client().await;
    c.subscribe("console").await;
    let (status, r) = http_raw(server.addr, &publish(TOKEN, json!({"app":"app-id","channel":"console","event":"e","data":"hi"}))).await;
    assert_eq!((status, r["delivered"].clone()), (200, json!(1)));
    assert_eq!(c.expect("e").await["data"], "hi");
    assert_eq!(http_raw(server.addr, &publish("wrong-token-of-some-length", json!({}))).await.0, 401);

    // The stream: a `stats` event at once.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let request = format!("GET /dashboard/api/stream HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\r\n");
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 8192];
    while !String::from_utf8_lossy(&got).contains("event: stats") {
        let n = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf)).await.expect("a stats event within 5 s").unwrap();
        assert!(n > 0, "stream closed early");
        got.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&got);
    assert!(text.contains("content-type: text/event-stream"), "{text}");
    assert!(text.contains("\"connections\""), "{text}");
}
