//! Idempotency keys across nodes: the Redis counterpart of [`herald_core::Idempotency`], so that a
//! retry reaching another node is still recognised.
//!
//! Key `{P:A}:idem` (one sorted set per app, in the app's slot): idempotency key -> when it was first
//! seen (ms, Redis clock). One script per check drops the keys older than the window, answers whether
//! the key is there, adds it, and keeps at most `max_keys_per_app` (policy at the limit: **evict the
//! oldest**, as in memory, counted in `herald_idempotency_evicted_total{app}`). The set expires a window
//! after its last write. Keys are stored as given, so their length is bounded
//! ([`MAX_IDEMPOTENCY_KEY`] bytes); a longer key is refused.

use std::time::Duration;

use herald_core::{BoxFuture, IdempotencyLimits, IdempotencyStore};

pub use herald_core::{IdempotencyError, MAX_IDEMPOTENCY_KEY};
use redis::aio::ConnectionManager;
use redis::Script;

use crate::health::is_link_failure;
use crate::history::Deadline;
use crate::state::{app_tag, Conn};

/// Records `ARGV[1]` in the app's window (`ARGV[2]` ms, at most `ARGV[3]` keys) unless it is there
/// already; for a key not seen before and when `ARGV[4]` is given, also `PUBLISH ARGV[4] ARGV[5]` in the
/// same script, so the key is never recorded without its publication (see
/// [`herald_core::Broker::publish_once`]). Returns 0 seen, 1 new, 2 new and the oldest keys evicted.
const SEEN: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[1], now, ARGV[1])
local over = redis.call('ZCARD', KEYS[1]) - tonumber(ARGV[3])
if over > 0 then redis.call('ZREMRANGEBYRANK', KEYS[1], 0, over - 1) end
redis.call('PEXPIRE', KEYS[1], window)
if ARGV[4] then redis.call('PUBLISH', ARGV[4], ARGV[5]) end
if over > 0 then return 2 end
return 1
"#;

/// Recently seen idempotency keys of every app, in Redis.
pub struct RedisIdempotency<C = ConnectionManager> {
    conn: C,
    prefix: String,
    limits: IdempotencyLimits,
    deadline: Deadline,
    seen: Script,
}

impl<C: Conn> RedisIdempotency<C> {
    /// Keys under `prefix` on `conn`, remembered within `limits`, every call bounded by `timeout`.
    pub fn new(conn: C, prefix: impl Into<String>, limits: IdempotencyLimits, timeout: Duration) -> RedisIdempotency<C> {
        RedisIdempotency {
            conn,
            prefix: prefix.into(),
            limits,
            deadline: Deadline::Own(timeout.max(Duration::from_millis(10))),
            seen: Script::new(SEEN),
        }
    }

    /// Like [`RedisIdempotency::first_seen`], and for a key not seen also publishes `payload` on the
    /// Redis channel `channel`, in the same script (the key is never recorded without its publication).
    /// With `max_keys_per_app` 0 it publishes and answers true.
    pub async fn first_seen_then_publish(&self, app_id: &str, key: &str, channel: &str, payload: &[u8]) -> Result<bool, IdempotencyError> {
        if key.len() > MAX_IDEMPOTENCY_KEY {
            return Err(IdempotencyError::KeyTooLong { len: key.len(), max: MAX_IDEMPOTENCY_KEY });
        }
        let mut conn = self.conn.clone();
        if self.limits.max_keys_per_app == 0 {
            let publish = redis::cmd("PUBLISH").arg(channel).arg(payload).to_owned();
            let sent: redis::RedisResult<i64> = self.deadline.run(publish.query_async(&mut conn)).await;
            return sent.map(|_| true).map_err(|e| IdempotencyError::Unavailable(e.to_string()));
        }
        let mut invocation = self.seen.prepare_invoke();
        let window = u64::try_from(self.limits.window.as_millis()).unwrap_or(u64::MAX).clamp(1, i64::MAX as u64 / 2);
        invocation
            .key(format!("{}:idem", app_tag(&self.prefix, app_id)))
            .arg(key)
            .arg(window)
            .arg(self.limits.max_keys_per_app)
            .arg(channel)
            .arg(payload);
        // Not retried: after a lost answer the key is recorded and the message sent.
        let answer: i64 = self.deadline.run(invocation.invoke_async(&mut conn)).await.map_err(|e| {
            let why = if is_link_failure(&e) { e.to_string() } else { format!("unexpected answer: {e}") };
            IdempotencyError::Unavailable(why)
        })?;
        if answer == 2 {
            metrics::counter!("herald_idempotency_evicted_total", "app" => app_id.to_owned()).increment(1);
        }
        Ok(answer != 0)
    }

    /// True if `key` was not seen for `app_id` within the window (the publish goes on), remembering it;
    /// false for a repeat. With `max_keys_per_app` 0 nothing is remembered and every key is new.
    pub async fn first_seen(&self, app_id: &str, key: &str) -> Result<bool, IdempotencyError> {
        if key.len() > MAX_IDEMPOTENCY_KEY {
            return Err(IdempotencyError::KeyTooLong { len: key.len(), max: MAX_IDEMPOTENCY_KEY });
        }
        if self.limits.max_keys_per_app == 0 {
            return Ok(true);
        }
        let mut invocation = self.seen.prepare_invoke();
        let window = u64::try_from(self.limits.window.as_millis()).unwrap_or(u64::MAX).clamp(1, i64::MAX as u64 / 2);
        invocation.key(format!("{}:idem", app_tag(&self.prefix, app_id))).arg(key).arg(window).arg(self.limits.max_keys_per_app);
        let mut conn = self.conn.clone();
        // Not retried: after a lost answer the key is recorded, and a retry would call it a repeat.
        let answer: i64 = self.deadline.run(invocation.invoke_async(&mut conn)).await.map_err(|e| {
            let why = if is_link_failure(&e) { e.to_string() } else { format!("unexpected answer: {e}") };
            IdempotencyError::Unavailable(why)
        })?;
        if answer == 2 {
            metrics::counter!("herald_idempotency_evicted_total", "app" => app_id.to_owned()).increment(1);
        }
        Ok(answer != 0)
    }
}
impl<C: Conn> IdempotencyStore for RedisIdempotency<C> {
    fn first_seen<'a>(&'a self, app_id: &'a str, key: &'a str) -> BoxFuture<'a, Result<bool, IdempotencyError>> {
        Box::pin(RedisIdempotency::first_seen(self, app_id, key))
    }
}
