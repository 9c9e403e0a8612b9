//! Typed configuration: defaults, then a TOML file, then `HERALD_*` environment variables, then flags.
//!
//! Bad values fail at start-up with a message naming the key; nothing is silently defaulted.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use herald_core::{App, AppLimits, OutboxLimits, OverflowPolicy};
use herald_pusher::{PusherConfig, WebhookTarget};
use herald_redis::RedisConfig;
use serde::Deserialize;

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
    /// Id of the default app, used when the config file defines no apps [default: app-id].
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
    /// Engine: `memory` (one node) or `redis` (nodes sharing a Redis) [default: memory].
    #[arg(long, env = "HERALD_ENGINE", value_enum)]
    pub engine: Option<EngineKind>,
    /// Redis URL for the redis engine [default: redis://127.0.0.1:6379].
    #[arg(long, env = "HERALD_REDIS_URL")]
    pub redis_url: Option<String>,
    /// Prefix of Herald's Redis channel names; deployments sharing a Redis need different ones
    /// [default: herald].
    #[arg(long, env = "HERALD_REDIS_PREFIX")]
    pub redis_prefix: Option<String>,
    /// Seconds a node's lease lives; a crashed node's presence members are removed within this plus
    /// a couple of seconds [default: 10].
    #[arg(long, env = "HERALD_REDIS_LEASE")]
    pub redis_lease: Option<u64>,
    /// The Redis is a Redis Cluster: --redis-url lists seed nodes (comma-separated) and pub/sub is
    /// sharded.
    #[arg(long, env = "HERALD_REDIS_CLUSTER")]
    pub redis_cluster: bool,
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

/// The resolved engine settings.
#[derive(Debug, Clone)]
pub enum EngineConfig {
    /// In-process only.
    Memory,
    /// Through Redis.
    Redis(RedisConfig),
}

/// The config file. Every key is optional and documented in the README with its default.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    host: Option<IpAddr>,
    port: Option<u16>,
    log: Option<String>,
    activity_timeout: Option<u64>,
    pong_timeout: Option<u64>,
    max_connections: Option<usize>,
    max_request_body: Option<usize>,
    shutdown_grace: Option<u64>,
    engine: Option<EngineKind>,
    redis_url: Option<String>,
    redis_prefix: Option<String>,
    redis_lease: Option<u64>,
    #[serde(default)]
    redis_cluster: bool,
    #[serde(default)]
    apps: Vec<FileApp>,
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
    #[serde(default)]
    webhooks: Vec<FileWebhook>,
}

/// One `[[apps.webhooks]]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileWebhook {
    url: String,
    #[serde(default)]
    event_types: Vec<String>,
}

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

/// The resolved configuration the server runs with.
#[derive(Debug, Clone)]
pub struct Config {
    /// Listen address.
    pub host: IpAddr,
    /// Listen port.
    pub port: u16,
    /// Log filter.
    pub log: String,
    /// Apps served.
    pub apps: Vec<App>,
    /// Pusher front settings.
    pub pusher: PusherConfig,
    /// How long shutdown waits for connections to drain.
    pub shutdown_grace: Duration,
    /// The engine.
    pub engine: EngineConfig,
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
        if activity == 0 {
            return Err(ConfigError::Invalid("activity_timeout must be at least 1 second (pusher-js requires it)".into()));
        }
        let pong = file.pong_timeout.unwrap_or(defaults.pong_timeout.as_secs());
        if pong == 0 {
            return Err(ConfigError::Invalid("pong_timeout must be at least 1 second".into()));
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
            }
            let targets: Vec<WebhookTarget> =
                app.webhooks.iter().map(|h| WebhookTarget { url: h.url.clone(), event_types: h.event_types.clone() }).collect();
            if !targets.is_empty() {
                webhooks.insert(app.id.clone(), targets);
            }
        }
        let apps = if file.apps.is_empty() {
            let dev = App::dev();
            vec![App {
                id: cli.app_id.clone().unwrap_or(dev.id.clone()),
                key: cli.app_key.clone().unwrap_or(dev.key.clone()),
                secret: cli.app_secret.clone().unwrap_or(dev.secret.clone()),
                ..dev
            }]
        } else {
            file.apps.into_iter().map(FileApp::into_app).collect::<Result<_, _>>()?
        };
        validate_apps(&apps)?;
        Ok(Config {
            host: cli.host.or(file.host).unwrap_or(IpAddr::from([127, 0, 0, 1])),
            port: cli.port.or(file.port).unwrap_or(6001),
            log: cli.log.clone().or(file.log).unwrap_or_else(|| "info".into()),
            apps,
            pusher: PusherConfig {
                activity_timeout: Duration::from_secs(activity),
                pong_timeout: Duration::from_secs(pong),
                max_request_body: file.max_request_body.unwrap_or(defaults.max_request_body),
                max_connections: file.max_connections.unwrap_or(defaults.max_connections),
                webhooks,
                write_timeout: defaults.write_timeout,
            },
            shutdown_grace: Duration::from_secs(file.shutdown_grace.unwrap_or(10)),
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
                    EngineConfig::Redis(RedisConfig {
                        url: cli.redis_url.clone().or(file.redis_url).unwrap_or(d.url),
                        prefix,
                        lease,
                        cluster,
                        ..d
                    })
                }
            },
        })
    }
}

impl FileApp {
    fn into_app(self) -> Result<App, ConfigError> {
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
            retained: d.retained,
        };
        Ok(App {
            id: self.id,
            key: self.key,
            secret: self.secret,
            enabled: self.enabled,
            enable_client_messages: self.enable_client_messages,
            enable_user_authentication: self.enable_user_authentication,
            enable_subscription_count: self.enable_subscription_count,
            limits,
        })
    }
}

fn validate_apps(apps: &[App]) -> Result<(), ConfigError> {
    let mut ids = std::collections::HashSet::new();
    let mut keys = std::collections::HashSet::new();
    for app in apps {
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
        let app = &c.apps[0];
        assert_eq!((app.id.as_str(), app.key.as_str(), app.secret.as_str()), ("app-id", "app-key", "app-secret"));
        assert!(app.enable_client_messages && app.enable_user_authentication);
        assert_eq!(c.pusher.activity_timeout, Duration::from_secs(120));
    }

    #[test]
    fn webhooks_per_app_are_validated() {
        let ok = "[[apps]]\nid = \"a\"\nkey = \"k\"\nsecret = \"s\"\n[[apps.webhooks]]\nurl = \"http://h/hook\"\nevent_types = [\"member_added\"]\n";
        let c = Config::resolve(parse(ok), &Cli::default()).unwrap();
        assert_eq!(c.pusher.webhooks["a"], vec![WebhookTarget { url: "http://h/hook".into(), event_types: vec!["member_added".into()] }]);
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
        let cli = Cli { port: Some(7001), app_key: Some("k".into()), ..Cli::default() };
        let c = Config::resolve(file, &cli).unwrap();
        assert_eq!(c.port, 7001);
        assert_eq!(c.pusher.activity_timeout, Duration::from_secs(30));
        assert_eq!(c.apps[0].key, "k");
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
            max_presence_members = 5
            max_outbox_messages = 50
            "#,
        );
        let c = Config::resolve(file, &Cli::default()).unwrap();
        let app = &c.apps[0];
        assert!(app.enabled && app.enable_client_messages && !app.enable_user_authentication);
        assert_eq!(app.limits.max_presence_members, 5);
        assert_eq!(app.limits.outbox.max_messages, 50);
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
