//! Crash safety: node leases and the reaper.
//!
//! Every node registers in `P:nodes` and keeps `P:node:{id}:lease` alive (a key with a TTL, renewed at a
//! third of it). Every node also runs a reaper, but only the one holding `P:reaper` (a short `SET NX`
//! lock) works in a given round: for each registered node whose lease has expired, one Lua script per app
//! takes that node's contributions (`{P:A}:node:{id}`, see [`crate::state`]) back out of the cluster
//! counts and presence, atomically, and returns what that changed. The reaper then announces the resulting
//! `member_removed` and counts through the engine, once for the whole cluster. A ghost member of a
//! `kill -9`ed node is gone within the lease TTL plus one reaper round.

use std::collections::BTreeMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use std::collections::HashMap;

use herald_core::{Broker, ChannelChange, ClusterState, Engine, Joined, MemberJoin, Transition};

use crate::state::{app_tag, contributions_key, Conn, RedisState};
use crate::RedisBroker;
use redis::{AsyncCommands, Script};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

const REAP: &str = r#"
local fields = redis.call('HGETALL', KEYS[1])
local out = {}
for i = 1, #fields, 2 do
  local f = fields[i]
  local c = tonumber(fields[i + 1])
  local sep = string.find(f, '\0', 1, true)
  local ch = string.sub(f, 1, sep - 1)
  local user = string.sub(f, sep + 1)
  if c > 0 then
    local subs_key = ARGV[1] .. ':subs'
    local s = redis.call('HINCRBY', subs_key, ch, -c)
    if s <= 0 then
      redis.call('HDEL', subs_key, ch)
      s = 0
    end
    local removed = 0
    if user ~= '' then
      local n_key = ARGV[1] .. ':n:' .. ch
      local n = redis.call('HINCRBY', n_key, user, -c)
      if n <= 0 then
        redis.call('HDEL', n_key, user)
        removed = redis.call('HDEL', ARGV[1] .. ':m:' .. ch, user)
      end
    end
    table.insert(out, ch)
    table.insert(out, user)
    table.insert(out, removed)
    table.insert(out, s)
  end
end
redis.call('DEL', KEYS[1])
return out
"#;

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

    fn lock(&self) -> String {
        format!("{}:reaper", self.prefix)
    }
}

/// Registers this node and takes its first lease.
pub(crate) async fn register<C: Conn>(conn: &mut C, registry: &Registry, ttl: Duration) -> redis::RedisResult<()> {
    let () = conn.sadd(registry.nodes(), &registry.node).await?;
    let () = conn.pset_ex(registry.lease(&registry.node), 1, ttl.as_millis() as u64).await?;
    Ok(())
}

/// Renews the lease until shutdown; then extends it once so sessions can finish uncounting themselves
/// (their leaves are idempotent against a reaper anyway).
pub(crate) async fn lease_loop<C: Conn>(
    mut conn: C,
    registry: Registry,
    ttl: Duration,
    engine: Weak<Engine>,
    state: Arc<RedisState<C>>,
    broker: Arc<RedisBroker>,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(ttl / 3);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => {
                let _: redis::RedisResult<()> = conn.pset_ex(registry.lease(&registry.node), 1, 30_000).await;
                return;
            }
            _ = tick.tick() => {}
        }
        let key = registry.lease(&registry.node);
        let renewed: redis::RedisResult<Option<String>> =
            redis::cmd("SET").arg(&key).arg(1).arg("PX").arg(ttl.as_millis() as u64).arg("XX").query_async(&mut conn).await;
        match renewed {
            Ok(Some(_)) => {}
            Ok(None) => {
                // The lease is gone: this node was reaped after an outage longer than the lease, or
                // Redis restarted empty. Either way the cluster no longer counts this node's clients:
                // register again and re-assert every local subscription.
                warn!("node lease was lost; registering again and re-asserting presence");
                match register(&mut conn, &registry, ttl).await {
                    Ok(()) => broker.request_reconcile(),
                    Err(e) => warn!(error = %e, "re-registering failed"),
                }
            }
            Err(e) => warn!(error = %e, "lease renewal failed"),
        }
        if broker.healthy() && broker.take_reconcile() {
            if let Some(engine) = engine.upgrade() {
                if !reconcile(&engine, &state).await {
                    broker.request_reconcile();
                }
            }
        }
    }
}

/// Makes what this node holds in the cluster counts equal its local subscriptions, announcing what
/// that changes. Needed after the cluster lost this node's share (lease lost, Redis restarted empty:
/// everything is joined again) or after an outage during which joins or leaves could not be recorded.
/// Returns false if Redis failed midway (the caller tries again later).
async fn reconcile<C: Conn>(engine: &Engine, state: &RedisState<C>) -> bool {
    let (mut joined, mut left) = (0usize, 0usize);
    for hub in engine.hubs() {
        let app = hub.app().id.clone();
        let max = hub.app().limits.max_presence_members;
        let mut local: HashMap<String, (Arc<str>, Option<MemberJoin>, i64)> = HashMap::new();
        for (channel, member) in hub.local_subscriptions() {
            let user = member.as_ref().map_or("", |m| &*m.user_id);
            let field = RedisState::<C>::contribution_field(&channel, user);
            local.entry(field).or_insert((channel, member, 0)).2 += 1;
        }
        let stored = match state.contributions(&app).await {
            Ok(stored) => stored,
            Err(e) => {
                warn!(error = %e, "reading this node's counts failed");
                return false;
            }
        };
        // Too few in Redis: join the missing ones.
        for (channel, member, count) in local.values() {
            let field = RedisState::<C>::contribution_field(channel, member.as_ref().map_or("", |m| &*m.user_id));
            for _ in stored.get(&field).copied().unwrap_or(0)..*count {
                match state.join(&app, channel, member.as_ref(), max).await {
                    Ok(Joined::Counted { subscribers, member_added, .. }) => {
                        joined += 1;
                        hub.announce(&ChannelChange::counted_join(channel.clone(), subscribers, member_added, member.as_ref()));
                    }
                    Ok(Joined::Full) => {}
                    Err(e) => {
                        warn!(error = %e, "re-asserting presence failed");
                        return false;
                    }
                }
            }
        }
        // Too many in Redis (leaves that could not be recorded): take them back.
        for (field, held) in &stored {
            let have = local.get(field).map_or(0, |l| l.2);
            let Some((channel, user)) = field.split_once('\0') else { continue };
            let user = (!user.is_empty()).then_some(user);
            for _ in have..*held {
                match state.leave(&app, channel, user).await {
                    Ok(l) => {
                        left += 1;
                        hub.announce(&ChannelChange::counted_leave(Arc::from(channel), l, user.map(Arc::from)));
                    }
                    Err(e) => {
                        warn!(error = %e, "taking back stale counts failed");
                        return false;
                    }
                }
            }
        }
    }
    if joined + left > 0 {
        info!(joined, left, "cluster counts reconciled with local subscriptions");
    }
    true
}

/// Every `every`, tries to become this round's reaper and reaps nodes whose lease expired.
pub(crate) async fn reaper_loop<C: Conn>(
    mut conn: C,
    registry: Registry,
    engine: Weak<Engine>,
    every: Duration,
    shutdown: CancellationToken,
) {
    let script = Script::new(REAP);
    let mut tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let Some(engine) = engine.upgrade() else { return };
        if let Err(e) = reap_round(&mut conn, &registry, &script, &engine, every).await {
            warn!(error = %e, "reaper round failed");
        }
    }
}

async fn reap_round<C: Conn>(
    conn: &mut C,
    registry: &Registry,
    script: &Script,
    engine: &Engine,
    every: Duration,
) -> redis::RedisResult<()> {
    let lock: Option<String> = redis::cmd("SET")
        .arg(registry.lock())
        .arg(&registry.node)
        .arg("NX")
        .arg("PX")
        .arg((every * 2).as_millis() as u64)
        .query_async(conn)
        .await?;
    if lock.is_none() {
        return Ok(());
    }
    let nodes: Vec<String> = conn.smembers(registry.nodes()).await?;
    for node in nodes.into_iter().filter(|n| *n != registry.node) {
        let alive: bool = conn.exists(registry.lease(&node)).await?;
        if alive {
            continue;
        }
        let mut channels = 0;
        for hub in engine.hubs() {
            let app = hub.app().id.as_str();
            let reaped: Vec<redis::Value> =
                script.key(contributions_key(&registry.prefix, app, &node)).arg(app_tag(&registry.prefix, app)).invoke_async(conn).await?;
            let changes = changes_from(reaped);
            channels += changes.len();
            for change in changes.values() {
                hub.announce(change);
            }
        }
        let () = conn.srem(registry.nodes(), &node).await?;
        info!(node, channels, "reaped a dead node");
        metrics::counter!("herald_redis_nodes_reaped_total").increment(1);
    }
    Ok(())
}

/// Groups the script's flat `[channel, user, removed, subscribers, ...]` by channel.
fn changes_from(flat: Vec<redis::Value>) -> BTreeMap<String, ChannelChange> {
    let text = |v: &redis::Value| -> String {
        match v {
            redis::Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
            redis::Value::SimpleString(s) => s.clone(),
            _ => String::new(),
        }
    };
    let int = |v: &redis::Value| -> i64 {
        match v {
            redis::Value::Int(n) => *n,
            _ => 0,
        }
    };
    let mut out: BTreeMap<String, ChannelChange> = BTreeMap::new();
    for row in flat.chunks(4) {
        let [channel, user, removed, subscribers] = row else { continue };
        let (channel, user) = (text(channel), text(user));
        let change = out.entry(channel.clone()).or_insert_with(|| ChannelChange {
            channel: Arc::from(channel.as_str()),
            subscribers: 0,
            transitions: Vec::new(),
        });
        change.subscribers = int(subscribers).max(0) as usize;
        if int(removed) == 1 && !user.is_empty() {
            change.transitions.push(Transition::MemberRemoved { user_id: Arc::from(user.as_str()) });
        }
    }
    for change in out.values_mut() {
        if change.subscribers == 0 {
            change.transitions.push(Transition::Vacated);
        }
    }
    out
}
