//! Settling a node's share of the cluster counts: reconcile (this node, alive) and reap (a dead node).
//!
//! Both come down to "make node N's contribution to `channel\0user` equal `target`", applied by one
//! Lua script ([`SETTLE`]) to up to [`CHUNK`] contributions per call: a reconcile sets every target to
//! the local count, a reaper sets every target of the dead node to 0. The script compares the target
//! with what the node holds *now* (atomically) and moves the cluster counts and presence by the
//! difference, returning what that changed so the caller can announce it. Every key it touches is
//! declared in KEYS (the app's subs hash, the node's contributions hash, and each entry's member and
//! connection hashes, all in the app's Redis Cluster slot).
//!
//! Reconcile runs in its own task ([`reconcile_loop`]), never inside the lease loop: 100k local
//! subscriptions are 200 script calls, during which the lease keeps being renewed.

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use herald_core::{ChannelChange, Engine, Hub, Member, Transition};
use redis::Script;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::health::{Health, Mode};
use crate::state::{app_tag, conns_key, contribution_field, contributions_key, Conn};

/// Contributions settled per script call.
pub(crate) const CHUNK: usize = 500;

/// KEYS: `subs`, `node`, then `m:{channel}`, `n:{channel}` per entry. ARGV: max members, then
/// `channel, user, info, target` per entry. Returns per entry `{delta, subscribers, added, removed}`;
/// `delta` is `nil`-free: a join refused for a full presence channel returns `{0, subs, -1, 0}`.
/// Counts that are not numbers are treated as 0 and overwritten, so one bad value cannot fail the call.
const SETTLE: &str = r#"
local function num(v)
  local n = tonumber(v)
  if n == nil then return 0 end
  return n
end
local function add(key, field, by)
  local n = num(redis.call('HGET', key, field)) + by
  if n <= 0 then
    redis.call('HDEL', key, field)
    return 0
  end
  redis.call('HSET', key, field, n)
  return n
end
local max = tonumber(ARGV[1])
local out = {}
local entries = (#ARGV - 1) / 4
for i = 1, entries do
  local a = 1 + (i - 1) * 4
  local ch, user, info, target = ARGV[a + 1], ARGV[a + 2], ARGV[a + 3], num(ARGV[a + 4])
  local mk, nk = KEYS[1 + 2 * i], KEYS[2 + 2 * i]
  local field = ch .. '\0' .. user
  local cur = num(redis.call('HGET', KEYS[2], field))
  if cur < 0 then cur = 0 end
  local delta = target - cur
  local added, removed = 0, 0
  if delta > 0 and user ~= '' and num(redis.call('HGET', nk, user)) <= 0 and redis.call('HEXISTS', mk, user) == 0 then
    if redis.call('HLEN', mk) >= max then
      delta = 0
      added = -1
    else
      redis.call('HSET', mk, user, info)
      added = 1
    end
  end
  local subs
  if delta ~= 0 then
    if user ~= '' and add(nk, user, delta) == 0 then
      removed = redis.call('HDEL', mk, user)
    end
    subs = add(KEYS[1], ch, delta)
    if target > 0 then
      redis.call('HSET', KEYS[2], field, target)
    else
      redis.call('HDEL', KEYS[2], field)
    end
  else
    subs = num(redis.call('HGET', KEYS[1], ch))
    if cur == 0 and target == 0 then redis.call('HDEL', KEYS[2], field) end
  end
  table.insert(out, {delta, subs, added, removed})
end
return out
"#;

/// One contribution to settle.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub(crate) channel: Arc<str>,
    /// Presence: the member (its info is stored if this makes them a member).
    pub(crate) member: Option<Member>,
    pub(crate) target: i64,
}

/// What settling one entry changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Settled {
    delta: i64,
    subscribers: i64,
    /// 1: became a member; -1: refused (the channel is full).
    added: i64,
    removed: i64,
}

/// The settle script and where a node's share of one app lives.
pub(crate) struct Settler {
    script: Script,
    prefix: String,
}

impl Settler {
    pub(crate) fn new(prefix: &str) -> Settler {
        Settler { script: Script::new(SETTLE), prefix: prefix.to_string() }
    }

    /// Sets node `node`'s contributions to app `app` to `entries`' targets (one call, at most [`CHUNK`]
    /// entries), returning the changes to announce, grouped by channel in order.
    pub(crate) async fn settle<C: Conn>(
        &self,
        conn: &mut C,
        health: &Health,
        app: &str,
        node: &str,
        entries: &[Entry],
        max_members: usize,
    ) -> redis::RedisResult<Vec<ChannelChange>> {
        let tag = app_tag(&self.prefix, app);
        let mut invocation = self.script.prepare_invoke();
        invocation.key(format!("{tag}:subs")).key(contributions_key(&self.prefix, app, node)).arg(max_members);
        for e in entries {
            invocation.key(format!("{tag}:m:{}", e.channel)).key(format!("{tag}:n:{}", e.channel));
            let (user, info) = e.member.as_ref().map_or(("", &[][..]), |m| (&*m.user_id, &m.info[..]));
            invocation.arg(&*e.channel).arg(user).arg(info).arg(e.target);
        }
        let settled: Vec<(i64, i64, i64, i64)> = health.deadline(invocation.invoke_async(conn)).await?;
        let settled = settled.into_iter().map(|(delta, subscribers, added, removed)| Settled { delta, subscribers, added, removed });
        Ok(changes(entries, settled))
    }
}

/// The transitions settling `entries` made, one [`ChannelChange`] per channel (first-seen order).
fn changes(entries: &[Entry], settled: impl Iterator<Item = Settled>) -> Vec<ChannelChange> {
    let mut out: Vec<ChannelChange> = Vec::new();
    let mut index: HashMap<Arc<str>, usize> = HashMap::new();
    for (e, s) in entries.iter().zip(settled) {
        if s.delta == 0 {
            continue;
        }
        let i = *index.entry(e.channel.clone()).or_insert_with(|| {
            out.push(ChannelChange { channel: e.channel.clone(), subscribers: 0, transitions: Vec::new() });
            out.len() - 1
        });
        let change = &mut out[i];
        let subscribers = s.subscribers.max(0);
        change.subscribers = subscribers as usize;
        if s.delta > 0 {
            if subscribers == s.delta {
                change.transitions.push(Transition::Occupied);
            }
            if let (1, Some(m)) = (s.added, &e.member) {
                change.transitions.push(Transition::MemberAdded(m.clone()));
            }
        } else {
            if let (1, Some(m)) = (s.removed, &e.member) {
                change.transitions.push(Transition::MemberRemoved { user_id: m.user_id.clone() });
            }
            if subscribers == 0 {
                change.transitions.push(Transition::Vacated);
            }
        }
    }
    out
}

/// One well-formed field of a contributions hash: `(channel, user)` and count.
pub(crate) type Contribution = ((Arc<str>, String), i64);

/// A node's contributions hash, split into well-formed `(channel, user) -> count` and malformed field
/// names (no `\0`, not UTF-8, a count that is not a number), which are skipped and counted.
pub(crate) fn parse_contributions(raw: Vec<(Vec<u8>, Vec<u8>)>) -> (Vec<Contribution>, Vec<Vec<u8>>) {
    let (mut good, mut bad) = (Vec::with_capacity(raw.len()), Vec::new());
    for (field, count) in raw {
        let parsed = std::str::from_utf8(&field).ok().and_then(|f| f.split_once('\0')).and_then(|(channel, user)| {
            let count: i64 = std::str::from_utf8(&count).ok()?.parse().ok()?;
            Some(((Arc::from(channel), user.to_string()), count))
        });
        match parsed {
            Some(entry) => good.push(entry),
            None => bad.push(field),
        }
    }
    (good, bad)
}

/// Reads node `node`'s contributions to app `app` (one HGETALL).
pub(crate) async fn read_contributions<C: Conn>(
    conn: &mut C,
    health: &Health,
    prefix: &str,
    app: &str,
    node: &str,
) -> redis::RedisResult<Vec<(Vec<u8>, Vec<u8>)>> {
    health.deadline(redis::cmd("HGETALL").arg(contributions_key(prefix, app, node)).query_async(conn)).await
}

/// Removes malformed fields from node `node`'s contributions hash.
pub(crate) async fn drop_fields<C: Conn>(
    conn: &mut C,
    health: &Health,
    prefix: &str,
    app: &str,
    node: &str,
    fields: &[Vec<u8>],
) -> redis::RedisResult<()> {
    if fields.is_empty() {
        return Ok(());
    }
    health.deadline(redis::cmd("HDEL").arg(contributions_key(prefix, app, node)).arg(fields).query_async(conn)).await
}

/// Runs reconciles when [`Health`] asks for one and Redis is healthy, until shutdown.
pub(crate) async fn reconcile_loop<C: Conn>(
    mut conn: C,
    prefix: String,
    node: String,
    engine: Weak<Engine>,
    health: Arc<Health>,
    shutdown: CancellationToken,
) {
    let settler = Settler::new(&prefix);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = health.reconcile_requested() => {}
        }
        let mut backoff = Duration::from_millis(100);
        loop {
            while !health.healthy() {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                }
            }
            let Some(mode) = health.take_reconcile() else { break };
            let Some(engine) = engine.upgrade() else { return };
            let done = tokio::select! {
                _ = shutdown.cancelled() => return,
                done = reconcile(&mut conn, &settler, &health, &prefix, &node, &engine, mode) => done,
            };
            drop(engine);
            if let Err(e) = done {
                warn!(error = %e, "reconciling cluster counts failed; retrying");
                health.request_reconcile(mode);
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Makes what this node holds in the cluster counts equal its local subscriptions (and its connection
/// counts equal its local connections for apps with a quota), announcing what that changes unless
/// `mode` is [`Mode::Silent`]. Needed after the cluster lost this node's share (lease lost, Redis
/// restarted empty: everything is joined again) or after an outage during which joins or leaves could
/// not be recorded.
pub(crate) async fn reconcile<C: Conn>(
    conn: &mut C,
    settler: &Settler,
    health: &Health,
    prefix: &str,
    node: &str,
    engine: &Engine,
    mode: Mode,
) -> redis::RedisResult<()> {
    let (mut changed, mut announced) = (0usize, 0usize);
    for hub in engine.hubs() {
        let app = hub.app().id.as_str();
        let entries = differences(conn, health, prefix, node, hub).await?;
        for chunk in entries.chunks(CHUNK) {
            let changes = settler.settle(conn, health, app, node, chunk, hub.app().limits.max_presence_members).await?;
            changed += changes.len();
            if mode == Mode::Announce {
                for change in &changes {
                    announced += 1;
                    hub.announce(change, None);
                }
            }
        }
        if hub.app().limits.max_connections.is_some() {
            let key = conns_key(prefix, app);
            let local = hub.connection_count();
            let mut set = redis::cmd(if local > 0 { "HSET" } else { "HDEL" });
            set.arg(&key).arg(node);
            if local > 0 {
                set.arg(local);
            }
            let _: i64 = health.deadline(set.query_async(conn)).await?;
        }
    }
    if changed > 0 {
        info!(channels = changed, announced, ?mode, "cluster counts reconciled with local subscriptions");
    } else {
        debug!("cluster counts already matched local subscriptions");
    }
    Ok(())
}

/// Contributions of this node whose stored count differs from the local one, with the local count as
/// target (0 for what Redis holds but no local subscription has).
async fn differences<C: Conn>(conn: &mut C, health: &Health, prefix: &str, node: &str, hub: &Hub) -> redis::RedisResult<Vec<Entry>> {
    let app = hub.app().id.as_str();
    let mut local: HashMap<String, (Entry, i64)> = HashMap::new();
    for (channel, member) in hub.local_subscriptions() {
        let user = member.as_ref().map_or("", |m| &*m.user_id);
        let field = contribution_field(&channel, user);
        local
            .entry(field)
            .or_insert_with(|| {
                let member = member.map(|m| Member { user_id: m.user_id, info: m.info });
                (Entry { channel, member, target: 0 }, 0)
            })
            .1 += 1;
    }
    let (stored, bad) = parse_contributions(read_contributions(conn, health, prefix, app, node).await?);
    if !bad.is_empty() {
        metrics::counter!("herald_redis_reconcile_bad_fields_total", "app" => app.to_string()).increment(bad.len() as u64);
        debug!(app, fields = bad.len(), "dropping malformed fields of this node's counts");
        drop_fields(conn, health, prefix, app, node, &bad).await?;
    }
    let mut entries = Vec::new();
    for ((channel, user), held) in stored {
        let field = contribution_field(&channel, &user);
        match local.remove(&field) {
            Some((mut entry, count)) if count != held => {
                entry.target = count;
                entries.push(entry);
            }
            Some(_) => {}
            None => {
                let member = (!user.is_empty()).then(|| Member { user_id: Arc::from(user.as_str()), info: Bytes::new() });
                entries.push(Entry { channel, member, target: 0 });
            }
        }
    }
    entries.extend(local.into_values().map(|(mut entry, count)| {
        entry.target = count;
        entry
    }));
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(channel: &str, user: Option<&str>, target: i64) -> Entry {
        let member = user.map(|u| Member { user_id: Arc::from(u), info: Bytes::from_static(b"{}") });
        Entry { channel: Arc::from(channel), member, target }
    }

    #[test]
    fn changes_group_by_channel_and_name_the_transitions() {
        let entries = [entry("presence-a", Some("u1"), 1), entry("presence-a", Some("u2"), 1), entry("b", None, 0), entry("c", None, 2)];
        let settled = [
            Settled { delta: 1, subscribers: 1, added: 1, removed: 0 },
            Settled { delta: 1, subscribers: 2, added: 0, removed: 0 },
            Settled { delta: -3, subscribers: 0, added: 0, removed: 0 },
            Settled { delta: 0, subscribers: 2, added: 0, removed: 0 },
        ];
        let out = changes(&entries, settled.into_iter());
        assert_eq!(out.len(), 2);
        assert_eq!(&*out[0].channel, "presence-a");
        assert_eq!(out[0].subscribers, 2);
        assert_eq!(out[0].transitions.len(), 2);
        assert_eq!(out[0].transitions[0], Transition::Occupied);
        assert!(matches!(&out[0].transitions[1], Transition::MemberAdded(m) if &*m.user_id == "u1"));
        assert_eq!((&*out[1].channel, out[1].subscribers, &out[1].transitions[..]), ("b", 0, &[Transition::Vacated][..]));
    }

    #[test]
    fn malformed_contribution_fields_are_set_aside() {
        let raw = vec![
            (b"room\0alice".to_vec(), b"2".to_vec()),
            (b"no-separator".to_vec(), b"1".to_vec()),
            (b"room\0bob".to_vec(), b"many".to_vec()),
            (vec![0xff, 0], b"1".to_vec()),
            (b"plain\0".to_vec(), b"3".to_vec()),
        ];
        let (good, bad) = parse_contributions(raw);
        assert_eq!(good.len(), 2);
        assert_eq!((&*good[0].0 .0, good[0].0 .1.as_str(), good[0].1), ("room", "alice", 2));
        assert_eq!((&*good[1].0 .0, good[1].0 .1.as_str(), good[1].1), ("plain", "", 3));
        assert_eq!(bad.len(), 3);
    }
}
