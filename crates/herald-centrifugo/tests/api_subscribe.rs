//! The server API's `subscribe` with `info`/`b64info`, `recover_since` and `override`, over real HTTP
//! and real WebSockets on 127.0.0.1: the info is the subscriber's member info in presence and join
//! pushes, a recovering server-side subscription gets its missed publications after the `subscribe`
//! push (none, and `recovered` unset, from a wrong epoch), and overrides change the channel options
//! for that one subscription.

mod common;

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use common::{call, serve, Client, DEADLINE};
use herald_centrifugo::{CentrifugoApp, ChannelOptions, Namespace};
use herald_core::{App, Engine};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

struct Server {
    port: u16,
    shutdown: CancellationToken,
    _engine: Arc<Engine>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// The dev app's front: channels without a namespace keep presence with join/leave pushes on request;
/// `hist:` keeps history and allows recovery; `kept:` keeps history without recovery; `quiet:` has
/// neither presence nor join/leave; `long:` keeps 100 publications and allows recovery.
async fn start() -> Server {
    start_with(App::dev()).await
}

/// [`start`] with the engine's app `dev` (its limits).
async fn start_with(dev: App) -> Server {
    let engine = Arc::new(Engine::new([dev]));
    let mut app = CentrifugoApp::dev();
    app.api_key = Some("api-key".into());
    app.channel_options = ChannelOptions { presence: true, join_leave: true, allow_subscribe_for_client: true, ..Default::default() };
    let history = |allow_recovery| ChannelOptions {
        history_size: 10,
        history_ttl: Duration::from_secs(300),
        allow_recovery,
        allow_subscribe_for_client: true,
        ..Default::default()
    };
    app.namespaces.push(Namespace { name: "hist".into(), options: history(true) });
    app.namespaces.push(Namespace { name: "kept".into(), options: history(false) });
    app.namespaces.push(Namespace { name: "long".into(), options: ChannelOptions { history_size: 100, ..history(true) } });
    app.namespaces
        .push(Namespace { name: "quiet".into(), options: ChannelOptions { allow_subscribe_for_client: true, ..Default::default() } });
    let shutdown = CancellationToken::new();
    let port = serve(engine.clone(), app, &shutdown).await;
    Server { port, shutdown, _engine: engine }
}

impl Server {
    /// Calls API `method` with `body` (HTTP 200 expected); the answer.
    async fn api(&self, method: &str, body: Value) -> Value {
        call(self.port, method, body).await
    }

    async fn publish(&self, channel: &str, n: u64) -> Value {
        let answer = self.api("publish", json!({"channel": channel, "data": {"n": n}})).await;
        assert!(answer["result"].is_object(), "{answer}");
        answer["result"].clone()
    }

    /// The presence map of `channel`, once `ready` holds for it (presence is counted asynchronously).
    async fn presence_when(&self, channel: &str, ready: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            let answer = self.api("presence", json!({"channel": channel})).await;
            let presence = answer["result"]["presence"].clone();
            if ready(&presence) {
                return presence;
            }
            assert!(tokio::time::Instant::now() < deadline, "presence of {channel}: {answer}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn offsets(pubs: &[Value]) -> Vec<u64> {
    pubs.iter().map(|p| p["offset"].as_u64().unwrap_or(0)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn info_is_the_server_subscribed_clients_member_info_in_presence_and_join_pushes() {
    let server = start().await;
    let mut bob = Client::connect(server.port, "bob").await;
    bob.send(json!({"id": 2, "subscribe": {"channel": "room", "join_leave": true}})).await;
    let (_, reply) = bob.until(|m| m["id"] == 2).await;
    assert!(reply["subscribe"].is_object(), "{reply}");

    let mut alice = Client::connect(server.port, "alice").await;
    let answer = server.api("subscribe", json!({"user": "alice", "channel": "room", "info": {"role": "admin"}})).await;
    assert_eq!(answer, json!({"result": {}}));
    alice.subscribe_push("room").await;
    let (_, join) = bob.until(|m| m["push"]["join"].is_object()).await;
    assert_eq!(join["push"]["join"]["info"]["user"], "alice");
    assert_eq!(join["push"]["join"]["info"]["conn_info"], json!({"role": "admin"}), "{join}");
    let presence = server.presence_when("room", |p| p["alice"].is_object()).await;
    assert_eq!(presence["alice"]["conn_info"], json!({"role": "admin"}), "{presence}");

    // b64info: base64 of JSON.
    let mut carol = Client::connect(server.port, "carol").await;
    let b64 = base64::engine::general_purpose::STANDARD.encode(br#"{"seat":7}"#);
    assert_eq!(server.api("subscribe", json!({"user": "carol", "channel": "room", "b64info": b64})).await, json!({"result": {}}));
    carol.subscribe_push("room").await;
    let presence = server.presence_when("room", |p| p["carol"].is_object()).await;
    assert_eq!(presence["carol"]["conn_info"], json!({"seat": 7}), "{presence}");

    // Refused: info beyond the app's max_presence_member_size (1024), b64info that is not base64 or
    // not JSON.
    let big = json!({"pad": "x".repeat(1100)});
    assert_eq!(server.api("subscribe", json!({"user": "dave", "channel": "room", "info": big})).await["error"]["code"], 106);
    let not_json = base64::engine::general_purpose::STANDARD.encode([0xff, 0x00]);
    assert_eq!(server.api("subscribe", json!({"user": "dave", "channel": "room", "b64info": not_json})).await["error"]["code"], 107);
    assert_eq!(server.api("subscribe", json!({"user": "dave", "channel": "room", "b64info": "%%"})).await["error"]["code"], 107);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recover_since_delivers_the_missed_publications_after_the_subscribe_push() {
    let server = start().await;
    let first = server.publish("hist:feed", 1).await;
    let epoch = first["epoch"].as_str().unwrap().to_string();
    server.publish("hist:feed", 2).await;
    server.publish("hist:feed", 3).await;

    let mut alice = Client::connect(server.port, "alice").await;
    let since = json!({"offset": 1, "epoch": epoch});
    let answer = server.api("subscribe", json!({"user": "alice", "channel": "hist:feed", "recover_since": since})).await;
    assert_eq!(answer, json!({"result": {}}));
    let push = alice.subscribe_push("hist:feed").await;
    assert_eq!(push["recoverable"], true, "{push}");
    assert_eq!(push["recovered"], true, "{push}");
    assert_eq!(push["was_recovering"], true, "{push}");
    assert_eq!((push["offset"].as_u64(), push["epoch"].as_str()), (Some(1), Some(epoch.as_str())), "the recovered-from position");
    server.publish("hist:feed", 4).await;
    let pubs = alice.publications_until("hist:feed", 4).await;
    assert_eq!(offsets(&pubs), [2, 3, 4], "the missed ones in order, then the live one: {pubs:?}");

    // A wrong epoch: not recovered, the current position, nothing missed follows.
    let mut bob = Client::connect(server.port, "bob").await;
    let wrong = json!({"offset": 1, "epoch": "not-the-epoch"});
    server.api("subscribe", json!({"user": "bob", "channel": "hist:feed", "recover_since": wrong})).await;
    let push = bob.subscribe_push("hist:feed").await;
    assert_eq!(push["recovered"], Value::Null, "recovered is false (left out): {push}");
    assert_eq!(push["was_recovering"], true, "{push}");
    assert_eq!((push["offset"].as_u64(), push["epoch"].as_str()), (Some(4), Some(epoch.as_str())));
    server.publish("hist:feed", 5).await;
    assert_eq!(offsets(&bob.publications_until("hist:feed", 5).await), [5]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn force_recovery_override_makes_one_subscription_recover_where_the_namespace_does_not() {
    let server = start().await;
    let epoch = server.publish("kept:feed", 1).await["epoch"].as_str().unwrap().to_string();
    server.publish("kept:feed", 2).await;
    let since = json!({"offset": 1, "epoch": epoch});

    let mut plain = Client::connect(server.port, "plain").await;
    server.api("subscribe", json!({"user": "plain", "channel": "kept:feed", "recover_since": since})).await;
    let push = plain.subscribe_push("kept:feed").await;
    assert_eq!((push["recoverable"].clone(), push["recovered"].clone()), (Value::Null, Value::Null), "{push}");

    let mut forced = Client::connect(server.port, "forced").await;
    let body = json!({"user": "forced", "channel": "kept:feed", "recover_since": since, "override": {"force_recovery": {"value": true}}});
    server.api("subscribe", body).await;
    let push = forced.subscribe_push("kept:feed").await;
    assert_eq!((push["recoverable"].clone(), push["recovered"].clone()), (json!(true), json!(true)), "{push}");
    server.publish("kept:feed", 3).await;
    assert_eq!(offsets(&forced.publications_until("kept:feed", 3).await), [2, 3]);
    assert_eq!(offsets(&plain.publications_until("kept:feed", 3).await), [3], "the other subscription is unchanged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_and_join_leave_overrides_apply_to_one_subscription_only() {
    let server = start().await;
    // `quiet:` keeps no presence and sends no join/leave; bob's subscription turns both on.
    let mut bob = Client::connect(server.port, "bob").await;
    let on = json!({"presence": {"value": true}, "join_leave": {"value": true}, "force_push_join_leave": {"value": true}});
    server.api("subscribe", json!({"user": "bob", "channel": "quiet:x", "override": on})).await;
    bob.subscribe_push("quiet:x").await;
    let mut dave = Client::connect(server.port, "dave").await;
    dave.send(json!({"id": 2, "subscribe": {"channel": "quiet:x", "join_leave": true}})).await;
    dave.until(|m| m["id"] == 2).await;

    // Carol joins quiet:x's presence through her override: bob is told, dave (namespace options) not.
    let mut carol = Client::connect(server.port, "carol").await;
    let body = json!({"user": "carol", "channel": "quiet:x", "info": {"who": "carol"}, "override": {"presence": {"value": true}}});
    server.api("subscribe", body).await;
    carol.subscribe_push("quiet:x").await;
    let (_, join) = bob.until(|m| m["push"]["join"].is_object()).await;
    assert_eq!(join["push"]["join"]["info"]["user"], "carol", "{join}");
    assert_eq!(join["push"]["join"]["info"]["conn_info"], json!({"who": "carol"}), "{join}");
    server.publish("quiet:x", 1).await;
    let (before, _) = dave.until(|m| m["push"]["pub"]["data"]["n"] == 1).await;
    assert!(before.iter().all(|m| !m["push"]["join"].is_object()), "{before:?}");
    // As in Centrifugo, the API's presence follows the namespace, not one subscription's override.
    assert_eq!(server.api("presence", json!({"channel": "quiet:x"})).await["error"]["code"], 108);

    // And off: erin's subscription stays out of `room`'s presence, frank's (no override) is in it.
    let mut erin = Client::connect(server.port, "erin").await;
    server.api("subscribe", json!({"user": "erin", "channel": "room", "override": {"presence": {"value": false}}})).await;
    erin.subscribe_push("room").await;
    let mut frank = Client::connect(server.port, "frank").await;
    server.api("subscribe", json!({"user": "frank", "channel": "room"})).await;
    frank.subscribe_push("room").await;
    let presence = server.presence_when("room", |p| p["frank"].is_object()).await;
    assert!(presence["erin"].is_null(), "{presence}");
    let stats = server.api("presence_stats", json!({"channel": "room"})).await;
    assert_eq!(stats["result"], json!({"num_clients": 2, "num_users": 1}), "both subscribed, one present");
}

/// A server-side recovery is queued at once, so it is bounded by the connection's outbox: the missed
/// publications share frames with the `subscribe` push (39 of them fit an outbox of 20 messages), and
/// what would not fit the outbox's bytes is reported as not recovered, the connection kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_side_recovery_is_joined_into_few_frames_and_bounded_by_the_outbox() {
    let mut dev = App::dev();
    dev.limits.outbox.max_messages = 20;
    dev.limits.outbox.max_bytes = 8 * 1024;
    let server = start_with(dev).await;
    let epoch = server.publish("long:feed", 1).await["epoch"].as_str().unwrap().to_string();
    for n in 2..=40 {
        server.publish("long:feed", n).await;
    }
    let mut alice = Client::connect(server.port, "alice").await;
    let since = json!({"offset": 1, "epoch": epoch});
    server.api("subscribe", json!({"user": "alice", "channel": "long:feed", "recover_since": since})).await;
    assert_eq!(alice.subscribe_push("long:feed").await["recovered"], true);
    server.publish("long:feed", 41).await;
    assert_eq!(offsets(&alice.publications_until("long:feed", 41).await), (2..=41).collect::<Vec<_>>());

    // 30 publications of 300 bytes are more than the outbox's 8 KiB.
    let pad = "x".repeat(300);
    let big = server.api("publish", json!({"channel": "long:big", "data": {"n": 1, "pad": pad}})).await;
    let epoch = big["result"]["epoch"].as_str().unwrap().to_string();
    for n in 2..=30 {
        server.api("publish", json!({"channel": "long:big", "data": {"n": n, "pad": pad}})).await;
    }
    let mut bob = Client::connect(server.port, "bob").await;
    let since = json!({"offset": 1, "epoch": epoch});
    server.api("subscribe", json!({"user": "bob", "channel": "long:big", "recover_since": since})).await;
    let push = bob.subscribe_push("long:big").await;
    assert_eq!(push["recovered"], Value::Null, "not recovered (left out): {push}");
    assert_eq!(push["offset"].as_u64(), Some(30), "the current position: {push}");
    server.publish("long:big", 31).await;
    assert_eq!(offsets(&bob.publications_until("long:big", 31).await), [31], "still connected, nothing missed sent");
}
