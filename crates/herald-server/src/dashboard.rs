//! The live dashboard at `/dashboard`: off unless an admin token is configured.
//!
//! The page (static HTML, CSS and JS served from the binary, charts by the vendored uPlot) asks for the
//! admin token in a login form and keeps it in the tab's `sessionStorage`; every API call sends it as
//! `Authorization: Bearer`, never in a URL. Its data:
//!
//! - `GET /dashboard/api/stream`: Server-Sent Events, one `stats` event a second: the node's stats (as
//!   `/stats`), per-interval rates (messages in/out per second), latency percentiles of the interval,
//!   errors by kind in the interval, each app's top channels by subscribers and by messages per second.
//!   At most [`MAX_STREAMS`] streams at once (503 beyond); each ends on shutdown.
//! - `GET /dashboard/api/apps`: apps with their public keys (for the test console).
//! - `POST /dashboard/api/publish` `{app, channel, event, data}`: publishes as the HTTP API would.
//! - `POST /dashboard/api/auth` `{app, socket_id, channel, user_id?}`: a private- or presence-channel
//!   signature, so the test console can subscribe to those too (the admin token vouches for it, so the
//!   server signs with the app's secret; a presence member is `user_id`, default `herald-dashboard`,
//!   with `user_info.name = "Herald dashboard"`). Encrypted channels are refused (their key would
//!   have to be derived for the browser).
//!
//! The test console connects to `/app/{key}` with the browser's own WebSocket and speaks Pusher.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::stream::{self, Stream};
use herald_core::latency::LatencySnapshot;
use herald_pusher::{auth, Trigger};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::stats::{admin, latency_json, node_stats, Refusal};
use crate::{metrics_http, Herald};

/// Dashboard streams open at once, at most.
pub const MAX_STREAMS: usize = 8;
/// Channels per app a stream follows for messages-per-second ranking.
const TRACKED_CHANNELS: usize = 10_000;
/// Top channels listed per app and ranking.
const TOP: usize = 10;
/// Time between two stream events.
const INTERVAL: Duration = Duration::from_secs(1);

static OPEN_STREAMS: AtomicUsize = AtomicUsize::new(0);

const PAGE: &str = include_str!("../assets/dashboard.html");
const SCRIPT: &str = include_str!("../assets/dashboard.js");
const STYLE: &str = include_str!("../assets/dashboard.css");
const UPLOT_JS: &str = include_str!("../assets/vendor/uPlot.iife.min.js");
const UPLOT_CSS: &str = include_str!("../assets/vendor/uPlot.min.css");

pub(crate) fn routes() -> Router<Herald> {
    Router::new()
        .route("/dashboard", get(page))
        .route("/dashboard/", get(page))
        .route("/dashboard/assets/dashboard.js", get(|h: State<Herald>| asset(h, SCRIPT, "text/javascript")))
        .route("/dashboard/assets/dashboard.css", get(|h: State<Herald>| asset(h, STYLE, "text/css")))
        .route("/dashboard/assets/uPlot.iife.min.js", get(|h: State<Herald>| asset(h, UPLOT_JS, "text/javascript")))
        .route("/dashboard/assets/uPlot.min.css", get(|h: State<Herald>| asset(h, UPLOT_CSS, "text/css")))
        .route("/dashboard/api/apps", get(apps))
        .route("/dashboard/api/stream", get(stream))
        .route("/dashboard/api/publish", post(publish))
        .route("/dashboard/api/auth", post(sign))
}

fn enabled(herald: &Herald) -> Result<(), Refusal> {
    herald.admin_token.as_ref().map(|_| ()).ok_or(Refusal::Disabled)
}

async fn page(State(herald): State<Herald>) -> Response {
    if let Err(refusal) = enabled(&herald) {
        return refusal.into_response();
    }
    let headers = [
        (header::CONTENT_TYPE, "text/html; charset=utf-8"),
        // Only this origin's own files run; nothing inline, nothing framed.
        (header::CONTENT_SECURITY_POLICY, "default-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data:; frame-ancestors 'none'"),
        (header::CACHE_CONTROL, "no-store"),
        (header::REFERRER_POLICY, "no-referrer"),
    ];
    (headers, PAGE).into_response()
}

async fn asset(State(herald): State<Herald>, body: &'static str, kind: &'static str) -> Response {
    if let Err(refusal) = enabled(&herald) {
        return refusal.into_response();
    }
    ([(header::CONTENT_TYPE, kind)], body).into_response()
}

async fn apps(State(herald): State<Herald>, headers: HeaderMap) -> Response {
    if let Err(refusal) = admin(&herald, &headers) {
        return refusal.into_response();
    }
    let mut list: Vec<Value> = herald
        .pusher()
        .engine()
        .hubs()
        .filter_map(|hub| {
            let app = herald.pusher().app(&hub.app().id)?;
            Some(json!({ "id": app.id, "key": app.key, "client_events": app.enable_client_messages }))
        })
        .collect();
    list.sort_by(|a, b| a["id"].as_str().cmp(&b["id"].as_str()));
    Json(json!({ "apps": list })).into_response()
}

/// A request of the test console to publish.
#[derive(Deserialize)]
struct Publish {
    app: String,
    channel: String,
    event: String,
    data: String,
}

/// The JSON body of an admin request, read only once the token was checked.
fn body<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, Box<Response>> {
    serde_json::from_slice(bytes).map_err(|e| Box::new((StatusCode::BAD_REQUEST, Json(json!({ "error": e.to_string() }))).into_response()))
}

async fn publish(State(herald): State<Herald>, headers: HeaderMap, bytes: axum::body::Bytes) -> Response {
    if let Err(refusal) = admin(&herald, &headers) {
        return refusal.into_response();
    }
    let p: Publish = match body(&bytes) {
        Ok(p) => p,
        Err(response) => return *response,
    };
    let channels = [p.channel];
    let trigger = Trigger { name: &p.event, data: &p.data, channels: &channels, socket_id: None };
    match herald.trigger(&p.app, &trigger).await {
        Ok(delivered) => Json(json!({ "delivered": delivered })).into_response(),
        Err(e) => (StatusCode::BAD_REQUEST, Json(json!({ "error": e.to_string() }))).into_response(),
    }
}

/// A request of the test console for a private- or presence-channel signature.
#[derive(Deserialize)]
struct Sign {
    app: String,
    socket_id: String,
    channel: String,
    /// The presence member the console joins as.
    user_id: Option<String>,
}

/// The presence member the console joins as when it names none.
const CONSOLE_USER: &str = "herald-dashboard";

async fn sign(State(herald): State<Herald>, headers: HeaderMap, bytes: axum::body::Bytes) -> Response {
    if let Err(refusal) = admin(&herald, &headers) {
        return refusal.into_response();
    }
    let s: Sign = match body(&bytes) {
        Ok(s) => s,
        Err(response) => return *response,
    };
    let Some(app) = herald.pusher().app(&s.app) else {
        return (StatusCode::NOT_FOUND, Json(json!({ "error": "no such app" }))).into_response();
    };
    if s.channel.starts_with("presence-") {
        let user_id = s.user_id.as_deref().map(str::trim).filter(|u| !u.is_empty()).unwrap_or(CONSOLE_USER);
        let channel_data = json!({ "user_id": user_id, "user_info": { "name": "Herald dashboard" } }).to_string();
        let signature = auth::sign(&app.secret, &auth::channel_message(&s.socket_id, &s.channel, Some(&channel_data)));
        return Json(json!({ "auth": format!("{}:{signature}", app.key), "channel_data": channel_data })).into_response();
    }
    if !s.channel.starts_with("private-") || s.channel.starts_with("private-encrypted-") {
        return (StatusCode::BAD_REQUEST, Json(json!({ "error": "the console signs private- and presence- channels only" })))
            .into_response();
    }
    let signature = auth::sign(&app.secret, &auth::channel_message(&s.socket_id, &s.channel, None));
    Json(json!({ "auth": format!("{}:{signature}", app.key) })).into_response()
}

/// A stream's place under [`MAX_STREAMS`].
struct StreamSlot;

impl Drop for StreamSlot {
    fn drop(&mut self) {
        OPEN_STREAMS.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What a stream remembers between two events to turn totals into rates.
struct Previous {
    slot: StreamSlot,
    messages_in: u64,
    messages_out: u64,
    latency: LatencySnapshot,
    errors: HashMap<String, f64>,
    /// (app, channel) -> messages, for the channels followed.
    channels: HashMap<(String, Arc<str>), u64>,
}

async fn stream(State(herald): State<Herald>, headers: HeaderMap) -> Response {
    if let Err(refusal) = admin(&herald, &headers) {
        return refusal.into_response();
    }
    if OPEN_STREAMS.fetch_add(1, Ordering::AcqRel) >= MAX_STREAMS {
        OPEN_STREAMS.fetch_sub(1, Ordering::AcqRel);
        return (StatusCode::SERVICE_UNAVAILABLE, Json(json!({ "error": "too many dashboard streams open" }))).into_response();
    }
    let previous = Previous {
        slot: StreamSlot,
        messages_in: 0,
        messages_out: 0,
        latency: LatencySnapshot::default(),
        errors: HashMap::new(),
        channels: HashMap::new(),
    };
    Sse::new(events(herald, previous)).keep_alive(KeepAlive::default()).into_response()
}

/// One `stats` event a second until shutdown.
fn events(herald: Herald, previous: Previous) -> impl Stream<Item = Result<Event, Infallible>> {
    let shutdown = herald.shutdown_token();
    stream::unfold((herald, previous, true), move |(herald, mut previous, first)| {
        let shutdown = shutdown.clone();
        async move {
            if !first {
                tokio::select! {
                    _ = shutdown.cancelled() => return None,
                    _ = tokio::time::sleep(INTERVAL) => {}
                }
            } else if shutdown.is_cancelled() {
                return None;
            }
            let body = tick(&herald, &mut previous, first);
            let event = Event::default().event("stats").data(body.to_string());
            Some((Ok(event), (herald, previous, false)))
        }
    })
}

/// `herald_errors_total` per kind, from the metrics text.
fn errors_by_kind(text: &str) -> HashMap<String, f64> {
    let mut out = HashMap::new();
    for line in text.lines().filter(|l| l.starts_with("herald_errors_total{")) {
        let kind = line.split("kind=\"").nth(1).and_then(|rest| rest.split('"').next()).unwrap_or("");
        if let Some(value) = line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) {
            *out.entry(kind.to_string()).or_insert(0.0) += value;
        }
    }
    out
}

fn tick(herald: &Herald, previous: &mut Previous, first: bool) -> Value {
    let _ = &previous.slot;
    let stats = node_stats(herald);
    let engine = herald.pusher().engine();
    let seconds = INTERVAL.as_secs_f64();
    let messages_in = stats["messages"]["in"].as_u64().unwrap_or(0);
    let messages_out = stats["messages"]["out"].as_u64().unwrap_or(0);
    let mut latency = LatencySnapshot::default();
    for hub in engine.hubs() {
        latency.merge(&hub.latency().merged());
    }
    let errors = errors_by_kind(&metrics_http::text(herald));
    let rate = |now: u64, before: u64| if first { 0.0 } else { now.saturating_sub(before) as f64 / seconds };
    let mut recent_errors = Map::new();
    if !first {
        for (kind, n) in &errors {
            let delta = n - previous.errors.get(kind).copied().unwrap_or(0.0);
            if delta > 0.0 {
                recent_errors.insert(kind.clone(), json!(delta));
            }
        }
    }
    let mut top = Map::new();
    let mut channels = HashMap::new();
    for hub in engine.hubs() {
        let id = hub.app().id.clone();
        let all = hub.top_channels(TRACKED_CHANNELS);
        let by_subscribers: Vec<Value> =
            all.iter().take(TOP).map(|(name, info, _)| json!({ "channel": &**name, "subscribers": info.subscribers })).collect();
        let mut by_rate: Vec<(f64, &str)> = all
            .iter()
            .map(|(name, _, s)| {
                let before = previous.channels.get(&(id.clone(), name.clone())).copied().unwrap_or(s.messages);
                (s.messages.saturating_sub(before) as f64 / seconds, &**name)
            })
            .filter(|(r, _)| *r > 0.0)
            .collect();
        by_rate.sort_by(|a, b| b.0.total_cmp(&a.0));
        let by_rate: Vec<Value> = by_rate.iter().take(TOP).map(|(r, name)| json!({ "channel": name, "messages_per_second": r })).collect();
        for (name, _, s) in &all {
            channels.insert((id.clone(), name.clone()), s.messages);
        }
        top.insert(id, json!({ "by_subscribers": by_subscribers, "by_messages_per_second": by_rate }));
    }
    let body = json!({
        "time_ms": std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64),
        "stats": stats,
        "rates": { "messages_in_per_second": rate(messages_in, previous.messages_in), "messages_out_per_second": rate(messages_out, previous.messages_out) },
        "latency_interval": latency_json(&latency.since(&previous.latency)),
        "recent_errors": recent_errors,
        "top_channels": top,
    });
    previous.messages_in = messages_in;
    previous.messages_out = messages_out;
    previous.latency = latency;
    previous.errors = errors;
    previous.channels = channels;
    body
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_summed_by_kind() {
        let text = "herald_errors_total{kind=\"a\"} 2\nherald_errors_total{kind=\"b\",x=\"y\"} 3\nherald_errors_total{kind=\"a\",z=\"1\"} 1\nother 5\n";
        let errors = errors_by_kind(text);
        assert_eq!(errors["a"], 3.0);
        assert_eq!(errors["b"], 3.0);
        assert_eq!(errors.len(), 2);
    }
}
