//! Measurements shared by many tasks: a sharded latency histogram, delivery counters, and a throughput
//! series sampled over time.
//!
//! Timestamps are microseconds since a process-wide monotonic epoch; publisher and subscribers run in the
//! same process, so a payload's `ts` compares directly with the receive time.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tokio_util::sync::CancellationToken;

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Microseconds since the bench's epoch.
pub fn now_us() -> u64 {
    epoch().elapsed().as_micros() as u64
}

/// The bench payload: a JSON object with the send time and padding up to `size` bytes.
pub fn payload(size: usize) -> String {
    let head = format!("{{\"ts\":{},\"pad\":\"", now_us());
    let pad = size.saturating_sub(head.len() + 2);
    let mut s = String::with_capacity(head.len() + pad + 2);
    s.push_str(&head);
    s.extend(std::iter::repeat_n('x', pad));
    s.push_str("\"}");
    s
}

/// The send time in a delivered frame, if it is a bench event (the payload may arrive JSON-escaped
/// inside the frame's `data` string, or as a raw object).
pub fn sent_at(frame: &str) -> Option<u64> {
    sent_at_bytes(frame.as_bytes())
}

/// [`sent_at`] for a frame's bytes (a protobuf push carries the payload's JSON as raw bytes).
pub fn sent_at_bytes(frame: &[u8]) -> Option<u64> {
    let find = |needle: &[u8]| frame.windows(needle.len()).position(|w| w == needle).map(|i| i + needle.len());
    let start = find(b"ts\\\":").or_else(|| find(b"\"ts\":"))?;
    let digits = frame[start..].iter().take_while(|b| b.is_ascii_digit()).count();
    std::str::from_utf8(&frame[start..start + digits]).ok()?.parse().ok()
}

const SHARDS: usize = 64;

/// Latency and delivery counts for one run.
pub struct Stats {
    shards: Vec<Mutex<Histogram<u64>>>,
    received: AtomicU64,
    last_receive_us: AtomicU64,
}

impl Stats {
    /// Empty statistics (latency recorded in microseconds, 1 µs to 60 s, 3 significant digits).
    pub fn new() -> Stats {
        let shards = (0..SHARDS).map(|_| Mutex::new(Histogram::new_with_bounds(1, 60_000_000, 3).expect("bounds"))).collect();
        Stats { shards, received: AtomicU64::new(0), last_receive_us: AtomicU64::new(0) }
    }

    /// Records one delivery sent at `sent_us`.
    pub fn record(&self, shard: usize, sent_us: u64) {
        let now = now_us();
        let latency = now.saturating_sub(sent_us).clamp(1, 60_000_000);
        if let Ok(mut h) = self.shards[shard % SHARDS].lock() {
            let _ = h.record(latency);
        }
        self.received.fetch_add(1, Ordering::Relaxed);
        self.last_receive_us.fetch_max(now, Ordering::Relaxed);
    }

    /// Deliveries so far.
    pub fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }

    /// When the last delivery arrived (µs since epoch).
    pub fn last_receive_us(&self) -> u64 {
        self.last_receive_us.load(Ordering::Relaxed)
    }

    /// All shards merged.
    pub fn latency(&self) -> Histogram<u64> {
        let mut all = Histogram::new_with_bounds(1, 60_000_000, 3).expect("bounds");
        for s in &self.shards {
            if let Ok(h) = s.lock() {
                let _ = all.add(&*h);
            }
        }
        all
    }
}

/// Samples a counter every `every` until `stop`; returns (seconds since start, rate per second).
pub async fn sample_rate(counter: impl Fn() -> u64, every: Duration, stop: CancellationToken) -> Vec<(f64, f64)> {
    let start = Instant::now();
    let mut series = Vec::new();
    let mut last = counter();
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => {
                let now = counter();
                series.push((start.elapsed().as_secs_f64(), (now - last) as f64 / every.as_secs_f64()));
                last = now;
            }
        }
    }
    series
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_found_escaped_or_raw() {
        let p = payload(100);
        assert_eq!(p.len(), 100);
        let ts = sent_at(&p).unwrap();
        let escaped = serde_json::json!({ "event": "bench", "channel": "c", "data": p }).to_string();
        assert_eq!(sent_at(&escaped), Some(ts));
        assert_eq!(sent_at(r#"{"event":"pusher:ping","data":{}}"#), None);
    }
}
