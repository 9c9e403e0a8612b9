//! Numbers an operator reads back (the stats endpoints, the dashboard): plain atomic counters kept
//! beside the Prometheus metrics, per app ([`HubStats`]) and per occupied channel ([`ChannelStats`]).
//!
//! They are node-local. Counting costs one relaxed atomic add per publication or per connection event,
//! never a lock and never per-subscriber work. A channel's counters live in its entry, so they start
//! when the channel becomes occupied here and go when it is vacated.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

use parking_lot::Mutex;

use crate::latency::ChannelLatency;

/// Reasons a front may count disconnections under (at most this many distinct ones per app).
const MAX_REASONS: usize = 32;

/// An app's counters on this node.
#[derive(Debug)]
pub struct HubStats {
    started: Instant,
    connections_total: AtomicU64,
    peak_connections: AtomicUsize,
    messages_in: AtomicU64,
    bytes_in: AtomicU64,
    publications: AtomicU64,
    messages_out: AtomicU64,
    bytes_out: AtomicU64,
    disconnections: Mutex<Vec<(&'static str, u64)>>,
}

impl Default for HubStats {
    fn default() -> Self {
        HubStats {
            started: Instant::now(),
            connections_total: AtomicU64::new(0),
            peak_connections: AtomicUsize::new(0),
            messages_in: AtomicU64::new(0),
            bytes_in: AtomicU64::new(0),
            publications: AtomicU64::new(0),
            messages_out: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            disconnections: Mutex::new(Vec::new()),
        }
    }
}

/// What [`HubStats::snapshot`] reads.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HubStatsSnapshot {
    /// Seconds since the hub was created.
    pub uptime_secs: u64,
    /// Connections ever registered.
    pub connections_total: u64,
    /// The most connections open at once.
    pub peak_connections: usize,
    /// Frames received from clients.
    pub messages_in: u64,
    /// Bytes received from clients.
    pub bytes_in: u64,
    /// Publications accepted (API, in-process, client events, other nodes).
    pub publications: u64,
    /// Frames queued to connections.
    pub messages_out: u64,
    /// Bytes queued to connections.
    pub bytes_out: u64,
    /// Disconnections by the reason the front gave.
    pub disconnections: Vec<(&'static str, u64)>,
}

impl HubStats {
    pub(crate) fn connected(&self, open_now: usize) {
        self.connections_total.fetch_add(1, Ordering::Relaxed);
        self.peak_connections.fetch_max(open_now, Ordering::Relaxed);
    }

    pub(crate) fn published(&self) {
        self.publications.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn delivered(&self, messages: usize, bytes: usize) {
        self.messages_out.fetch_add(messages as u64, Ordering::Relaxed);
        self.bytes_out.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// Counts one frame of `bytes` received from a client.
    pub fn received(&self, bytes: usize) {
        self.messages_in.fetch_add(1, Ordering::Relaxed);
        self.bytes_in.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// Counts a disconnection for `reason` (a front's own short name, e.g. `"slow_consumer"`). Once an
    /// app has 32 distinct reasons, new ones count as `"other"`.
    pub fn disconnected(&self, reason: &'static str) {
        let mut reasons = self.disconnections.lock();
        if let Some((_, n)) = reasons.iter_mut().find(|(r, _)| *r == reason) {
            *n += 1;
            return;
        }
        let reason = if reasons.len() >= MAX_REASONS { "other" } else { reason };
        match reasons.iter_mut().find(|(r, _)| *r == reason) {
            Some((_, n)) => *n += 1,
            None => reasons.push((reason, 1)),
        }
    }

    /// The counters now.
    pub fn snapshot(&self) -> HubStatsSnapshot {
        HubStatsSnapshot {
            uptime_secs: self.started.elapsed().as_secs(),
            connections_total: self.connections_total.load(Ordering::Relaxed),
            peak_connections: self.peak_connections.load(Ordering::Relaxed),
            messages_in: self.messages_in.load(Ordering::Relaxed),
            bytes_in: self.bytes_in.load(Ordering::Relaxed),
            publications: self.publications.load(Ordering::Relaxed),
            messages_out: self.messages_out.load(Ordering::Relaxed),
            bytes_out: self.bytes_out.load(Ordering::Relaxed),
            disconnections: self.disconnections.lock().clone(),
        }
    }
}

/// One occupied channel's counters on this node.
#[derive(Debug, Default)]
pub(crate) struct ChannelStats {
    messages: AtomicU64,
    bytes: AtomicU64,
    peak_subscribers: AtomicUsize,
    created: Option<Instant>,
    /// The channel's latency slot, if it got one (given back when the entry goes).
    latency: Option<ChannelLatency>,
}

/// What a channel's counters read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChannelStatsSnapshot {
    /// Publications delivered to the channel here since it became occupied.
    pub messages: u64,
    /// Their payload bytes.
    pub bytes: u64,
    /// The most subscribers it had at once here.
    pub peak_subscribers: usize,
    /// Seconds since it became occupied here.
    pub occupied_secs: u64,
}

impl ChannelStats {
    pub(crate) fn new(latency: Option<ChannelLatency>) -> Self {
        ChannelStats { created: Some(Instant::now()), latency, ..ChannelStats::default() }
    }

    pub(crate) fn latency(&self) -> Option<&ChannelLatency> {
        self.latency.as_ref()
    }

    pub(crate) fn published(&self, bytes: usize) {
        self.messages.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    pub(crate) fn subscribers(&self, now: usize) {
        self.peak_subscribers.fetch_max(now, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> ChannelStatsSnapshot {
        ChannelStatsSnapshot {
            messages: self.messages.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
            peak_subscribers: self.peak_subscribers.load(Ordering::Relaxed),
            occupied_secs: self.created.map_or(0, |c| c.elapsed().as_secs()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disconnection_reasons_are_bounded() {
        let stats = HubStats::default();
        stats.disconnected("slow_consumer");
        stats.disconnected("slow_consumer");
        let names: Vec<&'static str> = (0..40).map(|i| &*Box::leak(format!("r{i}").into_boxed_str())).collect::<Vec<_>>();
        for name in &names {
            stats.disconnected(name);
        }
        let snapshot = stats.snapshot();
        assert_eq!(snapshot.disconnections.len(), MAX_REASONS + 1);
        assert_eq!(snapshot.disconnections[0], ("slow_consumer", 2));
        assert_eq!(snapshot.disconnections.iter().find(|(r, _)| *r == "other").map(|(_, n)| *n), Some(9));
    }

    #[test]
    fn counters_add_up() {
        let stats = HubStats::default();
        stats.connected(1);
        stats.connected(3);
        stats.connected(2);
        stats.received(10);
        stats.published();
        stats.delivered(5, 500);
        let s = stats.snapshot();
        assert_eq!((s.connections_total, s.peak_connections), (3, 3));
        assert_eq!((s.messages_in, s.bytes_in, s.publications, s.messages_out, s.bytes_out), (1, 10, 1, 5, 500));
    }
}
