//! The Pusher HTTP API: publish, batch publish, channel queries, user termination.
//!
//! Every request is signature-checked against the app named in the path before anything else happens:
//! the signature covers the query (which carries `body_md5`), so it is checked before the body is
//! read, and `body_md5` once the body is in. A body must arrive within `PusherConfig::body_timeout`
//! (408) and fit `max_request_body` (413), so stalled or oversized bodies hold no memory.
//!
//! Every error is JSON `{"error": "..."}`: 400 (validation, bad JSON, a body that is not a JSON
//! object), 401 (signature), 404 (unknown app or route under `/apps`), 405 (method), 408 (slow body),
//! 413 (too large), 503 (cluster state unreadable for a query). A successful trigger answers exactly
//! `{}` unless `info` asked for counts.
//!
//! A trigger is answered 200 once it is published, also when its `info` counts cannot be read: the
//! event went out, and an error would make SDKs retry and publish it twice. In a cluster, if Redis
//! does not answer the count read within [`COUNTS_WAIT`], the counts are this node's own (counted in
//! `herald_api_info_fallback_total`).

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post, MethodRouter};
use axum::{Json, Router};
use herald_core::{ChannelInfo, Hub, Member, SocketId, StateError};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Map, Value};

use crate::auth;
use crate::channel::{is_valid_name, Access, ChannelKind, MAX_USER_ID};
use crate::publish::{self, PublishError, Trigger};
use crate::wire;
use crate::Pusher;

/// Events one batch may hold.
pub const MAX_BATCH: usize = 10;

/// Longest wait for cluster-wide counts after a publish before this node's own are used.
pub const COUNTS_WAIT: Duration = Duration::from_secs(2);

pub(crate) fn routes() -> Router<Arc<Pusher>> {
    // Unknown methods on known routes and unknown routes under /apps answer JSON like every API error.
    let json_405 = |route: MethodRouter<Arc<Pusher>>| route.fallback(method_not_allowed);
    Router::new()
        .route("/apps/{app_id}/events", json_405(post(events)))
        .route("/apps/{app_id}/batch_events", json_405(post(batch_events)))
        .route("/apps/{app_id}/channels", json_405(get(channels)))
        .route("/apps/{app_id}/channels/{channel}", json_405(get(channel)))
        .route("/apps/{app_id}/channels/{channel}/users", json_405(get(users)))
        .route("/apps/{app_id}/users/{user_id}/terminate_connections", json_405(post(terminate)))
        // A nested fallback lives in the router's fallback table: it neither conflicts with the routes
        // above nor makes this router's fallback custom (an embedding router may still have its own).
        .nest("/apps", Router::new().fallback(unknown_route))
        .route("/apps/", any(unknown_route))
}

async fn method_not_allowed(method: Method) -> ApiError {
    ApiError(StatusCode::METHOD_NOT_ALLOWED, format!("method {method} is not allowed here"))
}

async fn unknown_route() -> ApiError {
    ApiError(StatusCode::NOT_FOUND, "no such API route".into())
}

/// An HTTP API failure, rendered as `{"error": ...}` with its status.
#[derive(Debug)]
pub(crate) struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let kind = match self.0 {
            StatusCode::UNAUTHORIZED => "api_unauthorized",
            StatusCode::NOT_FOUND => "api_not_found",
            StatusCode::METHOD_NOT_ALLOWED => "api_method_not_allowed",
            StatusCode::REQUEST_TIMEOUT => "api_body_timeout",
            StatusCode::PAYLOAD_TOO_LARGE => "api_too_large",
            StatusCode::SERVICE_UNAVAILABLE => "api_state_unavailable",
            StatusCode::TOO_MANY_REQUESTS => "api_rate_limited",
            _ => "api_bad_request",
        };
        metrics::counter!("herald_errors_total", "kind" => kind).increment(1);
        if self.0 == StatusCode::TOO_MANY_REQUESTS {
            // The message is the number of seconds to wait (see `rate_limited`).
            let body = json!({ "error": format!("rate limit exceeded; retry after {} s", self.1), "retry_after": self.1.parse::<u64>().unwrap_or(1) });
            let mut response = (self.0, Json(body)).into_response();
            if let Ok(value) = HeaderValue::from_str(&self.1) {
                response.headers_mut().insert(header::RETRY_AFTER, value);
            }
            return response;
        }
        let mut response = (self.0, Json(json!({ "error": self.1 }))).into_response();
        if matches!(self.0, StatusCode::REQUEST_TIMEOUT | StatusCode::PAYLOAD_TOO_LARGE) {
            // The rest of the body was not read: the connection cannot carry another request.
            response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }
}

/// `Path`, with its rejection (e.g. a segment that is not UTF-8) as a JSON [`ApiError`].
struct ApiPath<T>(T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(value)) => Ok(ApiPath(value)),
            Err(e) => Err(bad_request(e.body_text())),
        }
    }
}

fn bad_request(message: impl Into<String>) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, message.into())
}

impl From<PublishError> for ApiError {
    fn from(e: PublishError) -> Self {
        let status = match e {
            PublishError::DataTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            PublishError::History(_) => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::BAD_REQUEST,
        };
        ApiError(status, e.to_string())
    }
}

/// Finds the app and checks the request's signature (and `body_md5` against `body` when it is not
/// empty).
fn authorize(front: &Pusher, app_id: &str, method: &Method, uri: &Uri, body: &[u8]) -> Result<Arc<Hub>, ApiError> {
    let unknown = || ApiError(StatusCode::NOT_FOUND, format!("unknown app {app_id:?}"));
    let app = front.apps.by_id(app_id).ok_or_else(unknown)?;
    let hub = front.engine.by_id(app_id).ok_or_else(unknown)?;
    auth::verify_request(&app.key, &app.secret, method.as_str(), uri.path(), uri.query().unwrap_or(""), body).map_err(|e| {
        tracing::debug!(app = app_id, reason = %e, "API request refused: 401");
        ApiError(StatusCode::UNAUTHORIZED, e.to_string())
    })?;
    Ok(hub.clone())
}

/// Counts an authenticated request against its app's rate limit: 429 with `Retry-After` beyond it.
fn rate_limited(front: &Pusher, app_id: &str) -> Result<(), ApiError> {
    front.api_rate(app_id).map_err(|wait| {
        let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        tracing::debug!(app = app_id, retry_after = secs, "API request refused: rate limit");
        ApiError(StatusCode::TOO_MANY_REQUESTS, secs.max(1).to_string())
    })
}

/// A signed request with its body: the signature is checked first (it covers the query, `body_md5`
/// included), then the body is read within the deadline and size limit, then `body_md5` is checked.
/// An unsigned request is refused before a byte of its body is buffered.
async fn signed_body(
    front: &Pusher,
    app_id: &str,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: Body,
) -> Result<(Arc<Hub>, Bytes), ApiError> {
    let hub = authorize(front, app_id, method, uri, b"")?;
    rate_limited(front, app_id)?;
    let body = read_body(front, &hub, headers, body).await?;
    if !body.is_empty() {
        authorize(front, app_id, method, uri, &body)?;
    }
    metrics::counter!("herald_api_requests_total").increment(1);
    Ok((hub, body))
}

/// Reads a request body: 413 beyond `max_request_body` (at once when `Content-Length` says so), 408
/// when it does not arrive within `body_timeout` (counted in `herald_api_body_timeouts_total`).
async fn read_body(front: &Pusher, hub: &Hub, headers: &HeaderMap, body: Body) -> Result<Bytes, ApiError> {
    let limit = front.config.max_request_body;
    let too_large = || ApiError(StatusCode::PAYLOAD_TOO_LARGE, format!("request body is larger than {limit} bytes"));
    let declared = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        return Err(too_large());
    }
    let deadline = front.config.body_timeout;
    match tokio::time::timeout(deadline, Limited::new(body, limit).collect()).await {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => Err(too_large()),
        Ok(Err(e)) => Err(bad_request(format!("cannot read the request body: {e}"))),
        Err(_) => {
            metrics::counter!("herald_api_body_timeouts_total", "app" => hub.app().id.clone()).increment(1);
            Err(ApiError(StatusCode::REQUEST_TIMEOUT, format!("request body not received within {} ms", deadline.as_millis())))
        }
    }
}

/// Finds the app and checks the signature of a request without a body.
fn signed(front: &Pusher, app_id: &str, method: &Method, uri: &Uri) -> Result<Arc<Hub>, ApiError> {
    let hub = authorize(front, app_id, method, uri, b"")?;
    rate_limited(front, app_id)?;
    metrics::counter!("herald_api_requests_total").increment(1);
    Ok(hub)
}

fn unavailable(e: StateError) -> ApiError {
    ApiError(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
}

/// Counts after a publish, which was accepted and must answer 200: cluster-wide while the cluster
/// answers within [`COUNTS_WAIT`]; after the first failure, this node's own for this channel and every
/// later one of the request (counted once per request in `herald_api_info_fallback_total`).
struct CountsAfterPublish<'a> {
    hub: &'a Hub,
    cluster_ok: bool,
}

impl<'a> CountsAfterPublish<'a> {
    fn new(hub: &'a Hub) -> Self {
        CountsAfterPublish { hub, cluster_ok: true }
    }

    async fn of(&mut self, channel: &str) -> Option<ChannelInfo> {
        if let Some(state) = self.hub.state().filter(|_| self.cluster_ok) {
            let error = match tokio::time::timeout(COUNTS_WAIT, state.channel(&self.hub.app().id, channel)).await {
                Ok(Ok(counts)) => return counts,
                Ok(Err(e)) => e.to_string(),
                Err(_) => format!("no answer within {} ms", COUNTS_WAIT.as_millis()),
            };
            self.cluster_ok = false;
            tracing::warn!(app = %self.hub.app().id, %error, "cluster counts unreadable after a publish; answering with this node's");
            metrics::counter!("herald_api_info_fallback_total", "app" => self.hub.app().id.clone()).increment(1);
        }
        self.hub.channel(channel)
    }
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

/// Decodes a JSON text that the API defines as an object (serde would also take an array for a
/// struct: `["e","x","arr"]` must not publish).
fn parse_object<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, ApiError> {
    let text = std::str::from_utf8(body).map_err(|_| bad_request("request body is not UTF-8"))?;
    wire::object(text).map_err(|e| bad_request(format!("invalid JSON body: {e}")))
}

async fn events(
    State(front): State<Arc<Pusher>>,
    ApiPath(app_id): ApiPath<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let (hub, body) = signed_body(&front, &app_id, &method, &uri, &headers, body).await?;
    let event = Prepared::new(&hub, parse_object(&body)?)?;
    publish::trigger(&hub, &event.trigger()).await?;
    if !event.info.any() {
        return Ok(Json(json!({})));
    }
    let mut counts = CountsAfterPublish::new(&hub);
    let mut channels = Map::new();
    for c in &event.channels {
        channels.insert(c.clone(), event.info.of(c, counts.of(c).await));
    }
    Ok(Json(json!({ "channels": channels })))
}

async fn batch_events(
    State(front): State<Arc<Pusher>>,
    ApiPath(app_id): ApiPath<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    #[derive(Deserialize)]
    struct Batch<'a> {
        #[serde(borrow)]
        batch: Vec<&'a RawValue>,
    }
    let (hub, body) = signed_body(&front, &app_id, &method, &uri, &headers, body).await?;
    let batch: Batch<'_> = parse_object(&body)?;
    if batch.batch.len() > MAX_BATCH {
        return Err(bad_request(format!("batch holds {} events, limit {MAX_BATCH}", batch.batch.len())));
    }
    let mut events = Vec::with_capacity(batch.batch.len());
    for (i, raw) in batch.batch.iter().enumerate() {
        let event = wire::object(raw.get()).map_err(|e| bad_request(format!("batch event {i}: {e}")))?;
        events.push(Prepared::new(&hub, event)?);
    }
    for event in &events {
        publish::trigger(&hub, &event.trigger()).await?;
    }
    if !events.iter().any(|e| e.info.any()) {
        return Ok(Json(json!({})));
    }
    let mut counts = CountsAfterPublish::new(&hub);
    let mut infos = Vec::with_capacity(events.len());
    for e in &events {
        let first = &e.channels[0];
        infos.push(if e.info.any() { e.info.of(first, counts.of(first).await) } else { json!({}) });
    }
    Ok(Json(json!({ "batch": infos })))
}

async fn channels(
    State(front): State<Arc<Pusher>>,
    ApiPath(app_id): ApiPath<String>,
    method: Method,
    uri: Uri,
) -> Result<Json<Value>, ApiError> {
    let hub = signed(&front, &app_id, &method, &uri)?;
    let prefix = query_param(&uri, "filter_by_prefix").unwrap_or_default();
    let info = Info::parse(query_param(&uri, "info").as_deref());
    if info.user_count && !prefix.starts_with("presence-") {
        return Err(bad_request("info=user_count needs filter_by_prefix=presence-"));
    }
    let channels: Map<String, Value> =
        channel_list(&hub, &prefix).await?.into_iter().map(|(name, counts)| (name.to_string(), info.of(&name, Some(counts)))).collect();
    Ok(Json(json!({ "channels": channels })))
}

/// Refuses a channel name from a path that no subscriber could have.
fn valid_channel(channel: &str) -> Result<(), ApiError> {
    if is_valid_name(channel) {
        Ok(())
    } else {
        Err(ApiError::from(PublishError::InvalidChannel(channel.chars().take(200).collect())))
    }
}

async fn channel(
    State(front): State<Arc<Pusher>>,
    ApiPath((app_id, channel)): ApiPath<(String, String)>,
    method: Method,
    uri: Uri,
) -> Result<Json<Value>, ApiError> {
    let hub = signed(&front, &app_id, &method, &uri)?;
    valid_channel(&channel)?;
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
    ApiPath((app_id, channel)): ApiPath<(String, String)>,
    method: Method,
    uri: Uri,
) -> Result<Json<Value>, ApiError> {
    let hub = signed(&front, &app_id, &method, &uri)?;
    valid_channel(&channel)?;
    if ChannelKind::of(&channel).access != Access::Presence {
        return Err(bad_request("users are only available for presence channels"));
    }
    let users: Vec<Value> = member_list(&hub, &channel).await?.into_iter().map(|m| json!({ "id": &*m.user_id })).collect();
    Ok(Json(json!({ "users": users })))
}

async fn terminate(
    State(front): State<Arc<Pusher>>,
    ApiPath((app_id, user_id)): ApiPath<(String, String)>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let (hub, body) = signed_body(&front, &app_id, &method, &uri, &headers, body).await?;
    if !body.is_empty() {
        parse_object::<Map<String, Value>>(&body)?;
    }
    if user_id.is_empty() || user_id.len() > MAX_USER_ID {
        return Err(bad_request(format!("user id must be 1 to {MAX_USER_ID} bytes")));
    }
    hub.terminate_user(&user_id);
    Ok(Json(json!({})))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn api_routes_merge_into_a_router_with_its_own_fallback() {
        let api: Router<()> = routes().with_state(dummy_front());
        let _app: Router<()> = Router::new().fallback(|| async { "app's own 404" }).merge(api.clone());
        let _app: Router<()> = api.merge(Router::new().fallback(|| async { "app's own 404" }));
    }

    fn dummy_front() -> Arc<Pusher> {
        let engine = Arc::new(herald_core::Engine::new(vec![herald_core::App::dev()]));
        Pusher::new(
            engine,
            vec![crate::PusherApp::dev()],
            crate::PusherConfig::default(),
            tokio_util::sync::CancellationToken::new(),
            tokio_util::task::TaskTracker::new(),
        )
    }
}
