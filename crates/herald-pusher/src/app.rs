//! Each app's Pusher settings: the key clients connect with, the secret that signs, and the protocol
//! switches. The engine knows an app only by its id; these settings live here, with the front that
//! uses them, and name the engine's app by that id.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// The default HTTP API rate limit per app: 60,000 requests a minute (a sliding window), 1,000 a
/// second on average. Generous on purpose: a Pusher backend publishes through this API, often one
/// request per user action, and Pusher itself sets no per-minute cap (Soketi's default is none,
/// Sockudo's 100 a minute per IP); the limit is there so a runaway or compromised backend cannot take
/// the node, not to meter normal use. Lower it per app with `api_requests_per_minute`.
pub const DEFAULT_API_REQUESTS_PER_MINUTE: u32 = 60_000;

/// Pusher's default for how long a connection of an app that requires sign-in has to sign in.
pub const USER_AUTH_TIMEOUT: Duration = Duration::from_secs(30);

/// One app's Pusher credentials and switches. `id` is the engine app's id (`herald_core::App::id`).
#[derive(Debug, Clone)]
pub struct PusherApp {
    /// The engine app's id, also the HTTP API's (`/apps/{id}/...`).
    pub id: String,
    /// Public key clients connect with (`/app/{key}`).
    pub key: String,
    /// Shared secret for signatures (API requests, private channels, sign-in, webhooks).
    pub secret: String,
    /// Whether clients may send `client-*` events.
    pub enable_client_messages: bool,
    /// Whether clients may sign in as a user.
    pub enable_user_authentication: bool,
    /// Whether subscribers receive subscription-count updates.
    pub enable_subscription_count: bool,
    /// Whether every connection must sign in (`pusher:signin`) within [`PusherApp::user_auth_timeout`];
    /// one that does not is closed with 4009 (Pusher's "enforce user authentication").
    pub require_user_authentication: bool,
    /// How long a connection has to sign in when the app requires it.
    pub user_auth_timeout: Duration,
    /// HTTP API requests this app may make per minute (sliding window); `None` is unlimited. Beyond
    /// it: 429 with `Retry-After`. Default [`DEFAULT_API_REQUESTS_PER_MINUTE`].
    pub api_requests_per_minute: Option<u32>,
    /// Whether webhook events are batched (several per request, Pusher's opt-in). Off: one event per
    /// request, what receivers written for Pusher's default expect.
    pub batch_webhooks: bool,
}

impl PusherApp {
    /// The development app: `app-id` / `app-key` / `app-secret`, client events and user sign-in on,
    /// subscription counts off.
    pub fn dev() -> Self {
        PusherApp {
            id: "app-id".into(),
            key: "app-key".into(),
            secret: "app-secret".into(),
            enable_client_messages: true,
            enable_user_authentication: true,
            enable_subscription_count: false,
            require_user_authentication: false,
            user_auth_timeout: USER_AUTH_TIMEOUT,
            api_requests_per_minute: Some(DEFAULT_API_REQUESTS_PER_MINUTE),
            batch_webhooks: false,
        }
    }
}

/// Every app's settings, by key (WebSocket path) and by id (HTTP API, engine events).
#[derive(Debug, Default)]
pub(crate) struct Apps {
    by_id: HashMap<String, Arc<PusherApp>>,
    by_key: HashMap<String, Arc<PusherApp>>,
}

impl Apps {
    /// The lookup of `apps`; a later app with the same id or key replaces an earlier one.
    pub(crate) fn new(apps: impl IntoIterator<Item = PusherApp>) -> Apps {
        let mut lookup = Apps::default();
        for app in apps {
            let app = Arc::new(app);
            lookup.by_key.insert(app.key.clone(), app.clone());
            lookup.by_id.insert(app.id.clone(), app);
        }
        lookup
    }

    /// The app with this id.
    pub(crate) fn by_id(&self, id: &str) -> Option<&Arc<PusherApp>> {
        self.by_id.get(id)
    }

    /// The app with this key.
    pub(crate) fn by_key(&self, key: &str) -> Option<&Arc<PusherApp>> {
        self.by_key.get(key)
    }

    /// Every app.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &Arc<PusherApp>> {
        self.by_id.values()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apps_are_found_by_id_and_by_key() {
        let apps = Apps::new([PusherApp::dev(), PusherApp { id: "2".into(), key: "k2".into(), ..PusherApp::dev() }]);
        assert_eq!(apps.by_key("app-key").unwrap().id, "app-id");
        assert_eq!(apps.by_id("2").unwrap().key, "k2");
        assert!(apps.by_key("app-id").is_none());
        assert!(apps.by_id("k2").is_none());
        assert_eq!(apps.iter().count(), 2);
    }
}
