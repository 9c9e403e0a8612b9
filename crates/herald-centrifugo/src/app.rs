//! Each app's Centrifugo settings: token keys, the API key, anonymous access, the personal channel
//! and channel options. The engine knows an app only by its id; these settings name it by that id.

use std::collections::HashMap;
use std::sync::Arc;

use crate::options::{namespace_of, ChannelOptions, Namespace};
use crate::ratelimit::{PublishLimits, UserWindows};
use crate::token::Verifier;

/// One app's Centrifugo settings. `id` is the engine app's id (`herald_core::App::id`).
#[derive(Debug, Clone)]
pub struct CentrifugoApp {
    /// The engine app's id (`/apps/{id}/connection/websocket`).
    pub id: String,
    /// HMAC secret for HS256/384/512 tokens (Herald's default: the app's Pusher secret).
    pub token_hmac_secret: Option<String>,
    /// PEM public key for RS256/384/512 tokens.
    pub token_rsa_public_key: Option<String>,
    /// PEM public key for ES256/384 tokens.
    pub token_ecdsa_public_key: Option<String>,
    /// JWKS endpoint whose keys verify RS*/PS*/ES* tokens that name their key (`kid`) ([`crate::jwks`]).
    pub token_jwks_url: Option<String>,
    /// Required `aud` claim, if set.
    pub token_audience: Option<String>,
    /// Required `iss` claim, if set.
    pub token_issuer: Option<String>,
    /// Key for the server HTTP API (Herald's default: the app's secret).
    pub api_key: Option<String>,
    /// Clients may connect without a token (as the anonymous user `""`).
    pub allow_anonymous_connect_without_token: bool,
    /// Every authenticated connection is subscribed server-side to `#<user>`, its user's deliveries.
    pub user_subscribe_to_personal: bool,
    /// Client publish rate limits of channels whose options set none (Herald's own).
    pub client_publish_limits: PublishLimits,
    /// Options of channels without a namespace.
    pub channel_options: ChannelOptions,
    /// Namespaces and their options.
    pub namespaces: Vec<Namespace>,
}

impl CentrifugoApp {
    /// Whether any of its channels has the `viewer_counts` option.
    pub fn has_viewer_counts(&self) -> bool {
        self.channel_options.viewer_counts || self.namespaces.iter().any(|ns| ns.options.viewer_counts)
    }
}

impl CentrifugoApp {
    /// Settings for app `id` whose tokens and API are keyed by `secret`, with Centrifugo's defaults.
    pub fn with_secret(id: impl Into<String>, secret: impl Into<String>) -> CentrifugoApp {
        let secret = secret.into();
        CentrifugoApp {
            id: id.into(),
            token_hmac_secret: Some(secret.clone()),
            token_rsa_public_key: None,
            token_ecdsa_public_key: None,
            token_jwks_url: None,
            token_audience: None,
            token_issuer: None,
            api_key: Some(secret),
            allow_anonymous_connect_without_token: false,
            user_subscribe_to_personal: false,
            client_publish_limits: PublishLimits::default(),
            channel_options: ChannelOptions::default(),
            namespaces: Vec::new(),
        }
    }

    /// The development app: `app-id`, secret `app-secret`.
    pub fn dev() -> CentrifugoApp {
        CentrifugoApp::with_secret("app-id", "app-secret")
    }
}

/// An app's settings made ready for use: the verifier built once, namespaces by name.
#[derive(Debug)]
pub(crate) struct ReadyApp {
    pub(crate) settings: CentrifugoApp,
    pub(crate) verifier: Verifier,
    namespaces: HashMap<String, ChannelOptions>,
    /// Per-user client publish windows on this node.
    pub(crate) user_publish: UserWindows,
}

impl ReadyApp {
    pub(crate) fn new(settings: CentrifugoApp) -> Result<ReadyApp, crate::token::KeyError> {
        let verifier = Verifier::new(&settings)?;
        let namespaces = settings.namespaces.iter().map(|ns| (ns.name.clone(), ns.options.clone())).collect();
        Ok(ReadyApp { settings, verifier, namespaces, user_publish: UserWindows::default() })
    }

    /// The options of `channel`'s namespace; `None` for an unknown namespace.
    pub(crate) fn options(&self, channel: &str) -> Option<&ChannelOptions> {
        match namespace_of(channel) {
            "" => Some(&self.settings.channel_options),
            ns => self.namespaces.get(ns),
        }
    }
}

/// Every app's settings by id, and the default app (the first).
#[derive(Debug, Default)]
pub(crate) struct Apps {
    by_id: HashMap<String, Arc<ReadyApp>>,
    default: Option<Arc<ReadyApp>>,
}

impl Apps {
    pub(crate) fn new(apps: impl IntoIterator<Item = ReadyApp>) -> Apps {
        let mut lookup = Apps::default();
        for app in apps {
            let app = Arc::new(app);
            lookup.default.get_or_insert_with(|| app.clone());
            lookup.by_id.insert(app.settings.id.clone(), app);
        }
        lookup
    }

    /// Every app.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &Arc<ReadyApp>> {
        self.by_id.values()
    }

    pub(crate) fn by_id(&self, id: &str) -> Option<&Arc<ReadyApp>> {
        self.by_id.get(id)
    }

    pub(crate) fn default_app(&self) -> Option<&Arc<ReadyApp>> {
        self.default.as_ref()
    }
}
