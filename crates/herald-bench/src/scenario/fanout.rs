//! `fanout` (and `ceiling`): S subscribers over C channels, events published at a rate (or as fast as
//! the server takes them) with a send timestamp inside. Measures deliveries per second, publish→receive
//! latency and lost messages; slow-consumer closes are reported apart from losses.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::ceiling::{text_frame, Ceiling};
use crate::client::{self, Connector, Protocol};
use crate::publisher::Publisher;
use crate::report::Report;
use crate::stats::{self, Stats};
use crate::Common;

/// Parameters of `fanout` and `ceiling`.
#[derive(Debug, Clone, clap::Args, serde::Serialize)]
pub struct FanoutArgs {
    /// Subscriber connections.
    #[arg(long, short = 's', default_value_t = 1000)]
    pub subscribers: usize,
    /// Channels; subscriber i listens on `fanout-{i % channels}`, publishes go round-robin.
    #[arg(long, short = 'c', default_value_t = 10)]
    pub channels: usize,
    /// Publishes per second in total; 0 publishes as fast as the server accepts them.
    #[arg(long, short = 'r', default_value_t = 100)]
    pub rate: u64,
    /// Seconds of publishing.
    #[arg(long, short = 'd', default_value_t = 10)]
    pub duration: u64,
    /// Bytes of event data (JSON with the timestamp and padding).
    #[arg(long, default_value_t = 100)]
    pub payload: usize,
    /// Concurrent publishers.
    #[arg(long, default_value_t = 4)]
    pub publishers: usize,
    /// Handshakes in flight at once while connecting subscribers.
    #[arg(long, default_value_t = 256)]
    pub concurrency: usize,
    /// Seconds to wait for late deliveries after the last publish.
    #[arg(long, default_value_t = 5)]
    pub drain: u64,
}

/// How events are published: the Pusher HTTP API, or straight into the in-process ceiling server.
enum Via {
    Http(Box<Publisher>),
    Ceiling(Arc<Ceiling>),
}

impl Via {
    async fn publish(&self, channel: &str, data: &str) -> bool {
        match self {
            Via::Http(p) => matches!(p.publish(channel, data).await, Ok(200)),
            Via::Ceiling(c) => {
                let frame = serde_json::json!({ "event": "bench", "channel": channel, "data": data }).to_string();
                c.publish(channel, &text_frame(frame.as_bytes())).await;
                true
            }
        }
    }
}

fn channel_name(c: usize) -> String {
    format!("fanout-{c}")
}

/// Runs `fanout` against the target, or against the in-process ceiling server when `ceiling`.
pub async fn run(common: &Common, args: &FanoutArgs, ceiling: bool) -> anyhow::Result<Report> {
    let scenario = if ceiling { "ceiling" } else { "fanout" };
    let label = if ceiling { "ceiling".to_string() } else { common.label() };
    let mut report = Report::new(scenario, &label, serde_json::to_value(args)?);
    let channels = args.channels.max(1);
    let shutdown = CancellationToken::new();
    let tasks = TaskTracker::new();

    let mut target = common.target();
    if ceiling {
        // The ceiling server speaks only (a minimal) Pusher.
        target.protocol = Protocol::Pusher;
    }
    let protocol = target.protocol;
    let via = if ceiling {
        let c = Ceiling::start(shutdown.clone(), tasks.clone()).await?;
        target.addr = c.addr;
        target.spread.clear();
        Via::Ceiling(Arc::new(c))
    } else {
        Via::Http(Box::new(Publisher::new(target.clone())))
    };
    let via = Arc::new(via);

    let connector = Connector::new(target, args.subscribers);
    let query = |i: usize| if ceiling { format!("&channel={}", channel_name(i % channels)) } else { String::new() };
    let opened =
        super::open_many(&connector, args.subscribers, args.concurrency, |i| Some(channel_name(i % channels)), query, common.quiet).await;
    for r in &opened.reasons {
        eprintln!("connect failure: {r}");
    }
    if opened.sockets.is_empty() {
        bail!("no subscriber could connect");
    }
    let mut subscribers_on = vec![0u64; channels];
    for (i, _) in &opened.sockets {
        subscribers_on[i % channels] += 1;
    }

    let stats = Arc::new(Stats::new());
    let stop_readers = CancellationToken::new();
    let mut readers = JoinSet::new();
    for (i, ws) in opened.sockets {
        let (stats, stop) = (stats.clone(), stop_readers.clone());
        readers.spawn(async move { (i % channels, client::receive(ws, protocol, &stats, i, stop).await) });
    }
    let stop_sampler = CancellationToken::new();
    let sampler = tokio::spawn({
        let stats = stats.clone();
        stats::sample_rate(move || stats.received(), Duration::from_millis(100), stop_sampler.clone())
    });

    // Publish.
    let published: Arc<Vec<AtomicU64>> = Arc::new((0..channels).map(|_| AtomicU64::new(0)).collect());
    let errors = Arc::new(AtomicU64::new(0));
    let seq = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let start_us = stats::now_us();
    let deadline = start + Duration::from_secs(args.duration);
    let pb = super::bar(args.duration, "publishing", common.quiet);
    let mut publishers = JoinSet::new();
    let per = args.publishers.max(1);
    for _ in 0..per {
        let (via, published, errors, seq) = (via.clone(), published.clone(), errors.clone(), seq.clone());
        let (rate, size) = (args.rate, args.payload);
        publishers.spawn(async move {
            let mut tick = (rate > 0).then(|| {
                let mut t = tokio::time::interval(Duration::from_secs_f64(per as f64 / rate as f64));
                t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
                t
            });
            while Instant::now() < deadline {
                if let Some(t) = tick.as_mut() {
                    t.tick().await;
                }
                let c = (seq.fetch_add(1, Ordering::Relaxed) % channels as u64) as usize;
                if via.publish(&channel_name(c), &stats::payload(size)).await {
                    published[c].fetch_add(1, Ordering::Relaxed);
                } else {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }
    let progress = async {
        while Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(250)).await;
            pb.set_position(start.elapsed().as_secs().min(args.duration));
            pb.set_message(format!("{} recv", stats.received()));
        }
    };
    let ((), _) = tokio::join!(progress, async { while publishers.join_next().await.is_some() {} });
    pb.finish_and_clear();
    let publish_secs = start.elapsed().as_secs_f64();

    // Wait for stragglers: until everything expected arrived, or nothing arrives for a second.
    let expected: u64 = (0..channels).map(|c| published[c].load(Ordering::Relaxed) * subscribers_on[c]).sum();
    let drain_until = Instant::now() + Duration::from_secs(args.drain);
    let (mut last, mut last_change) = (stats.received(), Instant::now());
    while stats.received() < expected && Instant::now() < drain_until && last_change.elapsed() < Duration::from_secs(1) {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if stats.received() != last {
            (last, last_change) = (stats.received(), Instant::now());
        }
    }
    stop_readers.cancel();
    let (mut lost, mut closed, mut closed_codes) = (0u64, 0u64, std::collections::BTreeMap::<u16, u64>::new());
    while let Some(Ok((c, seen))) = readers.join_next().await {
        let should = published[c].load(Ordering::Relaxed);
        match seen.closed_with {
            Some(code) => {
                closed += 1;
                *closed_codes.entry(code).or_default() += 1;
            }
            None => lost += should.saturating_sub(seen.events),
        }
    }
    stop_sampler.cancel();
    report.rate_over_time = sampler.await.unwrap_or_default();
    shutdown.cancel();
    tasks.close();
    tasks.wait().await;

    let received = stats.received();
    let window = (stats.last_receive_us().saturating_sub(start_us) as f64 / 1e6).max(publish_secs).max(1e-3);
    let total_published: u64 = published.iter().map(|p| p.load(Ordering::Relaxed)).sum();
    report.put("subscribers", subscribers_on.iter().sum::<u64>());
    report.put("connect_failed", opened.failed);
    report.put("published", total_published);
    report.put("publish_errors", errors.load(Ordering::Relaxed));
    report.put("publishes_per_sec", (total_published as f64 / publish_secs).round());
    report.put("expected_deliveries", expected);
    report.put("deliveries", received);
    report.put("deliveries_per_sec", (received as f64 / window).round());
    report.put("lost", lost);
    report.put("closed_by_server", closed);
    if !closed_codes.is_empty() {
        report.put("close_codes", serde_json::to_value(&closed_codes)?);
    }
    report.latency(&stats.latency());
    Ok(report)
}
