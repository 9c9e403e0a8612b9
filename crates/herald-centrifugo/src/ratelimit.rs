//! Client publish rate limits (Herald's own option): a sliding window per connection and per user,
//! per namespace, so one chatty client or one user's many devices can't flood a channel's
//! subscribers. Refusals answer Centrifugo's error 111 "too many requests" (temporary: the client may
//! retry). The windows are herald-core's [`SlidingWindow`] (two counters per key, no per-event
//! timestamps), on tokio's clock.
//!
//! Per-user windows are this node's: a user publishing through several nodes gets the limit on each.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use herald_core::ratelimit::{RateLimit, SlidingWindow};
use serde::Deserialize;

/// Users (per namespace) whose publish windows one app tracks. When full, idle windows are dropped;
/// if none is idle the publish is admitted without a per-user window (counted in
/// `herald_errors_total{kind="publish_limit_users_full"}`): the per-connection limit still applies.
pub const MAX_TRACKED_USERS: usize = 100_000;

/// Publications a client may make, per window (0: unlimited). Defaults: 50 per connection and 100
/// per user per second.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PublishLimits {
    /// Publications per window by one connection.
    pub per_connection: u32,
    /// Publications per window by all connections of one user (on this node).
    pub per_user: u32,
    /// The sliding window, e.g. `"1s"`.
    #[serde(deserialize_with = "crate::options::duration")]
    pub window: Duration,
}

impl Default for PublishLimits {
    fn default() -> Self {
        PublishLimits { per_connection: 50, per_user: 100, window: Duration::from_secs(1) }
    }
}

impl PublishLimits {
    /// Checks the values.
    pub fn validate(&self) -> Result<(), String> {
        if self.window.is_zero() || self.window > Duration::from_secs(3600) {
            return Err("client_publish_limits.window must be between 1ms and 1h".into());
        }
        Ok(())
    }

    fn rate(limit: u32, window: Duration) -> Option<RateLimit> {
        (limit > 0).then_some(RateLimit { limit, window })
    }
}

/// One connection's windows, by namespace (bounded by the app's namespaces).
#[derive(Debug, Default)]
pub(crate) struct ConnectionWindows(HashMap<String, SlidingWindow>);

/// One app's per-user windows, by user and namespace (bounded by [`MAX_TRACKED_USERS`]).
#[derive(Debug, Default)]
pub(crate) struct UserWindows(Mutex<HashMap<(Arc<str>, String), SlidingWindow>>);

/// Counts one publication by `user` on `connection` in namespace `ns` under `limits`; `Err` if over.
pub(crate) fn admit(
    connection: &mut ConnectionWindows,
    users: &UserWindows,
    user: &Arc<str>,
    ns: &str,
    limits: &PublishLimits,
) -> Result<(), Duration> {
    if let Some(rate) = PublishLimits::rate(limits.per_connection, limits.window) {
        let window = connection.0.entry(ns.to_string()).or_insert_with(|| SlidingWindow::new(rate));
        window.try_acquire()?;
    }
    let Some(rate) = PublishLimits::rate(limits.per_user, limits.window) else { return Ok(()) };
    if user.is_empty() {
        return Ok(());
    }
    let mut map = users.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let key = (user.clone(), ns.to_string());
    if !map.contains_key(&key) && map.len() >= MAX_TRACKED_USERS {
        map.retain(|_, w| !w.is_idle());
        if map.len() >= MAX_TRACKED_USERS {
            metrics::counter!("herald_errors_total", "kind" => "publish_limit_users_full").increment(1);
            return Ok(());
        }
    }
    map.entry(key).or_insert_with(|| SlidingWindow::new(rate)).try_acquire()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn per_connection_and_per_user_windows() {
        let limits = PublishLimits { per_connection: 3, per_user: 5, window: Duration::from_secs(1) };
        let users = UserWindows::default();
        let alice: Arc<str> = Arc::from("alice");
        let (mut a, mut b) = (ConnectionWindows::default(), ConnectionWindows::default());
        for _ in 0..3 {
            assert!(admit(&mut a, &users, &alice, "", &limits).is_ok());
        }
        assert!(admit(&mut a, &users, &alice, "", &limits).is_err(), "the connection's 4th in a second");
        assert!(admit(&mut a, &users, &alice, "chat", &limits).is_ok(), "another namespace has its own window");
        assert!(admit(&mut b, &users, &alice, "", &limits).is_ok());
        assert!(admit(&mut b, &users, &alice, "", &limits).is_ok());
        assert!(admit(&mut b, &users, &alice, "", &limits).is_err(), "the user's 6th: alice's two connections share 5");
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(admit(&mut a, &users, &alice, "", &limits).is_ok(), "the window slid");
        // Anonymous clients only have the per-connection window.
        let anon: Arc<str> = Arc::from("");
        let mut c = ConnectionWindows::default();
        for _ in 0..3 {
            assert!(admit(&mut c, &users, &anon, "", &limits).is_ok());
        }
        assert!(admit(&mut c, &users, &anon, "", &limits).is_err());
        let unlimited = PublishLimits { per_connection: 0, per_user: 0, ..limits };
        for _ in 0..1000 {
            assert!(admit(&mut c, &users, &alice, "x", &unlimited).is_ok());
        }
    }

    #[test]
    fn limits_from_config() {
        let l: PublishLimits = serde_json::from_str(r#"{"per_connection":5,"window":"2s"}"#).unwrap();
        assert_eq!(l, PublishLimits { per_connection: 5, per_user: 100, window: Duration::from_secs(2) });
        assert!(l.validate().is_ok());
        assert!(PublishLimits { window: Duration::ZERO, ..l }.validate().is_err());
    }
}
