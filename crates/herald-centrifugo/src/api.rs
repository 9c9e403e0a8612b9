//! Centrifugo's server HTTP API (v5/v6 shape): `POST /api/{method}` for the default app and
//! `POST /apps/{id}/api/{method}` for any app, with a JSON body, authenticated by the app's
//! `api_key` (`X-API-Key: <key>` or `Authorization: apikey <key>`).
//!
//! Backends written for Centrifugo (the `cent` SDKs, plain HTTP calls) publish through it to the
//! same engine channels the Pusher front serves. Answers are Centrifugo's: `{"result":{...}}`, or
//! `{"error":{"code","message"}}` with its error codes (HTTP 200, as Centrifugo does); a missing or
//! wrong key is HTTP 401, a malformed body HTTP 400, a body over [`MAX_BODY`] HTTP 413.
//!
//! `disconnect`, `unsubscribe`, `subscribe` and `refresh` act on the user's live connections (all
//! of them, or the one named by `client`/`session`, sparing `disconnect`'s `whitelist`) on every node,
//! as engine user commands ([`Hub::command_user`]); each connection's session does what Centrifugo
//! does (see `session/user.rs`). An unknown `client` id matches nothing.
//!
//! `subscribe` carries Centrifugo's `info`/`b64info` (the subscriber's member info in that channel,
//! as a subscription token's `info` claim gives it: presence and join pushes show it; at most the
//! app's `max_presence_member_size`, JSON), `recover_since` (the subscription recovers from that
//! position: the `subscribe` push says whether it did, and the missed publications follow it) and
//! `override` (`presence`, `join_leave`, `force_push_join_leave`, `force_recovery`,
//! `force_positioning`, each `{"value": bool}`, for this subscription only) through the engine
//! command to every node. Not supported: `subscribe`'s `expire_at` (ignored); the `info` method
//! describes this node only.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use base64::Engine as _;
use herald_core::{DataKind, Hub, Publication, Published, SocketId, StreamPosition, UserAction, UserCommand};
use serde_json::{json, Map, Value};

use crate::app::ReadyApp;
use crate::codec::{to_pub, ENGINE_USER_PREFIX, PERSONAL_PREFIX};
use crate::codes::{self, ErrorCode};
use crate::options::valid_channel;
use crate::Centrifugo;

mod requests;

use requests::{
    parse, BroadcastRequest, ChannelRequest, ChannelsRequest, DisconnectRequest, HistoryRequest, PublishRequest, RefreshRequest,
    SubscribeRequest, Target, UserChannelRequest,
};

/// Largest request body the API reads (HTTP 413 beyond).
pub const MAX_BODY: usize = 1024 * 1024;
/// Most publications one `history` call returns.
const MAX_HISTORY: usize = 1000;
/// Most channels one `broadcast` call publishes to.
const MAX_BROADCAST: usize = 1000;

/// The API routes, for [`Centrifugo::router`].
pub(crate) fn routes() -> Router<Arc<Centrifugo>> {
    Router::new()
        .route("/api/{method}", post(api_default))
        .route("/apps/{id}/api/{method}", post(api_app))
        .layer(DefaultBodyLimit::max(MAX_BODY))
}

async fn api_default(State(front): State<Arc<Centrifugo>>, Path(method): Path<String>, headers: HeaderMap, body: Bytes) -> Response {
    let app = front.apps.default_app().cloned();
    serve(&front, app, &method, &headers, &body).await
}

async fn api_app(
    State(front): State<Arc<Centrifugo>>,
    Path((id, method)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let app = front.apps.by_id(&id).cloned();
    serve(&front, app, &method, &headers, &body).await
}

/// The key a request presents: `X-API-Key`, else `Authorization: apikey <key>`.
fn presented_key(headers: &HeaderMap) -> Option<&str> {
    if let Some(key) = headers.get("x-api-key").and_then(|v| v.to_str().ok()) {
        return Some(key.trim());
    }
    let auth = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, key) = auth.split_once(' ')?;
    scheme.eq_ignore_ascii_case("apikey").then(|| key.trim())
}

/// Compares keys in time independent of where they differ.
fn same_key(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn status(code: StatusCode, message: &str) -> Response {
    (code, [(header::CONTENT_TYPE, "application/json")], json!({"error": {"code": 0, "message": message}}).to_string()).into_response()
}

fn answer(status: StatusCode, body: &Value) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

fn error_value(code: ErrorCode) -> Value {
    json!({"error": {"code": code.code, "message": code.message}})
}

async fn serve(front: &Centrifugo, app: Option<Arc<ReadyApp>>, method: &str, headers: &HeaderMap, body: &[u8]) -> Response {
    let Some((hub, app)) = app.and_then(|app| Some((front.engine.by_id(&app.settings.id)?.clone(), app))) else {
        return status(StatusCode::NOT_FOUND, "unknown app");
    };
    let authorized = match (presented_key(headers), app.settings.api_key.as_deref()) {
        (Some(given), Some(key)) => same_key(given, key),
        _ => false,
    };
    if !authorized {
        metrics::counter!("herald_errors_total", "kind" => "centrifugo_api_unauthorized").increment(1);
        return status(StatusCode::UNAUTHORIZED, "unauthorized");
    }
    metrics::counter!("herald_api_requests_total").increment(1);
    let body: &[u8] = if body.iter().all(u8::is_ascii_whitespace) { b"{}" } else { body };
    let api = Api { hub: &hub, app: &app };
    let outcome = match method {
        "publish" => parse(body).map(|r| api.publish(r)),
        "broadcast" => parse(body).map(|r| api.broadcast(r)),
        "disconnect" => parse::<DisconnectRequest>(body).map(|r| api.disconnect(r)),
        "unsubscribe" => parse::<UserChannelRequest>(body).map(|r| api.unsubscribe(r)),
        "subscribe" => parse::<SubscribeRequest>(body).map(|r| api.subscribe(r)),
        "refresh" => parse::<RefreshRequest>(body).map(|r| api.refresh(r)),
        "presence" => parse::<ChannelRequest>(body).map(|r| api.presence(r.channel, false)),
        "presence_stats" => parse::<ChannelRequest>(body).map(|r| api.presence(r.channel, true)),
        "history" => parse(body).map(|r| api.history(r)),
        "history_remove" => parse::<ChannelRequest>(body).map(|r| api.history_remove(r.channel)),
        "channels" => parse(body).map(|r| api.channels(r)),
        "info" => Ok(Api::boxed(api.info())),
        _ => return answer(StatusCode::NOT_FOUND, &error_value(codes::METHOD_NOT_FOUND)),
    };
    match outcome {
        Ok(work) => answer(StatusCode::OK, &work.await),
        Err(message) => {
            metrics::counter!("herald_errors_total", "kind" => "centrifugo_api_bad_request").increment(1);
            answer(StatusCode::BAD_REQUEST, &json!({"error": {"code": codes::BAD_REQUEST.code, "message": message}}))
        }
    }
}

type Work<'a> = std::pin::Pin<Box<dyn std::future::Future<Output = Value> + Send + 'a>>;

/// One request's app.
struct Api<'a> {
    hub: &'a Arc<Hub>,
    app: &'a ReadyApp,
}

/// A publication's payload: JSON `data`, else base64 `b64data` (binary).
fn payload(data: Option<&serde_json::value::RawValue>, b64data: Option<&str>) -> Result<(Bytes, DataKind), ErrorCode> {
    match (data, b64data) {
        (Some(data), _) => Ok((Bytes::copy_from_slice(data.get().as_bytes()), DataKind::Json)),
        (None, Some(b64)) => base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map(|bytes| (Bytes::from(bytes), DataKind::Binary))
            .map_err(|_| codes::BAD_REQUEST),
        (None, None) => Err(codes::BAD_REQUEST),
    }
}

/// A server-side subscription's member info: JSON `info`, else base64 `b64info` that decodes to JSON
/// (member info reaches JSON clients and the Pusher front as JSON, as a subscription token's does);
/// at most `limit` bytes (the app's `max_presence_member_size`).
fn member_info(info: Option<&serde_json::value::RawValue>, b64info: Option<&str>, limit: usize) -> Result<Option<Bytes>, ErrorCode> {
    let info = match (info, b64info) {
        (Some(info), _) => Bytes::copy_from_slice(info.get().as_bytes()),
        (None, Some(b64)) => {
            let bytes = base64::engine::general_purpose::STANDARD.decode(b64).map_err(|_| codes::BAD_REQUEST)?;
            if serde_json::from_slice::<serde::de::IgnoredAny>(&bytes).is_err() {
                return Err(codes::BAD_REQUEST);
            }
            Bytes::from(bytes)
        }
        (None, None) => return Ok(None),
    };
    if info.len() > limit {
        return Err(codes::LIMIT_EXCEEDED);
    }
    Ok(Some(info))
}

impl<'a> Api<'a> {
    fn boxed(work: impl std::future::Future<Output = Value> + Send + 'a) -> Work<'a> {
        Box::pin(work)
    }

    fn publish(&self, r: PublishRequest<'a>) -> Work<'a> {
        let Api { hub, app } = *self;
        Box::pin(async move {
            let published =
                publish_one(hub, app, &r.channel, r.data, r.b64data.as_deref(), r.skip_history, &r.tags, r.idempotency_key.as_deref());
            match published.await {
                Ok(result) => json!({ "result": result }),
                Err(code) => error_value(code),
            }
        })
    }

    fn broadcast(&self, r: BroadcastRequest<'a>) -> Work<'a> {
        let Api { hub, app } = *self;
        Box::pin(async move {
            if r.channels.is_empty() || r.channels.len() > MAX_BROADCAST {
                return error_value(codes::BAD_REQUEST);
            }
            let mut responses = Vec::with_capacity(r.channels.len());
            for channel in &r.channels {
                // One idempotency key per channel: a retried broadcast repeats none of them.
                let key = r.idempotency_key.as_ref().map(|k| format!("{k}\u{0}{channel}"));
                let published = publish_one(hub, app, channel, r.data, r.b64data.as_deref(), r.skip_history, &r.tags, key.as_deref()).await;
                responses.push(match published {
                    Ok(result) => json!({ "result": result }),
                    Err(code) => error_value(code),
                });
            }
            json!({"result": {"responses": responses}})
        })
    }

    /// Sends `action` to the connections `target` names, sparing `except`, on every node.
    fn command(&self, target: Target, except: &[String], action: UserAction) -> Work<'a> {
        let hub = self.hub;
        let except: Vec<SocketId> = except.iter().filter_map(|c| c.parse::<SocketId>().ok()).collect();
        Box::pin(async move {
            if target.user.is_empty() {
                return error_value(codes::BAD_REQUEST);
            }
            let only = match target.client.as_deref().or(target.session.as_deref()).filter(|c| !c.is_empty()) {
                // Not a connection id: no connection has it.
                Some(client) => match client.parse::<SocketId>() {
                    Ok(id) => Some(id),
                    Err(_) => return json!({"result": {}}),
                },
                None => None,
            };
            match hub.command_user(&target.user, UserCommand { only, except, action }) {
                Ok(_) => json!({"result": {}}),
                Err(e) => json!({"error": {"code": codes::BAD_REQUEST.code, "message": e.to_string()}}),
            }
        })
    }

    fn disconnect(&self, r: DisconnectRequest) -> Work<'a> {
        let custom = r.disconnect.unwrap_or_default();
        if custom.code != 0 && !(3000..5000).contains(&custom.code) {
            return Box::pin(async { json!({"error": {"code": codes::BAD_REQUEST.code, "message": "disconnect code must be 3000-4999"}}) });
        }
        let (code, reason) = match custom.code {
            0 => (u32::from(codes::FORCE_NO_RECONNECT.0), codes::FORCE_NO_RECONNECT.1.to_string()),
            code => (code, custom.reason),
        };
        self.command(r.target, &r.whitelist, UserAction::Disconnect { code, reason: Arc::from(reason) })
    }

    fn unsubscribe(&self, r: UserChannelRequest) -> Work<'a> {
        if !valid_channel(&r.channel) {
            return Box::pin(async { error_value(codes::UNKNOWN_CHANNEL) });
        }
        self.command(r.target, &[], UserAction::Unsubscribe { channel: Arc::from(r.channel) })
    }

    fn subscribe(&self, r: SubscribeRequest<'a>) -> Work<'a> {
        let channel = r.channel;
        if !valid_channel(&channel) || channel.starts_with(ENGINE_USER_PREFIX) || self.app.options(&channel).is_none() {
            return Box::pin(async { error_value(codes::UNKNOWN_CHANNEL) });
        }
        let data = match (r.data, r.b64data.as_deref()) {
            (None, None) => None,
            (data, b64data) => match payload(data, b64data) {
                Ok((data, _)) => Some(data),
                Err(code) => return Box::pin(async move { error_value(code) }),
            },
        };
        let info = match member_info(r.info, r.b64info.as_deref(), self.hub.app().limits.max_presence_member_size) {
            Ok(info) => info,
            Err(code) => return Box::pin(async move { error_value(code) }),
        };
        let action = UserAction::Subscribe {
            channel: Arc::from(channel),
            data,
            info,
            recover_since: r.recover_since.map(|s| StreamPosition { offset: s.offset, epoch: Arc::from(s.epoch) }),
            overrides: r.overrides.unwrap_or_default().engine(),
        };
        self.command(r.target, &[], action)
    }

    fn refresh(&self, r: RefreshRequest) -> Work<'a> {
        self.command(r.target, &[], UserAction::Refresh { expire_at: r.expire_at, expired: r.expired })
    }

    fn presence(&self, channel: String, stats: bool) -> Work<'a> {
        let Api { hub, app } = *self;
        Box::pin(async move {
            let Some(options) = app.options(&channel).filter(|_| valid_channel(&channel)) else {
                return error_value(codes::UNKNOWN_CHANNEL);
            };
            if !options.presence {
                return error_value(codes::NOT_AVAILABLE);
            }
            let (members, clients) = match hub.state() {
                Some(cluster) => {
                    let id = &hub.app().id;
                    match (cluster.members(id, &channel).await, cluster.channel(id, &channel).await) {
                        (Ok(members), Ok(info)) => (members, info.map_or(0, |i| i.subscribers)),
                        _ => return error_value(codes::INTERNAL),
                    }
                }
                None => (hub.members(&channel).unwrap_or_default(), hub.channel(&channel).map_or(0, |i| i.subscribers)),
            };
            if stats {
                return json!({"result": {"num_clients": clients, "num_users": members.len()}});
            }
            let presence: Map<String, Value> = members
                .into_iter()
                .map(|m| {
                    let mut info = json!({"user": &*m.user_id, "client": &*m.user_id});
                    if let Ok(conn_info) = serde_json::from_slice::<Value>(&m.info) {
                        info["conn_info"] = conn_info;
                    }
                    (m.user_id.to_string(), info)
                })
                .collect();
            json!({"result": {"presence": presence}})
        })
    }

    fn history(&self, r: HistoryRequest) -> Work<'a> {
        let Api { hub, app } = *self;
        Box::pin(async move {
            let channel = r.channel.as_str();
            let Some(options) = app.options(channel).filter(|_| valid_channel(channel)) else {
                return error_value(codes::UNKNOWN_CHANNEL);
            };
            if options.history().or_else(|| hub.history_options(channel)).is_none() {
                return error_value(codes::NOT_AVAILABLE);
            }
            let since = r.since.map(|s| StreamPosition { offset: s.offset, epoch: Arc::from(s.epoch) });
            let limit = match r.limit {
                0 => 0,
                n if n < 0 => MAX_HISTORY,
                n => usize::try_from(n).unwrap_or(MAX_HISTORY).min(MAX_HISTORY),
            };
            let read_limit = if limit == 0 || (r.reverse && since.is_none()) { usize::MAX } else { limit };
            let read = match hub.history(channel, since.as_ref(), read_limit).await {
                Ok(read) => read,
                Err(_) => return error_value(codes::INTERNAL),
            };
            if let Some(since) = &since {
                if *since.epoch != *read.position.epoch || since.offset > read.position.offset {
                    return error_value(codes::UNRECOVERABLE_POSITION);
                }
            }
            let mut publications: Vec<Value> =
                if limit == 0 { Vec::new() } else { read.publications.iter().map(publication_value).collect() };
            if r.reverse {
                publications.reverse();
            }
            publications.truncate(limit);
            json!({"result": {"publications": publications, "offset": read.position.offset, "epoch": &*read.position.epoch}})
        })
    }

    fn history_remove(&self, channel: String) -> Work<'a> {
        let Api { hub, app } = *self;
        Box::pin(async move {
            if app.options(&channel).filter(|_| valid_channel(&channel)).is_none() {
                return error_value(codes::UNKNOWN_CHANNEL);
            }
            match hub.remove_history(&channel).await {
                Ok(()) => json!({"result": {}}),
                Err(_) => error_value(codes::INTERNAL),
            }
        })
    }

    fn channels(&self, r: ChannelsRequest) -> Work<'a> {
        let hub = self.hub;
        Box::pin(async move {
            let channels = match hub.state() {
                Some(cluster) => match cluster.channels(&hub.app().id, "").await {
                    Ok(channels) => channels,
                    Err(_) => return error_value(codes::INTERNAL),
                },
                None => hub.channels(""),
            };
            let channels: Map<String, Value> = channels
                .into_iter()
                .filter(|(name, info)| info.subscribers > 0 && !name.starts_with(ENGINE_USER_PREFIX) && glob(&r.pattern, name))
                .map(|(name, info)| (name.to_string(), json!({"num_clients": info.subscribers})))
                .collect();
            json!({"result": {"channels": channels}})
        })
    }

    async fn info(&self) -> Value {
        let hub = self.hub;
        let channels = hub.channels("").len();
        let users = hub.channels(ENGINE_USER_PREFIX).len();
        json!({"result": {"nodes": [{
            "uid": "local",
            "name": "herald",
            "version": crate::VERSION,
            "num_clients": hub.connection_count(),
            "num_users": users,
            "num_channels": channels,
        }]}})
    }
}

/// Publishes to one channel (`#user`: that user's deliveries). The result: `{}`, or
/// `{"offset","epoch"}` when the channel keeps history.
#[allow(clippy::too_many_arguments)]
async fn publish_one(
    hub: &Hub,
    app: &ReadyApp,
    channel: &str,
    data: Option<&serde_json::value::RawValue>,
    b64data: Option<&str>,
    skip_history: bool,
    tags: &std::collections::BTreeMap<String, String>,
    idempotency_key: Option<&str>,
) -> Result<Value, ErrorCode> {
    if !valid_channel(channel) || channel.starts_with(ENGINE_USER_PREFIX) {
        return Err(codes::UNKNOWN_CHANNEL);
    }
    let options = app.options(channel).ok_or(codes::UNKNOWN_CHANNEL)?;
    let (data, kind) = payload(data, b64data)?;
    if data.len() > hub.app().limits.max_event_size {
        return Err(codes::LIMIT_EXCEEDED);
    }
    let failed = |e: &dyn std::fmt::Display| {
        tracing::debug!(error = %e, "API publish failed");
        metrics::counter!("herald_errors_total", "kind" => "publish_failed").increment(1);
        codes::INTERNAL
    };
    let with_tags = |mut publication: Publication| {
        publication.tags = tags.iter().map(|(k, v)| (Arc::from(k.as_str()), Arc::from(v.as_str()))).collect();
        publication
    };
    if let Some(user) = channel.strip_prefix(PERSONAL_PREFIX) {
        let publication = with_tags(Publication::new(format!("{ENGINE_USER_PREFIX}{user}"), "", data, kind));
        return match hub.publish_to_user_confirmed(user, &publication, idempotency_key).await {
            Ok(_) => Ok(json!({})),
            Err(e) => Err(failed(&e)),
        };
    }
    let publication = with_tags(Publication::new(channel, "", data, kind));
    if skip_history && idempotency_key.is_none() {
        hub.publish(&publication);
        return Ok(json!({}));
    }
    let history = if skip_history { None } else { options.history() };
    match hub.publish_confirmed(&publication, history, idempotency_key).await {
        Ok(Published::Delivered { position: Some(position) }) => Ok(json!({"offset": position.offset, "epoch": &*position.epoch})),
        // A repeat: accepted, not delivered again; its position is the stream's current one.
        Ok(Published::Repeat) => match options.history().or_else(|| hub.history_options(channel)) {
            Some(_) if !skip_history => match hub.stream_position(channel).await {
                Ok(position) => Ok(json!({"offset": position.offset, "epoch": &*position.epoch})),
                Err(e) => Err(failed(&e)),
            },
            _ => Ok(json!({})),
        },
        Ok(_) => Ok(json!({})),
        Err(e) => Err(failed(&e)),
    }
}

/// A publication as the API shows it: `data` (JSON) or `b64data`, `offset`, `tags`, `info`.
fn publication_value(p: &Publication) -> Value {
    let pubd = to_pub(p);
    let mut value = match (p.kind, serde_json::from_slice::<Value>(&p.data)) {
        (DataKind::Json, Ok(data)) => json!({ "data": data }),
        _ => json!({ "b64data": base64::engine::general_purpose::STANDARD.encode(&p.data) }),
    };
    if pubd.offset != 0 {
        value["offset"] = json!(pubd.offset);
    }
    if !pubd.tags.is_empty() {
        value["tags"] = Value::Object(pubd.tags.into_iter().map(|(k, v)| (k, Value::String(v))).collect());
    }
    if let Some(info) = pubd.info {
        value["info"] = json!({"user": info.user, "client": info.client});
    }
    value
}

/// Whether `name` matches `pattern` (`*` any run of characters; empty: everything).
fn glob(pattern: &str, name: &str) -> bool {
    if pattern.is_empty() {
        return true;
    }
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == name;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !name.starts_with(first) || name.len() < first.len() + last.len() || !name.ends_with(last) {
        return false;
    }
    let mut rest = &name[first.len()..name.len() - last.len()];
    for part in &parts[1..parts.len() - 1] {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    true
}
