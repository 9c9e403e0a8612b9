//! Idempotent publish: a publish may carry an idempotency key, and a repeat of a key within a window is
//! accepted without a second delivery. HTTP clients retry on timeouts and an upstream bus redelivers
//! what it did not see acknowledged; without this, both turn into duplicate messages.
//!
//! [`Idempotency`] remembers, per app, the keys seen in the last `window`. Memory is bounded: keys are
//! stored as 64-bit hashes under a per-process random seed (fixed size whatever the client sends; a
//! collision needs ~2^32 keys in one window), and at most `max_keys_per_app` per app. Policy at the
//! limit: **evict the oldest key** (counted in `herald_idempotency_evicted_total{app}`), so a flood of
//! keys costs at most a duplicate delivery of an old retry, never a refused publish. Expired keys go
//! when the app is next touched, or by [`Idempotency::sweep`].
//!
//! One node only; across nodes the broker uses Redis (`SET NX PX`).

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use parking_lot::Mutex;

/// How long and how many idempotency keys are remembered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdempotencyLimits {
    /// A repeat within this window is a duplicate (5 minutes by default).
    pub window: Duration,
    /// Keys remembered per app; beyond it the oldest is forgotten (100 000 by default).
    pub max_keys_per_app: usize,
}

impl Default for IdempotencyLimits {
    fn default() -> Self {
        IdempotencyLimits { window: Duration::from_secs(5 * 60), max_keys_per_app: 100_000 }
    }
}

/// The keys of one app: when each was first seen, and that order.
#[derive(Default)]
struct Seen {
    keys: HashMap<u64, Instant>,
    /// Insertion order; may hold stale entries (checked against `keys` when popped).
    order: VecDeque<(u64, Instant)>,
}

impl Seen {
    fn expire(&mut self, now: Instant, window: Duration) -> usize {
        let mut dropped = 0;
        while let Some(&(key, at)) = self.order.front() {
            if now.saturating_duration_since(at) < window {
                break;
            }
            self.order.pop_front();
            if self.keys.get(&key) == Some(&at) {
                self.keys.remove(&key);
                dropped += 1;
            }
        }
        dropped
    }

    /// Forgets the oldest key still remembered.
    fn evict_oldest(&mut self) {
        while let Some((key, at)) = self.order.pop_front() {
            if self.keys.get(&key) == Some(&at) {
                self.keys.remove(&key);
                return;
            }
        }
    }
}

/// Recently seen idempotency keys of every app, bounded and expiring.
pub struct Idempotency {
    limits: IdempotencyLimits,
    seed: RandomState,
    apps: DashMap<Arc<str>, Mutex<Seen>>,
}

impl Idempotency {
    /// An empty set with `limits`.
    pub fn new(limits: IdempotencyLimits) -> Idempotency {
        Idempotency { limits, seed: RandomState::new(), apps: DashMap::new() }
    }

    /// The limits it was made with.
    pub fn limits(&self) -> IdempotencyLimits {
        self.limits
    }

    /// True if `key` was not seen for `app_id` within the window before `now` (the publish goes on),
    /// and remembers it from `now`; false for a repeat (the publish is accepted but not delivered).
    /// With `max_keys_per_app` 0 nothing is remembered and every key is new.
    pub fn first_seen(&self, app_id: &str, key: &str, now: Instant) -> bool {
        if self.limits.max_keys_per_app == 0 {
            return true;
        }
        let hash = self.seed.hash_one(key);
        let check = |seen: &mut Seen| {
            seen.expire(now, self.limits.window);
            if seen.keys.get(&hash).is_some_and(|at| now.saturating_duration_since(*at) < self.limits.window) {
                return false;
            }
            if seen.keys.len() >= self.limits.max_keys_per_app && !seen.keys.contains_key(&hash) {
                seen.evict_oldest();
                metrics::counter!("herald_idempotency_evicted_total", "app" => app_id.to_owned()).increment(1);
            }
            seen.keys.insert(hash, now);
            seen.order.push_back((hash, now));
            // Stale order entries (keys seen again after expiring out of order) stay bounded.
            while seen.order.len() > 2 * self.limits.max_keys_per_app + 16 {
                let Some((key, at)) = seen.order.pop_front() else { break };
                if seen.keys.get(&key) == Some(&at) {
                    seen.keys.remove(&key);
                }
            }
            true
        };
        if let Some(seen) = self.apps.get(app_id) {
            return check(&mut seen.lock());
        }
        let seen = self.apps.entry(Arc::from(app_id)).or_default();
        let first = check(&mut seen.lock());
        first
    }

    /// Forgets every key older than the window; returns how many.
    pub fn sweep(&self, now: Instant) -> usize {
        self.apps.iter().map(|seen| seen.lock().expire(now, self.limits.window)).sum()
    }

    /// Keys remembered for `app_id` now (expired ones not swept yet included).
    pub fn len(&self, app_id: &str) -> usize {
        self.apps.get(app_id).map_or(0, |seen| seen.lock().keys.len())
    }

    /// Nothing remembered for `app_id`.
    pub fn is_empty(&self, app_id: &str) -> bool {
        self.len(app_id) == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WINDOW: Duration = Duration::from_secs(300);

    fn set(max: usize) -> Idempotency {
        Idempotency::new(IdempotencyLimits { window: WINDOW, max_keys_per_app: max })
    }

    #[test]
    fn a_repeat_within_the_window_is_not_first_seen() {
        let seen = set(10);
        let t0 = Instant::now();
        assert!(seen.first_seen("a", "k1", t0));
        assert!(!seen.first_seen("a", "k1", t0 + Duration::from_secs(1)));
        assert!(!seen.first_seen("a", "k1", t0 + WINDOW - Duration::from_millis(1)));
        assert!(seen.first_seen("a", "k2", t0), "another key is new");
    }

    #[test]
    fn keys_are_per_app() {
        let seen = set(10);
        let t0 = Instant::now();
        assert!(seen.first_seen("a", "k", t0));
        assert!(seen.first_seen("b", "k", t0), "the same key from another app is new");
    }

    #[test]
    fn a_key_is_new_again_once_its_window_passed() {
        let seen = set(10);
        let t0 = Instant::now();
        assert!(seen.first_seen("a", "k", t0));
        assert!(seen.first_seen("a", "k", t0 + WINDOW), "the window is over");
        assert!(!seen.first_seen("a", "k", t0 + WINDOW + Duration::from_secs(1)), "and it is remembered from then");
    }

    #[test]
    fn at_the_key_limit_the_oldest_key_is_forgotten() {
        let seen = set(3);
        let t0 = Instant::now();
        for (i, key) in ["k1", "k2", "k3"].iter().enumerate() {
            assert!(seen.first_seen("a", key, t0 + Duration::from_secs(i as u64)));
        }
        assert!(seen.first_seen("a", "k4", t0 + Duration::from_secs(3)));
        assert_eq!(seen.len("a"), 3, "bounded");
        assert!(seen.first_seen("a", "k1", t0 + Duration::from_secs(4)), "the oldest was evicted");
        assert!(!seen.first_seen("a", "k3", t0 + Duration::from_secs(5)), "younger keys are kept");
        assert!(!seen.first_seen("a", "k4", t0 + Duration::from_secs(5)));
    }

    #[test]
    fn sweep_forgets_expired_keys_of_every_app() {
        let seen = set(10);
        let t0 = Instant::now();
        seen.first_seen("a", "k1", t0);
        seen.first_seen("b", "k1", t0 + Duration::from_secs(10));
        assert_eq!(seen.sweep(t0 + WINDOW), 1);
        assert_eq!((seen.len("a"), seen.len("b")), (0, 1));
    }

    #[test]
    fn instants_out_of_order_keep_the_set_bounded() {
        let seen = set(4);
        let t0 = Instant::now() + WINDOW;
        for i in 0..1000u64 {
            // Callers on several threads may pass slightly older instants.
            let at = if i % 2 == 0 { t0 + Duration::from_secs(i) } else { t0 + Duration::from_secs(i) - WINDOW };
            seen.first_seen("a", &format!("k{}", i % 7), at);
        }
        assert!(seen.len("a") <= 4);
        assert!(seen.apps.get("a").unwrap().lock().order.len() <= 2 * 4 + 16);
    }

    #[test]
    fn no_memory_means_every_key_is_new() {
        let seen = set(0);
        let t0 = Instant::now();
        assert!(seen.first_seen("a", "k", t0));
        assert!(seen.first_seen("a", "k", t0));
        assert!(seen.is_empty("a"));
    }
}

/// Longest idempotency key accepted, in bytes.
pub const MAX_IDEMPOTENCY_KEY: usize = 256;

/// An idempotency check failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdempotencyError {
    /// The store could not be reached or answered in time (or answered nonsense).
    #[error("idempotency check unavailable: {0}")]
    Unavailable(String),
    /// The key is longer than [`MAX_IDEMPOTENCY_KEY`].
    #[error("idempotency key of {len} bytes (limit {max})")]
    KeyTooLong {
        /// The key's length.
        len: usize,
        /// The limit.
        max: usize,
    },
}

/// Where a cluster remembers idempotency keys (the memory [`Idempotency`] on one node).
pub trait IdempotencyStore: Send + Sync + 'static {
    /// True if `key` was not seen for `app_id` within the window (the publish goes on), remembering
    /// it; false for a repeat.
    fn first_seen<'a>(&'a self, app_id: &'a str, key: &'a str) -> crate::state::BoxFuture<'a, Result<bool, IdempotencyError>>;
}

impl IdempotencyStore for Idempotency {
    fn first_seen<'a>(&'a self, app_id: &'a str, key: &'a str) -> crate::state::BoxFuture<'a, Result<bool, IdempotencyError>> {
        let result = if key.len() > MAX_IDEMPOTENCY_KEY {
            Err(IdempotencyError::KeyTooLong { len: key.len(), max: MAX_IDEMPOTENCY_KEY })
        } else {
            Ok(Idempotency::first_seen(self, app_id, key, Instant::now()))
        };
        Box::pin(std::future::ready(result))
    }
}
