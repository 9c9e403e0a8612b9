//! What this node knows about its link to Redis, shared by all of the broker's tasks.
//!
//! Two facts make up health: the command connection is *reachable* (a circuit, see below) and the
//! subscriber connection is *up*. Neither depends on traffic: the lease loop probes Redis on every
//! renewal (and more often while the circuit is open), so a listen-only node recovers as fast as a
//! busy one.
//!
//! The circuit: a Redis call made for a client or an API request ([`Health::call`]) gets a deadline
//! ([`crate::RedisConfig::timeout`]). When one times out or meets a broken connection, Redis is *known
//! unreachable* and every further client-path call fails at once instead of waiting out its own
//! deadline, until a lease round trip succeeds again. A stalled Redis (SIGSTOP, a hung proxy) thus
//! costs one deadline, not one per request.
//!
//! Metrics (registered when the broker is made, so present from start): gauges `herald_redis_connected`
//! (reachable and subscribed: what `/up` says), `herald_redis_reachable` (the command circuit is
//! closed) and `herald_redis_subscriber_connected`; counters `herald_redis_reconnects_total{connection}`
//! (`command`: the circuit closed again after an outage; `subscriber`: the pub/sub connection came back
//! after having been up) and `herald_redis_command_errors_total{kind}` (`timeout`, `link`: a broken
//! connection, `refused`: Redis answered with an error); the histogram
//! `herald_redis_command_duration_seconds` of every call made through [`Health::deadline`] (client-path
//! calls, lease probes, reaper and reconcile work), and the gauge `herald_redis_probe_seconds`: the
//! last lease round trip.
//!
//! Health also carries the requests for a reconcile (see [`crate::reconcile`]): after an outage,
//! joins and leaves may not have been recorded.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::time::{Duration, Instant};

use herald_core::StateError;
use metrics::{Counter, Gauge, Histogram};
use tokio::sync::{watch, Notify};
use tracing::{info, warn};

/// How a reconcile announces what it changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Mode {
    /// As transitions (`member_added`, `channel_occupied`, ...): the cluster's clients saw the
    /// opposite (this node was reaped), or the changes are real (joins or leaves an outage kept
    /// from Redis).
    Announce = 1,
    /// Not at all: Redis lost its data (restarted empty, flushed), the clients' view never changed,
    /// and announcing would show them members who never left.
    Silent = 2,
}

/// The metric handles of one broker's link (looked up once).
struct LinkMetrics {
    connected: Gauge,
    reachable: Gauge,
    subscriber: Gauge,
    command_reconnects: Counter,
    subscriber_reconnects: Counter,
    timeouts: Counter,
    link_errors: Counter,
    refused: Counter,
    duration: Histogram,
    probe: Gauge,
}

impl LinkMetrics {
    fn new() -> LinkMetrics {
        let m = LinkMetrics {
            connected: metrics::gauge!("herald_redis_connected"),
            reachable: metrics::gauge!("herald_redis_reachable"),
            subscriber: metrics::gauge!("herald_redis_subscriber_connected"),
            command_reconnects: metrics::counter!("herald_redis_reconnects_total", "connection" => "command"),
            subscriber_reconnects: metrics::counter!("herald_redis_reconnects_total", "connection" => "subscriber"),
            timeouts: metrics::counter!("herald_redis_command_errors_total", "kind" => "timeout"),
            link_errors: metrics::counter!("herald_redis_command_errors_total", "kind" => "link"),
            refused: metrics::counter!("herald_redis_command_errors_total", "kind" => "refused"),
            duration: metrics::histogram!("herald_redis_command_duration_seconds"),
            probe: metrics::gauge!("herald_redis_probe_seconds"),
        };
        // Present from start, at zero (the fail-fast counter too).
        for counter in [&m.command_reconnects, &m.subscriber_reconnects, &m.timeouts, &m.link_errors, &m.refused] {
            counter.increment(0);
        }
        metrics::counter!("herald_redis_fail_fast_total").increment(0);
        m.connected.set(0.0);
        m.reachable.set(1.0);
        m.subscriber.set(0.0);
        m.probe.set(0.0);
        m
    }
}

/// Shared link state of one broker.
pub(crate) struct Health {
    timeout: Duration,
    reachable: watch::Sender<bool>,
    subscriber_up: AtomicBool,
    /// The subscriber was connected at least once (so "not up" now means an outage, not start-up).
    subscriber_was_up: AtomicBool,
    /// Pending reconcile: 0 none, else the strongest [`Mode`] requested.
    reconcile: AtomicU8,
    reconcile_notify: Notify,
    metrics: LinkMetrics,
}

impl Health {
    pub(crate) fn new(timeout: Duration) -> Health {
        Health {
            timeout: timeout.max(Duration::from_millis(10)),
            reachable: watch::Sender::new(true),
            subscriber_up: AtomicBool::new(false),
            subscriber_was_up: AtomicBool::new(false),
            reconcile: AtomicU8::new(0),
            reconcile_notify: Notify::new(),
            metrics: LinkMetrics::new(),
        }
    }

    /// The deadline of one client-path call.
    pub(crate) fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The command connection answered its last probe and no call failed since.
    pub(crate) fn reachable(&self) -> bool {
        *self.reachable.borrow()
    }

    /// Follows [`Health::reachable`].
    pub(crate) fn watch(&self) -> watch::Receiver<bool> {
        self.reachable.subscribe()
    }

    /// Reachable and subscribed: what `/up` reports.
    pub(crate) fn healthy(&self) -> bool {
        self.reachable() && self.subscriber_up.load(Ordering::Acquire)
    }

    /// The subscriber is down after having been up: an outage (at start-up it is just not ready yet).
    pub(crate) fn subscriber_lost(&self) -> bool {
        self.subscriber_was_up.load(Ordering::Acquire) && !self.subscriber_up.load(Ordering::Acquire)
    }

    /// A round trip succeeded: closes the circuit. After an outage, counts are reconciled.
    pub(crate) fn up(&self) {
        if self.reachable.send_if_modified(|r| !std::mem::replace(r, true)) {
            info!("redis reachable again");
            self.metrics.command_reconnects.increment(1);
            self.request_reconcile(Mode::Announce);
        }
        self.gauge();
    }

    /// A call timed out or met a broken connection: opens the circuit.
    pub(crate) fn down(&self, why: &dyn std::fmt::Display) {
        if self.reachable.send_if_modified(|r| std::mem::replace(r, false)) {
            warn!(error = %why, "redis unreachable; cluster calls fail fast until it answers again");
        }
        self.gauge();
    }

    /// Records the subscriber connection's state. Losing it requests a reconcile (joins and leaves
    /// may fail while Redis is away).
    pub(crate) fn set_subscriber_up(&self, up: bool) {
        let was = self.subscriber_up.swap(up, Ordering::AcqRel);
        if up {
            if !was && self.subscriber_was_up.load(Ordering::Acquire) {
                self.metrics.subscriber_reconnects.increment(1);
            }
            self.subscriber_was_up.store(true, Ordering::Release);
        } else if was {
            self.request_reconcile(Mode::Announce);
        }
        self.gauge();
    }

    fn gauge(&self) {
        let flag = |on: bool| if on { 1.0 } else { 0.0 };
        self.metrics.connected.set(flag(self.healthy()));
        self.metrics.reachable.set(flag(self.reachable()));
        self.metrics.subscriber.set(flag(self.subscriber_up.load(Ordering::Acquire)));
    }

    /// Records the round trip of a lease renewal (the probe that decides reachability).
    pub(crate) fn probed(&self, round_trip: Duration) {
        self.metrics.probe.set(round_trip.as_secs_f64());
        self.metrics.duration.record(round_trip.as_secs_f64());
    }

    /// Counts a failed call by kind.
    pub(crate) fn failed(&self, e: &redis::RedisError) {
        if e.is_timeout() {
            self.metrics.timeouts.increment(1);
        } else if is_link_failure(e) {
            self.metrics.link_errors.increment(1);
        } else {
            self.metrics.refused.increment(1);
        }
    }

    /// Asks the reconcile task to check this node's counts; [`Mode::Silent`] wins over a pending
    /// [`Mode::Announce`].
    pub(crate) fn request_reconcile(&self, mode: Mode) {
        self.reconcile.fetch_max(mode as u8, Ordering::AcqRel);
        self.reconcile_notify.notify_one();
    }

    /// Takes the pending reconcile request.
    pub(crate) fn take_reconcile(&self) -> Option<Mode> {
        match self.reconcile.swap(0, Ordering::AcqRel) {
            0 => None,
            1 => Some(Mode::Announce),
            _ => Some(Mode::Silent),
        }
    }

    /// Resolves when a reconcile was requested (possibly before this call).
    pub(crate) async fn reconcile_requested(&self) {
        self.reconcile_notify.notified().await
    }

    /// Runs `call` with the deadline; a timeout or a connection failure opens the circuit. For
    /// background work, which waits for health itself instead of failing fast.
    pub(crate) async fn deadline<T>(&self, call: impl Future<Output = redis::RedisResult<T>>) -> redis::RedisResult<T> {
        let started = Instant::now();
        let result = match tokio::time::timeout(self.timeout, call).await {
            Ok(result) => result,
            Err(_) => Err(timed_out()),
        };
        self.metrics.duration.record(started.elapsed().as_secs_f64());
        if let Err(e) = &result {
            self.failed(e);
            if is_link_failure(e) {
                self.down(e);
            }
        }
        result
    }

    /// A client-path call: fails at once while Redis is known unreachable, else runs with the deadline.
    pub(crate) async fn call<T>(&self, call: impl Future<Output = redis::RedisResult<T>>) -> Result<T, StateError> {
        if !self.reachable() {
            metrics::counter!("herald_redis_fail_fast_total").increment(1);
            return Err(StateError("redis unreachable".into()));
        }
        self.deadline(call).await.map_err(|e| StateError(e.to_string()))
    }
}

/// The error of a call that ran out of time.
pub(crate) fn timed_out() -> redis::RedisError {
    redis::RedisError::from(std::io::Error::new(std::io::ErrorKind::TimedOut, "redis call timed out"))
}

/// Errors that say the link is broken (as opposed to Redis refusing one command).
pub(crate) fn is_link_failure(e: &redis::RedisError) -> bool {
    e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() || e.is_timeout() || e.is_unrecoverable_error()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_stalled_call_opens_the_circuit_and_later_calls_fail_fast() {
        let health = Health::new(Duration::from_secs(2));
        let started = tokio::time::Instant::now();
        let stalled = health.call(std::future::pending::<redis::RedisResult<()>>()).await;
        assert!(stalled.is_err());
        assert_eq!(started.elapsed(), Duration::from_secs(2));
        assert!(!health.reachable());
        let again = tokio::time::Instant::now();
        assert!(health.call(async { Ok(()) }).await.is_err(), "fails fast while the circuit is open");
        assert_eq!(again.elapsed(), Duration::ZERO);
        health.up();
        assert_eq!(health.call(async { Ok(5) }).await, Ok(5));
        assert_eq!(health.take_reconcile(), Some(Mode::Announce), "recovery asks for a reconcile");
    }

    #[test]
    fn silent_reconcile_wins_over_announce() {
        let health = Health::new(Duration::from_secs(1));
        assert_eq!(health.take_reconcile(), None);
        health.request_reconcile(Mode::Silent);
        health.request_reconcile(Mode::Announce);
        assert_eq!(health.take_reconcile(), Some(Mode::Silent));
        assert_eq!(health.take_reconcile(), None);
    }

    #[tokio::test]
    async fn a_refused_command_does_not_open_the_circuit() {
        let health = Health::new(Duration::from_secs(1));
        let refused = redis::RedisError::from((redis::ErrorKind::Server(redis::ServerErrorKind::ResponseError), "WRONGTYPE"));
        assert!(health.call(async { Err::<(), _>(refused) }).await.is_err());
        assert!(health.reachable());
    }
}
