//! Typed configuration: defaults, then a TOML file, then `HERALD_*` environment variables, then flags.
//!
//! Bad values fail at start-up with a message naming the key; nothing is silently defaulted.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use herald_centrifugo::{CentrifugoApp, CentrifugoConfig, ChannelOptions, Namespace, PublishLimits, Verifier};
use herald_core::{App, AppLimits, HistoryOptions, HistoryRule, OutboxLimits, OverflowPolicy};
use herald_ingest::SourceConfig;
use herald_pusher::webhooks::RESERVED_HEADERS;
use herald_pusher::{PusherApp, PusherConfig, WebhookTarget};
use herald_redis::{redact, RedisConfig};
use serde::Deserialize;

use crate::ip_limits::IpLimits;
use crate::listener::HttpConfig;
use crate::tls::TlsFiles;

/// Command-line flags; each also reads its `HERALD_*` environment variable. Flags win over env,
/// env wins over the config file.
#[derive(Debug, Default, clap::Parser)]
#[command(name = "herald", version, about = "Herald: a Pusher-compatible real-time server")]
pub struct Cli {
    /// TOML config file.
    #[arg(long, short, env = "HERALD_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1].
    #[arg(long, env = "HERALD_HOST")]
    pub host: Option<IpAddr>,
    /// Port to listen on [default: 6001].
    #[arg(long, short, env = "HERALD_PORT")]
    pub port: Option<u16>,
    /// Id of the default app, used when the config file defines no apps [default: 1] (numeric, as the
    /// Python, PHP and Ruby server SDKs require).
    #[arg(long, env = "HERALD_APP_ID")]
    pub app_id: Option<String>,
    /// Key of the default app [default: app-key].
    #[arg(long, env = "HERALD_APP_KEY")]
    pub app_key: Option<String>,
    /// Secret of the default app [default: app-secret].
    #[arg(long, env = "HERALD_APP_SECRET")]
    pub app_secret: Option<String>,
    /// Seconds of silence before the server pings a connection [default: 120].
    #[arg(long, env = "HERALD_ACTIVITY_TIMEOUT")]
    pub activity_timeout: Option<u64>,
    /// Log filter, e.g. `info` or `herald_pusher=debug` [default: info].
    #[arg(long, env = "HERALD_LOG")]
    pub log: Option<String>,
    /// Log format: `text` (colours only on a terminal, and not with NO_COLOR) or `json` (one object a
    /// line) [default: text].
    #[arg(long, env = "HERALD_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
    /// Seconds to wait for any reply to a server ping before closing with 4201 [default: 30].
    #[arg(long, env = "HERALD_PONG_TIMEOUT")]
    pub pong_timeout: Option<u64>,
    /// Connections (sockets) this process accepts across all apps [default: 1000000].
    #[arg(long, env = "HERALD_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// Largest HTTP API request body in bytes (413 beyond) [default: 262144].
    #[arg(long, env = "HERALD_MAX_REQUEST_BODY")]
    pub max_request_body: Option<usize>,
    /// Seconds shutdown waits for connections to drain [default: 10].
    #[arg(long, env = "HERALD_SHUTDOWN_GRACE")]
    pub shutdown_grace: Option<u64>,
    /// Seconds (decimals allowed) a connection has to send a complete request head, the WebSocket
    /// handshake included; also the keep-alive idle timeout [default: 10].
    #[arg(long, env = "HERALD_HEADER_TIMEOUT")]
    pub header_timeout: Option<f64>,
    /// Seconds (decimals allowed) an HTTP API request body may take to arrive (408 beyond) [default: 10].
    #[arg(long, env = "HERALD_BODY_TIMEOUT")]
    pub body_timeout: Option<f64>,
    /// Seconds (decimals allowed) a connection may take to accept one batch of frames [default: 10].
    #[arg(long, env = "HERALD_WRITE_TIMEOUT")]
    pub write_timeout: Option<f64>,
    /// Engine: `memory` (one node) or `redis` (nodes sharing a Redis) [default: memory].
    #[arg(long, env = "HERALD_ENGINE", value_enum)]
    pub engine: Option<EngineKind>,
    /// Redis URL for the redis engine [default: redis://127.0.0.1:6379].
    #[arg(long, env = "HERALD_REDIS_URL")]
    pub redis_url: Option<RedisUrl>,
    /// Prefix of Herald's Redis channel names; deployments sharing a Redis need different ones
    /// [default: herald].
    #[arg(long, env = "HERALD_REDIS_PREFIX")]
    pub redis_prefix: Option<String>,
    /// Seconds a node's lease lives; a crashed node's presence members are removed within this plus
    /// a couple of seconds [default: 10].
    #[arg(long, env = "HERALD_REDIS_LEASE")]
    pub redis_lease: Option<u64>,
    /// Seconds (decimals allowed) each Redis call made for a client or an API request may take
    /// before it fails (an API request then answers 503) [default: 2].
    #[arg(long, env = "HERALD_REDIS_TIMEOUT")]
    pub redis_timeout: Option<f64>,
    /// The Redis is a Redis Cluster: --redis-url lists seed nodes (comma-separated) and pub/sub is
    /// sharded.
    #[arg(long, env = "HERALD_REDIS_CLUSTER")]
    pub redis_cluster: bool,
    /// Sockets one IP address may have open; beyond it WebSocket connections are refused with 4100
    /// [default: unlimited].
    #[arg(long, env = "HERALD_MAX_CONNECTIONS_PER_IP")]
    pub max_connections_per_ip: Option<usize>,
    /// Sockets one IP address may open per minute (sliding window); beyond it WebSocket connections
    /// are refused with 4100 [default: unlimited].
    #[arg(long, env = "HERALD_CONNECTS_PER_IP_PER_MINUTE")]
    pub connects_per_ip_per_minute: Option<u32>,
    /// PEM certificate chain: with --tls-key, Herald serves TLS (wss://, https://); SIGHUP reloads
    /// both files without dropping connections.
    #[arg(long, env = "HERALD_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "HERALD_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// HTTP API requests each app may make per minute (sliding window; 429 with Retry-After beyond
    /// it), for apps that set no `api_requests_per_minute` of their own; 0 turns the limit off
    /// [default: 60000].
    #[arg(long, env = "HERALD_API_REQUESTS_PER_MINUTE")]
    pub api_requests_per_minute: Option<u32>,
    /// Record delivery latency histograms (`false` only to measure what recording costs)
    /// [default: true].
    #[arg(long, env = "HERALD_LATENCY_HISTOGRAMS")]
    pub latency_histograms: Option<bool>,
    /// Token for `/stats` and the dashboard (`Authorization: Bearer ...`); without one they are off.
    #[arg(long, env = "HERALD_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<Secret>,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines; colours only when writing to a terminal.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Which engine carries publications.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum EngineKind {
    /// In-process only: one node.
    Memory,
    /// Nodes sharing one Redis behave as one server.
    Redis,
}

/// The resolved engine settings. `Debug` masks the Redis password.
#[derive(Debug, Clone)]
pub enum EngineConfig {
    /// In-process only.
    Memory,
    /// Through Redis.
    Redis(RedisConfig),
}

/// A Redis URL as given in the config; its `Debug` masks the password.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct RedisUrl(pub String);

impl std::fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", redact(&self.0))
    }
}

impl std::str::FromStr for RedisUrl {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(RedisUrl(s.to_string()))
    }
}

/// A secret from the config (the admin token); its `Debug` does not show it.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("\"***\"")
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Secret(s.to_string()))
    }
}

/// A duration in seconds in the config file: an integer or a decimal (`10`, `0.5`).
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(untagged)]
enum Seconds {
    Whole(u64),
    Decimal(f64),
}

impl Seconds {
    fn get(self) -> f64 {
        match self {
            Seconds::Whole(n) => n as f64,
            Seconds::Decimal(x) => x,
        }
    }
}

/// `secs` as a positive duration, or an error naming `key`.
fn positive_duration(key: &str, secs: f64) -> Result<Duration, ConfigError> {
    match Duration::try_from_secs_f64(secs) {
        Ok(d) if !d.is_zero() && d <= Duration::from_secs(86_400) => Ok(d),
        _ => Err(ConfigError::Invalid(format!("{key} must be a number of seconds above 0 and at most 86400, got {secs}"))),
    }
}

/// The config file. Every key is optional and documented in the README with its default.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    host: Option<IpAddr>,
    port: Option<u16>,
    log: Option<String>,
    log_format: Option<LogFormat>,
    activity_timeout: Option<u64>,
    pong_timeout: Option<u64>,
    max_connections: Option<usize>,
    max_request_body: Option<usize>,
    shutdown_grace: Option<u64>,
    header_timeout: Option<Seconds>,
    body_timeout: Option<Seconds>,
    write_timeout: Option<Seconds>,
    engine: Option<EngineKind>,
    redis_url: Option<RedisUrl>,
    redis_prefix: Option<String>,
    redis_lease: Option<u64>,
    redis_timeout: Option<Seconds>,
    #[serde(default)]
    redis_cluster: bool,
    admin_token: Option<Secret>,
    max_connections_per_ip: Option<usize>,
    connects_per_ip_per_minute: Option<u32>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    centrifugo_ping_interval: Option<Seconds>,
    centrifugo_expired_grace: Option<Seconds>,
    api_requests_per_minute: Option<u32>,
    latency_histograms: Option<bool>,
    #[serde(default)]
    apps: Vec<FileApp>,
    /// Bus sources to relay from (`[[sources]]`, see herald-ingest).
    #[serde(default)]
    sources: Vec<SourceConfig>,
}

/// One `[[apps]]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileApp {
    id: String,
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
    webhooks: Vec<FileWebhook>,
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

/// One `[[apps.webhooks]]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileWebhook {
    url: String,
    #[serde(default)]
    event_types: Vec<String>,
    /// Extra request headers, e.g. `headers = { Authorization = "Bearer ..." }`.
    #[serde(default)]
    headers: std::collections::BTreeMap<String, String>,
}

/// Default of `redis_timeout`.
/// Most publications one channel's history may keep.
const MAX_HISTORY_SIZE: usize = 10_000;
/// Longest keep-alive timeout accepted (a day): beyond it, deadlines would overflow the clock.
const MAX_TIMEOUT_SECS: u64 = 86_400;
const DEFAULT_REDIS_TIMEOUT: Duration = Duration::from_secs(2);

/// The id of the app `herald` serves when its config defines none: numeric, because the Python, PHP and
/// Ruby Pusher SDKs accept only numeric app ids (key and secret stay `app-key` / `app-secret`).
pub const DEV_APP_ID: &str = "1";

/// Webhook events Herald sends.
const WEBHOOK_EVENTS: [&str; 7] =
    ["channel_occupied", "channel_vacated", "member_added", "member_removed", "client_event", "cache_miss", "subscription_count"];

fn yes() -> bool {
    true
}

/// A configuration problem, reported at start-up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema.
    #[error("invalid config file {path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parse error.
        source: Box<toml::de::Error>,
    },
    /// A value is out of range or inconsistent.
    #[error("invalid config: {0}")]
    Invalid(String),
}

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

/// The resolved configuration the server runs with.
#[derive(Debug, Clone)]
pub struct Config {
    /// Listen address.
    pub host: IpAddr,
    /// Listen port.
    pub port: u16,
    /// Log filter.
    pub log: String,
    /// Log format.
    pub log_format: LogFormat,
    /// Apps served.
    pub apps: Vec<AppConfig>,
    /// Pusher front settings.
    pub pusher: PusherConfig,
    /// Centrifugo front settings.
    pub centrifugo: CentrifugoConfig,
    /// HTTP server limits (header deadline).
    pub http: HttpConfig,
    /// How long shutdown waits for connections to drain.
    pub shutdown_grace: Duration,
    /// The engine.
    pub engine: EngineConfig,
    /// Bus sources relayed into the engine (`[[sources]]`).
    pub sources: Vec<SourceConfig>,
    /// The operator's token for `/stats` and the dashboard (off without one).
    pub admin_token: Option<Secret>,
    /// TLS certificate and key, when Herald serves TLS itself.
    pub tls: Option<TlsFiles>,
    /// Whether delivery latency is recorded (off only to measure what recording costs).
    pub latency_histograms: bool,
}

impl Default for Config {
    /// What `herald` runs with given no file, env or flags: the dev app (id [`DEV_APP_ID`]) on
    /// 127.0.0.1:6001, in memory.
    fn default() -> Self {
        let mut dev = AppConfig::dev();
        dev.app.id = DEV_APP_ID.into();
        dev.pusher.id = DEV_APP_ID.into();
        Config {
            host: IpAddr::from([127, 0, 0, 1]),
            port: 6001,
            log: "info".into(),
            log_format: LogFormat::Text,
            apps: vec![dev],
            pusher: PusherConfig::default(),
            http: HttpConfig::default(),
            shutdown_grace: Duration::from_secs(10),
            engine: EngineConfig::Memory,
            admin_token: None,
            tls: None,
            latency_histograms: true,
            sources: Vec::new(),
            centrifugo: CentrifugoConfig::default(),
        }
    }
}

impl Config {
    /// Layers defaults, the file named by `cli.config`, and `cli` (flags and env).
    pub fn load(cli: &Cli) -> Result<Config, ConfigError> {
        let file = match &cli.config {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.clone(), source })?;
                toml::from_str(&text).map_err(|source| ConfigError::Parse { path: path.clone(), source: Box::new(source) })?
            }
            None => FileConfig::default(),
        };
        Config::resolve(file, cli)
    }

    /// Applies `cli` on top of `file` and validates the result.
    pub fn resolve(file: FileConfig, cli: &Cli) -> Result<Config, ConfigError> {
        let defaults = PusherConfig::default();
        let activity = cli.activity_timeout.or(file.activity_timeout).unwrap_or(defaults.activity_timeout.as_secs());
        if activity == 0 || activity > MAX_TIMEOUT_SECS {
            return Err(ConfigError::Invalid(format!(
                "activity_timeout must be 1 to {MAX_TIMEOUT_SECS} seconds (pusher-js requires at least 1)"
            )));
        }
        let pong = cli.pong_timeout.or(file.pong_timeout).unwrap_or(defaults.pong_timeout.as_secs());
        if pong == 0 || pong > MAX_TIMEOUT_SECS {
            return Err(ConfigError::Invalid(format!("pong_timeout must be 1 to {MAX_TIMEOUT_SECS} seconds")));
        }
        let seconds = |key: &str, flag: Option<f64>, file: Option<Seconds>, default: Duration| match flag.or(file.map(Seconds::get)) {
            Some(secs) => positive_duration(key, secs),
            None => Ok(default),
        };
        let header_timeout = seconds("header_timeout", cli.header_timeout, file.header_timeout, HttpConfig::default().header_timeout)?;
        let write_timeout = seconds("write_timeout", cli.write_timeout, file.write_timeout, defaults.write_timeout)?;
        let body_timeout = seconds("body_timeout", cli.body_timeout, file.body_timeout, defaults.body_timeout)?;
        let max_connections = cli.max_connections.or(file.max_connections).unwrap_or(defaults.max_connections);
        if max_connections == 0 {
            return Err(ConfigError::Invalid("max_connections must be positive".into()));
        }
        let mut webhooks = HashMap::new();
        for app in &file.apps {
            for hook in &app.webhooks {
                if !hook.url.starts_with("http://") {
                    return Err(ConfigError::Invalid(format!(
                        "app {:?}: webhook url {:?} must be http:// (put a TLS proxy in front for https)",
                        app.id, hook.url
                    )));
                }
                if let Some(bad) = hook.event_types.iter().find(|t| !WEBHOOK_EVENTS.contains(&t.as_str())) {
                    return Err(ConfigError::Invalid(format!("app {:?}: unknown webhook event type {bad:?}", app.id)));
                }
                for (name, value) in &hook.headers {
                    let valid = axum::http::HeaderName::from_bytes(name.as_bytes()).is_ok()
                        && axum::http::HeaderValue::from_str(value).is_ok()
                        && !RESERVED_HEADERS.contains(&name.to_ascii_lowercase().as_str());
                    if !valid {
                        return Err(ConfigError::Invalid(format!(
                            "app {:?}: webhook header {name:?} is not a valid header, or one Herald sets itself ({})",
                            app.id,
                            RESERVED_HEADERS.join(", ")
                        )));
                    }
                }
            }
            let targets: Vec<WebhookTarget> = app
                .webhooks
                .iter()
                .map(|h| WebhookTarget {
                    url: h.url.clone(),
                    event_types: h.event_types.clone(),
                    headers: h.headers.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
                })
                .collect();
            if !targets.is_empty() {
                webhooks.insert(app.id.clone(), targets);
            }
        }
        let mut apps: Vec<AppConfig> = if file.apps.is_empty() {
            let dev = PusherApp { api_requests_per_minute: None, ..PusherApp::dev() };
            let id = cli.app_id.clone().unwrap_or_else(|| DEV_APP_ID.to_string());
            let pusher = PusherApp {
                id: id.clone(),
                key: cli.app_key.clone().unwrap_or(dev.key.clone()),
                secret: cli.app_secret.clone().unwrap_or(dev.secret.clone()),
                ..dev
            };
            let centrifugo = CentrifugoApp::with_secret(id.clone(), pusher.secret.clone());
            vec![AppConfig { app: App { id, ..App::dev() }, pusher, centrifugo }]
        } else {
            file.apps.into_iter().map(FileApp::into_app).collect::<Result<_, _>>()?
        };
        // An app's own API rate limit, else the server-wide one, else the default; 0 is no limit.
        let api_rate = cli.api_requests_per_minute.or(file.api_requests_per_minute);
        for app in &mut apps {
            let limit = app.pusher.api_requests_per_minute.or(api_rate).unwrap_or(herald_pusher::DEFAULT_API_REQUESTS_PER_MINUTE);
            app.pusher.api_requests_per_minute = (limit > 0).then_some(limit);
        }
        validate_apps(&apps)?;
        herald_ingest::validate_all(&file.sources, |id| apps.iter().any(|a| a.app.id == id))
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        let ip = IpLimits {
            max_connections_per_ip: cli.max_connections_per_ip.or(file.max_connections_per_ip),
            connects_per_ip_per_minute: cli.connects_per_ip_per_minute.or(file.connects_per_ip_per_minute),
        };
        if ip.max_connections_per_ip == Some(0) || ip.connects_per_ip_per_minute == Some(0) {
            return Err(ConfigError::Invalid(
                "max_connections_per_ip and connects_per_ip_per_minute must be positive (omit them for no limit)".into(),
            ));
        }
        let tls = match (cli.tls_cert.clone().or(file.tls_cert), cli.tls_key.clone().or(file.tls_key)) {
            (Some(cert), Some(key)) => Some(TlsFiles { cert, key }),
            (None, None) => None,
            _ => return Err(ConfigError::Invalid("tls_cert and tls_key go together: set both or neither".into())),
        };
        let admin_token = cli.admin_token.clone().or(file.admin_token);
        if admin_token.as_ref().is_some_and(|Secret(t)| t.len() < 16 || t.trim() != t) {
            return Err(ConfigError::Invalid("admin_token must be at least 16 characters, without surrounding spaces".into()));
        }
        Ok(Config {
            latency_histograms: cli.latency_histograms.or(file.latency_histograms).unwrap_or(true),
            sources: file.sources,
            admin_token,
            tls,
            host: cli.host.or(file.host).unwrap_or(IpAddr::from([127, 0, 0, 1])),
            port: cli.port.or(file.port).unwrap_or(6001),
            log: cli.log.clone().or(file.log).unwrap_or_else(|| "info".into()),
            log_format: cli.log_format.or(file.log_format).unwrap_or_default(),
            apps,
            pusher: PusherConfig {
                activity_timeout: Duration::from_secs(activity),
                pong_timeout: Duration::from_secs(pong),
                max_request_body: cli.max_request_body.or(file.max_request_body).unwrap_or(defaults.max_request_body),
                max_connections,
                body_timeout,
                webhooks,
                write_timeout,
            },
            centrifugo: CentrifugoConfig {
                ping_interval: match file.centrifugo_ping_interval {
                    Some(s) => positive_duration("centrifugo_ping_interval", s.get())?,
                    None => CentrifugoConfig::default().ping_interval,
                },
                expired_grace: match file.centrifugo_expired_grace {
                    Some(s) => positive_duration("centrifugo_expired_grace", s.get())?,
                    None => CentrifugoConfig::default().expired_grace,
                },
                max_connections,
                write_timeout,
                ..CentrifugoConfig::default()
            },
            http: HttpConfig { header_timeout, ip },
            shutdown_grace: Duration::from_secs(cli.shutdown_grace.or(file.shutdown_grace).unwrap_or(10)),
            engine: match cli.engine.or(file.engine).unwrap_or(EngineKind::Memory) {
                EngineKind::Memory => EngineConfig::Memory,
                EngineKind::Redis => {
                    let d = RedisConfig::default();
                    let prefix = cli.redis_prefix.clone().or(file.redis_prefix).unwrap_or(d.prefix);
                    if prefix.is_empty() || prefix.contains([':', '{', '}']) {
                        return Err(ConfigError::Invalid("redis_prefix must be non-empty and contain no ':', '{' or '}'".into()));
                    }
                    let lease = cli.redis_lease.or(file.redis_lease).map_or(d.lease, Duration::from_secs);
                    if lease.is_zero() {
                        return Err(ConfigError::Invalid("redis_lease must be at least 1 second".into()));
                    }
                    let cluster = cli.redis_cluster || file.redis_cluster;
                    let timeout = match cli.redis_timeout.or(file.redis_timeout.map(Seconds::get)) {
                        Some(secs) => positive_duration("redis_timeout", secs)?,
                        None => DEFAULT_REDIS_TIMEOUT,
                    };
                    EngineConfig::Redis(RedisConfig {
                        url: cli.redis_url.clone().or(file.redis_url).map_or(d.url, |u| u.0),
                        prefix,
                        lease,
                        cluster,
                        timeout,
                        ..d
                    })
                }
            },
        })
    }
}

impl Config {
    /// Apps that still use the dev app's public secret while Herald listens beyond loopback: anyone
    /// could sign API requests and channel auth for them.
    pub fn exposed_dev_secrets(&self) -> Vec<&str> {
        if self.host.is_loopback() {
            return Vec::new();
        }
        let dev = PusherApp::dev().secret;
        self.apps.iter().filter(|a| a.pusher.secret == dev).map(|a| a.app.id.as_str()).collect()
    }

    /// Logs the start-up line (listen address, apps, engine, Redis URL with its password masked), and
    /// a warning when the dev app's public secret is served beyond loopback.
    pub fn log_started(&self, addr: SocketAddr) {
        for app in self.exposed_dev_secrets() {
            tracing::warn!(
                app,
                %addr,
                "app uses the public development secret \"app-secret\" on a non-loopback address: anyone can publish and \
                 authorize channels; set a secret (HERALD_APP_SECRET or [[apps]] secret)"
            );
        }
        let apps: Vec<&str> = self.apps.iter().map(|a| a.app.id.as_str()).collect();
        match &self.engine {
            EngineConfig::Memory => tracing::info!(%addr, ?apps, engine = "memory", "herald listening"),
            EngineConfig::Redis(redis) => {
                tracing::info!(%addr, ?apps, engine = "redis", redis = %redact(&redis.url), prefix = %redis.prefix, "herald listening")
            }
        }
    }
}

impl FileApp {
    fn into_app(self) -> Result<AppConfig, ConfigError> {
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

fn validate_apps(apps: &[AppConfig]) -> Result<(), ConfigError> {
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
    use super::*;

    fn parse(text: &str) -> FileConfig {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn defaults_give_the_dev_app() {
        let c = Config::resolve(FileConfig::default(), &Cli::default()).unwrap();
        assert_eq!((c.host.to_string().as_str(), c.port), ("127.0.0.1", 6001));
        assert_eq!(c.apps.len(), 1);
        let AppConfig { app, pusher, .. } = &c.apps[0];
        assert_eq!((app.id.as_str(), pusher.id.as_str()), (DEV_APP_ID, DEV_APP_ID));
        assert_eq!((pusher.key.as_str(), pusher.secret.as_str()), ("app-key", "app-secret"));
        assert!(app.enabled && pusher.enable_client_messages && pusher.enable_user_authentication && !pusher.enable_subscription_count);
        assert_eq!(c.pusher.activity_timeout, Duration::from_secs(120));
    }

    #[test]
    fn webhooks_per_app_are_validated() {
        let ok = "[[apps]]\nid = \"a\"\nkey = \"k\"\nsecret = \"s\"\n[[apps.webhooks]]\nurl = \"http://h/hook\"\nevent_types = [\"member_added\"]\n";
        let c = Config::resolve(parse(ok), &Cli::default()).unwrap();
        assert_eq!(
            c.pusher.webhooks["a"],
            vec![WebhookTarget { url: "http://h/hook".into(), event_types: vec!["member_added".into()], headers: vec![] }]
        );
        assert!(Config::resolve(parse(&ok.replace("member_added", "nope")), &Cli::default()).is_err());
        assert!(Config::resolve(parse(&ok.replace("http://", "https://")), &Cli::default()).is_err());
    }

    #[test]
    fn engine_from_file_and_flags() {
        let c = Config::resolve(parse("engine = \"redis\"\nredis_prefix = \"blue\"\n"), &Cli::default()).unwrap();
        match c.engine {
            EngineConfig::Redis(r) => assert_eq!((r.url.as_str(), r.prefix.as_str()), ("redis://127.0.0.1:6379", "blue")),
            EngineConfig::Memory => panic!("expected redis"),
        }
        let cli = Cli { engine: Some(EngineKind::Memory), ..Cli::default() };
        assert!(matches!(Config::resolve(parse("engine = \"redis\"\n"), &cli).unwrap().engine, EngineConfig::Memory));
        assert!(Config::resolve(parse("engine = \"redis\"\nredis_prefix = \"a:b\"\n"), &Cli::default()).is_err());
        assert!(toml::from_str::<FileConfig>("engine = \"nats\"\n").is_err());
    }

    #[test]
    fn flags_win_over_file() {
        let file = parse("port = 7000\nactivity_timeout = 30\n");
        let cli = Cli { port: Some(7001), app_id: Some("i".into()), app_key: Some("k".into()), ..Cli::default() };
        let c = Config::resolve(file, &cli).unwrap();
        assert_eq!(c.port, 7001);
        assert_eq!(c.pusher.activity_timeout, Duration::from_secs(30));
        assert_eq!((c.apps[0].app.id.as_str(), c.apps[0].pusher.id.as_str()), ("i", "i"));
        assert_eq!((c.apps[0].pusher.key.as_str(), c.apps[0].pusher.secret.as_str()), ("k", "app-secret"));
    }

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
    fn timeouts_parse_and_validate() {
        let c = Config::resolve(FileConfig::default(), &Cli::default()).unwrap();
        assert_eq!((c.http.header_timeout, c.pusher.body_timeout), (Duration::from_secs(10), Duration::from_secs(10)));
        let c = Config::resolve(parse("header_timeout = 0.5\nbody_timeout = 3\nwrite_timeout = 4\n"), &Cli::default()).unwrap();
        assert_eq!((c.http.header_timeout, c.pusher.body_timeout), (Duration::from_millis(500), Duration::from_secs(3)));
        assert_eq!(c.pusher.write_timeout, Duration::from_secs(4));
        let err = |text: &str, cli: &Cli| Config::resolve(parse(text), cli).unwrap_err().to_string();
        let none = Cli::default();
        assert!(err("header_timeout = 0", &none).contains("header_timeout"));
        assert!(err("body_timeout = -1", &none).contains("body_timeout"));
        assert!(err("write_timeout = 0", &none).contains("write_timeout"));
        assert!(err("body_timeout = 1e30", &none).contains("body_timeout"));
        assert!(err("max_connections = 0", &none).contains("max_connections"));
        assert!(err("engine = 'redis'\nredis_timeout = 0", &none).contains("redis_timeout"));
        assert!(Config::resolve(parse("engine = 'redis'\nredis_timeout = 0.25"), &none).is_ok());
        let cli = Cli { redis_timeout: Some(f64::NAN), ..Cli::default() };
        assert!(err("engine = 'redis'", &cli).contains("redis_timeout"));
        assert!(toml::from_str::<FileConfig>("header_timeout = 'soon'").is_err());
    }

    /// A `tracing` writer into memory.
    #[derive(Clone, Default)]
    struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn redis_password_is_not_in_debug_output_or_the_startup_log() {
        let url = "redis://alice:hunter2@db:6379/0";
        let cli = Cli { engine: Some(EngineKind::Redis), redis_url: Some(RedisUrl(url.into())), ..Cli::default() };
        let file = parse("redis_url = 'redis://:hunter2@other'\n");
        assert!(!format!("{cli:?}").contains("hunter2"), "{cli:?}");
        assert!(!format!("{file:?}").contains("hunter2"), "{file:?}");
        let c = Config::resolve(file, &cli).unwrap();
        match &c.engine {
            EngineConfig::Redis(r) => assert_eq!(r.url, url, "the real URL is used"),
            EngineConfig::Memory => panic!("expected redis"),
        }
        let debug = format!("{c:?}");
        assert!(!debug.contains("hunter2") && debug.contains("redis://***@db:6379/0"), "{debug}");

        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt().with_writer(move || writer.clone()).with_ansi(false).finish();
        tracing::subscriber::with_default(subscriber, || c.log_started("127.0.0.1:6001".parse().unwrap()));
        let log = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        assert!(log.contains("herald listening") && log.contains("redis://***@db:6379/0"), "{log}");
        assert!(!log.contains("hunter2"), "{log}");
    }

    #[tokio::test]
    async fn start_up_errors_do_not_quote_the_redis_password() {
        // herald-redis quotes the URL (redacted) when it cannot parse it.
        let url = "redis://alice:hunter2@127.0.0.1:notaport";
        let cli = Cli { engine: Some(EngineKind::Redis), redis_url: Some(RedisUrl(url.into())), ..Cli::default() };
        let c = Config::resolve(FileConfig::default(), &cli).unwrap();
        let Err(e) = crate::Herald::start(&c).await else { panic!("{url} is not a valid URL") };
        let text = format!("{e:#}");
        assert!(!text.contains("hunter2"), "{text}");
        assert!(text.contains("***@127.0.0.1"), "still says which URL: {text}");
    }

    #[test]
    fn the_shipped_relay_example_loads_and_bad_sources_fail_clearly() {
        let path = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/relay/seed-sync.toml"));
        let c = Config::load(&Cli { config: Some(path), ..Cli::default() }).unwrap();
        assert_eq!(c.sources.len(), 1);
        assert_eq!((c.sources[0].name.as_str(), c.sources[0].app.as_str()), ("sync", "app-id"));
        assert_eq!(c.sources[0].rules.len(), 3);
        let bench = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/relay/bench.toml"));
        let c = Config::load(&Cli { config: Some(bench), ..Cli::default() }).unwrap();
        assert_eq!(c.sources.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(), ["bench-redis", "bench-nats"]);
        let err = |text: &str| Config::resolve(parse(text), &Cli::default()).unwrap_err().to_string();
        // The default config's dev app.
        let source = format!(
            "[[sources]]\nname = 's'\napp = '{DEV_APP_ID}'\n[sources.redis_streams]\nurl = 'redis://127.0.0.1'\nstreams = ['x']\ngroup = 'g'\n"
        );
        let source = source.as_str();
        let rule = "[[sources.rules]]\nuser = '{u}'\nevent = 'e'\n";
        assert!(Config::resolve(parse(&format!("{source}{rule}")), &Cli::default()).is_ok());
        assert!(err(source).contains("no [[sources.rules]]"));
        assert!(err(&format!("{}{rule}", source.replace(&format!("'{DEV_APP_ID}'"), "'nope'"))).contains("no app"));
        assert!(err(&format!("{source}[[sources.rules]]\nuser = '{{u'\nevent = 'e'\n")).contains("rule 1"));
        assert!(err(&format!("{}{rule}", source.replace("batch", "x").replace("group = 'g'", "group = 'g'\nbatch = 0"))).contains("batch"));
        assert!(err(&format!("{}{rule}", source.replace("redis://127.0.0.1", "nope://x"))).contains("redis_streams.url"));
        assert!(toml::from_str::<FileConfig>(&format!("{source}{rule}unknown = 1\n")).is_err(), "unknown keys are rejected");
    }

    #[test]
    fn dev_secret_on_a_public_address_is_flagged() {
        let c = Config::resolve(FileConfig::default(), &Cli::default()).unwrap();
        assert!(c.exposed_dev_secrets().is_empty(), "loopback is fine");
        let public = Cli { host: Some("0.0.0.0".parse().unwrap()), ..Cli::default() };
        let c = Config::resolve(FileConfig::default(), &public).unwrap();
        assert_eq!(c.exposed_dev_secrets(), vec![DEV_APP_ID]);
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt().with_writer(move || writer.clone()).with_ansi(false).finish();
        tracing::subscriber::with_default(subscriber, || c.log_started("0.0.0.0:6001".parse().unwrap()));
        let log = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        assert!(log.contains("WARN") && log.contains("public development secret"), "{log}");
        let own = Cli { app_secret: Some("a-real-secret".into()), ..public };
        assert!(Config::resolve(FileConfig::default(), &own).unwrap().exposed_dev_secrets().is_empty());
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

    #[test]
    fn bad_values_fail_clearly() {
        let err = |text: &str| Config::resolve(parse(text), &Cli::default()).unwrap_err().to_string();
        assert!(err("activity_timeout = 0").contains("activity_timeout"));
        assert!(err("[[apps]]\nid='a'\nkey='k'\nsecret='s'\n[[apps]]\nid='a'\nkey='k2'\nsecret='s'").contains("duplicate app id"));
        assert!(err("[[apps]]\nid='a'\nkey='k'\nsecret='s'\nmax_event_size=0").contains("max_event_size"));
        assert!(toml::from_str::<FileConfig>("nonsense_key = 1").is_err(), "unknown keys are rejected");
    }
}
