//! The cache-channel store: the last frame published on each cache channel, replayed on subscribe.
//!
//! Bounded in entries and age. At the entry limit the oldest entry is evicted (policy: evict-oldest),
//! so a flood of distinct cache channels cannot grow memory without bound.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Bounds of one app's cache-channel store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetainedLimits {
    /// Cache channels remembered at once; the oldest is evicted beyond this.
    pub max_channels: usize,
    /// How long a cached event is replayed after it was published (Pusher: 30 minutes).
    pub ttl: Duration,
}

impl Default for RetainedLimits {
    fn default() -> Self {
        RetainedLimits { max_channels: 10_000, ttl: Duration::from_secs(30 * 60) }
    }
}

pub(crate) struct Retained<T> {
    limits: RetainedLimits,
    entries: HashMap<Arc<str>, (T, Instant)>,
    /// Insertion order for eviction; may hold stale names, skipped when popped.
    order: VecDeque<(Arc<str>, Instant)>,
}

impl<T: Clone> Retained<T> {
    pub(crate) fn new(limits: RetainedLimits) -> Self {
        Retained { limits, entries: HashMap::new(), order: VecDeque::new() }
    }

    pub(crate) fn put(&mut self, channel: &str, frame: T, now: Instant) {
        let name: Arc<str> = Arc::from(channel);
        self.entries.insert(name.clone(), (frame, now));
        self.order.push_back((name, now));
        while self.entries.len() > self.limits.max_channels || self.order.len() > 2 * self.limits.max_channels + 16 {
            let Some((name, at)) = self.order.pop_front() else { break };
            if self.entries.get(&name).is_some_and(|(_, t)| *t == at) {
                self.entries.remove(&name);
            }
        }
    }

    pub(crate) fn get(&mut self, channel: &str, now: Instant) -> Option<T> {
        let (frame, at) = self.entries.get(channel)?;
        if now.duration_since(*at) > self.limits.ttl {
            self.entries.remove(channel);
            return None;
        }
        Some(frame.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn keeps_last_frame_and_expires() {
        let mut r = Retained::new(RetainedLimits { max_channels: 10, ttl: Duration::from_secs(5) });
        let t0 = Instant::now();
        r.put("cache-a", Bytes::from("1"), t0);
        r.put("cache-a", Bytes::from("2"), t0);
        assert_eq!(r.get("cache-a", t0), Some(Bytes::from("2")));
        assert_eq!(r.get("cache-a", t0 + Duration::from_secs(6)), None);
        assert_eq!(r.get("cache-b", t0), None);
    }

    #[test]
    fn evicts_oldest_at_limit() {
        let mut r = Retained::new(RetainedLimits { max_channels: 2, ttl: Duration::from_secs(60) });
        let t0 = Instant::now();
        r.put("a", Bytes::from("a"), t0);
        r.put("b", Bytes::from("b"), t0 + Duration::from_millis(1));
        r.put("a", Bytes::from("a2"), t0 + Duration::from_millis(2));
        r.put("c", Bytes::from("c"), t0 + Duration::from_millis(3));
        let now = t0 + Duration::from_millis(4);
        assert_eq!(r.get("b", now), None, "b is the oldest live entry");
        assert_eq!(r.get("a", now), Some(Bytes::from("a2")));
        assert_eq!(r.get("c", now), Some(Bytes::from("c")));
        for i in 0..100 {
            r.put(&format!("x{i}"), Bytes::new(), now);
        }
        assert!(r.entries.len() <= 2 && r.order.len() <= 2 * 2 + 16);
    }
}
