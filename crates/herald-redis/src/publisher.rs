//! Sending: one task drains the bounded publish queue in batches.
//!
//! While Redis is known unreachable ([`crate::health`]) a batch is dropped for the other nodes at once
//! (counted, `herald_redis_publish_dropped_total`) instead of waiting out a deadline per batch; local
//! delivery never depended on it. A failed batch marks Redis unreachable; the lease loop's probe, not a
//! later publish, brings the node back.

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use herald_core::BoxFuture;
use redis::aio::ConnectionManager;
use redis::cluster_async::ClusterConnection;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::health::{is_link_failure, timed_out};
use crate::RedisBroker;

/// Publications to send: Redis channel and payload.
type Batch = Vec<(String, Bytes)>;

/// How sending a batch went: on failure, how many of it failed and why.
type Sent = Result<(), (usize, redis::RedisError)>;

/// Sends queued publications in batches of up to 256 through `send`, which returns how many of a
/// batch failed.
pub(crate) async fn publish_loop<F, Fut>(
    mut queued: mpsc::Receiver<(String, Bytes)>,
    broker: Arc<RedisBroker>,
    shutdown: CancellationToken,
    mut send: F,
) where
    F: FnMut(Batch) -> Fut,
    Fut: Future<Output = Sent>,
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
        let failed = if broker.health.reachable() {
            let sent = tokio::select! {
                _ = shutdown.cancelled() => break,
                r = tokio::time::timeout(broker.health.timeout(), send(std::mem::take(&mut batch))) => r,
            };
            match sent {
                Ok(Ok(())) => 0,
                Ok(Err((failed, e))) => {
                    debug!(error = %e, failed, "redis publish failed");
                    if is_link_failure(&e) {
                        broker.health.down(&e);
                    }
                    failed
                }
                Err(_) => {
                    broker.health.down(&timed_out());
                    n
                }
            }
        } else {
            batch.clear();
            n
        };
        broker.stats.published.fetch_add((n - failed) as u64, Ordering::Relaxed);
        metrics::counter!("herald_redis_published_total").increment((n - failed) as u64);
        if failed > 0 {
            broker.stats.dropped.fetch_add(failed as u64, Ordering::Relaxed);
            metrics::counter!("herald_redis_publish_dropped_total").increment(failed as u64);
        }
    }
}

/// One pipelined round trip of PUBLISH commands (a single server).
pub(crate) fn publish_pipelined(conn: &ConnectionManager) -> impl FnMut(Batch) -> BoxFuture<'static, Sent> {
    let conn = conn.clone();
    move |batch| {
        let mut conn = conn.clone();
        Box::pin(async move {
            let n = batch.len();
            let mut pipe = redis::pipe();
            for (channel, payload) in batch {
                pipe.cmd("PUBLISH").arg(channel).arg(&payload[..]).ignore();
            }
            pipe.query_async::<()>(&mut conn).await.map_err(|e| (n, e))
        })
    }
}

/// SPUBLISH each message to its channel's shard, concurrently (a Redis Cluster).
pub(crate) fn publish_sharded(conn: &ClusterConnection) -> impl FnMut(Batch) -> BoxFuture<'static, Sent> {
    let conn = conn.clone();
    move |batch| {
        let conn = conn.clone();
        Box::pin(async move {
            // Channels go out concurrently; the messages of one channel one after another, in queue
            // order (concurrent sends of one channel could overtake each other).
            let mut by_channel: Vec<(String, Vec<Bytes>)> = Vec::new();
            for (channel, payload) in batch {
                match by_channel.iter_mut().find(|(c, _)| *c == channel) {
                    Some((_, payloads)) => payloads.push(payload),
                    None => by_channel.push((channel, vec![payload])),
                }
            }
            let sends = by_channel.into_iter().map(|(channel, payloads)| {
                let mut conn = conn.clone();
                async move {
                    let mut results = Vec::with_capacity(payloads.len());
                    for payload in payloads {
                        results.push(redis::cmd("SPUBLISH").arg(&channel).arg(&payload[..]).query_async::<()>(&mut conn).await);
                    }
                    results
                }
            });
            let results: Vec<_> = futures_util::future::join_all(sends).await.into_iter().flatten().collect();
            let failed = results.iter().filter(|r| r.is_err()).count();
            match results.into_iter().find_map(Result::err) {
                Some(e) => Err((failed, e)),
                None => Ok(()),
            }
        })
    }
}
