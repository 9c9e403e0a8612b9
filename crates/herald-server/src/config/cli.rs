//! The command-line flags (each also read from its `HERALD_*` environment variable), kept apart
//! from the file's schema because clap owns their parsing, help text and env names.

use std::net::IpAddr;
use std::path::PathBuf;

use serde::Deserialize;

use super::{EngineKind, RedisUrl, Secret};

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
