//! Receiving: the subscriber connection, interest sync, and delivery of what other nodes published.
//!
//! On a single server a dedicated pub/sub connection SUBSCRIBEs; it reconnects with backoff and
//! re-subscribes every topic with local interest. Every subscribe and connect has the call deadline, so
//! a stalled Redis is noticed (and the connection replaced) instead of waited on.
//!
//! On a Redis Cluster the cluster connection SSUBSCRIBEs and hands pushed messages (RESP3) to a bounded
//! queue ([`BoundedPushSender`]). When the queue is full pushes are dropped and counted
//! (`herald_redis_push_dropped_total`): a dropped message is lost for this node's subscribers, and a
//! dropped control push may leave routing stale, so the node then re-subscribes every local topic and
//! reconciles its counts.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use herald_core::{Engine, Remote, Topic};
use redis::aio::PubSubSink;
use redis::cluster_async::ClusterConnection;
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::envelope;
use crate::health::Mode;
use crate::RedisBroker;

/// Redis key -> the app and topic it carries, for the keys this connection is subscribed to.
pub(crate) type Subscribed = HashMap<String, (Arc<str>, Topic)>;

/// Subscribing and unsubscribing Redis channels: classic pub/sub on one server, sharded in a cluster.
pub(crate) trait Subscriptions {
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

impl RedisBroker {
    /// Brings Redis subscriptions in line with local interest for every topic marked dirty. Each batch
    /// has the call deadline.
    pub(crate) async fn sync<S: Subscriptions>(
        &self,
        engine: &Engine,
        sink: &mut S,
        subscribed: &mut Subscribed,
    ) -> redis::RedisResult<()> {
        let dirty: Vec<(Arc<str>, Topic)> = std::mem::take(&mut *self.dirty.lock()).into_iter().collect();
        let (mut add, mut remove) = (Vec::new(), Vec::new());
        for (app, topic) in dirty {
            let key = self.key(&app, &topic);
            // Decided under the `live` lock, where a prepare pins a live key (see `Broker::prepare`), and
            // `prepared` read before local interest: a subscriber's pin is released only after its
            // local subscribe, so one of the two reads sees it.
            let mut live = self.live.lock();
            let wanted = self.prepared.lock().contains_key(&key) || engine.by_id(&app).is_some_and(|hub| hub.has_local(&topic));
            match (wanted, subscribed.contains_key(&key)) {
                (true, false) => {
                    subscribed.insert(key.clone(), (app, topic));
                    add.push(key);
                }
                (false, true) => {
                    subscribed.remove(&key);
                    // Not routed from now on: a prepare before the UNSUBSCRIBE (which may wait behind
                    // this round's subscribes) must wait for a new SUBSCRIBE, not take the key as live.
                    live.keys.remove(&key);
                    remove.push(key);
                }
                _ => {}
            }
        }
        let deadline = self.health.timeout();
        for chunk in add.chunks(512) {
            tokio::time::timeout(deadline, sink.add(chunk)).await.map_err(|_| crate::health::timed_out())??;
            let mut live = self.live.lock();
            for key in chunk {
                live.keys.insert(key.clone());
                for waiter in live.waiting.remove(key).unwrap_or_default() {
                    let _ = waiter.send(());
                }
            }
        }
        for chunk in remove.chunks(512) {
            tokio::time::timeout(deadline, sink.remove(chunk)).await.map_err(|_| crate::health::timed_out())??;
        }
        self.subscriptions.store(subscribed.len(), Ordering::Release);
        if !add.is_empty() || !remove.is_empty() {
            debug!(added = add.len(), removed = remove.len(), total = subscribed.len(), "redis subscriptions");
        }
        Ok(())
    }

    /// Marks every topic with local interest dirty (a new connection has no subscriptions).
    fn mark_all_dirty(&self, engine: &Engine) {
        let mut dirty = self.dirty.lock();
        for hub in engine.hubs() {
            let app: Arc<str> = Arc::from(hub.app().id.as_str());
            dirty.extend(hub.local_topics().into_iter().map(|t| (app.clone(), t)));
        }
    }

    /// Gives up on every pending routing confirmation: their subscribes go on without it (local delivery
    /// works; the interest is re-asserted once Redis is back).
    pub(crate) fn release_waiters(&self) {
        self.live.lock().waiting.clear();
    }

    /// Delivers one message from Redis to local subscribers. What is not a valid envelope is dropped
    /// and counted (`herald_redis_bad_envelopes_total`), logged at debug only: anyone who can PUBLISH
    /// to the Redis can send it, as often as they like.
    pub(crate) fn handle(&self, engine: &Engine, subscribed: &Subscribed, name: &str, payload: Bytes) {
        self.stats.received.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("herald_redis_received_total").increment(1);
        let Some((app, topic)) = subscribed.get(name) else {
            self.stats.unwanted.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("herald_redis_received_unwanted_total").increment(1);
            return;
        };
        // History publications come from the append script with their position in front; the node
        // that published one delivers it only now (in offset order), so its own echo counts too.
        let (position, payload) = match payload.first() {
            Some(b'0'..=b'9') => match crate::history::split_position(&payload) {
                Some((position, rest)) => {
                    let rest = payload.slice_ref(rest);
                    (Some(position), rest)
                }
                None => (None, Bytes::new()),
            },
            _ => (None, payload),
        };
        let envelope = match envelope::decode(payload) {
            Ok(envelope) => envelope,
            Err(e) => {
                self.stats.bad_envelopes.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("herald_redis_bad_envelopes_total", "app" => app.to_string(), "reason" => e.reason()).increment(1);
                debug!(channel = name, error = %e, "dropping a message that is not a valid herald envelope");
                return;
            }
        };
        if envelope.node() == self.node && position.is_none() {
            self.stats.echoes.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let mut message = envelope.into_message();
        if let (Some(position), Remote::Publish { publication, .. }) = (position, &mut message) {
            publication.position = Some(position);
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

/// Holds the subscriber connection: (re)connects with backoff, re-subscribes local interest, applies
/// interest changes, and delivers incoming messages.
pub(crate) async fn subscribe_loop(client: redis::Client, engine: Weak<Engine>, broker: Arc<RedisBroker>, shutdown: CancellationToken) {
    const MIN_BACKOFF: Duration = Duration::from_millis(100);
    const MAX_BACKOFF: Duration = Duration::from_secs(5);
    let mut backoff = MIN_BACKOFF;
    let mut reachable = broker.health.watch();
    loop {
        let connected = tokio::select! {
            _ = shutdown.cancelled() => return,
            c = tokio::time::timeout(broker.health.timeout(), client.get_async_pubsub()) => c.unwrap_or_else(|_| Err(crate::health::timed_out())),
        };
        let pubsub = match connected {
            Ok(p) => p,
            Err(e) => {
                broker.health.set_subscriber_up(false);
                broker.release_waiters();
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
        let mut subscribed = Subscribed::new();
        broker.mark_all_dirty(&engine);
        let lost = match broker.sync(&engine, &mut sink, &mut subscribed).await {
            Err(e) => Some(e.to_string()),
            Ok(()) => {
                broker.health.set_subscriber_up(true);
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
                        changed = reachable.changed() => {
                            if changed.is_ok() && !*reachable.borrow_and_update() {
                                broker.release_waiters();
                            }
                        }
                    }
                }
            }
        };
        {
            // One step: a prepare sees either the old routes or none, never a live key of a dead
            // connection after its waiters were let go.
            let mut live = broker.live.lock();
            live.keys.clear();
            live.waiting.clear();
        }
        broker.health.set_subscriber_up(false);
        broker.subscriptions.store(0, Ordering::Release);
        warn!(reason = lost.as_deref().unwrap_or(""), "redis subscriber connection lost; reconnecting");
        drop(engine);
    }
}

/// What a full push queue cost, shared between the sender (in the connection) and the subscriber task.
#[derive(Default)]
pub(crate) struct PushLoss {
    /// Pushes dropped so far.
    pub(crate) dropped: AtomicU64,
    /// A push was dropped since the subscriber task last recovered.
    lost: AtomicBool,
    notify: Notify,
}

impl PushLoss {
    /// Takes the "a push was dropped" flag.
    pub(crate) fn take(&self) -> bool {
        self.lost.swap(false, Ordering::AcqRel)
    }
}

/// Hands RESP3 pushes to the subscriber task through a bounded queue. Policy when full: drop the push,
/// count it, and flag the loss so the subscriber task recovers (it must not block: it runs inside the
/// connection's read loop).
pub(crate) struct BoundedPushSender {
    tx: mpsc::Sender<redis::PushInfo>,
    loss: Arc<PushLoss>,
}

impl BoundedPushSender {
    /// A sender with room for `capacity` pushes, recording losses in `loss`, and its receiver.
    pub(crate) fn new(capacity: usize, loss: Arc<PushLoss>) -> (BoundedPushSender, mpsc::Receiver<redis::PushInfo>) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        (BoundedPushSender { tx, loss }, rx)
    }
}

impl redis::aio::AsyncPushSender for BoundedPushSender {
    fn send(&self, info: redis::PushInfo) -> Result<(), redis::aio::SendError> {
        match self.tx.try_send(info) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.loss.dropped.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("herald_redis_push_dropped_total").increment(1);
                if !self.loss.lost.swap(true, Ordering::AcqRel) {
                    self.loss.notify.notify_one();
                }
                Ok(())
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Err(redis::aio::SendError),
        }
    }
}

/// Applies interest changes with SSUBSCRIBE / SUNSUBSCRIBE and delivers sharded messages pushed over
/// RESP3. Reconnection and re-subscription are the cluster connection's own.
pub(crate) async fn cluster_subscribe_loop(
    mut conn: ClusterConnection,
    mut pushes: mpsc::Receiver<redis::PushInfo>,
    engine: Weak<Engine>,
    broker: Arc<RedisBroker>,
    shutdown: CancellationToken,
) {
    let Some(engine) = engine.upgrade() else { return };
    let mut subscribed = Subscribed::new();
    let mut reachable = broker.health.watch();
    let loss = broker.push_loss.clone();
    broker.health.set_subscriber_up(true);
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
                    redis::PushKind::Disconnection => {
                        broker.health.set_subscriber_up(false);
                        broker.release_waiters();
                    }
                    redis::PushKind::SSubscribe => broker.health.set_subscriber_up(true),
                    _ => {}
                },
            },
            _ = loss.notify.notified() => {
                if loss.take() {
                    warn!(dropped = loss.dropped.load(Ordering::Relaxed), "redis push queue overflowed; re-subscribing and reconciling");
                    resubscribe_all(&broker, &engine, &mut subscribed);
                    broker.health.request_reconcile(Mode::Announce);
                }
            }
            changed = reachable.changed() => {
                if changed.is_ok() && !*reachable.borrow_and_update() {
                    broker.release_waiters();
                }
            }
            _ = broker.dirty_notify.notified() => {
                if let Err(e) = broker.sync(&engine, &mut conn, &mut subscribed).await {
                    warn!(error = %e, "sharded subscribe failed; retrying");
                    broker.health.set_subscriber_up(false);
                    broker.release_waiters();
                    resubscribe_all(&broker, &engine, &mut subscribed);
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                    }
                }
            }
        }
    }
}

/// Forgets what we believe is subscribed (a failed batch may be half done, a dropped push may have
/// carried an unsubscribe) and asks for everything this node wants again; subscribing twice is
/// harmless.
fn resubscribe_all(broker: &RedisBroker, engine: &Engine, subscribed: &mut Subscribed) {
    subscribed.clear();
    broker.live.lock().keys.clear();
    broker.mark_all_dirty(engine);
    broker.dirty_notify.notify_one();
}

#[cfg(test)]
mod tests {
    use super::*;
    use redis::aio::AsyncPushSender;

    fn push(n: i64) -> redis::PushInfo {
        redis::PushInfo { kind: redis::PushKind::SMessage, data: vec![redis::Value::Int(n)] }
    }

    #[tokio::test]
    async fn a_full_push_queue_drops_counts_and_flags_a_recovery() {
        let loss = Arc::new(PushLoss::default());
        let (sender, mut rx) = BoundedPushSender::new(2, loss.clone());
        for n in 0..5 {
            assert!(sender.send(push(n)).is_ok(), "a full queue never fails the connection");
        }
        assert_eq!(loss.dropped.load(Ordering::Relaxed), 3);
        // The subscriber task is woken once and takes the flag once.
        tokio::time::timeout(Duration::from_secs(1), loss.notify.notified()).await.expect("recovery is signalled");
        assert!(loss.take());
        assert!(!loss.take());
        // The queue kept the oldest pushes, in order.
        assert_eq!(rx.recv().await.unwrap().data, vec![redis::Value::Int(0)]);
        assert_eq!(rx.recv().await.unwrap().data, vec![redis::Value::Int(1)]);
        assert!(rx.try_recv().is_err());
        // Room again: accepted without loss.
        assert!(sender.send(push(9)).is_ok());
        assert_eq!(loss.dropped.load(Ordering::Relaxed), 3);
        assert!(!loss.take());
        drop(rx);
        assert!(sender.send(push(10)).is_err(), "a closed receiver is reported");
    }
}
