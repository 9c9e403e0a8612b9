//! Retrying a bus that is unreachable or failing: exponential backoff with jitter, capped, and a sleep
//! that ends early on shutdown.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// First delay after a failure.
pub const MIN_DELAY: Duration = Duration::from_millis(100);
/// Longest delay between attempts.
pub const MAX_DELAY: Duration = Duration::from_secs(10);

/// Delays that double from [`MIN_DELAY`] to [`MAX_DELAY`], each with up to 50% jitter off, so nodes
/// that lost the bus together don't retry in step.
#[derive(Debug)]
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { next: MIN_DELAY }
    }
}

impl Backoff {
    /// After a success: the next failure waits [`MIN_DELAY`] again.
    pub fn reset(&mut self) {
        self.next = MIN_DELAY;
    }

    /// The delay to wait now; doubles the next one.
    pub fn delay(&mut self) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(MAX_DELAY);
        base.mul_f64(0.5 + fastrand::f64() * 0.5)
    }

    /// Waits [`Backoff::delay`]; false if shutdown came first.
    pub async fn wait(&mut self, shutdown: &CancellationToken) -> bool {
        sleep(self.delay(), shutdown).await
    }
}

/// Sleeps `delay`; false if shutdown came first.
pub async fn sleep(delay: Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        _ = shutdown.cancelled() => false,
        _ = tokio::time::sleep(delay) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_with_jitter_and_resets() {
        let mut b = Backoff::default();
        let delays: Vec<Duration> = (0..10).map(|_| b.delay()).collect();
        assert!(delays[0] >= MIN_DELAY / 2 && delays[0] <= MIN_DELAY);
        assert!(delays[3] >= MIN_DELAY * 4 && delays[3] <= MIN_DELAY * 8);
        assert!(delays.iter().all(|d| *d <= MAX_DELAY));
        assert!(delays[9] >= MAX_DELAY / 2);
        b.reset();
        assert!(b.delay() <= MIN_DELAY);
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_ends_the_wait() {
        let token = CancellationToken::new();
        let mut b = Backoff::default();
        assert!(b.wait(&token).await, "the clock advances past the delay");
        token.cancel();
        assert!(!b.wait(&token).await);
    }
}
