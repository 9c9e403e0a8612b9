//! The Pusher HTTP API: publish, batch publish, channel queries, user termination.
//!
//! Every request is signature-checked against the app named in the path before anything else happens.
//! Errors are JSON `{"error": "..."}` with 400 (validation), 401 (signature), 404 (unknown app) or
//! 413 (too large). A successful trigger answers exactly `{}` unless `info` asked for counts.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use herald_core::{ChannelInfo, Hub, Member, SocketId, StateError};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::auth;
use crate::channel::{Access, ChannelKind};
use crate::publish::{self, PublishError, Trigger};
use crate::Pusher;

/// Events one batch may hold.
pub const MAX_BATCH: usize = 10;

pub(crate) fn routes() -> Router<Arc<Pusher>> {
    Router::new()
        .route("/apps/{app_id}/events", post(events))
        .route("/apps/{app_id}/batch_events", post(batch_events))
        .route("/apps/{app_id}/channels", get(channels))
        .route("/apps/{app_id}/channels/{channel}", get(channel))
        .route("/apps/{app_id}/channels/{channel}/users", get(users))
        .route("/apps/{app_id}/users/{user_id}/terminate_connections", post(terminate))
}

/// An HTTP API failure, rendered as `{"error": ...}` with its status.
#[derive(Debug)]
pub(crate) struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let kind = match self.0 {
            StatusCode::UNAUTHORIZED => "api_unauthorized",
            StatusCode::NOT_FOUND => "api_not_found",
            StatusCode::PAYLOAD_TOO_LARGE => "api_too_large",
            StatusCode::SERVICE_UNAVAILABLE => "api_state_unavailable",
            _ => "api_bad_request",
        };
        metrics::counter!("herald_errors_total", "kind" => kind).increment(1);
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

fn bad_request(message: impl Into<String>) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, message.into())
}

impl From<PublishError> for ApiError {
    fn from(e: PublishError) -> Self {
        let status = match e {
            PublishError::DataTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            _ => StatusCode::BAD_REQUEST,
        };
        ApiError(status, e.to_string())
    }
}

/// Finds the app and checks the request's signature.
fn authorize(front: &Pusher, app_id: &str, method: &Method, uri: &Uri, body: &[u8]) -> Result<Arc<Hub>, ApiError> {
    let hub = front.engine.by_id(app_id).ok_or_else(|| ApiError(StatusCode::NOT_FOUND, format!("unknown app {app_id:?}")))?;
    let app = hub.app();
    auth::verify_request(&app.key, &app.secret, method.as_str(), uri.path(), uri.query().unwrap_or(""), body)
        .map_err(|e| ApiError(StatusCode::UNAUTHORIZED, e.to_string()))?;
    metrics::counter!("herald_api_requests_total").increment(1);
    Ok(hub.clone())
}

fn unavailable(e: StateError) -> ApiError {
    ApiError(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
}

/// Counts of one channel: cluster-wide when this node is part of a cluster, else this node's own.
async fn channel_info(hub: &Hub, channel: &str) -> Result<Option<ChannelInfo>, ApiError> {
    match hub.state() {
        Some(state) => state.channel(&hub.app().id, channel).await.map_err(unavailable),
        None => Ok(hub.channel(channel)),
    }
}

/// Occupied channels starting with `prefix`, cluster-wide when in a cluster.
async fn channel_list(hub: &Hub, prefix: &str) -> Result<Vec<(Arc<str>, ChannelInfo)>, ApiError> {
    match hub.state() {
        Some(state) => state.channels(&hub.app().id, prefix).await.map_err(unavailable),
        None => Ok(hub.channels(prefix)),
    }
}

/// Members of a presence channel, cluster-wide when in a cluster.
async fn member_list(hub: &Hub, channel: &str) -> Result<Vec<Member>, ApiError> {
    match hub.state() {
        Some(state) => state.members(&hub.app().id, channel).await.map_err(unavailable),
        None => Ok(hub.members(channel).unwrap_or_default()),
    }
}

fn query_param(uri: &Uri, name: &str) -> Option<String> {
    form_urlencoded::parse(uri.query().unwrap_or("").as_bytes()).find(|(k, _)| k == name).map(|(_, v)| v.into_owned())
}

/// Which counts an `info` parameter asks for.
#[derive(Default, Clone, Copy)]
struct Info {
    subscription_count: bool,
    user_count: bool,
}

impl Info {
    fn parse(info: Option<&str>) -> Info {
        let mut out = Info::default();
        for attr in info.unwrap_or("").split(',').map(str::trim) {
            match attr {
                "subscription_count" => out.subscription_count = true,
                "user_count" => out.user_count = true,
                _ => {}
            }
        }
        out
    }

    fn any(self) -> bool {
        self.subscription_count || self.user_count
    }

    /// The requested counts of one channel (zero when unoccupied).
    fn of(self, channel: &str, counts: Option<ChannelInfo>) -> Value {
        let mut out = Map::new();
        if self.subscription_count {
            out.insert("subscription_count".into(), counts.map_or(0, |c| c.subscribers).into());
        }
        if self.user_count && ChannelKind::of(channel).access == Access::Presence {
            out.insert("user_count".into(), counts.and_then(|c| c.users).unwrap_or(0).into());
        }
        Value::Object(out)
    }
}

#[derive(Deserialize)]
struct EventBody {
    name: String,
    data: Value,
    #[serde(default)]
    channel: Option<String>,
    #[serde(default)]
    channels: Option<Vec<String>>,
    #[serde(default)]
    socket_id: Option<String>,
    #[serde(default)]
    info: Option<String>,
}

/// An event body checked and ready to deliver.
struct Prepared {
    name: String,
    data: String,
    channels: Vec<String>,
    socket_id: Option<SocketId>,
    info: Info,
}

impl Prepared {
    fn new(hub: &Hub, body: EventBody) -> Result<Prepared, ApiError> {
        let channels = match (body.channels, body.channel) {
            (Some(list), None) => list,
            (None, Some(one)) => vec![one],
            (Some(_), Some(_)) => return Err(bad_request("give either channel or channels, not both")),
            (None, None) => return Err(bad_request("missing channel or channels")),
        };
        let data = match body.data {
            Value::String(s) => s,
            other => other.to_string(),
        };
        let socket_id = match body.socket_id.as_deref() {
            None | Some("") => None,
            Some(s) => Some(s.parse::<SocketId>().map_err(|e| bad_request(e.to_string()))?),
        };
        let info = Info::parse(body.info.as_deref());
        let prepared = Prepared { name: body.name, data, channels, socket_id, info };
        publish::validate(hub, &prepared.trigger())?;
        Ok(prepared)
    }

    fn trigger(&self) -> Trigger<'_> {
        Trigger { name: &self.name, data: &self.data, channels: &self.channels, socket_id: self.socket_id }
    }
}

fn parse_json<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| bad_request(format!("invalid JSON body: {e}")))
}

async fn events(
    State(front): State<Arc<Pusher>>,
    Path(app_id): Path<String>,
    method: Method,
    uri: Uri,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let hub = authorize(&front, &app_id, &method, &uri, &body)?;
    let event = Prepared::new(&hub, parse_json(&body)?)?;
    publish::trigger(&hub, &event.trigger())?;
    if !event.info.any() {
        return Ok(Json(json!({})));
    }
    let mut channels = Map::new();
    for c in &event.channels {
        channels.insert(c.clone(), event.info.of(c, channel_info(&hub, c).await?));
    }
    Ok(Json(json!({ "channels": channels })))
}

async fn batch_events(
    State(front): State<Arc<Pusher>>,
    Path(app_id): Path<String>,
    method: Method,
    uri: Uri,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    #[derive(Deserialize)]
    struct Batch {
        batch: Vec<EventBody>,
    }
    let hub = authorize(&front, &app_id, &method, &uri, &body)?;
    let batch: Batch = parse_json(&body)?;
    if batch.batch.len() > MAX_BATCH {
        return Err(bad_request(format!("batch holds {} events, limit {MAX_BATCH}", batch.batch.len())));
    }
    let events = batch.batch.into_iter().map(|e| Prepared::new(&hub, e)).collect::<Result<Vec<_>, _>>()?;
    for event in &events {
        publish::trigger(&hub, &event.trigger())?;
    }
    if !events.iter().any(|e| e.info.any()) {
        return Ok(Json(json!({})));
    }
    let mut infos = Vec::with_capacity(events.len());
    for e in &events {
        infos.push(e.info.of(&e.channels[0], channel_info(&hub, &e.channels[0]).await?));
    }
    Ok(Json(json!({ "batch": infos })))
}

async fn channels(State(front): State<Arc<Pusher>>, Path(app_id): Path<String>, method: Method, uri: Uri) -> Result<Json<Value>, ApiError> {
    let hub = authorize(&front, &app_id, &method, &uri, b"")?;
    let prefix = query_param(&uri, "filter_by_prefix").unwrap_or_default();
    let info = Info::parse(query_param(&uri, "info").as_deref());
    if info.user_count && !prefix.starts_with("presence-") {
        return Err(bad_request("info=user_count needs filter_by_prefix=presence-"));
    }
    let channels: Map<String, Value> =
        channel_list(&hub, &prefix).await?.into_iter().map(|(name, counts)| (name.to_string(), info.of(&name, Some(counts)))).collect();
    Ok(Json(json!({ "channels": channels })))
}

async fn channel(
    State(front): State<Arc<Pusher>>,
    Path((app_id, channel)): Path<(String, String)>,
    method: Method,
    uri: Uri,
) -> Result<Json<Value>, ApiError> {
    let hub = authorize(&front, &app_id, &method, &uri, b"")?;
    let info = Info::parse(query_param(&uri, "info").as_deref());
    if info.user_count && ChannelKind::of(&channel).access != Access::Presence {
        return Err(bad_request("info=user_count is only available for presence channels"));
    }
    let counts = channel_info(&hub, &channel).await?;
    let mut out = match info.of(&channel, counts) {
        Value::Object(map) => map,
        _ => Map::new(),
    };
    out.insert("occupied".into(), counts.is_some().into());
    Ok(Json(Value::Object(out)))
}

async fn users(
    State(front): State<Arc<Pusher>>,
    Path((app_id, channel)): Path<(String, String)>,
    method: Method,
    uri: Uri,
) -> Result<Json<Value>, ApiError> {
    let hub = authorize(&front, &app_id, &method, &uri, b"")?;
    if ChannelKind::of(&channel).access != Access::Presence {
        return Err(bad_request("users are only available for presence channels"));
    }
    let users: Vec<Value> = member_list(&hub, &channel).await?.into_iter().map(|m| json!({ "id": &*m.user_id })).collect();
    Ok(Json(json!({ "users": users })))
}

async fn terminate(
    State(front): State<Arc<Pusher>>,
    Path((app_id, user_id)): Path<(String, String)>,
    method: Method,
    uri: Uri,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let hub = authorize(&front, &app_id, &method, &uri, &body)?;
    hub.terminate_user(&user_id);
    Ok(Json(json!({})))
}
