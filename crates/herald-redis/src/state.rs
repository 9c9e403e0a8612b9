//! Cluster-wide counts and presence in Redis ([`ClusterState`]).
//!
//! Keys, for prefix `P` and app `A` (all of an app's keys share the hash tag `{P:A}`, so every script
//! touches a single Redis Cluster slot):
//! - `{P:A}:subs` hash: channel -> subscriptions across the cluster;
//! - `{P:A}:m:{channel}` hash: user id -> member info (the first connection's info wins);
//! - `{P:A}:n:{channel}` hash: user id -> that user's connections to the channel across the cluster;
//! - `{P:A}:node:{node}` hash: what this node contributed (`channel\0user` -> count), so that a reaper
//!   can take a dead node's share back out ([`crate::lease`]);
//! - `{P:A}:conns` hash: node -> open connections of the app on that node, for the cluster-wide
//!   `max_connections` quota ([`ClusterState::connect`]); a reaper deletes a dead node's field and a
//!   reconcile sets this node's to its local count.
//!
//! Joins and leaves run as Lua scripts, so "first connection of this user" and "last one left" are
//! decided atomically for the whole cluster.
//!
//! Every call is made for a client or an API request, so each runs under the deadline and the circuit of
//! [`crate::health`]: during an outage it answers [`StateError`] within [`crate::RedisConfig::timeout`],
//! or at once once the outage is known.
//!
//! Cost of the connection quota: one round trip per connect and one per disconnect, made only for apps
//! that set `max_connections` (the front calls [`ClusterState::connect`] only then). Connect sums the
//! hash's values (one field per node), so it is O(nodes).

use std::sync::Arc;

use crate::health::Health;
use bytes::Bytes;
use herald_core::{BoxFuture, ChannelInfo, ClusterState, Joined, Left, Member, MemberJoin, StateError};
use redis::aio::ConnectionManager;
use redis::Script;

const JOIN: &str = r#"
local added = 0
if ARGV[2] ~= '' then
  local c = redis.call('HINCRBY', KEYS[3], ARGV[2], 1)
  if c == 1 then
    if redis.call('HLEN', KEYS[2]) >= tonumber(ARGV[4]) then
      redis.call('HDEL', KEYS[3], ARGV[2])
      return {-1, 0, {}}
    end
    redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
    added = 1
  end
end
local subs = redis.call('HINCRBY', KEYS[1], ARGV[1], 1)
redis.call('HINCRBY', KEYS[4], ARGV[5], 1)
local members = {}
if ARGV[2] ~= '' then members = redis.call('HGETALL', KEYS[2]) end
return {added, subs, members}
"#;

const LEAVE: &str = r#"
-- Only what this node still holds can be taken back (a reaper may have taken it already).
local own = redis.call('HINCRBY', KEYS[4], ARGV[3], -1)
if own < 0 then
  redis.call('HDEL', KEYS[4], ARGV[3])
  return {0, tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')}
end
if own == 0 then redis.call('HDEL', KEYS[4], ARGV[3]) end
local removed = 0
if ARGV[2] ~= '' then
  local c = redis.call('HINCRBY', KEYS[3], ARGV[2], -1)
  if c <= 0 then
    redis.call('HDEL', KEYS[3], ARGV[2])
    removed = redis.call('HDEL', KEYS[2], ARGV[2])
  end
end
local subs = redis.call('HINCRBY', KEYS[1], ARGV[1], -1)
if subs <= 0 then
  redis.call('HDEL', KEYS[1], ARGV[1])
  subs = 0
end
return {removed, subs}
"#;

const CONNECT: &str = r#"
local total = 0
for _, v in ipairs(redis.call('HVALS', KEYS[1])) do
  local n = tonumber(v)
  if n and n > 0 then total = total + n end
end
if total >= tonumber(ARGV[2]) then return 0 end
local own = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0') or 0
if own < 0 then own = 0 end
redis.call('HSET', KEYS[1], ARGV[1], own + 1)
return 1
"#;

const DISCONNECT: &str = r#"
local own = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0') or 0
if own <= 1 then
  redis.call('HDEL', KEYS[1], ARGV[1])
else
  redis.call('HSET', KEYS[1], ARGV[1], own - 1)
end
return 1
"#;

/// Counts and presence of every node, in Redis (a single server through a [`ConnectionManager`], or a
/// Redis Cluster through a cluster connection).
pub struct RedisState<C = ConnectionManager> {
    conn: C,
    prefix: String,
    node: String,
    join: Script,
    leave: Script,
    connect: Script,
    disconnect: Script,
    health: Arc<Health>,
}

/// A Redis connection Herald can share between tasks: a single server's or a cluster's.
pub trait Conn: redis::aio::ConnectionLike + Clone + Send + Sync + 'static {}
impl<T: redis::aio::ConnectionLike + Clone + Send + Sync + 'static> Conn for T {}

impl<C: Conn> RedisState<C> {
    pub(crate) fn new(conn: C, prefix: String, node: u128, health: Arc<Health>) -> RedisState<C> {
        RedisState {
            conn,
            node: format!("{node:032x}"),
            prefix,
            join: Script::new(JOIN),
            leave: Script::new(LEAVE),
            connect: Script::new(CONNECT),
            disconnect: Script::new(DISCONNECT),
            health,
        }
    }

    fn subs_key(&self, app: &str) -> String {
        format!("{}:subs", app_tag(&self.prefix, app))
    }

    fn members_key(&self, app: &str, channel: &str) -> String {
        format!("{}:m:{channel}", app_tag(&self.prefix, app))
    }

    fn conns_key(&self, app: &str, channel: &str) -> String {
        format!("{}:n:{channel}", app_tag(&self.prefix, app))
    }

    fn node_key(&self, app: &str) -> String {
        contributions_key(&self.prefix, app, &self.node)
    }

    /// `script` with the four keys of one channel of one app (all in the app's slot).
    fn invocation<'s>(&self, script: &'s Script, app: &str, channel: &str) -> redis::ScriptInvocation<'s> {
        let mut invocation = script.prepare_invoke();
        invocation.key(self.subs_key(app)).key(self.members_key(app, channel)).key(self.conns_key(app, channel)).key(self.node_key(app));
        invocation
    }

    fn contribution(channel: &str, user: &str) -> String {
        contribution_field(channel, user)
    }
}

/// The field of a node's contributions hash for a channel and (presence) user.
pub(crate) fn contribution_field(channel: &str, user: &str) -> String {
    format!("{channel}\0{user}")
}

/// `{P:A}:conns`: open connections of app `app` per node.
pub(crate) fn conns_key(prefix: &str, app: &str) -> String {
    format!("{}:conns", app_tag(prefix, app))
}

/// Runs a read-only query, and once more if the first attempt met a connection that had just broken
/// (the connection reconnects on that failure, and reads are safe to repeat), so a Redis restart does
/// not surface as an error on the first API call after it. Both attempts share one deadline.
async fn read<T, F, Fut>(mut query: F) -> redis::RedisResult<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = redis::RedisResult<T>>,
{
    match query().await {
        Err(e) if (e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal()) && !e.is_timeout() => query().await,
        result => result,
    }
}

/// `{P:A}`: the hash tag that keeps one app's keys in one Redis Cluster slot.
pub(crate) fn app_tag(prefix: &str, app: &str) -> String {
    format!("{{{prefix}:{app}}}")
}

/// What `node` contributed to app `app`'s counts.
pub(crate) fn contributions_key(prefix: &str, app: &str, node: &str) -> String {
    format!("{}:node:{node}", app_tag(prefix, app))
}

fn members_from(flat: Vec<Vec<u8>>) -> Vec<Member> {
    let mut out = Vec::with_capacity(flat.len() / 2);
    let mut it = flat.into_iter();
    while let (Some(id), Some(info)) = (it.next(), it.next()) {
        out.push(Member { user_id: Arc::from(String::from_utf8_lossy(&id).as_ref()), info: Bytes::from(info) });
    }
    out.sort_by(|a, b| a.user_id.cmp(&b.user_id));
    out
}

impl<C: Conn> ClusterState for RedisState<C> {
    fn join<'a>(
        &'a self,
        app_id: &'a str,
        channel: &'a str,
        member: Option<&'a MemberJoin>,
        max_members: usize,
    ) -> BoxFuture<'a, Result<Joined, StateError>> {
        Box::pin(async move {
            let user = member.map_or("", |m| &*m.user_id);
            let info = member.map_or(&[][..], |m| &m.info[..]);
            let mut conn = self.conn.clone();
            let mut invocation = self.invocation(&self.join, app_id, channel);
            invocation.arg(channel).arg(user).arg(info).arg(max_members).arg(Self::contribution(channel, user));
            let (added, subscribers, members): (i64, i64, Vec<Vec<u8>>) = self.health.call(invocation.invoke_async(&mut conn)).await?;
            if added < 0 {
                return Ok(Joined::Full);
            }
            Ok(Joined::Counted {
                subscribers: subscribers.max(0) as usize,
                member_added: added == 1,
                members: member.map(|_| members_from(members)),
            })
        })
    }

    fn leave<'a>(&'a self, app_id: &'a str, channel: &'a str, user_id: Option<&'a str>) -> BoxFuture<'a, Result<Left, StateError>> {
        Box::pin(async move {
            let user = user_id.unwrap_or("");
            let mut conn = self.conn.clone();
            let mut invocation = self.invocation(&self.leave, app_id, channel);
            invocation.arg(channel).arg(user).arg(Self::contribution(channel, user));
            let (removed, subscribers): (i64, i64) = self.health.call(invocation.invoke_async(&mut conn)).await?;
            Ok(Left { subscribers: subscribers.max(0) as usize, member_removed: removed == 1 })
        })
    }

    fn channel<'a>(&'a self, app_id: &'a str, channel: &'a str) -> BoxFuture<'a, Result<Option<ChannelInfo>, StateError>> {
        Box::pin(async move {
            let (subs, users): (Option<i64>, i64) = self
                .health
                .call(read(|| {
                    let mut conn = self.conn.clone();
                    let mut pipe = redis::pipe();
                    pipe.hget(self.subs_key(app_id), channel).hlen(self.members_key(app_id, channel));
                    async move { pipe.query_async(&mut conn).await }
                }))
                .await?;
            Ok(subs.filter(|n| *n > 0).map(|n| ChannelInfo { subscribers: n as usize, users: (users > 0).then_some(users as usize) }))
        })
    }

    fn channels<'a>(&'a self, app_id: &'a str, prefix: &'a str) -> BoxFuture<'a, Result<Vec<(Arc<str>, ChannelInfo)>, StateError>> {
        Box::pin(async move {
            // Read as raw pairs: one malformed field (not UTF-8, not a number) is skipped, not an error.
            let all: Vec<(Vec<u8>, Vec<u8>)> = self
                .health
                .call(read(|| {
                    let mut conn = self.conn.clone();
                    let key = self.subs_key(app_id);
                    async move { redis::cmd("HGETALL").arg(key).query_async(&mut conn).await }
                }))
                .await?;
            let wanted: Vec<(String, i64)> = all
                .into_iter()
                .filter_map(|(name, n)| {
                    let n: i64 = std::str::from_utf8(&n).ok()?.parse().ok()?;
                    Some((String::from_utf8(name).ok()?, n))
                })
                .filter(|(name, n)| *n > 0 && name.starts_with(prefix))
                .collect();
            let users: Vec<i64> = if wanted.is_empty() {
                Vec::new()
            } else {
                self.health
                    .call(read(|| {
                        let mut conn = self.conn.clone();
                        let mut pipe = redis::pipe();
                        for (name, _) in &wanted {
                            pipe.hlen(self.members_key(app_id, name));
                        }
                        async move { pipe.query_async(&mut conn).await }
                    }))
                    .await?
            };
            Ok(wanted
                .into_iter()
                .zip(users)
                .map(|((name, n), u)| {
                    (Arc::from(name.as_str()), ChannelInfo { subscribers: n as usize, users: (u > 0).then_some(u as usize) })
                })
                .collect())
        })
    }

    fn members<'a>(&'a self, app_id: &'a str, channel: &'a str) -> BoxFuture<'a, Result<Vec<Member>, StateError>> {
        Box::pin(async move {
            // A pair list reads both RESP2's flat array and RESP3's map.
            let pairs: Vec<(Vec<u8>, Vec<u8>)> = self
                .health
                .call(read(|| {
                    let mut conn = self.conn.clone();
                    let key = self.members_key(app_id, channel);
                    async move { redis::cmd("HGETALL").arg(key).query_async(&mut conn).await }
                }))
                .await?;
            Ok(members_from(pairs.into_iter().flat_map(|(k, v)| [k, v]).collect()))
        })
    }

    /// One round trip: sums the app's per-node connection counts and, below `limit`, counts one more
    /// for this node.
    fn connect<'a>(&'a self, app_id: &'a str, limit: usize) -> BoxFuture<'a, Result<bool, StateError>> {
        Box::pin(async move {
            let mut conn = self.conn.clone();
            let mut invocation = self.connect.prepare_invoke();
            invocation.key(conns_key(&self.prefix, app_id)).arg(&self.node).arg(limit);
            let admitted: i64 = self.health.call(invocation.invoke_async(&mut conn)).await?;
            Ok(admitted == 1)
        })
    }

    fn disconnect<'a>(&'a self, app_id: &'a str) -> BoxFuture<'a, Result<(), StateError>> {
        Box::pin(async move {
            let mut conn = self.conn.clone();
            let mut invocation = self.disconnect.prepare_invoke();
            invocation.key(conns_key(&self.prefix, app_id)).arg(&self.node);
            let _: i64 = self.health.call(invocation.invoke_async(&mut conn)).await?;
            Ok(())
        })
    }
}
