//! Whether each source can reach its bus now: shown on `/up` (a source down makes Herald "degraded",
//! its connections stay up) and as the `herald_ingest_up{source}` gauge. Transitions are logged once.

use std::sync::atomic::{AtomicBool, Ordering};

/// One source's link to its bus.
#[derive(Debug)]
pub struct SourceHealth {
    name: String,
    kind: &'static str,
    up: AtomicBool,
}

impl SourceHealth {
    /// A source not connected yet (down until it is).
    pub fn new(name: &str, kind: &'static str) -> SourceHealth {
        metrics::gauge!("herald_ingest_up", "source" => name.to_owned()).set(0.0);
        SourceHealth { name: name.to_owned(), kind, up: AtomicBool::new(false) }
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
