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
//! [`herald_core::Broker::healthy`] (and so `/up`) reports the outage; health is probed by the lease
//! loop, so it recovers without waiting for traffic (module `health`). Every Redis call made for a client
//! or an API request has a deadline ([`RedisConfig::timeout`]) and fails at once while Redis is known
//! unreachable.
//!
//! Input from Redis is untrusted: messages are decoded into validated envelopes (and a frame must be
//! UTF-8, as Pusher frames are text); anything else is dropped and counted (module `envelope`).
//!
//! Cluster-wide subscription counts, presence and connection counts live in Redis too ([`RedisState`]),
//! decided atomically by Lua scripts.
//!
//! Each node holds a lease; a node that stops renewing it (crashed, `kill -9`) is reaped by one
//! surviving node, which takes its presence members and counts out and announces the result
//! (module `lease`). A node whose share the cluster lost re-asserts it in batches, in its own task
//! (module `reconcile`).
//!
//! Credentials in the Redis URL never reach logs or errors ([`redact`]).
//!
//! With [`RedisConfig::cluster`], the same runs on a Redis Cluster: sharded pub/sub (SPUBLISH /
//! SSUBSCRIBE, so each message only travels through its channel's shard) and state keys hash-tagged per
//! app (every script touches one slot).

mod config;
mod envelope;
mod health;
mod history;
mod idempotency;
mod lease;
mod publisher;
mod reconcile;
mod state;
mod subscriber;

pub use config::{redact, RedisBrokerError, RedisConfig};
pub use history::{HistoryPublish, RedisHistory};
pub use idempotency::{IdempotencyError, RedisIdempotency, MAX_IDEMPOTENCY_KEY};
pub use state::{Conn, RedisState};

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use herald_core::{BoxFuture, Broker, Engine, Publication, Remote, StreamPosition, Topic};
use parking_lot::Mutex;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::{mpsc, oneshot, Notify};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::info;

use crate::health::{Health, Mode};

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
    /// Received messages that were not valid envelopes (dropped).
    pub bad_envelopes: AtomicU64,
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
    health: Arc<Health>,
    subscriptions: AtomicUsize,
    push_loss: Arc<subscriber::PushLoss>,
    stats: RedisStats,
    /// Set once attached to a single Redis: [`Broker::publish_once`].
    publish_once: std::sync::OnceLock<PublishOnce>,
}

impl RedisBroker {
    /// Connects to Redis, attaches the broker to `engine`, and starts its publisher, subscriber, lease,
    /// reaper and reconcile tasks (tracked by `tasks`, stopped by `shutdown`). Fails if Redis is
    /// unreachable at start-up.
    pub async fn start(
        config: RedisConfig,
        engine: &Arc<Engine>,
        shutdown: CancellationToken,
        tasks: &TaskTracker,
    ) -> Result<Arc<RedisBroker>, RedisBrokerError> {
        let url = redact(&config.url);
        let connect = |source| RedisBrokerError::Connect { url: url.clone(), source };
        let bad_url = |source| RedisBrokerError::Url { url: url.clone(), source };
        let timeout = config.timeout.max(Duration::from_millis(10));
        let (outgoing, queued) = mpsc::channel(config.publish_queue.max(1));
        let broker = Arc::new(RedisBroker {
            node: (u128::from(fastrand::u64(..)) << 64) | u128::from(fastrand::u64(..)),
            prefix: config.prefix.clone(),
            outgoing,
            dirty: Mutex::new(HashSet::new()),
            dirty_notify: Notify::new(),
            prepared: Mutex::new(HashMap::new()),
            live: Mutex::new(Live::default()),
            health: Arc::new(Health::new(timeout)),
            subscriptions: AtomicUsize::new(0),
            push_loss: Arc::default(),
            stats: RedisStats::default(),
            publish_once: std::sync::OnceLock::new(),
        });
        let started = async {
            if config.cluster {
                // Redis Cluster: sharded pub/sub (SPUBLISH / SSUBSCRIBE) over RESP3; the cluster
                // connection routes by slot and re-subscribes by itself after reconnecting.
                let nodes: Vec<&str> = config.url.split(',').map(str::trim).filter(|n| !n.is_empty()).collect();
                let (push_tx, pushes) = subscriber::BoundedPushSender::new(config.push_queue, broker.push_loss.clone());
                let client = redis::cluster::ClusterClientBuilder::new(nodes)
                    .use_protocol(redis::ProtocolVersion::RESP3)
                    .push_sender(push_tx)
                    .connection_timeout(timeout)
                    .response_timeout(timeout)
                    .retries(2)
                    .build()
                    .map_err(bad_url)?;
                let conn = client.get_async_connection().await.map_err(connect)?;
                broker.attach(conn.clone(), &config, engine, &shutdown, tasks).await.map_err(connect)?;
                tasks.spawn(publisher::publish_loop(queued, broker.clone(), shutdown.clone(), publisher::publish_sharded(&conn)));
                tasks.spawn(subscriber::cluster_subscribe_loop(conn, pushes, Arc::downgrade(engine), broker.clone(), shutdown.clone()));
            } else {
                let client = redis::Client::open(config.url.as_str()).map_err(bad_url)?;
                let manager = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(timeout))
                    .set_response_timeout(Some(timeout))
                    .set_number_of_retries(1)
                    .set_max_delay(Duration::from_secs(1));
                let conn = ConnectionManager::new_with_config(client.clone(), manager).await.map_err(connect)?;
                broker.attach(conn.clone(), &config, engine, &shutdown, tasks).await.map_err(connect)?;
                tasks.spawn(publisher::publish_loop(queued, broker.clone(), shutdown.clone(), publisher::publish_pipelined(&conn)));
                tasks.spawn(subscriber::subscribe_loop(client, Arc::downgrade(engine), broker.clone(), shutdown.clone()));
            }
            Ok::<(), RedisBrokerError>(())
        };
        started.await?;
        info!(url = %url, prefix = %broker.prefix, cluster = config.cluster, timeout = ?timeout, "redis broker started");
        Ok(broker)
    }

    /// Registers the node (lease), attaches broker and cluster state to the engine, and starts the
    /// lease, reaper and reconcile tasks.
    async fn attach<C: Conn>(
        self: &Arc<Self>,
        conn: C,
        config: &RedisConfig,
        engine: &Arc<Engine>,
        shutdown: &CancellationToken,
        tasks: &TaskTracker,
    ) -> redis::RedisResult<()> {
        let node = format!("{:032x}", self.node);
        let registry = lease::Registry { prefix: self.prefix.clone(), node: node.clone() };
        let lease = config.lease.max(Duration::from_millis(300));
        self.health.deadline(lease::register(&mut conn.clone(), &registry, lease)).await?;
        engine.attach(self.clone());
        let state = Arc::new(RedisState::new(conn.clone(), self.prefix.clone(), self.node, self.health.clone()));
        engine.attach_state(state);
        let max_history = engine.hubs().map(|hub| hub.app().limits.max_history_channels).max().unwrap_or(0);
        let history = Arc::new(RedisHistory::with_health(conn.clone(), self.prefix.clone(), max_history, self.health.clone()));
        let broadcast = history::Broadcast { history: history.clone(), broker: self.clone(), sharded: config.cluster };
        engine.attach_history(history, Arc::new(broadcast));
        let limits = herald_core::IdempotencyLimits::default();
        let idempotency = Arc::new(RedisIdempotency::new(conn.clone(), self.prefix.clone(), limits, config.timeout));
        engine.attach_idempotency(idempotency.clone());
        if !config.cluster {
            // On a Redis Cluster nodes listen with SSUBSCRIBE, which a script's PUBLISH would not reach.
            let once: PublishOnce = Arc::new(move |app, key, channel, payload| {
                let idempotency = idempotency.clone();
                Box::pin(async move { idempotency.first_seen_then_publish(&app, &key, &channel, &payload).await })
            });
            let _ = self.publish_once.set(once);
        }
        tasks.spawn(lease::lease_loop(conn.clone(), registry.clone(), lease, self.health.clone(), shutdown.clone()));
        tasks.spawn(reconcile::reconcile_loop(
            conn.clone(),
            self.prefix.clone(),
            node,
            Arc::downgrade(engine),
            self.health.clone(),
            shutdown.clone(),
        ));
        let reap_every = (lease / 2).min(Duration::from_secs(2));
        tasks.spawn(lease::reaper_loop(conn, registry, Arc::downgrade(engine), self.health.clone(), reap_every, shutdown.clone()));
        Ok(())
    }

    /// The Redis channel and the envelope of a history publication (sent by the append script).
    pub(crate) fn history_message(&self, app_id: &str, publication: &Publication) -> (String, Bytes) {
        let topic = Topic::Channel(publication.channel.clone());
        let payload = envelope::encode(self.node, &Remote::Publish { publication: publication.clone() });
        (self.key(app_id, &topic), payload)
    }

    /// Queues a history publication for Redis as the append script would send it (`offset:epoch:`
    /// then the envelope). Same policy as [`Broker::publish`] when the queue is full.
    pub(crate) fn send_positioned(&self, channel: String, position: &StreamPosition, envelope: &[u8]) {
        let mut payload = format!("{}:{}:", position.offset, position.epoch).into_bytes();
        payload.extend_from_slice(envelope);
        if self.outgoing.try_send((channel, Bytes::from(payload))).is_err() {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("herald_redis_publish_dropped_total").increment(1);
        }
    }

    /// What crossed Redis so far.
    pub fn stats(&self) -> &RedisStats {
        &self.stats
    }

    /// Redis Cluster: pushed messages dropped because the push queue was full
    /// ([`RedisConfig::push_queue`]).
    pub fn push_dropped(&self) -> u64 {
        self.push_loss.dropped.load(Ordering::Relaxed)
    }

    /// Redis channels this node is subscribed to now.
    pub fn subscriptions(&self) -> usize {
        self.subscriptions.load(Ordering::Acquire)
    }

    /// Asks for this node's share of the cluster counts to be checked against its local subscriptions
    /// (and connections) and corrected, announcing what that changes. Runs in the background as soon as
    /// Redis is healthy; the broker requests it by itself after outages.
    pub fn request_reconcile(&self) {
        self.health.request_reconcile(Mode::Announce);
    }

    fn key(&self, app: &str, topic: &Topic) -> String {
        match topic {
            Topic::Channel(c) => format!("{}:{app}:c:{c}", self.prefix),
            Topic::User(u) => format!("{}:{app}:u:{u}", self.prefix),
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

    /// The receiver resolves once the Redis subscription is live, or is closed (an error for the
    /// waiter) when routing cannot be confirmed because Redis went away meanwhile; either way the
    /// subscribe goes on. `None` at once while Redis is known unreachable: a subscribe must not wait for
    /// routing during an outage (local delivery works, the interest is re-asserted on reconnect).
    fn prepare(&self, app_id: &str, topic: &Topic) -> Option<oneshot::Receiver<()>> {
        if self.health.subscriber_lost() || !self.health.reachable() {
            return None;
        }
        let key = self.key(app_id, topic);
        let (tx, rx) = oneshot::channel();
        {
            let mut live = self.live.lock();
            // Counted under the `live` lock, where a sync round decides what to unsubscribe: a live key
            // is pinned (the round sees it prepared), or the round has already taken it out of `live`
            // and this prepare waits for a new SUBSCRIBE.
            *self.prepared.lock().entry(key.clone()).or_default() += 1;
            if live.keys.contains(&key) {
                let _ = tx.send(());
                return Some(rx);
            }
            live.waiting.entry(key).or_default().push(tx);
        }
        self.interest_changed(app_id, topic.clone());
        Some(rx)
    }

    fn release(&self, app_id: &str, topic: &Topic) {
        let key = self.key(app_id, topic);
        let last = {
            let mut prepared = self.prepared.lock();
            match prepared.get_mut(&key) {
                Some(n) if *n > 1 => {
                    *n -= 1;
                    false
                }
                Some(_) => {
                    prepared.remove(&key);
                    true
                }
                None => false,
            }
        };
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
        // While other prepares hold the key, whether it is wanted can't have changed.
        if last {
            self.interest_changed(app_id, topic.clone());
        }
    }

    /// Redis answers (the last probe or call succeeded) and the subscriber connection is up.
    fn healthy(&self) -> bool {
        self.health.healthy()
    }

    fn name(&self) -> &'static str {
        "redis"
    }

    /// One script records the key in the app's idempotency set and PUBLISHes the envelope (a single
    /// Redis; `None` on a Redis Cluster).
    fn publish_once<'a>(
        &'a self,
        app_id: &'a str,
        topic: &'a Topic,
        message: Remote,
        key: &'a str,
    ) -> Option<BoxFuture<'a, Result<bool, IdempotencyError>>> {
        let once = self.publish_once.get()?.clone();
        let payload = envelope::encode(self.node, &message);
        Some(once(app_id.to_owned(), key.to_owned(), self.key(app_id, topic), payload))
    }
}

/// Records an idempotency key and publishes in one script: app, key, Redis channel, payload.
type PublishOnce = Arc<dyn Fn(String, String, String, Bytes) -> BoxFuture<'static, Result<bool, IdempotencyError>> + Send + Sync>;
