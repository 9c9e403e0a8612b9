//! The config file's top-level keys as TOML gives them, before any default or flag is applied;
//! `[[apps]]` tables are in `app`, their webhooks in `webhooks`. Kept apart from `load` so the
//! schema (what `deny_unknown_fields` accepts) reads as one list.

use std::net::IpAddr;
use std::path::PathBuf;

use herald_ingest::SourceConfig;
use serde::Deserialize;

use super::app::FileApp;
use super::seconds::Seconds;
use super::{EngineKind, LogFormat, RedisUrl, Secret};

/// The config file. Every key is optional and documented in the README with its default.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub(super) host: Option<IpAddr>,
    pub(super) port: Option<u16>,
    pub(super) log: Option<String>,
    pub(super) log_format: Option<LogFormat>,
    pub(super) activity_timeout: Option<u64>,
    pub(super) pong_timeout: Option<u64>,
    pub(super) max_connections: Option<usize>,
    pub(super) max_request_body: Option<usize>,
    pub(super) shutdown_grace: Option<u64>,
    pub(super) header_timeout: Option<Seconds>,
    pub(super) body_timeout: Option<Seconds>,
    pub(super) write_timeout: Option<Seconds>,
    pub(super) engine: Option<EngineKind>,
    pub(super) redis_url: Option<RedisUrl>,
    pub(super) redis_prefix: Option<String>,
    pub(super) redis_lease: Option<u64>,
    pub(super) redis_timeout: Option<Seconds>,
    #[serde(default)]
    pub(super) redis_cluster: bool,
    pub(super) admin_token: Option<Secret>,
    pub(super) max_connections_per_ip: Option<usize>,
    pub(super) connects_per_ip_per_minute: Option<u32>,
    pub(super) tls_cert: Option<PathBuf>,
    pub(super) tls_key: Option<PathBuf>,
    pub(super) centrifugo_ping_interval: Option<Seconds>,
    pub(super) centrifugo_expired_grace: Option<Seconds>,
    pub(super) api_requests_per_minute: Option<u32>,
    pub(super) latency_histograms: Option<bool>,
    #[serde(default)]
    pub(super) apps: Vec<FileApp>,
    /// Bus sources to relay from (`[[sources]]`, see herald-ingest).
    #[serde(default)]
    pub(super) sources: Vec<SourceConfig>,
}
