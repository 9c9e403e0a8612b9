//! Typed configuration: defaults, then a TOML file, then `HERALD_*` environment variables, then flags.
//!
//! Bad values fail at start-up with a message naming the key; nothing is silently defaulted.
//!
//! This module holds what the server runs with ([`Config`]) and the start-up error
//! ([`ConfigError`]); each submodule holds one part: `cli` the flags, `file` the file's top-level
//! keys, `load` the reading and layering, `app` the `[[apps]]` tables, `webhooks` their webhooks,
//! `engine` the memory or Redis engine, `dev_app` the app served when none is configured,
//! `seconds` durations, `masked` values that hold secrets, `startup_log` the start-up line.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use herald_centrifugo::CentrifugoConfig;
use herald_ingest::SourceConfig;
use herald_pusher::PusherConfig;

use crate::listener::HttpConfig;
use crate::tls::TlsFiles;

mod app;
mod cli;
mod dev_app;
mod engine;
mod file;
mod load;
mod masked;
mod seconds;
mod startup_log;
#[cfg(test)]
mod test_support;
mod webhooks;

pub use app::AppConfig;
pub use cli::{Cli, LogFormat};
pub use dev_app::DEV_APP_ID;
pub use engine::{EngineConfig, EngineKind};
pub use file::FileConfig;
pub use masked::{RedisUrl, Secret};

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
