//! One app per `[[apps]]` table: its TOML schema, and its conversion into what the engine and
//! both fronts serve ([`AppConfig`]) with every per-app limit and history rule validated.

use std::time::Duration;

use herald_centrifugo::{CentrifugoApp, ChannelOptions, Namespace, PublishLimits, Verifier};
use herald_core::{App, AppLimits, HistoryOptions, HistoryRule, OutboxLimits, OverflowPolicy};
use herald_pusher::PusherApp;
use serde::Deserialize;

use super::seconds::{positive_duration, Seconds, MAX_TIMEOUT_SECS};
use super::webhooks::FileWebhook;
use super::ConfigError;

/// One app as Herald serves it, built from one `[[apps]]` table: what the engine needs (id, enabled,
/// limits, history) and the Pusher front's settings (key, secret, switches). `pusher.id` names the
/// engine app and must equal `app.id`.
#[derive(Debug, Clone)]
pub struct AppConfig {
    /// The engine's app.
    pub app: App,
    /// The Pusher front's settings for it.
    pub pusher: PusherApp,
    /// The Centrifugo front's settings for it.
    pub centrifugo: CentrifugoApp,
}

impl AppConfig {
    /// The development app: `app-id` / `app-key` / `app-secret` ([`App::dev`], [`PusherApp::dev`],
    /// [`CentrifugoApp::dev`]).
    pub fn dev() -> Self {
        AppConfig { app: App::dev(), pusher: PusherApp::dev(), centrifugo: CentrifugoApp::dev() }
    }
}

/// One `[[apps]]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileApp {
    pub(super) id: String,
    key: String,
    secret: String,
    #[serde(default = "yes")]
    enabled: bool,
    #[serde(default)]
    enable_client_messages: bool,
    #[serde(default)]
    enable_user_authentication: bool,
    #[serde(default)]
    enable_subscription_count: bool,
    max_connections: Option<usize>,
    max_channels_per_connection: Option<usize>,
    max_presence_members: Option<usize>,
    max_presence_member_size: Option<usize>,
    max_event_size: Option<usize>,
    client_events_per_second: Option<u32>,
    max_outbox_messages: Option<usize>,
    max_outbox_bytes: Option<usize>,
    max_history_channels: Option<usize>,
    max_channel_name: Option<usize>,
    max_event_name: Option<usize>,
    max_channels_per_publish: Option<usize>,
    max_connections_per_user: Option<usize>,
    #[serde(default)]
    require_user_authentication: bool,
    user_auth_timeout: Option<Seconds>,
    api_requests_per_minute: Option<u32>,
    #[serde(default)]
    batch_webhooks: bool,
    #[serde(default)]
    pub(super) webhooks: Vec<FileWebhook>,
    #[serde(default)]
    history: Vec<FileHistory>,
    /// Centrifugo front: HMAC secret for connection and subscription tokens (default: `secret`).
    token_hmac_secret: Option<String>,
    /// Centrifugo front: PEM public key for RS256/384/512 tokens.
    token_rsa_public_key: Option<String>,
    /// Centrifugo front: PEM public key for ES256/384 tokens.
    token_ecdsa_public_key: Option<String>,
    /// Centrifugo front: JWKS URL whose keys verify RS*/PS*/ES* tokens naming their `kid`.
    token_jwks_url: Option<String>,
    /// Centrifugo front: required `aud` claim.
    token_audience: Option<String>,
    /// Centrifugo front: required `iss` claim.
    token_issuer: Option<String>,
    /// Centrifugo front: server API key (default: `secret`).
    api_key: Option<String>,
    /// Centrifugo front: clients may connect without a token (Centrifugo's
    /// `allow_anonymous_connect_without_token`; `allow_anonymous` for short).
    #[serde(default, alias = "allow_anonymous")]
    allow_anonymous_connect_without_token: bool,
    /// Centrifugo front: subscribe every authenticated connection to `#<user>`.
    #[serde(default)]
    user_subscribe_to_personal: bool,
    /// Centrifugo front: client publish rate limits (per connection, per user; a namespace's
    /// `client_publish_limits` overrides them).
    #[serde(default)]
    client_publish_limits: PublishLimits,
    /// Centrifugo front: options of channels without a namespace.
    #[serde(default)]
    channel_options: ChannelOptions,
    /// Centrifugo front: namespaces.
    #[serde(default)]
    namespaces: Vec<Namespace>,
}

/// One `[[apps.history]]` table: channels starting with `prefix` keep `size` publications for `ttl`
/// seconds after the last one.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileHistory {
    prefix: String,
    size: usize,
    ttl: u64,
}

/// Most publications one channel's history may keep.
const MAX_HISTORY_SIZE: usize = 10_000;

/// Serde default of `enabled`.
fn yes() -> bool {
    true
}

impl FileApp {
    pub(super) fn into_app(self) -> Result<AppConfig, ConfigError> {
        let d = AppLimits::default();
        let positive = |name: &str, v: Option<usize>, default: usize| match v {
            Some(0) => Err(ConfigError::Invalid(format!("app {:?}: {name} must be positive", self.id))),
            Some(v) => Ok(v),
            None => Ok(default),
        };
        let limits = AppLimits {
            max_connections: self.max_connections,
            max_channels_per_connection: positive(
                "max_channels_per_connection",
                self.max_channels_per_connection,
                d.max_channels_per_connection,
            )?,
            max_presence_members: positive("max_presence_members", self.max_presence_members, d.max_presence_members)?,
            max_presence_member_size: positive("max_presence_member_size", self.max_presence_member_size, d.max_presence_member_size)?,
            max_event_size: positive("max_event_size", self.max_event_size, d.max_event_size)?,
            client_events_per_second: self.client_events_per_second.unwrap_or(d.client_events_per_second),
            outbox: OutboxLimits {
                max_messages: positive("max_outbox_messages", self.max_outbox_messages, d.outbox.max_messages)?,
                max_bytes: positive("max_outbox_bytes", self.max_outbox_bytes, d.outbox.max_bytes)?,
                overflow: OverflowPolicy::DisconnectSlowConsumer,
            },
            max_history_channels: positive("max_history_channels", self.max_history_channels, d.max_history_channels)?,
            max_channel_name: positive("max_channel_name", self.max_channel_name, d.max_channel_name)?,
            max_event_name: positive("max_event_name", self.max_event_name, d.max_event_name)?,
            max_channels_per_publish: positive("max_channels_per_publish", self.max_channels_per_publish, d.max_channels_per_publish)?,
            max_connections_per_user: match self.max_connections_per_user {
                Some(n) => Some(positive("max_connections_per_user", Some(n), n)?),
                None => None,
            },
        };
        let user_auth_timeout = match self.user_auth_timeout {
            Some(s) => positive_duration(&format!("app {:?}: user_auth_timeout", self.id), s.get())?,
            None => herald_pusher::USER_AUTH_TIMEOUT,
        };
        if self.require_user_authentication && !self.enable_user_authentication {
            return Err(ConfigError::Invalid(format!(
                "app {:?}: require_user_authentication needs enable_user_authentication = true",
                self.id
            )));
        }
        let mut history = Vec::with_capacity(self.history.len());
        for rule in &self.history {
            if rule.size == 0 || rule.size > MAX_HISTORY_SIZE || rule.ttl == 0 || rule.ttl > MAX_TIMEOUT_SECS {
                return Err(ConfigError::Invalid(format!(
                    "app {:?}: history for {:?} needs size 1 to {MAX_HISTORY_SIZE} and ttl 1 to {MAX_TIMEOUT_SECS} seconds",
                    self.id, rule.prefix
                )));
            }
            let options = HistoryOptions { size: rule.size, ttl: Duration::from_secs(rule.ttl) };
            history.push(HistoryRule { prefix: rule.prefix.clone(), options });
        }
        // Centrifugo namespaces with history become engine history rules too, so a publication to
        // such a channel keeps its history whichever front or API publishes it; the options of
        // channels without a namespace come last (the fallback).
        for ns in &self.namespaces {
            if let Some(options) = ns.options.history() {
                history.push(HistoryRule { prefix: format!("{}:", ns.name), options });
            }
        }
        if let Some(options) = self.channel_options.history() {
            history.push(HistoryRule { prefix: String::new(), options });
        }
        let invalid = |what: String| ConfigError::Invalid(format!("app {:?}: {what}", self.id));
        self.channel_options.validate().map_err(|e| invalid(format!("channel_options: {e}")))?;
        self.client_publish_limits.validate().map_err(invalid)?;
        let mut names = std::collections::HashSet::new();
        for ns in &self.namespaces {
            let valid = !ns.name.is_empty() && ns.name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
            if !valid || !names.insert(ns.name.as_str()) {
                return Err(invalid(format!("namespace name {:?} must be unique, non-empty, letters, digits, - _ .", ns.name)));
            }
            ns.options.validate().map_err(|e| invalid(format!("namespace {:?}: {e}", ns.name)))?;
        }
        let centrifugo = CentrifugoApp {
            id: self.id.clone(),
            token_hmac_secret: Some(self.token_hmac_secret.clone().unwrap_or_else(|| self.secret.clone())),
            token_rsa_public_key: self.token_rsa_public_key.clone(),
            token_ecdsa_public_key: self.token_ecdsa_public_key.clone(),
            token_jwks_url: self.token_jwks_url.clone(),
            token_audience: self.token_audience.clone(),
            token_issuer: self.token_issuer.clone(),
            api_key: Some(self.api_key.clone().unwrap_or_else(|| self.secret.clone())),
            allow_anonymous_connect_without_token: self.allow_anonymous_connect_without_token,
            user_subscribe_to_personal: self.user_subscribe_to_personal,
            client_publish_limits: self.client_publish_limits,
            channel_options: self.channel_options.clone(),
            namespaces: self.namespaces.clone(),
        };
        Verifier::new(&centrifugo).map_err(|e| ConfigError::Invalid(e.to_string()))?;
        let pusher = PusherApp {
            id: self.id.clone(),
            key: self.key,
            secret: self.secret,
            enable_client_messages: self.enable_client_messages,
            enable_user_authentication: self.enable_user_authentication,
            enable_subscription_count: self.enable_subscription_count,
            require_user_authentication: self.require_user_authentication,
            user_auth_timeout,
            // Resolved against the server-wide default in `Config::resolve` (0: no limit).
            api_requests_per_minute: self.api_requests_per_minute,
            batch_webhooks: self.batch_webhooks,
        };
        Ok(AppConfig { app: App { id: self.id, enabled: self.enabled, limits, history }, pusher, centrifugo })
    }
}

/// Every app has an id, key and secret, and no two share an id or a key.
pub(super) fn validate_apps(apps: &[AppConfig]) -> Result<(), ConfigError> {
    let mut ids = std::collections::HashSet::new();
    let mut keys = std::collections::HashSet::new();
    for AppConfig { pusher: app, .. } in apps {
        if app.id.is_empty() || app.key.is_empty() || app.secret.is_empty() {
            return Err(ConfigError::Invalid(format!("app {:?}: id, key and secret must be non-empty", app.id)));
        }
        if !ids.insert(app.id.as_str()) {
            return Err(ConfigError::Invalid(format!("duplicate app id {:?}", app.id)));
        }
        if !keys.insert(app.key.as_str()) {
            return Err(ConfigError::Invalid(format!("duplicate app key {:?}", app.key)));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::test_support::parse;
    use super::super::{Cli, Config};
    use super::*;

    #[test]
    fn file_apps_with_limits() {
        let file = parse(
            r#"
            [[apps]]
            id = "1"
            key = "k1"
            secret = "s1"
            enable_client_messages = true
            enable_subscription_count = true
            max_presence_members = 5
            max_outbox_messages = 50
            "#,
        );
        let c = Config::resolve(file, &Cli::default()).unwrap();
        let AppConfig { app, pusher, .. } = &c.apps[0];
        assert_eq!((app.id.as_str(), pusher.id.as_str(), pusher.key.as_str(), pusher.secret.as_str()), ("1", "1", "k1", "s1"));
        assert!(app.enabled && pusher.enable_client_messages && !pusher.enable_user_authentication && pusher.enable_subscription_count);
        assert_eq!(app.limits.max_presence_members, 5);
        assert_eq!(app.limits.outbox.max_messages, 50);
    }

    #[test]
    fn new_app_keys_parse_and_validate() {
        let c = Config::resolve(
            parse(
                r#"
                max_connections_per_ip = 10
                connects_per_ip_per_minute = 100
                [[apps]]
                id = "1"
                key = "k"
                secret = "s"
                enable_user_authentication = true
                require_user_authentication = true
                user_auth_timeout = 5
                api_requests_per_minute = 600
                batch_webhooks = true
                max_channel_name = 50
                max_event_name = 40
                max_channels_per_publish = 10
                max_connections_per_user = 3
                [[apps.webhooks]]
                url = "http://h/hook"
                headers = { Authorization = "Bearer x" }
                "#,
            ),
            &Cli::default(),
        )
        .unwrap();
        let AppConfig { app, pusher, .. } = &c.apps[0];
        assert!(pusher.require_user_authentication && pusher.batch_webhooks);
        assert_eq!((pusher.user_auth_timeout, pusher.api_requests_per_minute), (Duration::from_secs(5), Some(600)));
        assert_eq!((app.limits.max_channel_name, app.limits.max_event_name, app.limits.max_channels_per_publish), (50, 40, 10));
        assert_eq!(app.limits.max_connections_per_user, Some(3));
        assert_eq!(c.pusher.webhooks["1"][0].headers, vec![("Authorization".to_string(), "Bearer x".to_string())]);
        assert_eq!((c.http.ip.max_connections_per_ip, c.http.ip.connects_per_ip_per_minute), (Some(10), Some(100)));
        let err = |text: &str| Config::resolve(parse(text), &Cli::default()).unwrap_err().to_string();
        let app = "[[apps]]\nid='a'\nkey='k'\nsecret='s'\n";
        assert!(err(&format!("{app}require_user_authentication = true\nenable_user_authentication = false"))
            .contains("require_user_authentication"));
        assert!(err(&format!("{app}max_connections_per_user = 0")).contains("max_connections_per_user"));
        let limit =
            |text: &str| Config::resolve(parse(&format!("{app}{text}")), &Cli::default()).unwrap().apps[0].pusher.api_requests_per_minute;
        assert_eq!(limit(""), Some(herald_pusher::DEFAULT_API_REQUESTS_PER_MINUTE), "on by default");
        assert_eq!(limit("api_requests_per_minute = 0"), None, "0 turns it off");
        assert!(err(&format!("{app}[[apps.webhooks]]\nurl='http://h'\nheaders = {{ X-Pusher-Signature = 'x' }}"))
            .contains("X-Pusher-Signature"));
        assert!(err("max_connections_per_ip = 0").contains("max_connections_per_ip"));
        assert!(err("admin_token = 'short'").contains("admin_token"));
        assert!(!format!("{:?}", Config::resolve(parse("admin_token = 'a-very-secret-admin-token'"), &Cli::default()).unwrap())
            .contains("a-very-secret"));
    }
}
