//! Keep-alive for every connection of a front by one sweep, not a timer per connection.
//!
//! An idle connection should cost as little as possible: a timer inside every session future is about a
//! hundred bytes per connection and one more branch to poll on every wake-up. Instead each connection's
//! [`Outbox`] holds two small timestamps (last activity, ping sent), the session stamps activity as
//! frames arrive ([`Outbox::touch`]), and the front runs one task that calls [`Hub::keepalive`] a few
//! times per timeout: it queues the front's ping to connections idle for too long and closes, with
//! [`Disconnect::NoPong`], those that did not answer in time.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::codec::CodecId;
use crate::hub::Hub;
use crate::outbox::{Disconnect, Outbox};

/// Longest timeout the activity clock can measure (its `u32` milliseconds wrap after 49 days); longer
/// configured timeouts behave as this one.
const MAX_TIMEOUT_MS: u32 = u32::MAX / 4;

/// Milliseconds since the first call in this process, wrapping: the clock of [`Outbox::touch`].
/// Only differences of less than [`MAX_TIMEOUT_MS`] are ever compared.
pub fn activity_clock() -> u32 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u32
}

/// When a front pings and gives up, for the connections encoded with its codec.
#[derive(Debug, Clone)]
pub struct KeepalivePolicy {
    /// The front's connections (those whose outbox uses this codec).
    pub codec: CodecId,
    /// Queue `ping` after this long without anything from the client.
    pub idle: Duration,
    /// Close with [`Disconnect::NoPong`] when nothing arrived this long after the ping.
    pub pong_timeout: Duration,
    /// The front's ping frame, queued as is.
    pub ping: Bytes,
}

impl KeepalivePolicy {
    /// How often to call [`Hub::keepalive`]: a quarter of the shorter timeout, between 50 ms and 1 s,
    /// so a connection is pinged or closed at most that late.
    pub fn sweep_interval(&self) -> Duration {
        (self.idle.min(self.pong_timeout) / 4).clamp(Duration::from_millis(50), Duration::from_secs(1))
    }
}

/// What one sweep did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Swept {
    /// Connections that were sent a ping.
    pub pinged: usize,
    /// Connections closed for not answering.
    pub closed: usize,
}

fn millis(d: Duration) -> u32 {
    u32::try_from(d.as_millis()).unwrap_or(u32::MAX).min(MAX_TIMEOUT_MS)
}

/// `now - then` on the wrapping clock; `then` in the future (a touch that raced the sweep) counts as 0.
fn since(now: u32, then: u32) -> u32 {
    let d = now.wrapping_sub(then);
    if d > u32::MAX / 2 {
        0
    } else {
        d
    }
}

/// Decides for one connection at `now`: ping it, close it, or leave it.
pub(crate) fn check(outbox: &Outbox, policy: &KeepalivePolicy, idle: u32, pong: u32, now: u32, swept: &mut Swept) {
    let (seen, pinged) = outbox.activity();
    match pinged {
        Some(at) if since(now, at) >= pong => {
            // Re-read: activity that arrived since the first read saves the connection.
            if outbox.activity().0 == seen {
                outbox.close(Disconnect::NoPong);
                swept.closed += 1;
            }
        }
        Some(_) => {}
        None if since(now, seen) >= idle => {
            if outbox.push(policy.ping.clone()).is_ok() {
                outbox.mark_pinged(now);
                swept.pinged += 1;
            }
        }
        None => {}
    }
}

impl Hub {
    /// One keep-alive sweep over this hub's connections of `policy.codec` at `now`
    /// ([`activity_clock`]): pings the idle ones, closes those whose ping went unanswered.
    pub fn keepalive(&self, policy: &KeepalivePolicy, now: u32) -> Swept {
        let (idle, pong) = (millis(policy.idle), millis(policy.pong_timeout));
        let mut swept = Swept::default();
        self.for_each_outbox(|outbox| {
            if outbox.codec() == policy.codec {
                check(outbox, policy, idle, pong, now, &mut swept);
            }
        });
        swept
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbox::{Drained, OutboxLimits};

    fn policy() -> KeepalivePolicy {
        KeepalivePolicy {
            codec: CodecId::RAW,
            idle: Duration::from_secs(120),
            pong_timeout: Duration::from_secs(30),
            ping: Bytes::from_static(b"ping"),
        }
    }

    fn sweep(outbox: &Outbox, now: u32) -> Swept {
        let p = policy();
        let mut swept = Swept::default();
        check(outbox, &p, millis(p.idle), millis(p.pong_timeout), now, &mut swept);
        swept
    }

    #[tokio::test]
    async fn idle_connection_is_pinged_once_then_closed_without_a_pong() {
        let outbox = Outbox::new(OutboxLimits::default());
        outbox.touch_at(1_000);
        assert_eq!(sweep(&outbox, 100_000), Swept::default(), "not idle long enough");
        assert_eq!(sweep(&outbox, 121_000), Swept { pinged: 1, closed: 0 });
        assert_eq!(sweep(&outbox, 125_000), Swept::default(), "one ping per idle period");
        assert_eq!(sweep(&outbox, 150_999), Swept::default(), "pong timeout not reached");
        assert_eq!(sweep(&outbox, 151_000), Swept { pinged: 0, closed: 1 });
        let mut out = Vec::new();
        assert_eq!(outbox.drain(&mut out).await, Drained::Frames);
        assert_eq!(out, vec![Bytes::from_static(b"ping")]);
        assert_eq!(outbox.drain(&mut out).await, Drained::Closed(Disconnect::NoPong));
    }

    #[test]
    fn any_activity_after_the_ping_keeps_the_connection() {
        let outbox = Outbox::new(OutboxLimits::default());
        outbox.touch_at(0);
        assert_eq!(sweep(&outbox, 120_000).pinged, 1);
        outbox.touch_at(130_000);
        assert_eq!(sweep(&outbox, 160_000), Swept::default(), "answered: neither closed nor pinged again yet");
        assert_eq!(sweep(&outbox, 250_000).pinged, 1, "idle again: pinged again");
        assert!(!outbox.is_closed());
    }

    #[test]
    fn the_clock_may_wrap() {
        let outbox = Outbox::new(OutboxLimits::default());
        outbox.touch_at(u32::MAX - 1_000);
        assert_eq!(sweep(&outbox, 100_000), Swept::default(), "101 s after the wrap is not idle yet");
        assert_eq!(sweep(&outbox, 119_000).pinged, 1);
    }

    #[test]
    fn huge_timeouts_never_fire_and_never_panic() {
        let p = KeepalivePolicy { idle: Duration::MAX, pong_timeout: Duration::MAX, ..policy() };
        let outbox = Outbox::new(OutboxLimits::default());
        outbox.touch_at(0);
        let mut swept = Swept::default();
        check(&outbox, &p, millis(p.idle), millis(p.pong_timeout), u32::MAX / 8, &mut swept);
        assert_eq!(swept, Swept::default());
        assert_eq!(p.sweep_interval(), Duration::from_secs(1));
    }

    #[test]
    fn sweeps_only_its_fronts_connections() {
        let hub = Hub::new(crate::App::dev());
        let (_, raw) = hub.connect().unwrap();
        let (_, other) = hub.connect_with(CodecId(7)).unwrap();
        raw.touch_at(0);
        other.touch_at(0);
        assert_eq!(hub.keepalive(&policy(), 200_000), Swept { pinged: 1, closed: 0 });
        assert_eq!(other.len(), (0, 0), "another front's connection is not pinged");
        assert_eq!(raw.len().0, 1);
    }
}
