//! `connect`: a connection storm. Measures connects per second, time to `connection_established`
//! and failures.

use crate::client::Connector;
use crate::report::Report;
use crate::Common;

/// Parameters of `connect`.
#[derive(Debug, Clone, clap::Args, serde::Serialize)]
pub struct ConnectArgs {
    /// Connections to open.
    #[arg(long, short = 'n', default_value_t = 10_000)]
    pub connections: usize,
    /// Handshakes in flight at once.
    #[arg(long, default_value_t = 512)]
    pub concurrency: usize,
}

/// Runs `connect`.
pub async fn run(common: &Common, args: &ConnectArgs) -> anyhow::Result<Report> {
    let mut report = Report::new("connect", &common.label(), serde_json::to_value(args)?);
    let connector = Connector::new(common.target(), args.connections);
    let opened = super::open_many(&connector, args.connections, args.concurrency, |_| None, |_| String::new(), common.quiet).await;
    let n = opened.sockets.len();
    report.put("connections", n);
    report.put("failed", opened.failed);
    report.put("secs", opened.elapsed.as_secs_f64());
    report.put("connects_per_sec", (n as f64 / opened.elapsed.as_secs_f64()).round());
    if n > 0 {
        let h = &opened.connect_us;
        report.put("connect_p50_ms", h.value_at_quantile(0.5) as f64 / 1000.0);
        report.put("connect_p99_ms", h.value_at_quantile(0.99) as f64 / 1000.0);
        report.put("connect_max_ms", h.max() as f64 / 1000.0);
    }
    for r in &opened.reasons {
        eprintln!("failure: {r}");
    }
    Ok(report)
}
