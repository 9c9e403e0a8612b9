//! `herald-bench`: a load generator that speaks the Pusher protocol (WebSocket client + signed HTTP
//! API), so the same run measures Herald and any Pusher-compatible server, plus an in-process raw
//! server that shows the machine's fan-out ceiling.
//!
//! Scenarios: `idle` (memory per connection), `connect` (connection storm), `fanout` (deliveries/s and
//! latency), `ceiling` (fanout against the raw server). Each prints a table and can write JSON and an
//! SVG plot.

mod ceiling;
mod centrifugo;
mod client;
mod publisher;
mod report;
mod rss;
mod scenario;
mod stats;

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// The server under test.
#[derive(Debug, Clone)]
pub struct Target {
    /// Host and port of the HTTP API (and of WebSocket connections unless `spread` is set).
    pub addr: SocketAddr,
    /// WebSocket endpoints to spread connections over, round-robin (several nodes of one cluster).
    pub spread: Vec<SocketAddr>,
    /// App id (HTTP API path).
    pub app_id: String,
    /// App key (WebSocket path, API signature).
    pub key: String,
    /// App secret (API signature, Centrifugo API key and JWT secret).
    pub secret: String,
    /// The client protocol of the WebSocket connections.
    pub protocol: client::Protocol,
    /// The HTTP API publishes go through.
    pub api: publisher::Api,
}

/// Options shared by every scenario.
#[derive(Debug, clap::Args)]
pub struct Common {
    /// Server address (WebSocket and HTTP API).
    #[arg(long, global = true, default_value = "127.0.0.1:6001")]
    pub server: SocketAddr,
    /// App id (herald's default dev app is `1`).
    #[arg(long, global = true, default_value = "1")]
    pub app_id: String,
    /// App key.
    #[arg(long, global = true, default_value = "app-key")]
    pub app_key: String,
    /// App secret.
    #[arg(long, global = true, default_value = "app-secret")]
    pub app_secret: String,
    /// Spread WebSocket connections over these servers (nodes of one cluster), round-robin; publishes
    /// still go to --server. Comma-separated host:port list.
    #[arg(long, global = true, value_delimiter = ',')]
    pub spread: Vec<SocketAddr>,
    /// Client protocol: Pusher, or Centrifugo's (JSON, or protobuf). Centrifugo connections
    /// authenticate with an HS256 JWT signed with --app-secret and subscribe with subscription tokens.
    #[arg(long, global = true, value_enum, default_value_t = client::Protocol::Pusher)]
    pub protocol: client::Protocol,
    /// HTTP API to publish through (default: the one of --protocol's front). The Centrifugo API key
    /// is --app-secret (Herald's default).
    #[arg(long, global = true, value_enum)]
    pub publish_api: Option<publisher::Api>,
    /// PID of the server process, to read its memory (idle).
    #[arg(long, global = true)]
    pub pid: Option<u32>,
    /// Name of the server in reports.
    #[arg(long, global = true)]
    pub name: Option<String>,
    /// Write the result as JSON here.
    #[arg(long, global = true)]
    pub json: Option<PathBuf>,
    /// Write an SVG plot (latency CDF, rate over time) here.
    #[arg(long, global = true)]
    pub plot: Option<PathBuf>,
    /// No progress bars.
    #[arg(long, short, global = true)]
    pub quiet: bool,
}

impl Common {
    /// The target described by the flags.
    pub fn target(&self) -> Target {
        Target {
            addr: self.server,
            spread: self.spread.clone(),
            app_id: self.app_id.clone(),
            key: self.app_key.clone(),
            secret: self.app_secret.clone(),
            protocol: self.protocol,
            api: self.publish_api.unwrap_or(if self.protocol == client::Protocol::Pusher {
                publisher::Api::Pusher
            } else {
                publisher::Api::Centrifugo
            }),
        }
    }

    /// The report label.
    pub fn label(&self) -> String {
        self.name.clone().unwrap_or_else(|| self.server.to_string())
    }
}

#[derive(Debug, Parser)]
#[command(name = "herald-bench", version, about = "Load generator for Pusher-protocol servers")]
struct Cli {
    #[command(flatten)]
    common: Common,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Debug, Subcommand)]
enum Scenario {
    /// N idle connections, one channel each: connect rate and server RSS per connection.
    Idle(scenario::idle::IdleArgs),
    /// Connection storm: connects/s, time to connection_established, failures.
    Connect(scenario::connect::ConnectArgs),
    /// S subscribers over C channels, publishes via the HTTP API: deliveries/s, latency, losses.
    Fanout(scenario::fanout::FanoutArgs),
    /// The same fan-out against an in-process raw WebSocket server: the machine's ceiling.
    Ceiling(scenario::fanout::FanoutArgs),
    /// Users × devices signed in, messages written to a Redis stream or JetStream and relayed by
    /// Herald (`examples/relay/bench.toml`): messages/s relayed, bus → socket latency.
    Relay(scenario::relay::RelayArgs),
    /// Prints a markdown table comparing JSON results (written by --json), grouped by scenario.
    Table {
        /// Result files.
        files: Vec<PathBuf>,
    },
}

/// Raises the open-file limit as far as allowed: to the kernel's `nr_open` when privileged (100k
/// sockets need it), else to the hard limit.
fn raise_fd_limit() {
    let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open").ok().and_then(|s| s.trim().parse().ok()).unwrap_or(1 << 20);
    if rlimit::setrlimit(rlimit::Resource::NOFILE, nr_open, nr_open).is_err() {
        if let Ok((_, hard)) = rlimit::getrlimit(rlimit::Resource::NOFILE) {
            let _ = rlimit::setrlimit(rlimit::Resource::NOFILE, hard, hard);
        }
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Scenario::Table { files } = &cli.scenario {
        print!("{}", report::markdown(files)?);
        return Ok(());
    }
    raise_fd_limit();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let report = runtime.block_on(async {
        match &cli.scenario {
            Scenario::Idle(a) => scenario::idle::run(&cli.common, a).await,
            Scenario::Connect(a) => scenario::connect::run(&cli.common, a).await,
            Scenario::Fanout(a) => scenario::fanout::run(&cli.common, a, false).await,
            Scenario::Ceiling(a) => scenario::fanout::run(&cli.common, a, true).await,
            Scenario::Relay(a) => scenario::relay::run(&cli.common, a).await,
            Scenario::Table { .. } => unreachable!("handled above"),
        }
    })?;
    report.print();
    if let Some(path) = &cli.common.json {
        report.write_json(path)?;
    }
    if let Some(path) = &cli.common.plot {
        report.write_plot(path)?;
    }
    // Open sockets and tasks go with the runtime; don't wait for peers to finish closing.
    runtime.shutdown_background();
    Ok(())
}
