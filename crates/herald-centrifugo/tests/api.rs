//! The server HTTP API over real HTTP on 127.0.0.1: authentication, publish with history positions
//! and idempotency keys, broadcast, history, history_remove, presence, channels, info, and refusals
//! with Centrifugo's error codes.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{call, post, serve};
use herald_centrifugo::{CentrifugoApp, ChannelOptions, Namespace};
use herald_core::{App, Engine, MemberJoin};
use serde_json::json;
use tokio_util::sync::CancellationToken;

struct Server {
    port: u16,
    engine: Arc<Engine>,
    shutdown: CancellationToken,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn start() -> Server {
    let engine = Arc::new(Engine::new([App::dev()]));
    let mut app = CentrifugoApp::dev();
    app.api_key = Some("api-key".into());
    app.channel_options = ChannelOptions { presence: true, ..Default::default() };
    app.namespaces.push(Namespace {
        name: "hist".into(),
        options: ChannelOptions { history_size: 10, history_ttl: Duration::from_secs(300), ..Default::default() },
    });
    let shutdown = CancellationToken::new();
    let port = serve(engine.clone(), app, &shutdown).await;
    Server { port, engine, shutdown }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_or_wrong_key_is_401_and_both_header_forms_work() {
    let server = start().await;
    let body = json!({"channel": "news", "data": {"a": 1}}).to_string();
    let (status, _) = post(server.port, "/api/publish", None, body.as_bytes()).await;
    assert_eq!(status, 401);
    let (status, _) = post(server.port, "/api/publish", Some(("X-API-Key", "app-secret")), body.as_bytes()).await;
    assert_eq!(status, 401);
    let (status, _) = post(server.port, "/api/publish", Some(("Authorization", "Bearer api-key")), body.as_bytes()).await;
    assert_eq!(status, 401);
    let (status, answer) = post(server.port, "/api/publish", Some(("Authorization", "apikey api-key")), body.as_bytes()).await;
    assert_eq!((status, answer), (200, json!({"result": {}})));
    let (status, answer) = post(server.port, "/apps/app-id/api/publish", Some(("X-API-Key", "api-key")), body.as_bytes()).await;
    assert_eq!((status, answer), (200, json!({"result": {}})));
    let (status, _) = post(server.port, "/apps/nope/api/publish", Some(("X-API-Key", "api-key")), body.as_bytes()).await;
    assert_eq!(status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_answers_offset_and_epoch_and_an_idempotency_key_publishes_once() {
    let server = start().await;
    let first = call(server.port, "publish", json!({"channel": "hist:a", "data": {"n": 1}, "tags": {"k": "v"}})).await;
    assert_eq!(first["result"]["offset"], 1);
    let epoch = first["result"]["epoch"].as_str().unwrap().to_string();
    assert!(!epoch.is_empty());
    let keyed = json!({"channel": "hist:a", "data": {"n": 2}, "idempotency_key": "k1"});
    let second = call(server.port, "publish", keyed.clone()).await;
    assert_eq!(second["result"]["offset"], 2);
    let repeat = call(server.port, "publish", keyed).await;
    assert_eq!(repeat["result"]["offset"], 2, "a repeat is accepted, not stored again");
    let skipped = call(server.port, "publish", json!({"channel": "hist:a", "data": {"n": 3}, "skip_history": true})).await;
    assert_eq!(skipped, json!({"result": {}}));

    let history = call(server.port, "history", json!({"channel": "hist:a", "limit": -1})).await;
    let pubs = history["result"]["publications"].as_array().unwrap();
    assert_eq!(pubs.len(), 2, "{history}");
    assert_eq!(pubs[0]["data"], json!({"n": 1}));
    assert_eq!(pubs[0]["tags"], json!({"k": "v"}));
    assert_eq!(pubs[1]["offset"], 2);
    assert_eq!(history["result"]["epoch"], epoch);
    let newest = call(server.port, "history", json!({"channel": "hist:a", "limit": 1, "reverse": true})).await;
    assert_eq!(newest["result"]["publications"][0]["data"], json!({"n": 2}));
    let since = call(server.port, "history", json!({"channel": "hist:a", "limit": 10, "since": {"offset": 1, "epoch": epoch}})).await;
    assert_eq!(since["result"]["publications"].as_array().unwrap().len(), 1);
    let wrong = call(server.port, "history", json!({"channel": "hist:a", "limit": 10, "since": {"offset": 1, "epoch": "other"}})).await;
    assert_eq!(wrong["error"]["code"], 112);

    assert_eq!(call(server.port, "history_remove", json!({"channel": "hist:a"})).await, json!({"result": {}}));
    let emptied = call(server.port, "history", json!({"channel": "hist:a", "limit": -1})).await;
    assert_eq!(emptied["result"]["publications"], json!([]));
    assert_ne!(emptied["result"]["epoch"], epoch, "a removed history starts a new epoch");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcast_answers_per_channel() {
    let server = start().await;
    let answer = call(server.port, "broadcast", json!({"channels": ["hist:x", "plain", "nope:x"], "data": "hi"})).await;
    let responses = answer["result"]["responses"].as_array().unwrap();
    assert_eq!(responses[0]["result"]["offset"], 1);
    assert_eq!(responses[1], json!({"result": {}}));
    assert_eq!(responses[2]["error"]["code"], 102);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_channels_and_info_see_engine_connections() {
    let server = start().await;
    let hub = server.engine.by_id("app-id").unwrap().clone();
    let (socket, _outbox) = hub.connect().unwrap();
    hub.subscribe(socket, "room", Some(MemberJoin { user_id: Arc::from("alice"), info: bytes::Bytes::from_static(b"{\"name\":\"A\"}") }))
        .unwrap();
    let presence = call(server.port, "presence", json!({"channel": "room"})).await;
    assert_eq!(presence["result"]["presence"]["alice"]["user"], "alice");
    assert_eq!(presence["result"]["presence"]["alice"]["conn_info"], json!({"name": "A"}));
    let stats = call(server.port, "presence_stats", json!({"channel": "room"})).await;
    assert_eq!(stats, json!({"result": {"num_clients": 1, "num_users": 1}}));
    let channels = call(server.port, "channels", json!({})).await;
    assert_eq!(channels, json!({"result": {"channels": {"room": {"num_clients": 1}}}}));
    let filtered = call(server.port, "channels", json!({"pattern": "other*"})).await;
    assert_eq!(filtered, json!({"result": {"channels": {}}}));
    let info = call(server.port, "info", json!({})).await;
    assert_eq!(info["result"]["nodes"][0]["num_clients"], 1);
    let none = call(server.port, "presence", json!({"channel": "hist:a"})).await;
    assert_eq!(none["error"]["code"], 108);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_centrifugo_errors() {
    let server = start().await;
    let key = Some(("X-API-Key", "api-key"));
    let (status, answer) = post(server.port, "/api/publish", key, b"{not json").await;
    assert_eq!((status, answer["error"]["code"].clone()), (400, json!(107)));
    let (status, answer) = post(server.port, "/api/nonsense", key, b"{}").await;
    assert_eq!((status, answer["error"]["code"].clone()), (404, json!(104)));
    let unknown = call(server.port, "publish", json!({"channel": "nope:x", "data": 1})).await;
    assert_eq!(unknown["error"], json!({"code": 102, "message": "unknown channel"}));
    let no_data = call(server.port, "publish", json!({"channel": "plain"})).await;
    assert_eq!(no_data["error"]["code"], 107);
    let big = vec![b' '; 2 * 1024 * 1024];
    let (status, _) = post(server.port, "/api/publish", key, &big).await;
    assert_eq!(status, 413);
    // The server still answers.
    assert_eq!(call(server.port, "publish", json!({"channel": "plain", "data": 1})).await, json!({"result": {}}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_bodies_get_an_answer_for_every_method_and_the_server_stays_up() {
    let server = start().await;
    let key = Some(("X-API-Key", "api-key"));
    let methods = [
        "publish",
        "broadcast",
        "subscribe",
        "unsubscribe",
        "disconnect",
        "refresh",
        "presence",
        "presence_stats",
        "history",
        "history_remove",
        "channels",
        "info",
    ];
    let bodies: [&[u8]; 9] = [
        b"",
        b"null",
        b"[]",
        b"\xff\xfe",
        b"{\"channel\":7}",
        b"{\"channel\":\"\\u0000\",\"data\":1,\"user\":\"\"}",
        b"{\"channels\":[],\"data\":1}",
        b"{\"channel\":\"hist:a\",\"limit\":-99999999999,\"since\":{\"offset\":18446744073709551615,\"epoch\":\"\"}}",
        b"{\"channel\":\"plain\",\"b64data\":\"***\"}",
    ];
    for method in methods {
        for body in bodies {
            let (status, answer) = post(server.port, &format!("/api/{method}"), key, body).await;
            assert!(status == 200 || status == 400, "{method} {:?}: {status}", String::from_utf8_lossy(body));
            assert!(answer.get("result").is_some() || answer["error"]["code"].is_u64(), "{method}: {answer}");
        }
    }
    assert_eq!(call(server.port, "publish", json!({"channel": "plain", "data": 1})).await, json!({"result": {}}));
}
