//! Crash safety: node leases and the reaper.
//!
//! Every node registers in `P:nodes` and keeps `P:node:{id}:lease` alive (a key with a TTL, renewed at a
//! third of it, each renewal under the call deadline). The renewal doubles as the health probe of
//! [`crate::health`]: success closes the circuit, failure opens it and the loop probes again sooner.
//!
//! Every node also runs a reaper, but only the one holding `P:reaper` (a short `SET NX` lock) works in a
//! given round: for each registered node whose lease has expired it first sets `P:node:{id}:reaped` (an
//! hour's TTL), then, app by app and in chunks ([`crate::reconcile`]), takes that node's contributions
//! (`{P:A}:node:{id}`, see [`crate::state`]) and connection count back out of the cluster, announcing the
//! resulting `member_removed` / `channel_vacated` through the engine, once for the whole cluster. A
//! ghost member of a `kill -9`ed node is gone within the lease TTL plus one reaper round. Malformed
//! fields are skipped and counted (`herald_redis_reaper_bad_fields_total`); one app's or one node's
//! failure does not stop the others (the node stays registered and is retried next round). Before each
//! chunk the reaper checks the lease again and stops if the node came back.
//!
//! A node that finds its lease gone registers again and reads (and deletes) its `reaped` marker: if it
//! was reaped, the others saw its members leave, so the reconcile that re-joins them announces
//! `member_added`; if not, Redis lost its data (restarted empty, FLUSHALL) and the clients never saw
//! anything change, so it re-joins silently. A lease later it reconciles once more (announcing), which
//! repairs what a reaper already mid-way through its share may have taken after it came back.

use std::sync::{Arc, Weak};
use std::time::Duration;

use herald_core::{Engine, Hub};
use redis::AsyncCommands;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::health::{Health, Mode};
use crate::reconcile::{drop_fields, parse_contributions, read_contributions, Entry, Settler, CHUNK};
use crate::state::{conns_key, Conn};
use herald_core::Member;

/// How long a `reaped` marker waits for its node to come back.
const MARKER_TTL_SECS: u64 = 3600;

/// Keys of the node registry under one prefix.
#[derive(Clone)]
pub(crate) struct Registry {
    pub(crate) prefix: String,
    pub(crate) node: String,
}

impl Registry {
    pub(crate) fn nodes(&self) -> String {
        format!("{}:nodes", self.prefix)
    }

    pub(crate) fn lease(&self, node: &str) -> String {
        format!("{}:node:{node}:lease", self.prefix)
    }

    pub(crate) fn reaped(&self, node: &str) -> String {
        format!("{}:node:{node}:reaped", self.prefix)
    }

    fn lock(&self) -> String {
        format!("{}:reaper", self.prefix)
    }
}

/// Registers this node and takes its first lease. The lease is written first, so a reaper never sees
/// this node registered without one.
pub(crate) async fn register<C: Conn>(conn: &mut C, registry: &Registry, ttl: Duration) -> redis::RedisResult<()> {
    let () = conn.pset_ex(registry.lease(&registry.node), 1, ttl.as_millis() as u64).await?;
    let () = conn.sadd(registry.nodes(), &registry.node).await?;
    Ok(())
}

/// Registers again after the lease was lost; true if a reaper had taken this node's share out.
async fn rejoin<C: Conn>(conn: &mut C, registry: &Registry, ttl: Duration) -> redis::RedisResult<bool> {
    register(conn, registry, ttl).await?;
    let marker: Option<String> = redis::cmd("GETDEL").arg(registry.reaped(&registry.node)).query_async(conn).await?;
    Ok(marker.is_some())
}

/// Renews the lease until shutdown, probing Redis for [`Health`]; then extends it once so sessions can
/// finish uncounting themselves (their leaves are idempotent against a reaper anyway).
pub(crate) async fn lease_loop<C: Conn>(mut conn: C, registry: Registry, ttl: Duration, health: Arc<Health>, shutdown: CancellationToken) {
    const PROBE: Duration = Duration::from_millis(100);
    let period = ttl / 3;
    let mut wait = period;
    let mut backoff = PROBE;
    let mut reachable = health.watch();
    let key = registry.lease(&registry.node);
    // After registering again: one more (announcing) reconcile a lease later, which repairs what a
    // reaper that was already mid-way through this node's share may have taken after the first one.
    let mut follow_up: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => {
                let extend = conn.pset_ex::<_, _, ()>(&key, 1, 30_000);
                let _ = health.deadline(extend).await;
                return;
            }
            changed = reachable.changed() => {
                if changed.is_err() {
                    return;
                }
                // Another call found Redis unreachable: probe soon instead of at the next renewal.
                if !*reachable.borrow_and_update() {
                    wait = wait.min(PROBE);
                }
                continue;
            }
            _ = tokio::time::sleep(wait) => {}
        }
        let mut renew = redis::cmd("SET");
        renew.arg(&key).arg(1).arg("PX").arg(ttl.as_millis() as u64).arg("XX");
        let renew = renew.query_async(&mut conn);
        // A renewal that takes longer than half the lease is as good as lost.
        let started = std::time::Instant::now();
        let renewed: redis::RedisResult<Option<String>> = match tokio::time::timeout(health.timeout().min(ttl / 2), renew).await {
            Ok(r) => r,
            Err(_) => Err(crate::health::timed_out()),
        };
        match &renewed {
            Ok(_) => health.probed(started.elapsed()),
            Err(e) => health.failed(e),
        }
        let result = match renewed {
            Ok(Some(_)) => Ok(()),
            Ok(None) => {
                // The lease is gone: this node was reaped after an outage longer than the lease, or
                // Redis lost its data. Either way the cluster no longer counts this node's clients:
                // register again and re-assert every local subscription.
                match health.deadline(rejoin(&mut conn, &registry, ttl)).await {
                    Ok(reaped) => {
                        let mode = if reaped { Mode::Announce } else { Mode::Silent };
                        warn!(reaped, "node lease was lost; registered again, re-asserting presence");
                        health.request_reconcile(mode);
                        follow_up = Some(tokio::time::Instant::now() + ttl);
                        Ok(())
                    }
                    Err(e) => Err(e),
                }
            }
            Err(e) => Err(e),
        };
        match result {
            Ok(()) => {
                health.up();
                wait = period;
                backoff = PROBE;
                if follow_up.is_some_and(|at| at <= tokio::time::Instant::now()) {
                    follow_up = None;
                    health.request_reconcile(Mode::Announce);
                }
            }
            Err(e) => {
                health.down(&e);
                debug!(error = %e, "lease renewal failed");
                wait = backoff;
                backoff = (backoff * 2).min(period);
            }
        }
    }
}

/// Every `every`, tries to become this round's reaper and reaps nodes whose lease expired.
pub(crate) async fn reaper_loop<C: Conn>(
    mut conn: C,
    registry: Registry,
    engine: Weak<Engine>,
    health: Arc<Health>,
    every: Duration,
    shutdown: CancellationToken,
) {
    let settler = Settler::new(&registry.prefix);
    let mut tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        if !health.reachable() {
            continue;
        }
        let Some(engine) = engine.upgrade() else { return };
        let round = reap_round(&mut conn, &registry, &settler, &health, &engine, every);
        let result = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = round => r,
        };
        if let Err(e) = result {
            warn!(error = %e, "reaper round failed");
        }
    }
}

async fn reap_round<C: Conn>(
    conn: &mut C,
    registry: &Registry,
    settler: &Settler,
    health: &Health,
    engine: &Engine,
    every: Duration,
) -> redis::RedisResult<()> {
    let mut lock = redis::cmd("SET");
    lock.arg(registry.lock()).arg(&registry.node).arg("NX").arg("PX").arg((every * 2).as_millis() as u64);
    let lock: Option<String> = health.deadline(lock.query_async(conn)).await?;
    if lock.is_none() {
        return Ok(());
    }
    let nodes: Vec<String> = health.deadline(conn.smembers(registry.nodes())).await?;
    for node in nodes.into_iter().filter(|n| *n != registry.node) {
        if let Err(e) = reap_node(conn, registry, settler, health, engine, &node).await {
            warn!(node, error = %e, "reaping a node failed; retrying next round");
        }
    }
    Ok(())
}

/// Reaps `node` if its lease expired.
async fn reap_node<C: Conn>(
    conn: &mut C,
    registry: &Registry,
    settler: &Settler,
    health: &Health,
    engine: &Engine,
    node: &str,
) -> redis::RedisResult<()> {
    if alive(conn, registry, health, node).await? {
        return Ok(());
    }
    // Mark first, check again: a node that re-registers after this point finds the marker (and
    // announces its return); one that re-registered before it is left alone.
    let mut marked = redis::cmd("SET");
    marked.arg(registry.reaped(node)).arg(1).arg("EX").arg(MARKER_TTL_SECS);
    let () = health.deadline(marked.query_async(conn)).await?;
    if alive(conn, registry, health, node).await? {
        let _: redis::RedisResult<()> = health.deadline(conn.del(registry.reaped(node))).await;
        return Ok(());
    }
    let (mut channels, mut complete) = (0, true);
    for hub in engine.hubs() {
        match reap_app(conn, registry, settler, health, hub, node).await {
            Ok(Some(n)) => channels += n,
            Ok(None) => {
                info!(node, "a node came back while being reaped; leaving it");
                return Ok(());
            }
            Err(e) => {
                complete = false;
                warn!(node, app = %hub.app().id, error = %e, "reaping a node's share of an app failed");
            }
        }
    }
    if complete {
        let () = health.deadline(conn.srem(registry.nodes(), node)).await?;
        info!(node, channels, "reaped a dead node");
        metrics::counter!("herald_redis_nodes_reaped_total").increment(1);
    }
    Ok(())
}

async fn alive<C: Conn>(conn: &mut C, registry: &Registry, health: &Health, node: &str) -> redis::RedisResult<bool> {
    health.deadline(conn.exists(registry.lease(node))).await
}

/// Takes `node`'s share of `hub`'s app out of the cluster and announces what that changed. Returns the
/// channels that changed, or `None` if the node came back meanwhile.
async fn reap_app<C: Conn>(
    conn: &mut C,
    registry: &Registry,
    settler: &Settler,
    health: &Health,
    hub: &Hub,
    node: &str,
) -> redis::RedisResult<Option<usize>> {
    let app = hub.app().id.as_str();
    let prefix = &registry.prefix;
    let (good, bad) = parse_contributions(read_contributions(conn, health, prefix, app, node).await?);
    if !bad.is_empty() {
        metrics::counter!("herald_redis_reaper_bad_fields_total", "app" => app.to_string()).increment(bad.len() as u64);
        debug!(app, node, fields = bad.len(), "skipping malformed fields of a dead node's counts");
    }
    let entries: Vec<Entry> = good
        .into_iter()
        .map(|((channel, user), _)| {
            let member = (!user.is_empty()).then(|| Member { user_id: Arc::from(user.as_str()), info: bytes::Bytes::new() });
            Entry { channel, member, target: 0 }
        })
        .collect();
    let mut channels = 0;
    for chunk in entries.chunks(CHUNK) {
        if alive(conn, registry, health, node).await? {
            return Ok(None);
        }
        let changes = settler.settle(conn, health, app, node, chunk, usize::MAX).await?;
        channels += changes.len();
        for change in &changes {
            hub.announce(change, None);
        }
    }
    drop_fields(conn, health, prefix, app, node, &bad).await?;
    let _: i64 = health.deadline(conn.hdel(conns_key(prefix, app), node)).await?;
    Ok(Some(channels))
}
