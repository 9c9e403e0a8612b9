//! The scenarios, and the connection-opening loop they share.

pub mod connect;
pub mod fanout;
pub mod idle;
pub mod relay;

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};

use crate::client::{Connector, Ws};

/// What opening many connections produced.
pub struct Opened {
    /// Open sockets, with their index.
    pub sockets: Vec<(usize, Ws)>,
    /// Failures, with the first few reasons.
    pub failed: usize,
    /// Up to 5 distinct failure messages.
    pub reasons: Vec<String>,
    /// Wall time of the whole storm.
    pub elapsed: Duration,
    /// Per-connection time to `connection_established` (+ subscription), µs.
    pub connect_us: Histogram<u64>,
}

/// A progress bar on stderr (hidden when stderr is not a terminal or `quiet`).
pub fn bar(len: u64, what: &str, quiet: bool) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(len);
    pb.set_style(
        ProgressStyle::with_template("{msg:>12} [{bar:40}] {pos}/{len} ({per_sec}, {elapsed})").expect("template").progress_chars("=> "),
    );
    pb.set_message(what.to_string());
    pb
}

/// Opens `n` connections, `concurrency` at a time; socket `i` subscribes to `channel(i)` if given, and
/// `query(i)` is added to its upgrade URL.
pub async fn open_many(
    connector: &Connector,
    n: usize,
    concurrency: usize,
    channel: impl Fn(usize) -> Option<String>,
    query: impl Fn(usize) -> String,
    quiet: bool,
) -> Opened {
    if let Ok((soft, _)) = rlimit::getrlimit(rlimit::Resource::NOFILE) {
        if n as u64 + 64 > soft {
            eprintln!("warning: {n} connections need {n} file descriptors, but this process may open only {soft} (RLIMIT_NOFILE); the rest will fail");
        }
    }
    let pb = bar(n as u64, "connecting", quiet);
    let start = Instant::now();
    let mut results = futures_util::stream::iter(0..n)
        .map(|i| {
            let ch = channel(i);
            let q = query(i);
            async move {
                let t0 = Instant::now();
                let (mut ws, id) = connector.open(&q).await?;
                if let Some(ch) = ch {
                    connector.subscribe(&mut ws, &ch, &id).await?;
                }
                anyhow::Ok((i, ws, t0.elapsed()))
            }
        })
        .buffer_unordered(concurrency.max(1));
    let mut opened = Opened {
        sockets: Vec::with_capacity(n),
        failed: 0,
        reasons: vec![],
        elapsed: Duration::ZERO,
        connect_us: Histogram::new_with_bounds(1, 600_000_000, 3).expect("bounds"),
    };
    while let Some(r) = results.next().await {
        match r {
            Ok((i, ws, took)) => {
                let _ = opened.connect_us.record((took.as_micros() as u64).max(1));
                opened.sockets.push((i, ws));
            }
            Err(e) => {
                opened.failed += 1;
                let msg = format!("{e:#}");
                if opened.reasons.len() < 5 && !opened.reasons.contains(&msg) {
                    opened.reasons.push(msg);
                }
            }
        }
        pb.inc(1);
    }
    opened.elapsed = start.elapsed();
    pb.finish_and_clear();
    opened
}
