//! Prometheus exposition: one process-wide recorder, rendered at `/metrics`.

use std::sync::OnceLock;

use axum::http::header;
use axum::response::IntoResponse;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Buckets (seconds) of the bus relay latency histogram: fine below 10 ms (the target p99), coarse
/// beyond. `histogram_quantile(0.99, ...)` gives p50/p95/p99 from them, across nodes too.
const RELAY_LATENCY_BUCKETS: [f64; 16] =
    [0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0];

/// Installs the recorder once per process (later Herald instances in the same process share it).
/// Histograms render as summaries (quantiles), except the relay latency, a Prometheus histogram.
pub(crate) fn install() {
    HANDLE.get_or_init(|| {
        let builder = PrometheusBuilder::new();
        let builder = builder
            .set_buckets_for_metric(Matcher::Full("herald_ingest_relay_latency_seconds".into()), &RELAY_LATENCY_BUCKETS)
            .unwrap_or_else(|_| PrometheusBuilder::new());
        builder.install_recorder().ok()
    });
}

pub(crate) async fn render() -> impl IntoResponse {
    let body = HANDLE.get().and_then(|h| h.as_ref()).map(|h| h.render()).unwrap_or_default();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body)
}
