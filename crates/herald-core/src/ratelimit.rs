//! Sliding-window rate limits (API requests per app, connection attempts per IP).
//!
//! The window is approximated the way Cloudflare and nginx-style limiters do: the count of the
//! current fixed window plus the previous window's count weighted by how much of it still overlaps
//! the sliding window. Two counters per key, no timestamps per event, so memory stays fixed however
//! many requests arrive. A refusal says how long until a request would be admitted (`Retry-After`).
//!
//! Time is `tokio::time::Instant`, so tests run on tokio's paused clock.

use std::time::Duration;

use tokio::time::Instant;

/// A limit: at most `limit` events in any `window`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// Events allowed per window.
    pub limit: u32,
    /// The window.
    pub window: Duration,
}

/// One key's state under a [`RateLimit`].
#[derive(Debug, Clone)]
pub struct SlidingWindow {
    rate: RateLimit,
    start: Instant,
    previous: u32,
    current: u32,
}

impl SlidingWindow {
    /// A fresh window for `rate`.
    pub fn new(rate: RateLimit) -> Self {
        SlidingWindow { rate, start: Instant::now(), previous: 0, current: 0 }
    }

    /// Moves the fixed windows forward to `now`.
    fn roll(&mut self, now: Instant) {
        let window = self.rate.window.max(Duration::from_millis(1));
        let elapsed = now.saturating_duration_since(self.start);
        if elapsed >= window * 2 {
            self.previous = 0;
            self.current = 0;
            self.start = now;
        } else if elapsed >= window {
            self.previous = self.current;
            self.current = 0;
            self.start += window;
        }
    }

    /// The weighted count of the sliding window ending `now`.
    fn estimate(&self, now: Instant) -> f64 {
        let window = self.rate.window.max(Duration::from_millis(1)).as_secs_f64();
        let into = now.saturating_duration_since(self.start).as_secs_f64() / window;
        f64::from(self.previous) * (1.0 - into).max(0.0) + f64::from(self.current)
    }

    /// Counts one event if the limit allows it; otherwise returns how long to wait before retrying.
    pub fn try_acquire(&mut self) -> Result<(), Duration> {
        let now = Instant::now();
        self.roll(now);
        if self.estimate(now) + 1.0 <= f64::from(self.rate.limit) {
            self.current = self.current.saturating_add(1);
            return Ok(());
        }
        Err(self.retry_after(now))
    }

    /// How long until one more event would fit (at least a millisecond, at most two windows).
    fn retry_after(&self, now: Instant) -> Duration {
        let window = self.rate.window.max(Duration::from_millis(1));
        let into = now.saturating_duration_since(self.start);
        let to_next = window.saturating_sub(into);
        let limit = f64::from(self.rate.limit);
        let wait = if f64::from(self.current) + 1.0 > limit || self.previous == 0 {
            // The current window alone is full: in the next one, this window's count becomes the
            // weighted one; wait for it to have decayed enough.
            let next_previous = f64::from(self.current);
            let fraction = if next_previous > 0.0 { (1.0 - (limit - 1.0) / next_previous).clamp(0.0, 1.0) } else { 0.0 };
            to_next + window.mul_f64(fraction)
        } else {
            // The previous window's weight must decay until current + weight + 1 <= limit.
            let room = limit - 1.0 - f64::from(self.current);
            let fraction = (1.0 - room / f64::from(self.previous)).clamp(0.0, 1.0);
            window.mul_f64(fraction).saturating_sub(into)
        };
        wait.clamp(Duration::from_millis(1), window * 2)
    }

    /// Whether this window has seen nothing for two windows (its key can be forgotten).
    pub fn is_idle(&self) -> bool {
        Instant::now().saturating_duration_since(self.start) >= self.rate.window * 2
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn per_minute(limit: u32) -> SlidingWindow {
        SlidingWindow::new(RateLimit { limit, window: Duration::from_secs(60) })
    }

    #[tokio::test(start_paused = true)]
    async fn admits_up_to_the_limit_then_says_when() {
        let mut w = per_minute(3);
        for _ in 0..3 {
            assert!(w.try_acquire().is_ok());
        }
        let wait = w.try_acquire().unwrap_err();
        assert!(wait > Duration::from_secs(60) && wait <= Duration::from_secs(120), "{wait:?}");
        tokio::time::advance(wait).await;
        assert!(w.try_acquire().is_ok(), "admitted after the advertised wait");
    }

    #[tokio::test(start_paused = true)]
    async fn the_window_slides() {
        let mut w = per_minute(10);
        for _ in 0..10 {
            w.try_acquire().unwrap();
        }
        // Half-way into the next window, half of the previous one still counts: 5 more fit.
        tokio::time::advance(Duration::from_secs(90)).await;
        for _ in 0..5 {
            assert!(w.try_acquire().is_ok());
        }
        let wait = w.try_acquire().unwrap_err();
        assert!(wait <= Duration::from_secs(30), "{wait:?}");
        tokio::time::advance(wait).await;
        assert!(w.try_acquire().is_ok());
        // Two idle windows forget everything.
        tokio::time::advance(Duration::from_secs(180)).await;
        assert!(w.is_idle());
        for _ in 0..10 {
            assert!(w.try_acquire().is_ok());
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_limit_of_zero_refuses_everything_without_panicking() {
        let mut w = per_minute(0);
        assert!(w.try_acquire().is_err());
        let mut w = SlidingWindow::new(RateLimit { limit: 1, window: Duration::ZERO });
        assert!(w.try_acquire().is_ok());
    }
}
