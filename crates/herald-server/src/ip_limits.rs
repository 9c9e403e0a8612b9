//! Per-IP admission: open sockets per address and connection attempts per address (sliding window).
//!
//! Every accepted socket is counted under its peer address from accept until it closes (its
//! [`IpSlot`] rides inside the socket, through the WebSocket upgrade). A socket over either limit is
//! still served, but its requests carry a [`ConnectRefusal`]: the Pusher front then refuses the
//! WebSocket with a `pusher:error` and close code 4100 ("over capacity": pusher-js reconnects with
//! backoff), so the client learns why; HTTP API requests are unaffected (they have their own
//! per-app rate limit). Counted in `herald_ip_refusals_total{reason}`.
//!
//! The table is bounded ([`MAX_ADDRESSES`]); idle addresses are swept as new ones arrive. At the bound
//! a new address is admitted without per-IP accounting (fail open: the process socket cap still
//! applies), counted in `herald_errors_total{kind="ip_table_full"}`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use herald_core::ratelimit::{RateLimit, SlidingWindow};
use herald_pusher::ConnectRefusal;

/// Addresses tracked at once, at most.
pub const MAX_ADDRESSES: usize = 100_000;
/// Admissions between two sweeps of idle addresses.
const SWEEP_EVERY: u32 = 1024;

/// Per-IP limits; `None` is unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IpLimits {
    /// Sockets one address may have open.
    pub max_connections_per_ip: Option<usize>,
    /// Sockets one address may open per minute (sliding window).
    pub connects_per_ip_per_minute: Option<u32>,
}

impl IpLimits {
    fn any(&self) -> bool {
        self.max_connections_per_ip.is_some() || self.connects_per_ip_per_minute.is_some()
    }
}

struct Entry {
    open: usize,
    window: Option<SlidingWindow>,
}

impl Entry {
    fn idle(&self) -> bool {
        self.open == 0 && self.window.as_ref().is_none_or(SlidingWindow::is_idle)
    }
}

struct Table {
    entries: HashMap<IpAddr, Entry>,
    since_sweep: u32,
}

/// The per-IP counts of one server.
pub(crate) struct IpTracker {
    limits: IpLimits,
    table: Mutex<Table>,
}

/// A socket's place in its address's count; released on drop.
pub(crate) struct IpSlot {
    tracker: Arc<IpTracker>,
    ip: IpAddr,
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut table = self.tracker.table.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(entry) = table.entries.get_mut(&self.ip) {
            entry.open = entry.open.saturating_sub(1);
            if entry.idle() {
                table.entries.remove(&self.ip);
            }
        }
    }
}

impl IpTracker {
    pub(crate) fn new(limits: IpLimits) -> Arc<IpTracker> {
        Arc::new(IpTracker { limits, table: Mutex::new(Table { entries: HashMap::new(), since_sweep: 0 }) })
    }

    /// Counts a new socket from `ip`. Returns its slot (if counted) and, when over a limit, the
    /// refusal its WebSocket upgrade gets.
    pub(crate) fn admit(self: &Arc<Self>, ip: IpAddr) -> (Option<IpSlot>, Option<ConnectRefusal>) {
        if !self.limits.any() {
            return (None, None);
        }
        let mut table = self.table.lock().unwrap_or_else(|e| e.into_inner());
        table.since_sweep += 1;
        if table.since_sweep >= SWEEP_EVERY || table.entries.len() >= MAX_ADDRESSES {
            table.since_sweep = 0;
            table.entries.retain(|_, e| !e.idle());
        }
        if !table.entries.contains_key(&ip) && table.entries.len() >= MAX_ADDRESSES {
            metrics::counter!("herald_errors_total", "kind" => "ip_table_full").increment(1);
            return (None, None);
        }
        let rate = self.limits.connects_per_ip_per_minute;
        let entry = table.entries.entry(ip).or_insert_with(|| Entry {
            open: 0,
            window: rate.map(|limit| SlidingWindow::new(RateLimit { limit, window: Duration::from_secs(60) })),
        });
        entry.open += 1;
        let refusal = if self.limits.max_connections_per_ip.is_some_and(|max| entry.open > max) {
            Some(("too_many_connections", ConnectRefusal::new(4100, "Too many connections from this address")))
        } else if entry.window.as_mut().is_some_and(|w| w.try_acquire().is_err()) {
            Some(("connect_rate", ConnectRefusal::new(4100, "Connecting too fast from this address; retry later")))
        } else {
            None
        };
        drop(table);
        let refusal = refusal.map(|(reason, refusal)| {
            metrics::counter!("herald_ip_refusals_total", "reason" => reason).increment(1);
            tracing::debug!(%ip, reason, "connection refused by a per-IP limit");
            refusal
        });
        (Some(IpSlot { tracker: self.clone(), ip }), refusal)
    }

    /// Addresses tracked now.
    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.table.lock().unwrap().entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 2));

    #[tokio::test]
    async fn open_sockets_per_address() {
        let t = IpTracker::new(IpLimits { max_connections_per_ip: Some(2), connects_per_ip_per_minute: None });
        let (s1, r1) = t.admit(A);
        let (_s2, r2) = t.admit(A);
        let (s3, r3) = t.admit(A);
        assert!(r1.is_none() && r2.is_none());
        assert_eq!(r3.map(|r| r.code()), Some(4100));
        let (_b, rb) = t.admit(B);
        assert!(rb.is_none(), "another address is not affected");
        drop(s3);
        drop(s1);
        let (_s4, r4) = t.admit(A);
        assert!(r4.is_none(), "closed sockets free their places");
    }

    #[tokio::test(start_paused = true)]
    async fn connect_rate_per_address() {
        let t = IpTracker::new(IpLimits { max_connections_per_ip: None, connects_per_ip_per_minute: Some(3) });
        for _ in 0..3 {
            assert!(t.admit(A).1.is_none());
        }
        assert!(t.admit(A).1.is_some(), "the fourth within a minute is refused");
        assert!(t.admit(B).1.is_none());
        tokio::time::advance(Duration::from_secs(150)).await;
        assert!(t.admit(A).1.is_none(), "allowed again once the window has slid");
    }

    #[tokio::test(start_paused = true)]
    async fn idle_addresses_are_forgotten() {
        let t = IpTracker::new(IpLimits { max_connections_per_ip: Some(5), connects_per_ip_per_minute: None });
        let (slot, _) = t.admit(A);
        assert_eq!(t.tracked(), 1);
        drop(slot);
        assert_eq!(t.tracked(), 0);
        let t = IpTracker::new(IpLimits { max_connections_per_ip: None, connects_per_ip_per_minute: Some(5) });
        drop(t.admit(A));
        assert_eq!(t.tracked(), 1, "the window remembers the attempt");
        tokio::time::advance(Duration::from_secs(121)).await;
        drop(t.admit(B));
        drop(t.admit(B));
        // A sweep runs every SWEEP_EVERY admissions; force one by admitting that many.
        for _ in 0..SWEEP_EVERY {
            drop(t.admit(B));
        }
        assert_eq!(t.tracked(), 1, "A was idle and swept; B is within its window");
    }

    #[test]
    fn no_limits_track_nothing() {
        let t = IpTracker::new(IpLimits::default());
        assert!(matches!(t.admit(A), (None, None)));
    }
}
