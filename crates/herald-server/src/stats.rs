//! The stats endpoints (JSON, for operators and the dashboard), authenticated by the admin token.
//!
//! - `GET /stats`: this node, every app summed, then each app: uptime, connections (open, total since
//!   start, peak), disconnections by reason, messages and bytes in/out, publications, errors, channels,
//!   users, delivery latency p50/p95/p99.
//! - `GET /stats/apps/{app_id}`: one app.
//! - `GET /stats/apps/{app_id}/channels/{channel}`: one channel: subscribers and users (cluster-wide
//!   when the engine is Redis, as the HTTP API counts them), messages, bytes, peak subscribers (this
//!   node: those counters live in the channel's entry while it is occupied here), and the channel's
//!   delivery latency p50/p95/p99 on this node, all fronts (`herald_core::latency`: a bounded table
//!   of per-channel histograms per app, a slot taken when the channel becomes occupied here and given
//!   back when it is vacated; `latency` is `null` for a channel that got no slot).
//!
//! Node and app answers carry `latency` (every front merged) and `latency_by_front` (each front's
//! histogram that exists: `pusher`, `centrifugo`, `relay`, ...).
//!
//! Each answer says its `scope` (`node` or `cluster`) per figure. Without an `admin_token` in the
//! config the endpoints answer 404; a missing or wrong token is 401 (logged at debug with the reason).
//! The token travels in `Authorization: Bearer ...`, never in the URL.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use herald_core::latency::LatencySnapshot;
use herald_core::{Hub, HubStatsSnapshot};
use serde_json::{json, Map, Value};

use crate::metrics_http;
use crate::Herald;

/// How long a channel's cluster-wide counts may take before the node's own are answered.
const CLUSTER_WAIT: Duration = Duration::from_secs(2);

pub(crate) fn routes() -> Router<Herald> {
    Router::new()
        .route("/stats", get(global))
        .route("/stats/apps/{app_id}", get(app))
        .route("/stats/apps/{app_id}/channels/{channel}", get(channel))
}

/// Why an admin request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// No admin token is configured: the admin endpoints do not exist.
    Disabled,
    /// The request has no `Authorization: Bearer` header.
    Missing,
    /// The token does not match.
    Wrong,
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        match self {
            Refusal::Disabled => (StatusCode::NOT_FOUND, Json(json!({"error": "not found"}))).into_response(),
            Refusal::Missing | Refusal::Wrong => {
                (StatusCode::UNAUTHORIZED, [("www-authenticate", "Bearer")], Json(json!({"error": "admin token required"}))).into_response()
            }
        }
    }
}

/// Equal in constant time for equal lengths.
pub(crate) fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Checks the admin token of a request.
pub(crate) fn admin(herald: &Herald, headers: &HeaderMap) -> Result<(), Refusal> {
    let Some(expected) = herald.admin_token.as_deref() else { return Err(Refusal::Disabled) };
    let given = headers.get("authorization").and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    let refusal = match given {
        None => Refusal::Missing,
        Some(token) if same(token.trim().as_bytes(), expected.as_bytes()) => return Ok(()),
        Some(_) => Refusal::Wrong,
    };
    tracing::debug!(reason = ?refusal, "admin request refused");
    Err(refusal)
}

fn millis(d: Option<Duration>) -> Value {
    d.map_or(Value::Null, |d| json!((d.as_secs_f64() * 1e6).round() / 1e3))
}

/// Latency percentiles (milliseconds) and the number of deliveries measured.
pub(crate) fn latency_json(s: &LatencySnapshot) -> Value {
    json!({
        "count": s.count(),
        "p50_ms": millis(s.quantile(0.5)),
        "p95_ms": millis(s.quantile(0.95)),
        "p99_ms": millis(s.quantile(0.99)),
        "scope": "node",
    })
}

/// Adds `b` into `a`.
fn add(a: &mut HubStatsSnapshot, b: &HubStatsSnapshot) {
    a.connections_total += b.connections_total;
    a.peak_connections += b.peak_connections;
    a.messages_in += b.messages_in;
    a.bytes_in += b.bytes_in;
    a.publications += b.publications;
    a.messages_out += b.messages_out;
    a.bytes_out += b.bytes_out;
    for (reason, n) in &b.disconnections {
        match a.disconnections.iter_mut().find(|(r, _)| r == reason) {
            Some((_, total)) => *total += n,
            None => a.disconnections.push((reason, *n)),
        }
    }
}

/// Connections, channels and users open now, summed over `hubs`.
fn live(hubs: &[&Arc<Hub>]) -> (usize, usize, usize) {
    hubs.iter().fold((0, 0, 0), |(c, ch, u), hub| (c + hub.connection_count(), ch + hub.channel_count(), u + hub.user_count()))
}

/// The common body of a node or app answer.
fn summary(hubs: &[&Arc<Hub>], uptime: Duration) -> Value {
    let mut counts = HubStatsSnapshot::default();
    let mut latency = LatencySnapshot::default();
    let mut by_front: Vec<(&'static str, LatencySnapshot)> = Vec::new();
    for hub in hubs {
        add(&mut counts, &hub.stats().snapshot());
        for (front, histogram) in hub.latency().all() {
            let snapshot = histogram.snapshot();
            latency.merge(&snapshot);
            match by_front.iter_mut().find(|(f, _)| *f == front) {
                Some((_, total)) => total.merge(&snapshot),
                None => by_front.push((front, snapshot)),
            }
        }
    }
    by_front.sort_by_key(|(front, _)| *front);
    let by_front: Map<String, Value> = by_front.iter().map(|(front, s)| ((*front).to_string(), latency_json(s))).collect();
    let (open, channels, users) = live(hubs);
    let disconnections: Map<String, Value> = counts.disconnections.iter().map(|(r, n)| ((*r).to_string(), json!(n))).collect();
    json!({
        "scope": "node",
        "uptime_secs": uptime.as_secs(),
        "connections": { "active": open, "total": counts.connections_total, "peak": counts.peak_connections },
        "disconnections": disconnections,
        "messages": { "in": counts.messages_in, "out": counts.messages_out, "published": counts.publications },
        "bytes": { "in": counts.bytes_in, "out": counts.bytes_out },
        "channels": channels,
        "users": users,
        "latency": latency_json(&latency),
        "latency_by_front": by_front,
    })
}

/// The Redis link's health (this process), from the metrics `herald_redis::health` keeps.
fn redis_json(text: &str) -> Value {
    let n = |name: &str| metrics_http::sum_of(text, name);
    let by = |name: &str, label: &str| metrics_http::sum_where(text, name, label) as u64;
    json!({
        "scope": "node",
        "connected": n("herald_redis_connected") > 0.0,
        "reachable": n("herald_redis_reachable") > 0.0,
        "subscriber_connected": n("herald_redis_subscriber_connected") > 0.0,
        "reconnects": {
            "command": by("herald_redis_reconnects_total", "connection=\"command\""),
            "subscriber": by("herald_redis_reconnects_total", "connection=\"subscriber\""),
        },
        "command_errors": {
            "timeout": by("herald_redis_command_errors_total", "kind=\"timeout\""),
            "link": by("herald_redis_command_errors_total", "kind=\"link\""),
            "refused": by("herald_redis_command_errors_total", "kind=\"refused\""),
        },
        "fail_fast": n("herald_redis_fail_fast_total") as u64,
        "probe_ms": (n("herald_redis_probe_seconds") * 1e6).round() / 1e3,
        "published": n("herald_redis_published_total") as u64,
        "publish_dropped": n("herald_redis_publish_dropped_total") as u64,
        "received": n("herald_redis_received_total") as u64,
    })
}

/// Webhook deliveries by outcome and the queue depth (this process, every app).
fn webhooks_json(text: &str) -> Value {
    let n = |name: &str| metrics_http::sum_of(text, name) as u64;
    json!({
        "scope": "node",
        "sent": n("herald_webhooks_sent_total"),
        "failed": n("herald_webhooks_failed_total"),
        "retried": n("herald_webhooks_retried_total"),
        "dropped": n("herald_webhooks_dropped_total"),
        "queue_depth": n("herald_webhooks_queue_depth"),
    })
}

/// The node-wide answer (also what the dashboard streams).
pub(crate) fn node_stats(herald: &Herald) -> Value {
    let engine = herald.pusher().engine();
    let mut hubs: Vec<&Arc<Hub>> = engine.hubs().collect();
    hubs.sort_by(|a, b| a.app().id.cmp(&b.app().id));
    let mut body = summary(&hubs, herald.started.elapsed());
    let text = metrics_http::text(herald);
    body["errors"] = json!(metrics_http::sum_of(&text, "herald_errors_total") as u64);
    let broker = engine.broker();
    body["engine"] = json!(broker.map_or("memory", |b| b.name()));
    if let Some(broker) = broker {
        body["backend"] = json!(if broker.healthy() { "up" } else { "down" });
    }
    if metrics_http::has(&text, "herald_redis_reachable") {
        body["redis"] = redis_json(&text);
    }
    body["webhooks"] = webhooks_json(&text);
    // The bus sources (herald-ingest): counters, position and bus → engine lag.
    let sources = herald.ingest().sources();
    if !sources.is_empty() {
        body["sources"] = Value::Object(sources.iter().map(|s| (s.name().to_owned(), s.stats_json())).collect());
    }
    body["apps"] = hubs
        .iter()
        .map(|hub| {
            let mut app = summary(&[*hub], herald.started.elapsed());
            app["id"] = json!(hub.app().id);
            app
        })
        .collect();
    body
}

async fn global(State(herald): State<Herald>, headers: HeaderMap) -> Result<Json<Value>, Refusal> {
    admin(&herald, &headers)?;
    Ok(Json(node_stats(&herald)))
}

fn not_found(what: &str) -> Response {
    (StatusCode::NOT_FOUND, Json(json!({ "error": format!("no such {what}") }))).into_response()
}

async fn app(State(herald): State<Herald>, headers: HeaderMap, Path(app_id): Path<String>) -> Response {
    if let Err(refusal) = admin(&herald, &headers) {
        return refusal.into_response();
    }
    let Some(hub) = herald.pusher().engine().by_id(&app_id) else { return not_found("app") };
    let mut body = summary(&[hub], herald.started.elapsed());
    body["id"] = json!(app_id);
    body["top_channels"] = hub
        .top_channels(10)
        .into_iter()
        .map(|(name, info, stats)| json!({ "channel": &*name, "subscribers": info.subscribers, "messages": stats.messages }))
        .collect();
    Json(body).into_response()
}

async fn channel(State(herald): State<Herald>, headers: HeaderMap, Path((app_id, channel)): Path<(String, String)>) -> Response {
    if let Err(refusal) = admin(&herald, &headers) {
        return refusal.into_response();
    }
    let Some(hub) = herald.pusher().engine().by_id(&app_id) else { return not_found("app") };
    let local = hub.channel_stats(&channel);
    // Subscribers and users: the cluster's when the cluster state answers in time, else this node's.
    let mut scope = "node";
    let mut info = local.map(|(info, _)| info);
    if let Some(state) = hub.state() {
        if let Ok(Ok(counts)) = tokio::time::timeout(CLUSTER_WAIT, state.channel(&app_id, &channel)).await {
            info = counts;
            scope = "cluster";
        }
    }
    let stats = local.map(|(_, stats)| stats);
    let latency = hub.channel_latency(&channel);
    Json(json!({
        "channel": channel,
        "occupied": info.is_some(),
        "subscribers": info.map_or(0, |i| i.subscribers),
        "users": info.and_then(|i| i.users),
        "counts_scope": scope,
        "messages": stats.map_or(0, |s| s.messages),
        "bytes": stats.map_or(0, |s| s.bytes),
        "peak_subscribers": stats.map_or(0, |s| s.peak_subscribers),
        "occupied_secs": stats.map_or(0, |s| s.occupied_secs),
        "traffic_scope": "node",
        "latency": latency.as_ref().map(latency_json),
    }))
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_time_compare() {
        assert!(same(b"abc", b"abc"));
        assert!(!same(b"abc", b"abd"));
        assert!(!same(b"abc", b"ab"));
    }
}
