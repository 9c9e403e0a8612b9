//! Prometheus exposition: one process-wide recorder, rendered at `/metrics`.
//!
//! Hygiene: every metric Herald emits is described here (so `/metrics` carries `# HELP` and `# TYPE`
//! for each), every series an operator alerts on exists from start-up with the value 0 (registered for
//! each app when a Herald is created), process metrics (CPU, memory, file descriptors) are collected at
//! each scrape, and the delivery latency histograms (kept by the engine without a lock per delivery,
//! see `herald_core::latency`) are appended in the Prometheus histogram format.

use std::fmt::Write as _;
use std::sync::OnceLock;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use herald_core::latency::{LatencySnapshot, BUCKET_BOUNDS_MICROS};
use herald_core::Engine;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::Herald;

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
static PROCESS: OnceLock<metrics_process::Collector> = OnceLock::new();

/// Counters: name, help.
const COUNTERS: &[(&str, &str)] = &[
    ("herald_api_requests_total", "HTTP API requests that passed authentication"),
    ("herald_api_responses_total", "HTTP API responses by app and status code"),
    ("herald_api_body_timeouts_total", "HTTP API requests whose body did not arrive in time (408)"),
    ("herald_api_info_fallback_total", "Triggers whose info counts fell back to this node's own"),
    ("herald_bytes_in_total", "Bytes received from clients"),
    ("herald_bytes_out_total", "Bytes queued to clients"),
    ("herald_messages_in_total", "Frames received from clients"),
    ("herald_messages_out_total", "Frames queued to clients"),
    ("herald_publishes_total", "Events published through the HTTP or in-process API"),
    ("herald_publish_repeats_total", "Publishes skipped as repeats of an idempotency key"),
    ("herald_connections_refused_total", "WebSocket connections refused, by Pusher close code"),
    ("herald_slow_consumer_disconnects_total", "Connections closed because they did not keep up"),
    ("herald_sockets_refused_total", "Sockets closed at accept because the process was at its cap"),
    ("herald_http_header_timeouts_total", "HTTP connections closed for not sending a request head in time"),
    ("herald_errors_total", "Errors by kind"),
    ("herald_history_corrupt_total", "History entries that could not be decoded"),
    ("herald_history_gaps_total", "Gaps seen in a channel's history offsets"),
    ("herald_history_refused_total", "Publications the history store refused"),
    ("herald_history_skipped_total", "Publications not kept in history (store at its channel cap)"),
    ("herald_idempotency_evicted_total", "Idempotency keys evicted before their expiry (store full)"),
    ("herald_webhooks_sent_total", "Webhook requests delivered"),
    ("herald_webhooks_dropped_total", "Webhook events given up, by reason (queue_full, delivery_failed, shutdown)"),
    ("herald_webhooks_abandoned_total", "Webhook responses abandoned (body too large, too slow or broken); the connection is closed"),
    ("herald_webhooks_failed_total", "Webhook requests that failed (no answer in time, or an unsuccessful status)"),
    ("herald_webhooks_retried_total", "Webhook requests retried after a failure"),
    ("herald_redis_published_total", "Envelopes published to Redis"),
    ("herald_redis_publish_dropped_total", "Publications dropped because the Redis publish queue was full or Redis down"),
    ("herald_redis_received_total", "Envelopes received from Redis"),
    ("herald_redis_received_unwanted_total", "Envelopes received for channels without local subscribers"),
    ("herald_redis_bad_envelopes_total", "Envelopes from Redis that failed validation and were dropped"),
    ("herald_redis_push_dropped_total", "Redis Cluster pushes dropped (push queue full)"),
    ("herald_redis_fail_fast_total", "Redis calls failed at once while Redis was known down"),
    ("herald_redis_nodes_reaped_total", "Dead nodes whose state this node removed"),
    ("herald_redis_reaper_bad_fields_total", "Malformed fields the reaper skipped"),
    ("herald_redis_reconcile_bad_fields_total", "Malformed fields reconcile skipped"),
    ("herald_redis_reconnects_total", "Redis links back after an outage (command: circuit closed again; subscriber: pub/sub reconnected)"),
    ("herald_redis_command_errors_total", "Failed Redis calls by kind (timeout, link, refused)"),
];

/// Gauges: name, help.
const GAUGES: &[(&str, &str)] = &[
    ("herald_connections", "Open connections"),
    ("herald_channels", "Occupied channels on this node"),
    ("herald_subscriptions", "Subscriptions on this node"),
    ("herald_sockets_open", "Accepted sockets open (WebSocket and HTTP)"),
    ("herald_redis_connected", "1 while the Redis link is up (reachable and subscribed)"),
    ("herald_redis_reachable", "1 while Redis answers commands (the fail-fast circuit is closed)"),
    ("herald_redis_subscriber_connected", "1 while the Redis pub/sub connection is up"),
    ("herald_redis_probe_seconds", "Round trip of the last Redis lease renewal"),
    ("herald_webhooks_queue_depth", "Webhook events waiting to be sent"),
    ("herald_uptime_seconds", "Seconds since this process started serving"),
];

/// Counters that carry an `app` label and start at zero for every app.
const PER_APP_COUNTERS: &[&str] = &[
    "herald_messages_out_total",
    "herald_bytes_out_total",
    "herald_webhooks_sent_total",
    "herald_webhooks_dropped_total",
    "herald_webhooks_abandoned_total",
    "herald_webhooks_failed_total",
    "herald_webhooks_retried_total",
];

/// Counters without labels that start at zero.
const PLAIN_COUNTERS: &[&str] = &[
    "herald_messages_in_total",
    "herald_bytes_in_total",
    "herald_publishes_total",
    "herald_api_requests_total",
    "herald_slow_consumer_disconnects_total",
    "herald_sockets_refused_total",
    "herald_http_header_timeouts_total",
];

/// Buckets (seconds) of the bus relay latency histogram: fine below 10 ms (the target p99), coarse
/// beyond. `histogram_quantile(0.99, ...)` gives p50/p95/p99 from them, across nodes too.
const RELAY_LATENCY_BUCKETS: [f64; 16] =
    [0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0];

/// Buckets (seconds) of the Redis call duration histogram: 0.1 ms to the longest call deadline.
const REDIS_BUCKETS: [f64; 14] = [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0];

/// The name of the latency histogram.
pub(crate) const LATENCY: &str = "herald_delivery_latency_seconds";

/// Installs the recorder once per process (later Herald instances in the same process share it) and
/// describes every metric.
pub(crate) fn install() {
    HANDLE.get_or_init(|| {
        // Histograms render as summaries (quantiles), except the relay latency and the Redis call
        // duration, Prometheus histograms.
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Full("herald_ingest_relay_latency_seconds".into()), &RELAY_LATENCY_BUCKETS)
            .and_then(|b| b.set_buckets_for_metric(Matcher::Full("herald_redis_command_duration_seconds".into()), &REDIS_BUCKETS))
            .unwrap_or_else(|_| PrometheusBuilder::new());
        let handle = builder.install_recorder().ok();
        for (name, help) in COUNTERS {
            metrics::describe_counter!(*name, *help);
        }
        for (name, help) in GAUGES {
            metrics::describe_gauge!(*name, *help);
        }
        metrics::describe_histogram!(
            "herald_redis_command_duration_seconds",
            metrics::Unit::Seconds,
            "Duration of Redis calls made with a deadline (client path, lease, reaper, reconcile)"
        );
        let process = metrics_process::Collector::default();
        process.describe();
        let _ = PROCESS.set(process);
        handle
    });
}

/// Registers the series every operator dashboard expects, at zero, for each of `engine`'s apps.
pub(crate) fn register_zero_series(engine: &Engine) {
    for name in PLAIN_COUNTERS {
        metrics::counter!(*name).increment(0);
    }
    metrics::gauge!("herald_sockets_open").increment(0.0);
    for hub in engine.hubs() {
        let app = hub.app().id.clone();
        for name in PER_APP_COUNTERS {
            metrics::counter!(*name, "app" => app.clone()).increment(0);
        }
        metrics::gauge!("herald_webhooks_queue_depth", "app" => app.clone()).increment(0.0);
        for status in ["200", "400", "401", "404", "413", "429"] {
            metrics::counter!("herald_api_responses_total", "app" => app.clone(), "status" => status).increment(0);
        }
        // A histogram series per app for the Pusher front, even before the first delivery.
        hub.latency().front(herald_pusher::LATENCY_FRONT);
    }
}

/// The metrics text: the recorder's, then the latency histograms.
pub(crate) fn text(herald: &Herald) -> String {
    if let Some(process) = PROCESS.get() {
        process.collect();
    }
    metrics::gauge!("herald_uptime_seconds").set(herald.started.elapsed().as_secs_f64());
    let mut body = HANDLE.get().and_then(|h| h.as_ref()).map(|h| h.render()).unwrap_or_default();
    render_latency(&mut body, herald.pusher().engine());
    body
}

pub(crate) async fn render(State(herald): State<Herald>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text(&herald))
}

/// Appends every app's and front's latency histogram in the Prometheus text format.
fn render_latency(out: &mut String, engine: &Engine) {
    let _ = writeln!(out, "# HELP {LATENCY} Time from a publication accepted by this node to its frame written to a socket");
    let _ = writeln!(out, "# TYPE {LATENCY} histogram");
    let mut hubs: Vec<_> = engine.hubs().collect();
    hubs.sort_by(|a, b| a.app().id.cmp(&b.app().id));
    for hub in hubs {
        for (front, histogram) in hub.latency().all() {
            let labels = format!("app=\"{}\",front=\"{}\"", escape(&hub.app().id), escape(front));
            histogram_lines(out, &labels, &histogram.snapshot());
        }
    }
}

fn histogram_lines(out: &mut String, labels: &str, snapshot: &LatencySnapshot) {
    let mut cumulative = 0u64;
    for (i, count) in snapshot.buckets().iter().enumerate() {
        cumulative += count;
        match BUCKET_BOUNDS_MICROS.get(i) {
            Some(bound) => {
                let le = *bound as f64 / 1e6;
                let _ = writeln!(out, "{LATENCY}_bucket{{{labels},le=\"{le}\"}} {cumulative}");
            }
            None => {
                let _ = writeln!(out, "{LATENCY}_bucket{{{labels},le=\"+Inf\"}} {cumulative}");
            }
        }
    }
    let _ = writeln!(out, "{LATENCY}_sum{{{labels}}} {}", snapshot.sum().as_secs_f64());
    let _ = writeln!(out, "{LATENCY}_count{{{labels}}} {}", snapshot.count());
}

/// A label value in the exposition format.
fn escape(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// The sum of every series of `name` in a rendered metrics text (for the stats endpoints).
pub(crate) fn sum_of(text: &str, name: &str) -> f64 {
    sum_where(text, name, "")
}

/// The sum of the series of `name` whose labels contain `label` (e.g. `kind="timeout"`).
pub(crate) fn sum_where(text: &str, name: &str, label: &str) -> f64 {
    text.lines()
        .filter(|line| line.strip_prefix(name).is_some_and(|rest| rest.starts_with(['{', ' '])))
        .filter(|line| label.is_empty() || line.split_once(' ').is_some_and(|(series, _)| series.contains(label)))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Whether a series of `name` exists in the text.
pub(crate) fn has(text: &str, name: &str) -> bool {
    text.lines().any(|line| line.strip_prefix(name).is_some_and(|rest| rest.starts_with(['{', ' '])))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_series_of_one_metric_only() {
        let text = "# TYPE herald_errors_total counter\nherald_errors_total{kind=\"a\"} 2\nherald_errors_total{kind=\"b\"} 3\nherald_errors_totalx 9\nherald_errors_total 1\n";
        assert_eq!(sum_of(text, "herald_errors_total"), 6.0);
    }

    #[test]
    fn histogram_is_cumulative_with_inf() {
        let h = herald_core::latency::LatencyHistogram::default();
        h.record_duration(std::time::Duration::from_micros(50));
        h.record_duration(std::time::Duration::from_secs(20));
        let mut out = String::new();
        histogram_lines(&mut out, "app=\"a\",front=\"pusher\"", &h.snapshot());
        assert!(out.contains("herald_delivery_latency_seconds_bucket{app=\"a\",front=\"pusher\",le=\"0.0001\"} 1\n"), "{out}");
        assert!(out.contains("le=\"10\"} 1\n"), "{out}");
        assert!(out.contains("le=\"+Inf\"} 2\n"), "{out}");
        assert!(out.contains("herald_delivery_latency_seconds_count{app=\"a\",front=\"pusher\"} 2\n"), "{out}");
        assert_eq!(escape("a\"b\\"), "a\\\"b\\\\");
    }
}
