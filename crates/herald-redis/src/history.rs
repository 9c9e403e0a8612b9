//! Channel history in Redis ([`HistoryStore`]), shared by every node: the design Centrifugo uses.
//!
//! Keys, for prefix `P` and app `A` (hash tag `{P:A}`: every script touches one Redis Cluster slot):
//! - `{P:A}:h:{channel}` stream: the channel's last publications, entry id `<offset>-1`, field `d` = the
//!   publication in this crate's binary form (module `codec`); trimmed exactly to the channel's size
//!   (`MAXLEN size`, not `~`: an approximate trim keeps a varying number of entries, and the conformance
//!   suite pins the exact boundary; the cost is small at history sizes);
//! - `{P:A}:hm:{channel}` hash: `offset` (of the last publication) and `epoch`;
//! - `{P:A}:hc` sorted set: channels with a stream -> when it expires (ms, Redis clock), for the cap on
//!   streams per app; expired members are dropped by the next script that counts them.
//!
//! One Lua script per append increments the offset, gives a new stream its epoch (generated here, kept
//! if the stream already has one), adds the entry, refreshes the TTL of both keys and, when asked,
//! PUBLISHes (or SPUBLISHes) a payload prefixed with `<offset>:<epoch>:` so that every node learns the
//! position with the message, atomically with the append ([`RedisHistory::append_and_publish`]). Reads
//! are one script too (meta and entries from one instant; a channel without a stream gets an empty one,
//! so its first publication carries the epoch the reader was told).
//!
//! Redis Cluster: a script that SPUBLISHes must publish to a shard channel in the slot of the keys it
//! touches, i.e. one whose name carries the `{P:A}` tag; plain PUBLISH works from any slot.
//!
//! What Redis returns is untrusted: a malformed entry (bad id, missing field, a publication that does not
//! decode, another channel's) is skipped and counted (`herald_history_corrupt_total{app}`), which leaves
//! a gap, so the recovery is reported incomplete; a malformed meta or a key of the wrong type is
//! [`HistoryError::Corrupt`]. Nothing panics.
//!
//! Every call has a deadline: the broker's shared one and circuit when the broker builds the store, the
//! timeout given to [`RedisHistory::new`] otherwise.

mod codec;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use herald_core::{BoxFuture, HistoryError, HistoryOptions, HistoryStore, Publication, Recovery, StreamPosition};
use redis::aio::ConnectionManager;
use redis::{Script, Value};

use crate::health::{is_link_failure, timed_out, Health};
use crate::state::{app_tag, Conn};

pub(crate) use codec::{decode_publication, encode_publication};

const APPEND: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[4])
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
  if not redis.call('ZSCORE', KEYS[3], ARGV[1]) and redis.call('ZCARD', KEYS[3]) >= tonumber(ARGV[5]) then
    return {-1, ''}
  end
end
local off = redis.call('HINCRBY', KEYS[1], 'offset', 1)
if off == 1 then redis.call('DEL', KEYS[2]) end
redis.call('HSETNX', KEYS[1], 'epoch', ARGV[2])
local epoch = redis.call('HGET', KEYS[1], 'epoch')
local id = string.format('%d-1', off)
local added = redis.pcall('XADD', KEYS[2], 'MAXLEN', ARGV[3], id, 'd', ARGV[6])
if type(added) == 'table' and added.err then
  -- The stream holds ids beyond the offset (it outlived its meta): start it over; the gap shows.
  redis.call('DEL', KEYS[2])
  redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[3], id, 'd', ARGV[6])
end
redis.call('PEXPIRE', KEYS[1], ttl)
redis.call('PEXPIRE', KEYS[2], ttl)
redis.call('ZADD', KEYS[3], now + ttl, ARGV[1])
if redis.call('PTTL', KEYS[3]) < ttl then redis.call('PEXPIRE', KEYS[3], ttl) end
if ARGV[7] ~= '' then
  local message = string.format('%d:', off) .. epoch .. ':' .. ARGV[9]
  if ARGV[7] == 's' then
    redis.call('SPUBLISH', ARGV[8], message)
  else
    redis.call('PUBLISH', ARGV[8], message)
  end
end
return {off, epoch}
"#;

const READ: &str = r#"
local offset = redis.call('HGET', KEYS[1], 'offset')
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if not offset then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  local ttl = tonumber(ARGV[3])
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
  if not redis.call('ZSCORE', KEYS[3], ARGV[1]) and redis.call('ZCARD', KEYS[3]) >= tonumber(ARGV[4]) then
    return {-1}
  end
  redis.call('DEL', KEYS[1], KEYS[2])
  offset = '0'
  epoch = ARGV[2]
  redis.call('HSET', KEYS[1], 'offset', offset, 'epoch', epoch)
  redis.call('PEXPIRE', KEYS[1], ttl)
  redis.call('ZADD', KEYS[3], now + ttl, ARGV[1])
  if redis.call('PTTL', KEYS[3]) < ttl then redis.call('PEXPIRE', KEYS[3], ttl) end
elseif not epoch then
  epoch = ARGV[2]
  redis.call('HSET', KEYS[1], 'epoch', epoch)
end
local entries = {}
if ARGV[6] ~= '0' and (ARGV[7] == '' or ARGV[7] == epoch) then
  for _, e in ipairs(redis.call('XRANGE', KEYS[2], ARGV[5], '+', 'COUNT', ARGV[6])) do
    local data = false
    for i = 1, #e[2], 2 do
      if e[2][i] == 'd' then data = e[2][i + 1] end
    end
    table.insert(entries, e[1])
    table.insert(entries, data)
  end
end
return {offset, epoch, entries}
"#;

const REMOVE: &str = r#"
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('ZREM', KEYS[3], ARGV[1])
return 1
"#;

/// How long a stream created empty by a read is kept when no publication follows, by default.
const PENDING_TTL: Duration = Duration::from_secs(5 * 60);

/// Epochs longer than this in a meta hash are corrupt.
const MAX_EPOCH: usize = 64;

/// A pub/sub message to send in the same script as an append.
#[derive(Debug, Clone, Copy)]
pub struct HistoryPublish<'a> {
    /// The Redis channel.
    pub channel: &'a str,
    /// The message; Redis sends `<offset>:<epoch>:` followed by it.
    pub payload: &'a [u8],
    /// SPUBLISH (Redis Cluster's sharded pub/sub) instead of PUBLISH.
    pub sharded: bool,
}

/// The deadline of every call.
pub(crate) enum Deadline {
    /// The broker's: shared deadline and circuit.
    Shared(Arc<Health>),
    /// Our own timeout, for a store used without a broker.
    Own(Duration),
}

impl Deadline {
    /// Runs `call` with the deadline; with the broker's, fails at once while Redis is known
    /// unreachable (an I/O error, like the link failure it stands for).
    pub(crate) async fn run<T>(&self, call: impl std::future::Future<Output = redis::RedisResult<T>>) -> redis::RedisResult<T> {
        match self {
            Deadline::Shared(health) => {
                if !health.reachable() {
                    metrics::counter!("herald_redis_fail_fast_total").increment(1);
                    return Err(redis::RedisError::from(std::io::Error::new(std::io::ErrorKind::NotConnected, "redis unreachable")));
                }
                health.deadline(call).await
            }
            Deadline::Own(timeout) => tokio::time::timeout(*timeout, call).await.unwrap_or_else(|_| Err(timed_out())),
        }
    }
}

/// Channel history in Redis (a single server through a [`ConnectionManager`], or a Redis Cluster
/// through a cluster connection).
pub struct RedisHistory<C = ConnectionManager> {
    conn: C,
    prefix: String,
    max_channels_per_app: usize,
    pending_ttl: Duration,
    deadline: Deadline,
    append: Script,
    read: Script,
    remove: Script,
    corrupt: AtomicU64,
}

impl<C: Conn> RedisHistory<C> {
    /// A store on `conn` with keys under `prefix`, keeping streams for at most `max_channels_per_app`
    /// channels per app, every call bounded by `timeout`.
    pub fn new(conn: C, prefix: impl Into<String>, max_channels_per_app: usize, timeout: Duration) -> RedisHistory<C> {
        RedisHistory::with_deadline(conn, prefix.into(), max_channels_per_app, Deadline::Own(timeout.max(Duration::from_millis(10))))
    }

    /// A store sharing the broker's deadline and circuit (fails at once while Redis is known
    /// unreachable).
    pub(crate) fn with_health(conn: C, prefix: String, max_channels_per_app: usize, health: Arc<Health>) -> RedisHistory<C> {
        RedisHistory::with_deadline(conn, prefix, max_channels_per_app, Deadline::Shared(health))
    }

    fn with_deadline(conn: C, prefix: String, max_channels_per_app: usize, deadline: Deadline) -> RedisHistory<C> {
        RedisHistory {
            conn,
            prefix,
            max_channels_per_app,
            pending_ttl: PENDING_TTL,
            deadline,
            append: Script::new(APPEND),
            read: Script::new(READ),
            remove: Script::new(REMOVE),
            corrupt: AtomicU64::new(0),
        }
    }

    /// How long a stream created empty by [`HistoryStore::position`] or [`HistoryStore::since`] is
    /// kept (its epoch promised) when no publication follows; 5 minutes by default.
    pub fn with_pending_ttl(mut self, ttl: Duration) -> RedisHistory<C> {
        self.pending_ttl = ttl;
        self
    }

    /// Malformed stream entries skipped so far.
    pub fn corrupt_entries(&self) -> u64 {
        self.corrupt.load(Ordering::Relaxed)
    }

    /// Appends `publication` to its channel's stream and, with `publish`, sends that message in the same
    /// script (so no node can see the message before the entry exists, and messages go out in offset
    /// order). Returns the publication's position.
    pub async fn append_and_publish(
        &self,
        app_id: &str,
        publication: &Publication,
        options: HistoryOptions,
        publish: Option<HistoryPublish<'_>>,
    ) -> Result<StreamPosition, HistoryError> {
        let entry = encode_publication(publication).map_err(|e| HistoryError::Corrupt(format!("cannot store the publication: {e}")))?;
        let channel = &*publication.channel;
        let mut invocation = self.invocation(&self.append, app_id, channel);
        invocation
            .arg(new_epoch())
            .arg(options.size)
            .arg(millis(options.ttl))
            .arg(self.max_channels_per_app)
            .arg(&entry[..])
            .arg(publish.map_or("", |p| if p.sharded { "s" } else { "p" }))
            .arg(publish.map_or("", |p| p.channel))
            .arg(publish.map_or(&[][..], |p| p.payload));
        let mut conn = self.conn.clone();
        // Not retried: a second attempt after a lost answer could append twice.
        let (offset, epoch): (i64, Vec<u8>) = self.call(invocation.invoke_async(&mut conn)).await?;
        if offset < 0 {
            return Err(self.refused(app_id));
        }
        Ok(StreamPosition { offset: offset as u64, epoch: epoch_from(epoch)? })
    }

    fn refused(&self, app_id: &str) -> HistoryError {
        metrics::counter!("herald_history_refused_total", "app" => app_id.to_owned(), "reason" => "too_many_channels").increment(1);
        HistoryError::TooManyChannels { limit: self.max_channels_per_app }
    }

    /// `script` with the channel's meta, its stream and the app's channel index, and the channel name.
    fn invocation<'s>(&self, script: &'s Script, app_id: &str, channel: &str) -> redis::ScriptInvocation<'s> {
        let tag = app_tag(&self.prefix, app_id);
        let mut invocation = script.prepare_invoke();
        invocation.key(format!("{tag}:hm:{channel}")).key(format!("{tag}:h:{channel}")).key(format!("{tag}:hc")).arg(channel);
        invocation
    }

    /// Runs a Redis call under the deadline, sorting failures into unavailable and corrupt.
    async fn call<T>(&self, call: impl std::future::Future<Output = redis::RedisResult<T>>) -> Result<T, HistoryError> {
        self.deadline.run(call).await.map_err(classify)
    }

    /// Runs a read, and once more if the first attempt met a connection that had just broken (reads
    /// are safe to repeat); both attempts share one deadline.
    async fn read<T, F, Fut>(&self, mut query: F) -> Result<T, HistoryError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        self.call(async {
            match query().await {
                Err(e) if (e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal()) && !e.is_timeout() => query().await,
                result => result,
            }
        })
        .await
    }

    async fn since_now(&self, app_id: &str, channel: &str, since: Option<&StreamPosition>, limit: usize) -> Result<Recovery, HistoryError> {
        let from = since.map_or(0, |p| p.offset);
        let start = match since {
            None => "-".to_owned(),
            Some(p) => format!("{}-0", p.offset.saturating_add(1)),
        };
        let count = limit.min(i64::MAX as usize);
        let epoch = new_epoch();
        let reply: Value = self
            .read(|| {
                let mut invocation = self.invocation(&self.read, app_id, channel);
                invocation
                    .arg(&epoch)
                    .arg(millis(self.pending_ttl))
                    .arg(self.max_channels_per_app)
                    .arg(&start)
                    .arg(count)
                    .arg(since.map_or("", |p| &*p.epoch));
                let mut conn = self.conn.clone();
                async move { invocation.invoke_async(&mut conn).await }
            })
            .await?;
        let Value::Array(mut parts) = reply else { return Err(HistoryError::Corrupt("the read script answered no array".into())) };
        if parts.len() == 1 && matches!(parts[0], Value::Int(n) if n < 0) {
            return Err(self.refused(app_id));
        }
        if parts.len() != 3 {
            return Err(HistoryError::Corrupt(format!("the read script answered {} parts", parts.len())));
        }
        let entries = parts.pop().unwrap_or(Value::Nil);
        let epoch = match parts.pop() {
            Some(Value::BulkString(e)) => epoch_from(e)?,
            _ => return Err(HistoryError::Corrupt("no epoch".into())),
        };
        let offset = match parts.pop() {
            Some(Value::BulkString(o)) => std::str::from_utf8(&o).ok().and_then(|o| o.parse::<u64>().ok()),
            _ => None,
        }
        .ok_or_else(|| HistoryError::Corrupt("the stream's offset is not a number".into()))?;
        let position = StreamPosition { offset, epoch };
        if since.is_some_and(|p| *p.epoch != *position.epoch || p.offset > offset) {
            return Ok(Recovery { publications: Vec::new(), position, recovered: false });
        }
        let publications = self.entries(app_id, channel, entries, &position, from);
        // Complete when the publications after `from` are all there (consecutive up to the current
        // offset) and the limit did not cut them.
        let missed = offset - from;
        let recovered = missed <= limit as u64
            && publications.len() as u64 == missed
            && publications.iter().enumerate().all(|(i, p)| p.position.as_ref().is_some_and(|q| q.offset == from + 1 + i as u64));
        Ok(Recovery { publications, position, recovered })
    }

    /// The valid publications among the flat `[id, data, ...]` list the read script returned, in
    /// increasing offset order after `from` and up to the stream's offset; the rest is skipped and
    /// counted.
    fn entries(&self, app_id: &str, channel: &str, entries: Value, position: &StreamPosition, from: u64) -> Vec<Publication> {
        let Value::Array(flat) = entries else {
            self.count_corrupt(app_id, 1);
            return Vec::new();
        };
        let mut out = Vec::with_capacity(flat.len() / 2);
        let mut last = from;
        let mut bad = 0;
        let mut it = flat.into_iter();
        while let (Some(id), Some(data)) = (it.next(), it.next()) {
            let entry = entry_offset(&id).filter(|&o| o > last && o <= position.offset).and_then(|offset| match data {
                Value::BulkString(d) => decode_publication(Bytes::from(d)).ok().filter(|p| &*p.channel == channel).map(|p| (offset, p)),
                _ => None,
            });
            match entry {
                Some((offset, mut publication)) => {
                    publication.position = Some(StreamPosition { offset, epoch: position.epoch.clone() });
                    last = offset;
                    out.push(publication);
                }
                None => bad += 1,
            }
        }
        if bad > 0 {
            self.count_corrupt(app_id, bad);
        }
        out
    }

    fn count_corrupt(&self, app_id: &str, n: u64) {
        self.corrupt.fetch_add(n, Ordering::Relaxed);
        metrics::counter!("herald_history_corrupt_total", "app" => app_id.to_owned()).increment(n);
    }
}

/// The offset of a stream entry id `<offset>-<seq>`.
fn entry_offset(id: &Value) -> Option<u64> {
    let Value::BulkString(id) = id else { return None };
    let (offset, seq) = std::str::from_utf8(id).ok()?.split_once('-')?;
    seq.parse::<u64>().ok()?;
    offset.parse().ok()
}

fn epoch_from(bytes: Vec<u8>) -> Result<Arc<str>, HistoryError> {
    match String::from_utf8(bytes) {
        Ok(e) if !e.is_empty() && e.len() <= MAX_EPOCH => Ok(Arc::from(e)),
        _ => Err(HistoryError::Corrupt("the stream's epoch is not a short text".into())),
    }
}

/// A fresh epoch: 8 random hex digits.
fn new_epoch() -> String {
    format!("{:08x}", fastrand::u32(..))
}

/// Whole milliseconds, at least 1 (PEXPIRE 0 would delete the key at once).
fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).clamp(1, i64::MAX as u64 / 2)
}

/// Link failures and timeouts are unavailability; an answer of the wrong shape or a key of the wrong
/// type is corruption.
fn classify(e: redis::RedisError) -> HistoryError {
    if is_link_failure(&e) {
        return HistoryError::Unavailable(e.to_string());
    }
    let corrupt = matches!(e.kind(), redis::ErrorKind::UnexpectedReturnType | redis::ErrorKind::Parse)
        || e.code() == Some("WRONGTYPE")
        || e.to_string().contains("WRONGTYPE")
        || e.to_string().contains("not an integer");
    if corrupt {
        HistoryError::Corrupt(e.to_string())
    } else {
        HistoryError::Unavailable(e.to_string())
    }
}

impl<C: Conn> HistoryStore for RedisHistory<C> {
    fn append<'a>(
        &'a self,
        app_id: &'a str,
        publication: &'a Publication,
        options: HistoryOptions,
    ) -> BoxFuture<'a, Result<StreamPosition, HistoryError>> {
        Box::pin(self.append_and_publish(app_id, publication, options, None))
    }

    fn since<'a>(
        &'a self,
        app_id: &'a str,
        channel: &'a str,
        since: Option<&'a StreamPosition>,
        limit: usize,
    ) -> BoxFuture<'a, Result<Recovery, HistoryError>> {
        Box::pin(self.since_now(app_id, channel, since, limit))
    }

    /// Creates the (empty) stream if the channel has none, so that the epoch returned is the one its
    /// first publication will carry; refused at the app's channel limit like an append.
    fn position<'a>(&'a self, app_id: &'a str, channel: &'a str) -> BoxFuture<'a, Result<StreamPosition, HistoryError>> {
        Box::pin(async move { Ok(self.since_now(app_id, channel, None, 0).await?.position) })
    }

    fn remove<'a>(&'a self, app_id: &'a str, channel: &'a str) -> BoxFuture<'a, Result<(), HistoryError>> {
        Box::pin(async move {
            let invocation = self.invocation(&self.remove, app_id, channel);
            let mut conn = self.conn.clone();
            let _: i64 = self.call(invocation.invoke_async(&mut conn)).await?;
            Ok(())
        })
    }
}

/// Appends to history and broadcasts in one script, for the engine ([`HistoryBroadcast`]): the
/// message is the node's envelope on the channel's pub/sub key, which Redis prefixes with the position.
pub(crate) struct Broadcast<C> {
    pub(crate) history: Arc<RedisHistory<C>>,
    pub(crate) broker: Arc<crate::RedisBroker>,
    pub(crate) sharded: bool,
}

impl<C: Conn> herald_core::HistoryBroadcast for Broadcast<C> {
    fn append_and_broadcast<'a>(
        &'a self,
        app_id: &'a str,
        publication: &'a Publication,
        options: HistoryOptions,
    ) -> herald_core::BoxFuture<'a, Result<StreamPosition, HistoryError>> {
        Box::pin(async move {
            let (channel, payload) = self.broker.history_message(app_id, publication);
            if self.sharded {
                // On a Redis Cluster the channel's shard is not the one of the app's keys, so the script
                // can't send it: append, then send through the publish queue (offsets then reach nodes in
                // publish order, which two nodes publishing at once may swap; gaps are told as usual).
                let position = self.history.append_and_publish(app_id, publication, options, None).await?;
                self.broker.send_positioned(channel, &position, &payload);
                return Ok(position);
            }
            let publish = HistoryPublish { channel: &channel, payload: &payload, sharded: false };
            self.history.append_and_publish(app_id, publication, options, Some(publish)).await
        })
    }
}

/// Splits a history message from Redis into its position (`<offset>:<epoch>:`, written by the append
/// script) and the envelope after it. `None` if it has no valid position prefix.
pub(crate) fn split_position(payload: &[u8]) -> Option<(StreamPosition, &[u8])> {
    let colon = payload.iter().position(|b| *b == b':')?;
    let offset: u64 = std::str::from_utf8(&payload[..colon]).ok()?.parse().ok()?;
    let rest = &payload[colon + 1..];
    let colon = rest.iter().position(|b| *b == b':')?;
    let epoch = std::str::from_utf8(&rest[..colon]).ok().filter(|e| !e.is_empty() && e.len() <= MAX_EPOCH)?;
    Some((StreamPosition { offset, epoch: Arc::from(epoch) }, &rest[colon + 1..]))
}
