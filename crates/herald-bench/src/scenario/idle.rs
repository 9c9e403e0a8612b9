//! `idle`: many connections, each subscribed to one channel, doing nothing. Measures connect rate and
//! the server's resident memory per connection.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::client::{self, Connector, Protocol};
use crate::report::Report;
use crate::stats::Stats;
use crate::{rss, Common};

/// Parameters of `idle`.
#[derive(Debug, Clone, clap::Args, serde::Serialize)]
pub struct IdleArgs {
    /// Connections to open.
    #[arg(long, short = 'n', default_value_t = 10_000)]
    pub connections: usize,
    /// Distinct channels (connection i subscribes to `idle-{i % channels}`).
    #[arg(long, default_value_t = 100)]
    pub channels: usize,
    /// Handshakes in flight at once.
    #[arg(long, default_value_t = 256)]
    pub concurrency: usize,
    /// Seconds to wait after the last connection before reading the server's memory.
    #[arg(long, default_value_t = 3)]
    pub settle: u64,
}

/// Runs `idle`.
pub async fn run(common: &Common, args: &IdleArgs) -> anyhow::Result<Report> {
    let mut report = Report::new("idle", &common.label(), serde_json::to_value(args)?);
    let before = common.pid.map(rss::rss_bytes).transpose()?;
    let connector = Connector::new(common.target(), args.connections);
    let channels = args.channels.max(1);
    let opened = super::open_many(
        &connector,
        args.connections,
        args.concurrency,
        |i| Some(format!("idle-{}", i % channels)),
        |_| String::new(),
        common.quiet,
    )
    .await;
    // Centrifugo servers ping every 25 s and close clients that don't answer: their connections
    // read and answer while they sit (Pusher's activity timeout is longer than a run: its sockets
    // stay unread, as before).
    let n = opened.sockets.len();
    let stop = CancellationToken::new();
    let readers = TaskTracker::new();
    let closed = Arc::new(AtomicUsize::new(0));
    let mut sockets = opened.sockets;
    if common.protocol != Protocol::Pusher {
        let stats = Arc::new(Stats::new());
        for (i, ws) in sockets.drain(..) {
            let (stop, stats, closed, protocol) = (stop.clone(), stats.clone(), closed.clone(), common.protocol);
            readers.spawn(async move {
                if client::receive(ws, protocol, &stats, i, stop).await.closed_with.is_some() {
                    closed.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
    }
    tokio::time::sleep(Duration::from_secs(args.settle)).await;
    let after = common.pid.map(rss::rss_bytes).transpose()?;
    report.put("connections", n);
    report.put("failed", opened.failed);
    report.put("connect_secs", opened.elapsed.as_secs_f64());
    report.put("connects_per_sec", (n as f64 / opened.elapsed.as_secs_f64()).round());
    report.put("connect_p99_ms", opened.connect_us.value_at_quantile(0.99) as f64 / 1000.0);
    if let (Some(b), Some(a)) = (before, after) {
        report.put("server_rss_before_mb", (b as f64 / 1048576.0 * 10.0).round() / 10.0);
        report.put("server_rss_after_mb", (a as f64 / 1048576.0 * 10.0).round() / 10.0);
        if n > 0 {
            report.put("rss_per_connection_kb", ((a.saturating_sub(b)) as f64 / n as f64 / 1024.0 * 100.0).round() / 100.0);
        }
    }
    for r in &opened.reasons {
        eprintln!("failure: {r}");
    }
    stop.cancel();
    readers.close();
    readers.wait().await;
    if common.protocol != Protocol::Pusher {
        report.put("closed_by_server", closed.load(Ordering::Relaxed));
    }
    drop(sockets);
    Ok(report)
}
