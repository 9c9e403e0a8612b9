//! Whether each source can reach its bus now: shown on `/up` (a source down makes Herald "degraded",
//! its connections stay up) and as the `herald_ingest_up{source}` gauge. Transitions are logged once.
//!
//! It also keeps the source's counters for the stats endpoints ([`SourceHealth::stats_json`]), beside
//! the Prometheus metrics the relay records: consumed, delivered, repeats, redelivered, skipped by
//! reason, engine errors, the consumer position, and the bus → engine-accepted lag histogram.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use herald_core::latency::LatencyHistogram;
use parking_lot::Mutex;

/// One source's counters since start (this node).
#[derive(Debug, Default)]
struct SourceStats {
    consumed: AtomicU64,
    delivered: AtomicU64,
    repeats: AtomicU64,
    redelivered: AtomicU64,
    engine_errors: AtomicU64,
    /// By reason; the reasons are a fixed set of static names (bounded).
    skipped: Mutex<BTreeMap<&'static str, u64>>,
    /// The last position as f64 bits; `u64::MAX` while unknown.
    position: AtomicU64,
    lag: LatencyHistogram,
}

/// One source's link to its bus, and its counters.
#[derive(Debug)]
pub struct SourceHealth {
    name: String,
    kind: &'static str,
    up: AtomicBool,
    stats: SourceStats,
}

impl SourceHealth {
    /// A source not connected yet (down until it is).
    pub fn new(name: &str, kind: &'static str) -> SourceHealth {
        metrics::gauge!("herald_ingest_up", "source" => name.to_owned()).set(0.0);
        let stats = SourceStats { position: AtomicU64::new(u64::MAX), ..SourceStats::default() };
        SourceHealth { name: name.to_owned(), kind, up: AtomicBool::new(false), stats }
    }

    pub(crate) fn consumed(&self) {
        self.stats.consumed.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn delivered(&self, lag: Duration) {
        self.stats.delivered.fetch_add(1, Ordering::Relaxed);
        self.stats.lag.record_duration(lag);
    }

    pub(crate) fn repeat(&self) {
        self.stats.repeats.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn engine_error(&self) {
        self.stats.engine_errors.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn skipped(&self, reason: &'static str) {
        *self.stats.skipped.lock().entry(reason).or_default() += 1;
    }

    /// A message seen again (redelivered, claimed, or a repeat after resuming): counted here and in
    /// `herald_ingest_redelivered_total`.
    pub(crate) fn redelivered(&self) {
        self.stats.redelivered.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("herald_ingest_redelivered_total", "source" => self.name.clone()).increment(1);
    }

    /// The consumer's position (entry time in ms, row id, stream sequence, timetoken): kept here and
    /// in the `herald_ingest_position` gauge.
    pub(crate) fn position(&self, at: f64) {
        self.stats.position.store(at.to_bits(), Ordering::Relaxed);
        metrics::gauge!("herald_ingest_position", "source" => self.name.clone()).set(at);
    }

    /// The counters as JSON, for the stats endpoints: `consumed`, `delivered`, `repeats`,
    /// `redelivered`, `engine_errors`, `skipped` (by reason), `position` (null until known) and `lag`
    /// (bus timestamp → engine accepted: `count`, `p50_ms`, `p95_ms`, `p99_ms`).
    pub fn stats_json(&self) -> serde_json::Value {
        let s = &self.stats;
        let position = s.position.load(Ordering::Relaxed);
        let lag = s.lag.snapshot();
        let ms = |q: f64| lag.quantile(q).map_or(serde_json::Value::Null, |d| serde_json::json!((d.as_secs_f64() * 1e6).round() / 1e3));
        serde_json::json!({
            "kind": self.kind,
            "bus": if self.is_up() { "up" } else { "down" },
            "consumed": s.consumed.load(Ordering::Relaxed),
            "delivered": s.delivered.load(Ordering::Relaxed),
            "repeats": s.repeats.load(Ordering::Relaxed),
            "redelivered": s.redelivered.load(Ordering::Relaxed),
            "engine_errors": s.engine_errors.load(Ordering::Relaxed),
            "skipped": *s.skipped.lock(),
            "position": if position == u64::MAX { serde_json::Value::Null } else { serde_json::json!(f64::from_bits(position)) },
            "lag": { "count": lag.count(), "p50_ms": ms(0.5), "p95_ms": ms(0.95), "p99_ms": ms(0.99) },
        })
    }

    /// The source's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The source's kind (`redis_streams`, ...).
    pub fn kind(&self) -> &'static str {
        self.kind
    }

    /// Whether the bus is reachable.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// The bus answered.
    pub fn up(&self) {
        if !self.up.swap(true, Ordering::Relaxed) {
            tracing::info!(source = %self.name, kind = self.kind, "bus reachable");
            metrics::gauge!("herald_ingest_up", "source" => self.name.clone()).set(1.0);
        }
    }

    /// The bus failed; `error` says how (logged on the transition only; every failure is counted).
    pub fn down(&self, error: &dyn std::fmt::Display) {
        metrics::counter!("herald_ingest_bus_errors_total", "source" => self.name.clone()).increment(1);
        if self.up.swap(false, Ordering::Relaxed) {
            tracing::warn!(source = %self.name, kind = self.kind, %error, "bus unreachable; retrying with backoff");
            metrics::gauge!("herald_ingest_up", "source" => self.name.clone()).set(0.0);
        } else {
            tracing::debug!(source = %self.name, %error, "bus still unreachable");
        }
    }
}
