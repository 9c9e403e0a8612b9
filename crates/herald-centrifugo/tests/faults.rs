//! The Centrifugo session when the cluster's backends fail or stall, over a real WebSocket on 127.0.0.1:
//! a subscribe whose history read fails is undone (no half subscription, no held publications sent
//! unfiltered), a peer node's server-side subscribe to an invalid channel name is ignored, and a
//! server-side subscribe waiting on the history store leaves the session reading and writing.
//!
//! Failures are injected at the engine's `HistoryStore` boundary: [`FaultyHistory`] wraps the memory
//! store and fails or holds its reads on demand. It is attached like the Redis store
//! ([`Engine::attach_history`]), with [`Loopback`] as its broadcast (one node: a publication appended
//! comes back to this node's hub as a broker's would). The engine is also a node of a one-node
//! [`LocalCluster`], so subscriptions are counted in a cluster state too.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use common::{serve, Client, DEADLINE};
use herald_centrifugo::{CentrifugoApp, ChannelOptions, Namespace};
use herald_core::{
    App, BoxFuture, DataKind, Engine, HistoryBroadcast, HistoryError, HistoryOptions, HistoryStore, Hub, LocalCluster, MemoryHistory,
    Publication, Recovery, Remote, StreamPosition, Topic, UserAction, UserCommand,
};
use serde_json::{json, Value};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

const HISTORY: HistoryOptions = HistoryOptions { size: 10, ttl: Duration::from_secs(300) };

/// The memory history store, whose reads (`since`, `position`) fail while `fail` is set, and the next
/// of which waits for [`FaultyHistory::resume`] after [`FaultyHistory::hold_next_read`].
struct FaultyHistory {
    inner: MemoryHistory,
    fail: AtomicBool,
    hold: AtomicBool,
    entered: Notify,
    resumed: Notify,
}

impl FaultyHistory {
    fn new() -> FaultyHistory {
        FaultyHistory {
            inner: MemoryHistory::new(100),
            fail: AtomicBool::new(false),
            hold: AtomicBool::new(false),
            entered: Notify::new(),
            resumed: Notify::new(),
        }
    }

    fn fail_reads(&self, fail: bool) {
        self.fail.store(fail, Ordering::SeqCst);
    }

    fn hold_next_read(&self) {
        self.hold.store(true, Ordering::SeqCst);
    }

    /// Waits until a held read has started.
    async fn held(&self) {
        tokio::time::timeout(DEADLINE, self.entered.notified()).await.expect("a history read was held");
    }

    /// Lets the held read go on.
    fn resume(&self) {
        self.resumed.notify_one();
    }

    async fn read(&self) -> Result<(), HistoryError> {
        if self.hold.swap(false, Ordering::SeqCst) {
            self.entered.notify_one();
            self.resumed.notified().await;
        }
        if self.fail.load(Ordering::SeqCst) {
            return Err(HistoryError::Unavailable("injected by the test".into()));
        }
        Ok(())
    }
}

impl HistoryStore for FaultyHistory {
    fn append<'a>(
        &'a self,
        app_id: &'a str,
        publication: &'a Publication,
        options: HistoryOptions,
    ) -> BoxFuture<'a, Result<StreamPosition, HistoryError>> {
        self.inner.append(app_id, publication, options)
    }

    fn since<'a>(
        &'a self,
        app_id: &'a str,
        channel: &'a str,
        since: Option<&'a StreamPosition>,
        limit: usize,
    ) -> BoxFuture<'a, Result<Recovery, HistoryError>> {
        Box::pin(async move {
            self.read().await?;
            self.inner.since(app_id, channel, since, limit).await
        })
    }

    fn position<'a>(&'a self, app_id: &'a str, channel: &'a str) -> BoxFuture<'a, Result<StreamPosition, HistoryError>> {
        Box::pin(async move {
            self.read().await?;
            self.inner.position(app_id, channel).await
        })
    }

    fn remove<'a>(&'a self, app_id: &'a str, channel: &'a str) -> BoxFuture<'a, Result<(), HistoryError>> {
        self.inner.remove(app_id, channel)
    }
}

/// The history broadcast of a one-node cluster: appends, then hands the positioned publication to this
/// node's hub as a broker hands what comes back from the backend.
struct Loopback {
    store: Arc<FaultyHistory>,
    engine: Weak<Engine>,
}

impl HistoryBroadcast for Loopback {
    fn append_and_broadcast<'a>(
        &'a self,
        app_id: &'a str,
        publication: &'a Publication,
        options: HistoryOptions,
    ) -> BoxFuture<'a, Result<StreamPosition, HistoryError>> {
        Box::pin(async move {
            let position = self.store.inner.append(app_id, publication, options).await?;
            let mut positioned = publication.clone();
            positioned.position = Some(position.clone());
            if let Some(hub) = self.engine.upgrade().as_ref().and_then(|e| e.by_id(app_id).cloned()) {
                hub.receive(&Topic::Channel(publication.channel.clone()), Remote::Publish { publication: positioned });
            }
            Ok(position)
        })
    }
}

struct Server {
    port: u16,
    hub: Arc<Hub>,
    history: Arc<FaultyHistory>,
    shutdown: CancellationToken,
    _engine: Arc<Engine>,
    _cluster: LocalCluster,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// The dev app's Centrifugo front on 127.0.0.1 over an engine whose history is a [`FaultyHistory`]:
/// channels `hist:*` keep history (recovery and positioning allowed), the others don't.
async fn start() -> Server {
    let engine = Arc::new(Engine::new([App::dev()]));
    let history = Arc::new(FaultyHistory::new());
    let loopback = Arc::new(Loopback { store: history.clone(), engine: Arc::downgrade(&engine) });
    assert!(engine.attach_history(history.clone(), loopback));
    // Broker and cluster state of a one-node cluster (its history is not attached: ours came first).
    let cluster = LocalCluster::default();
    cluster.add(&engine).expect("a new node");
    let mut app = CentrifugoApp::dev();
    app.channel_options = ChannelOptions { allow_subscribe_for_client: true, ..Default::default() };
    app.namespaces.push(Namespace {
        name: "hist".into(),
        options: ChannelOptions {
            history_size: HISTORY.size,
            history_ttl: HISTORY.ttl,
            allow_recovery: true,
            allow_positioning: true,
            presence: true,
            allow_subscribe_for_client: true,
            ..Default::default()
        },
    });
    let shutdown = CancellationToken::new();
    let port = serve(engine.clone(), app, &shutdown).await;
    let hub = engine.by_id("app-id").unwrap().clone();
    Server { port, hub, history, shutdown, _engine: engine, _cluster: cluster }
}

impl Server {
    /// Subscribers of `channel` on this node, and in the cluster state.
    async fn subscribers(&self, channel: &str) -> (usize, usize) {
        let local = self.hub.channel(channel).map_or(0, |info| info.subscribers);
        let state = self.hub.state().expect("a cluster state");
        let counted = state.channel("app-id", channel).await.expect("the local state answers").map_or(0, |info| info.subscribers);
        (local, counted)
    }

    /// Publishes `data` to `channel` as the server API does (with its position on a history channel).
    async fn publish(&self, channel: &str, data: &'static str) {
        let publication = Publication::new(channel, "", Bytes::from_static(data.as_bytes()), DataKind::Json);
        if channel.starts_with("hist:") {
            self.hub.publish_with_history(&publication, HISTORY).await.expect("appends never fail here");
        } else {
            self.hub.publish(&publication);
        }
    }
}

/// Whether `m` is a publication pushed on `channel`.
fn publication_on(m: &Value, channel: &str) -> bool {
    m["push"]["channel"] == channel && m["push"]["pub"].is_object()
}

/// Recovery reads `since`, positioning reads `position`: either failing refuses the subscribe with 100
/// and leaves nothing behind, and the same subscribe succeeds once the store answers again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscribe_whose_history_read_fails_is_undone() {
    let server = start().await;
    for (channel, mode) in
        [("hist:recovering", json!({"recover": true, "offset": 0, "epoch": ""})), ("hist:positioned", json!({"positioned": true}))]
    {
        let mut alice = Client::connect(server.port, "alice").await;
        assert!(alice.subscribe(2, "plain", json!({})).await["subscribe"].is_object());

        server.history.fail_reads(true);
        let reply = alice.subscribe(3, channel, mode.clone()).await;
        assert_eq!(reply["error"]["code"], 100, "{channel}: {reply}");
        assert_eq!(server.subscribers(channel).await, (0, 0), "{channel}: not subscribed on the node nor counted in the cluster");
        // A publication on the channel now doesn't reach alice: one on "plain" after it does, alone.
        server.publish(channel, r#"{"n":1}"#).await;
        server.publish("plain", r#"{"marker":1}"#).await;
        let (before, _) = alice.until(|m| publication_on(m, "plain")).await;
        assert!(before.iter().all(|m| m["push"]["channel"] != channel), "{channel}: {before:?}");

        // Once the store answers, the subscribe works (the failed one left no subscription behind).
        server.history.fail_reads(false);
        let reply = alice.subscribe(4, channel, mode).await;
        assert_eq!(reply["subscribe"]["offset"], 1, "{channel}: {reply}");
        assert_eq!(server.subscribers(channel).await, (1, 1));
        server.publish(channel, r#"{"n":2}"#).await;
        let (_, publication) = alice.until(|m| publication_on(m, channel)).await;
        assert_eq!(publication["push"]["pub"]["data"], json!({"n": 2}));
        assert_eq!(publication["push"]["pub"]["offset"], 2);
    }
}

/// Publications made while the subscribe waited for its history read are held for the subscriber; the
/// read failing drops them instead of sending them without a position filter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_publications_of_a_failed_subscribe_are_dropped() {
    let server = start().await;
    let mut alice = Client::connect(server.port, "alice").await;
    assert!(alice.subscribe(2, "plain", json!({})).await["subscribe"].is_object());

    server.history.fail_reads(true);
    server.history.hold_next_read();
    alice.send(json!({"id": 3, "subscribe": {"channel": "hist:held", "positioned": true}})).await;
    server.history.held().await;
    // Joined in the engine, its deliveries held until the reply.
    assert_eq!(server.subscribers("hist:held").await, (1, 1));
    server.publish("hist:held", r#"{"held":true}"#).await;
    server.history.resume();

    let (before, reply) = alice.until(|m| m["id"] == 3).await;
    assert_eq!(reply["error"]["code"], 100, "{reply}");
    assert!(before.is_empty(), "{before:?}");
    server.publish("plain", r#"{"marker":1}"#).await;
    let (after, _) = alice.until(|m| publication_on(m, "plain")).await;
    assert!(after.iter().all(|m| m["push"]["channel"] != "hist:held"), "the held publication was dropped: {after:?}");
    assert_eq!(server.subscribers("hist:held").await, (0, 0));
}

/// While a server-side subscribe (a user command) waits on the history store, the session still reads
/// the socket and writes: a WebSocket ping is answered (the pong goes out when the session reads on).
/// The command's push, then the reply to a frame read meanwhile, follow once the store answers.
/// A publication is delivered meanwhile too, but that alone proves little: publishers write an idle
/// session's socket themselves (direct writes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_side_subscribe_waiting_on_history_leaves_the_session_reading_and_writing() {
    let server = start().await;
    let mut alice = Client::connect(server.port, "alice").await;
    assert!(alice.subscribe(2, "plain", json!({})).await["subscribe"].is_object());

    server.history.hold_next_read();
    let subscribe = UserAction::subscribe("hist:server", None);
    assert_eq!(server.hub.command_user("alice", UserCommand::all(subscribe)).unwrap(), 1);
    server.history.held().await;

    // A session stuck in the command reads nothing: no pong.
    alice.ping().await;
    let (before, _) = alice.until(|m| m["pong"] == true).await;
    assert!(before.is_empty(), "{before:?}");
    server.publish("plain", r#"{"while":"waiting"}"#).await;
    let (before, publication) = alice.until(|m| publication_on(m, "plain")).await;
    assert!(before.is_empty(), "{before:?}");
    assert_eq!(publication["push"]["pub"]["data"], json!({"while": "waiting"}));
    // Read now, answered after the command.
    alice.send(json!({"id": 3, "subscribe": {"channel": "other"}})).await;

    server.history.resume();
    let (before, push) = alice.until(|m| m["push"]["channel"] == "hist:server").await;
    assert!(before.is_empty(), "{before:?}");
    assert!(push["push"]["subscribe"].is_object(), "{push}");
    let (before, reply) = alice.until(|m| m["id"] == 3).await;
    assert!(before.is_empty() && reply["subscribe"].is_object(), "{before:?} {reply}");
    assert_eq!(server.subscribers("hist:server").await, (1, 1));
}

/// A server-side subscribe from another node (a user command: this node's server API never checked it)
/// to a name clients can't use subscribes nothing; the session goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_subscribe_command_to_an_invalid_channel_name_is_ignored() {
    // Two nodes of one in-process cluster: the front on `a`, the command from `b`.
    let cluster = LocalCluster::default();
    let a = Arc::new(Engine::new([App::dev()]));
    let b = Arc::new(Engine::new([App::dev()]));
    cluster.add(&a).unwrap();
    cluster.add(&b).unwrap();
    let mut app = CentrifugoApp::dev();
    app.channel_options = ChannelOptions { allow_subscribe_for_client: true, ..Default::default() };
    let shutdown = CancellationToken::new();
    let _stop = shutdown.clone().drop_guard();
    let port = serve(a.clone(), app, &shutdown).await;
    let mut alice = Client::connect(port, "alice").await;
    let (hub_a, hub_b) = (a.by_id("app-id").unwrap(), b.by_id("app-id").unwrap());

    let invalid = ["", "bell\u{7}", "new\nline", &"x".repeat(256)];
    for channel in invalid.iter().copied().chain(["valid"]) {
        let subscribe = UserAction::subscribe(channel, None);
        assert_eq!(hub_b.command_user("alice", UserCommand::all(subscribe)).unwrap(), 0, "alice is on the other node");
    }
    // Commands are applied in order: the valid one's push comes after whatever the others did.
    let (before, push) = alice.until(|m| m["push"]["channel"] == "valid").await;
    assert!(push["push"]["subscribe"].is_object(), "{push}");
    assert!(before.is_empty(), "no push for an invalid name: {before:?}");
    for channel in invalid {
        assert!(hub_a.channel(channel).is_none(), "{channel:?} not subscribed");
    }
    assert_eq!(hub_a.channel("valid").map(|info| info.subscribers), Some(1));
}
