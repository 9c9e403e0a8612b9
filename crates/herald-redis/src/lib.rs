//! Herald's Redis broker: several Herald nodes sharing one Redis behave as one server.
//!
//! Routing is interest-based. A node SUBSCRIBEs to a Redis channel per Herald channel (and per signed-in
//! user) only while it has local subscribers for it, and UNSUBSCRIBEs when the last one leaves, so a
//! node never receives traffic for channels nobody on it listens to. A publish is delivered to local
//! subscribers directly and PUBLISHed once; every other interested node delivers it to its own
//! subscribers (honouring the `socket_id` exclusion, which may name a connection on any node). The
//! sender drops its own echo.
//!
//! Redis channel names are `{prefix}:{app id}:c:{channel}` and `{prefix}:{app id}:u:{user id}`, so
//! deployments with different prefixes can share one Redis without seeing each other.
//!
//! Failure behaviour: publishes are queued (bounded, [`RedisConfig::publish_queue`]) to one publisher
//! task that pipelines them; when the queue is full or Redis is unreachable they are dropped for the
//! other nodes and counted (`herald_redis_publish_dropped_total`), while local delivery carries on. The
//! subscriber connection reconnects with backoff and re-subscribes every topic with local interest.
//! [`RedisBroker::healthy`] (and so `/up`) reports the outage.
//!
//! Cluster-wide subscription counts and presence live in Redis too ([`RedisState`]), decided atomically
//! by Lua scripts.
//!
//! Each node holds a lease; a node that stops renewing it (crashed, `kill -9`) is reaped by one
//! surviving node, which takes its presence members and counts out and announces the result
//! ([`lease`]).
//!
//! With [`RedisConfig::cluster`], the same runs on a Redis Cluster: sharded pub/sub (SPUBLISH /
//! SSUBSCRIBE, so each message only travels through its channel's shard) and state keys hash-tagged per
//! app (every script touches one slot).

mod envelope;
mod lease;
mod state;

pub use state::{Conn, RedisState};

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use herald_core::{BoxFuture, Broker, Engine, Remote, Topic};
use parking_lot::Mutex;
use redis::aio::{ConnectionManager, PubSubSink};
use redis::cluster_async::ClusterConnection;
use tokio::sync::{mpsc, oneshot, Notify};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

/// How to reach Redis.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// `redis://host:port[/db]`.
    pub url: String,
    /// Prefix of every Redis channel name; deployments sharing a Redis use different prefixes.
    pub prefix: String,
    /// Publications queued for Redis before new ones are dropped (counted).
    pub publish_queue: usize,
    /// `url` lists seed nodes of a Redis Cluster (comma-separated); use sharded pub/sub.
    pub cluster: bool,
    /// How long a node's lease lives without renewal; a node silent this long is reaped (its presence
    /// members and counts taken out of the cluster) within one more reaper round.
    pub lease: Duration,
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            url: "redis://127.0.0.1:6379".into(),
            prefix: "herald".into(),
            publish_queue: 65_536,
            cluster: false,
            lease: Duration::from_secs(10),
        }
    }
}

/// Why the broker could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RedisBrokerError {
    /// The URL is not a Redis URL.
    #[error("invalid redis url {url:?}: {source}")]
    Url {
        /// The URL given.
        url: String,
        /// The parse error.
        source: redis::RedisError,
    },
    /// Redis did not answer at start-up.
    #[error("cannot reach redis at {url}: {source}")]
    Connect {
        /// The URL given.
        url: String,
        /// The connection error.
        source: redis::RedisError,
    },
}

/// Counters of what crossed Redis, for metrics and tests.
#[derive(Debug, Default)]
pub struct RedisStats {
    /// Messages PUBLISHed.
    pub published: AtomicU64,
    /// Messages not sent to other nodes (queue full or Redis unreachable).
    pub dropped: AtomicU64,
    /// Messages received from Redis (own echoes included).
    pub received: AtomicU64,
    /// Received messages for topics this node had no local interest in (interest routing keeps it 0
    /// apart from races with a leave).
    pub unwanted: AtomicU64,
    /// This node's own publishes echoed back.
    pub echoes: AtomicU64,
}

#[derive(Default)]
struct Live {
    keys: HashSet<String>,
    waiting: HashMap<String, Vec<oneshot::Sender<()>>>,
}

/// The Redis broker of one node.
pub struct RedisBroker {
    node: u128,
    prefix: String,
    outgoing: mpsc::Sender<(String, Bytes)>,
    dirty: Mutex<HashSet<(Arc<str>, Topic)>>,
    dirty_notify: Notify,
    /// Topics prepared for a first local subscriber (count of pending subscribes per Redis key).
    prepared: Mutex<HashMap<String, usize>>,
    /// Redis keys whose subscription is live, and who waits for one.
    live: Mutex<Live>,
    subscriber_up: AtomicBool,
    /// The subscriber was connected at least once (so "not up" now means an outage, not start-up).
    subscriber_was_up: AtomicBool,
    /// Counts recorded in Redis may differ from local subscriptions (after an outage or a lost lease).
    reconcile: AtomicBool,
    publisher_up: AtomicBool,
    subscriptions: AtomicUsize,
    stats: RedisStats,
}

impl RedisBroker {
    /// Connects to Redis, attaches the broker to `engine`, and starts its publisher and subscriber
    /// tasks (tracked by `tasks`, stopped by `shutdown`). Fails if Redis is unreachable at start-up.
    pub async fn start(
        config: RedisConfig,
        engine: &Arc<Engine>,
        shutdown: CancellationToken,
        tasks: &TaskTracker,
    ) -> Result<Arc<RedisBroker>, RedisBrokerError> {
        let url = config.url.clone();
        let connect = |source| RedisBrokerError::Connect { url: url.clone(), source };
        let bad_url = |source| RedisBrokerError::Url { url: url.clone(), source };
        let (outgoing, queued) = mpsc::channel(config.publish_queue.max(1));
        let broker = Arc::new(RedisBroker {
            node: (u128::from(fastrand::u64(..)) << 64) | u128::from(fastrand::u64(..)),
            prefix: config.prefix.clone(),
            outgoing,
            dirty: Mutex::new(HashSet::new()),
            dirty_notify: Notify::new(),
            prepared: Mutex::new(HashMap::new()),
            live: Mutex::new(Live::default()),
            subscriber_up: AtomicBool::new(false),
            subscriber_was_up: AtomicBool::new(false),
            reconcile: AtomicBool::new(false),
            publisher_up: AtomicBool::new(true),
            subscriptions: AtomicUsize::new(0),
            stats: RedisStats::default(),
        });
        if config.cluster {
            // Redis Cluster: sharded pub/sub (SPUBLISH / SSUBSCRIBE) over RESP3; the cluster connection
            // routes by slot and re-subscribes by itself after reconnecting.
            let nodes: Vec<&str> = config.url.split(',').map(str::trim).filter(|n| !n.is_empty()).collect();
            let (push_tx, pushes) = mpsc::unbounded_channel();
            let client = redis::cluster::ClusterClientBuilder::new(nodes)
                .use_protocol(redis::ProtocolVersion::RESP3)
                .push_sender(push_tx)
                .build()
                .map_err(bad_url)?;
            let conn = client.get_async_connection().await.map_err(connect)?;
            broker.attach(conn.clone(), &config, engine, &shutdown, tasks).await.map_err(connect)?;
            tasks.spawn(publish_loop(queued, broker.clone(), shutdown.clone(), publish_sharded(&conn)));
            tasks.spawn(cluster_subscribe_loop(conn, pushes, Arc::downgrade(engine), broker.clone(), shutdown));
        } else {
            let client = redis::Client::open(config.url.as_str()).map_err(bad_url)?;
            let conn = ConnectionManager::new(client.clone()).await.map_err(connect)?;
            broker.attach(conn.clone(), &config, engine, &shutdown, tasks).await.map_err(connect)?;
            tasks.spawn(publish_loop(queued, broker.clone(), shutdown.clone(), publish_pipelined(&conn)));
            tasks.spawn(subscribe_loop(client, Arc::downgrade(engine), broker.clone(), shutdown));
        }
        info!(%url, prefix = %broker.prefix, cluster = config.cluster, "redis broker started");
        Ok(broker)
    }

    /// Registers the node (lease), attaches broker and cluster state to the engine, and starts the
    /// lease and reaper tasks.
    async fn attach<C: Conn>(
        self: &Arc<Self>,
        conn: C,
        config: &RedisConfig,
        engine: &Arc<Engine>,
        shutdown: &CancellationToken,
        tasks: &TaskTracker,
    ) -> redis::RedisResult<()> {
        let registry = lease::Registry { prefix: self.prefix.clone(), node: format!("{:032x}", self.node) };
        let lease = config.lease.max(Duration::from_millis(300));
        lease::register(&mut conn.clone(), &registry, lease).await?;
        engine.attach(self.clone());
        let state = Arc::new(RedisState::new(conn.clone(), self.prefix.clone(), self.node));
        engine.attach_state(state.clone());
        tasks.spawn(lease::lease_loop(
            conn.clone(),
            registry.clone(),
            lease,
            Arc::downgrade(engine),
            state,
            self.clone(),
            shutdown.clone(),
        ));
        let reap_every = (lease / 2).min(Duration::from_secs(2));
        tasks.spawn(lease::reaper_loop(conn, registry, Arc::downgrade(engine), reap_every, shutdown.clone()));
        Ok(())
    }

    /// What crossed Redis so far.
    pub fn stats(&self) -> &RedisStats {
        &self.stats
    }

    /// Redis channels this node is subscribed to now.
    pub fn subscriptions(&self) -> usize {
        self.subscriptions.load(Ordering::Acquire)
    }

    fn key(&self, app: &str, topic: &Topic) -> String {
        match topic {
            Topic::Channel(c) => format!("{}:{app}:c:{c}", self.prefix),
            Topic::User(u) => format!("{}:{app}:u:{u}", self.prefix),
        }
    }

    /// Accounts for one publish batch; flips (and logs) the publisher's health.
    fn count_published(&self, sent: usize, failed: usize) {
        self.stats.published.fetch_add(sent as u64, Ordering::Relaxed);
        metrics::counter!("herald_redis_published_total").increment(sent as u64);
        if failed > 0 {
            self.stats.dropped.fetch_add(failed as u64, Ordering::Relaxed);
            metrics::counter!("herald_redis_publish_dropped_total").increment(failed as u64);
            if self.publisher_up.swap(false, Ordering::AcqRel) {
                warn!(failed, "redis publish failed; other nodes miss messages until it is back");
            }
        } else if !self.publisher_up.swap(true, Ordering::AcqRel) {
            info!("redis publishing recovered");
        }
        metrics::gauge!("herald_redis_connected").set(if self.healthy() { 1.0 } else { 0.0 });
    }

    fn set_subscriber_up(&self, up: bool) {
        let was = self.subscriber_up.swap(up, Ordering::AcqRel);
        if up {
            self.subscriber_was_up.store(true, Ordering::Release);
        } else if was {
            // Joins and leaves may fail while Redis is away; check the counts once it is back.
            self.request_reconcile();
        }
        metrics::gauge!("herald_redis_connected").set(if self.healthy() { 1.0 } else { 0.0 });
    }

    /// Asks the lease task to reconcile this node's counts in Redis with its local subscriptions.
    pub(crate) fn request_reconcile(&self) {
        self.reconcile.store(true, Ordering::Release);
    }

    /// Takes a pending reconcile request.
    pub(crate) fn take_reconcile(&self) -> bool {
        self.reconcile.swap(false, Ordering::AcqRel)
    }

    /// Brings Redis subscriptions in line with local interest for every topic marked dirty.
    async fn sync<S: Subscriptions>(
        &self,
        engine: &Engine,
        sink: &mut S,
        subscribed: &mut HashMap<String, (Arc<str>, Topic)>,
    ) -> redis::RedisResult<()> {
        let dirty: Vec<(Arc<str>, Topic)> = std::mem::take(&mut *self.dirty.lock()).into_iter().collect();
        let (mut add, mut remove) = (Vec::new(), Vec::new());
        for (app, topic) in dirty {
            let key = self.key(&app, &topic);
            let wanted = self.prepared.lock().contains_key(&key) || engine.by_id(&app).is_some_and(|hub| hub.has_local(&topic));
            match (wanted, subscribed.contains_key(&key)) {
                (true, false) => {
                    subscribed.insert(key.clone(), (app, topic));
                    add.push(key);
                }
                (false, true) => {
                    subscribed.remove(&key);
                    remove.push(key);
                }
                _ => {}
            }
        }
        for chunk in add.chunks(512) {
            sink.add(chunk).await?;
            let mut live = self.live.lock();
            for key in chunk {
                live.keys.insert(key.clone());
                for waiter in live.waiting.remove(key).unwrap_or_default() {
                    let _ = waiter.send(());
                }
            }
        }
        for chunk in remove.chunks(512) {
            {
                let mut live = self.live.lock();
                chunk.iter().for_each(|key| {
                    live.keys.remove(key);
                });
            }
            sink.remove(chunk).await?;
        }
        self.subscriptions.store(subscribed.len(), Ordering::Release);
        if !add.is_empty() || !remove.is_empty() {
            debug!(added = add.len(), removed = remove.len(), total = subscribed.len(), "redis subscriptions");
        }
        Ok(())
    }

    /// Delivers one message from Redis to local subscribers.
    fn handle(&self, engine: &Engine, subscribed: &HashMap<String, (Arc<str>, Topic)>, name: &str, payload: Bytes) {
        self.stats.received.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("herald_redis_received_total").increment(1);
        let Some((app, topic)) = subscribed.get(name) else {
            self.stats.unwanted.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("herald_redis_received_unwanted_total").increment(1);
            return;
        };
        let Some((node, message)) = envelope::decode(payload) else {
            warn!(channel = name, "ignoring a message that is not a herald envelope");
            return;
        };
        if node == self.node {
            self.stats.echoes.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if let Some(hub) = engine.by_id(app) {
            if !hub.has_local(topic) {
                self.stats.unwanted.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("herald_redis_received_unwanted_total").increment(1);
            }
            hub.receive(topic, message);
        }
    }
}

impl Broker for RedisBroker {
    /// Queues the message for Redis. Policy when the queue is full: drop it for the other nodes and
    /// count it (local subscribers were already served).
    fn publish(&self, app_id: &str, topic: &Topic, message: Remote) {
        let payload = envelope::encode(self.node, &message);
        if self.outgoing.try_send((self.key(app_id, topic), payload)).is_err() {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("herald_redis_publish_dropped_total").increment(1);
        }
    }

    fn interest_changed(&self, app_id: &str, topic: Topic) {
        self.dirty.lock().insert((Arc::from(app_id), topic));
        self.dirty_notify.notify_one();
    }

    fn prepare(&self, app_id: &str, topic: &Topic) -> Option<oneshot::Receiver<()>> {
        if self.subscriber_was_up.load(Ordering::Acquire) && !self.subscriber_up.load(Ordering::Acquire) {
            // An outage: waiting would only stall the client; local delivery works meanwhile and the
            // interest is re-asserted on reconnect.
            return None;
        }
        let key = self.key(app_id, topic);
        let rx = {
            let mut live = self.live.lock();
            if live.keys.contains(&key) {
                // Already routed here: nothing to wait for, nothing to release.
                return None;
            }
            let (tx, rx) = oneshot::channel();
            live.waiting.entry(key.clone()).or_default().push(tx);
            rx
        };
        *self.prepared.lock().entry(key).or_default() += 1;
        self.interest_changed(app_id, topic.clone());
        Some(rx)
    }

    fn release(&self, app_id: &str, topic: &Topic) {
        let key = self.key(app_id, topic);
        {
            let mut prepared = self.prepared.lock();
            if let Some(n) = prepared.get_mut(&key) {
                *n -= 1;
                if *n == 0 {
                    prepared.remove(&key);
                }
            }
        }
        {
            // Waiters that gave up (timed out) leave closed senders behind; drop them.
            let mut live = self.live.lock();
            if let Some(w) = live.waiting.get_mut(&key) {
                w.retain(|tx| !tx.is_closed());
                if w.is_empty() {
                    live.waiting.remove(&key);
                }
            }
        }
        self.interest_changed(app_id, topic.clone());
    }

    fn healthy(&self) -> bool {
        self.subscriber_up.load(Ordering::Acquire) && self.publisher_up.load(Ordering::Acquire)
    }

    fn name(&self) -> &'static str {
        "redis"
    }
}

/// Subscribing and unsubscribing Redis channels: classic pub/sub on one server, sharded in a cluster.
trait Subscriptions {
    fn add(&mut self, keys: &[String]) -> impl Future<Output = redis::RedisResult<()>> + Send;
    fn remove(&mut self, keys: &[String]) -> impl Future<Output = redis::RedisResult<()>> + Send;
}

impl Subscriptions for PubSubSink {
    fn add(&mut self, keys: &[String]) -> impl Future<Output = redis::RedisResult<()>> + Send {
        self.subscribe(keys.to_vec())
    }

    fn remove(&mut self, keys: &[String]) -> impl Future<Output = redis::RedisResult<()>> + Send {
        self.unsubscribe(keys.to_vec())
    }
}

impl Subscriptions for ClusterConnection {
    fn add(&mut self, keys: &[String]) -> impl Future<Output = redis::RedisResult<()>> + Send {
        let keys = keys.to_vec();
        async move { self.ssubscribe(keys).await }
    }

    fn remove(&mut self, keys: &[String]) -> impl Future<Output = redis::RedisResult<()>> + Send {
        let keys = keys.to_vec();
        async move { self.sunsubscribe(keys).await }
    }
}

/// Applies interest changes with SSUBSCRIBE / SUNSUBSCRIBE and delivers sharded messages pushed over
/// RESP3. Reconnection and re-subscription are the cluster connection's own.
async fn cluster_subscribe_loop(
    mut conn: ClusterConnection,
    mut pushes: mpsc::UnboundedReceiver<redis::PushInfo>,
    engine: Weak<Engine>,
    broker: Arc<RedisBroker>,
    shutdown: CancellationToken,
) {
    let Some(engine) = engine.upgrade() else { return };
    let mut subscribed = HashMap::new();
    broker.set_subscriber_up(true);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            push = pushes.recv() => match push {
                None => return,
                Some(push) => match push.kind {
                    redis::PushKind::SMessage | redis::PushKind::Message => {
                        if let [redis::Value::BulkString(name), redis::Value::BulkString(payload), ..] = &push.data[..] {
                            let name = String::from_utf8_lossy(name);
                            broker.handle(&engine, &subscribed, &name, Bytes::copy_from_slice(payload));
                        }
                    }
                    redis::PushKind::Disconnection => broker.set_subscriber_up(false),
                    redis::PushKind::SSubscribe => broker.set_subscriber_up(true),
                    _ => {}
                },
            },
            _ = broker.dirty_notify.notified() => {
                if let Err(e) = broker.sync(&engine, &mut conn, &mut subscribed).await {
                    warn!(error = %e, "sharded subscribe failed; retrying");
                    broker.set_subscriber_up(false);
                    // Forget what we believe is subscribed (a failed batch may be half done) and retry
                    // everything this node wants after a pause; subscribing twice is harmless.
                    subscribed.clear();
                    broker.live.lock().keys.clear();
                    {
                        let mut dirty = broker.dirty.lock();
                        for hub in engine.hubs() {
                            let app: Arc<str> = Arc::from(hub.app().id.as_str());
                            dirty.extend(hub.local_topics().into_iter().map(|t| (app.clone(), t)));
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    broker.dirty_notify.notify_one();
                }
            }
        }
    }
}

/// Sends queued publications in batches of up to 256 through `send`, which returns how many of a
/// batch failed.
async fn publish_loop<F, Fut>(
    mut queued: mpsc::Receiver<(String, Bytes)>,
    broker: Arc<RedisBroker>,
    shutdown: CancellationToken,
    mut send: F,
) where
    F: FnMut(Vec<(String, Bytes)>) -> Fut,
    Fut: Future<Output = usize>,
{
    let mut batch = Vec::with_capacity(256);
    loop {
        let n = tokio::select! {
            _ = shutdown.cancelled() => break,
            n = queued.recv_many(&mut batch, 256) => n,
        };
        if n == 0 {
            break;
        }
        let failed = send(std::mem::take(&mut batch)).await;
        broker.count_published(n - failed, failed);
    }
}

/// One pipelined round trip of PUBLISH commands (a single server).
fn publish_pipelined(conn: &ConnectionManager) -> impl FnMut(Vec<(String, Bytes)>) -> BoxFuture<'static, usize> {
    let conn = conn.clone();
    move |batch| {
        let mut conn = conn.clone();
        Box::pin(async move {
            let n = batch.len();
            let mut pipe = redis::pipe();
            for (channel, payload) in batch {
                pipe.cmd("PUBLISH").arg(channel).arg(&payload[..]).ignore();
            }
            match pipe.query_async::<()>(&mut conn).await {
                Ok(()) => 0,
                Err(e) => {
                    debug!(error = %e, "redis publish failed");
                    n
                }
            }
        })
    }
}

/// SPUBLISH each message to its channel's shard, concurrently (a Redis Cluster).
fn publish_sharded(conn: &ClusterConnection) -> impl FnMut(Vec<(String, Bytes)>) -> BoxFuture<'static, usize> {
    let conn = conn.clone();
    move |batch| {
        let conn = conn.clone();
        Box::pin(async move {
            let sends = batch.into_iter().map(|(channel, payload)| {
                let mut conn = conn.clone();
                async move { redis::cmd("SPUBLISH").arg(channel).arg(&payload[..]).query_async::<()>(&mut conn).await }
            });
            futures_util::future::join_all(sends).await.into_iter().filter(Result::is_err).count()
        })
    }
}

/// Holds the subscriber connection: (re)connects with backoff, re-subscribes local interest, applies
/// interest changes, and delivers incoming messages.
async fn subscribe_loop(client: redis::Client, engine: Weak<Engine>, broker: Arc<RedisBroker>, shutdown: CancellationToken) {
    const MIN_BACKOFF: Duration = Duration::from_millis(100);
    const MAX_BACKOFF: Duration = Duration::from_secs(5);
    let mut backoff = MIN_BACKOFF;
    loop {
        let connected = tokio::select! {
            _ = shutdown.cancelled() => return,
            c = client.get_async_pubsub() => c,
        };
        let pubsub = match connected {
            Ok(p) => p,
            Err(e) => {
                broker.set_subscriber_up(false);
                debug!(error = %e, ?backoff, "redis subscriber connect failed");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        backoff = MIN_BACKOFF;
        let Some(engine) = engine.upgrade() else { return };
        let (mut sink, mut stream) = pubsub.split();
        let mut subscribed = HashMap::new();
        // A new connection has no subscriptions: re-assert everything this node listens to.
        {
            let mut dirty = broker.dirty.lock();
            for hub in engine.hubs() {
                let app: Arc<str> = Arc::from(hub.app().id.as_str());
                dirty.extend(hub.local_topics().into_iter().map(|t| (app.clone(), t)));
            }
        }
        let lost = match broker.sync(&engine, &mut sink, &mut subscribed).await {
            Err(e) => Some(e.to_string()),
            Ok(()) => {
                broker.set_subscriber_up(true);
                info!(subscriptions = subscribed.len(), "redis subscriber connected");
                loop {
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        msg = stream.next() => match msg {
                            Some(msg) => {
                                let payload = Bytes::copy_from_slice(msg.get_payload_bytes());
                                broker.handle(&engine, &subscribed, msg.get_channel_name(), payload);
                            }
                            None => break Some("connection closed".to_string()),
                        },
                        _ = broker.dirty_notify.notified() => {
                            if let Err(e) = broker.sync(&engine, &mut sink, &mut subscribed).await {
                                break Some(e.to_string());
                            }
                        }
                    }
                }
            }
        };
        broker.set_subscriber_up(false);
        broker.subscriptions.store(0, Ordering::Release);
        broker.live.lock().keys.clear();
        warn!(reason = lost.as_deref().unwrap_or(""), "redis subscriber connection lost; reconnecting");
        drop(engine);
    }
}
