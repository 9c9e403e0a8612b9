//! One WebSocket connection speaking Pusher v7: handshake, the read/write loop, keep-alive, commands.
//!
//! The session task owns the socket. Everything it sends, replies included, goes through the
//! connection's [`Outbox`], so replies and fan-out keep their order and share one bound. The loop
//! writes queued frames in batches (feed each, flush once).
//!
//! In a cluster, a subscribe, a leave or a sign-in needs a Redis round trip (routing ready, counts and
//! presence decided cluster-wide). `handle` returns that part as [`Pending`] work which the loop awaits
//! (bounded by [`CLUSTER_WAIT`], boxed so idle connections keep a small future); without a cluster
//! everything is synchronous.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use bytes::Bytes;
use futures_util::SinkExt;
use herald_core::{ChannelChange, Drained, Hub, Joined, Member, MemberJoin, Outbox, SocketId, Subscribed};
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;
use tracing::{debug, info_span};

use crate::auth;
use crate::channel::{is_valid_name, Access, ChannelKind, USER_CHANNEL_PREFIX};
use crate::codes;
use crate::events::presence_data;
use crate::wire::{self, ChannelData, Data, Incoming, SigninData, SubscribeData, UnsubscribeData};
use crate::Pusher;

/// Sends an error frame and a close frame, for connections refused before they start.
pub(crate) async fn refuse(mut socket: WebSocket, code: u16, message: &str) {
    let data = serde_json::json!({ "code": code, "message": message });
    let frame = wire::frame("pusher:error", None, Data::Raw(&serde_json::value::to_raw_value(&data).expect("json")), None);
    let _ = socket.send(text(frame)).await;
    let _ = socket.send(close(code, message)).await;
    metrics::counter!("herald_connections_refused_total", "code" => code.to_string()).increment(1);
}

fn text(frame: Bytes) -> Message {
    Message::Text(Utf8Bytes::try_from(frame).expect("frames are encoded from UTF-8 JSON"))
}

/// `pusher:connection_established`, built and dropped before the session loop so it holds no memory.
fn established(socket_id: &str, activity: Duration) -> Bytes {
    let data = serde_json::json!({ "socket_id": socket_id, "activity_timeout": activity.as_secs() });
    wire::frame_json("pusher:connection_established", None, &data)
}

fn close(code: u16, reason: &str) -> Message {
    Message::Close(Some(CloseFrame { code, reason: Utf8Bytes::from(reason) }))
}

/// Counts client events per one-second window.
struct RateLimit {
    window: Instant,
    used: u32,
    per_second: u32,
}

impl RateLimit {
    fn allow(&mut self, now: Instant) -> bool {
        if now.duration_since(self.window) >= Duration::from_secs(1) {
            self.window = now;
            self.used = 0;
        }
        self.used += 1;
        self.used <= self.per_second
    }
}

/// How long a subscribe or leave waits for the cluster (routing, counts) before going ahead anyway.
const CLUSTER_WAIT: Duration = Duration::from_secs(2);

/// Work a frame leaves for the session loop to await: round trips to the cluster.
enum Pending {
    /// Subscribe once the node receives the channel from the cluster, counting it cluster-wide.
    Subscribe { data: SubscribeData, ready: Option<tokio::sync::oneshot::Receiver<()>> },
    /// Uncount a subscription that already ended on this node.
    Leave { channel: Arc<str>, user: Option<Arc<str>> },
    /// Confirm a sign-in once the node receives the user's messages from the cluster.
    SignIn { user: String, user_data: String, ready: tokio::sync::oneshot::Receiver<()> },
}

/// A subscription accepted on this node.
struct Admitted {
    cache: bool,
    subscribed: Subscribed,
    member: Option<MemberJoin>,
}

/// A registered connection, ready to be served.
pub(crate) struct Session {
    front: Arc<Pusher>,
    hub: Arc<Hub>,
    id: SocketId,
    id_text: String,
    outbox: Outbox,
    client_events: RateLimit,
    _admission: OwnedSemaphorePermit,
}

/// Registers a new connection with its app's hub. On refusal (e.g. the app's connection quota), returns
/// the Pusher code and message to close with.
///
/// This is a plain function, not part of the session future: every connection's task holds that future
/// for its whole life, and each level of `async fn` nesting adds to its size.
pub(crate) fn open(front: Arc<Pusher>, hub: Arc<Hub>, admission: OwnedSemaphorePermit) -> Result<Session, (u16, String)> {
    let (id, outbox) = hub.connect().map_err(|e| codes::connect_error(&e))?;
    Ok(Session {
        client_events: RateLimit { window: Instant::now(), used: 0, per_second: hub.app().limits.client_events_per_second },
        id_text: id.to_string(),
        front,
        hub,
        id,
        outbox,
        _admission: admission,
    })
}

impl Session {
    /// The tracing span of this connection.
    pub(crate) fn span(&self) -> tracing::Span {
        info_span!("conn", app = %self.hub.app().id, socket_id = %self.id_text)
    }

    /// Runs the connection to completion.
    pub(crate) async fn serve(mut self, mut socket: WebSocket) {
        let activity = self.front.config.activity_timeout;
        self.reply(established(&self.id_text, activity));
        debug!("connected");

        // The socket is not split: each select! branch future is dropped before its handler runs, so
        // the read branch and the write handler can both borrow it (no BiLock, less memory per socket).
        // Created once: a fresh `cancelled()` per loop turn would re-register with the token every time.
        let shutdown = self.front.shutdown.clone();
        let cancelled = shutdown.cancelled();
        tokio::pin!(cancelled);
        let mut batch: Vec<Bytes> = Vec::new();
        let mut last_seen = Instant::now();
        let mut awaiting_pong = false;
        let keepalive = tokio::time::sleep(activity);
        tokio::pin!(keepalive);

        let close_with: Option<(u16, &str)> = loop {
            tokio::select! {
                _ = &mut cancelled => break Some(codes::disconnect(herald_core::Disconnect::Shutdown)),
                drained = self.outbox.drain(&mut batch) => match drained {
                    Drained::Frames => {
                        let mut failed = false;
                        for frame in batch.drain(..) {
                            if socket.feed(text(frame)).await.is_err() {
                                failed = true;
                                break;
                            }
                        }
                        if failed || socket.flush().await.is_err() {
                            break None;
                        }
                        // A burst may have grown the batch; idle connections should not keep it.
                        if batch.capacity() > 64 {
                            batch = Vec::new();
                        }
                    }
                    Drained::Closed(reason) => break Some(codes::disconnect(reason)),
                },
                incoming = socket.recv() => {
                    last_seen = Instant::now();
                    awaiting_pong = false;
                    match incoming {
                        Some(Ok(Message::Text(t))) => {
                            if let Some(pending) = self.handle(t.as_str()) {
                                // Boxed: cluster round trips are short and rare per connection; the
                                // session future (held by every idle connection) stays small.
                                Box::pin(self.settle(pending)).await;
                            }
                        }
                        Some(Ok(Message::Binary(_))) => self.error(codes::GENERIC_ERROR, "binary frames are not supported", "binary"),
                        Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                        Some(Ok(Message::Close(_))) | None => break None,
                        Some(Err(e)) => {
                            debug!(error = %e, "read failed");
                            let too_big = matches!(
                                &e.into_inner().downcast_ref::<tungstenite::Error>(),
                                Some(tungstenite::Error::Capacity(_))
                            );
                            if too_big {
                                metrics::counter!("herald_errors_total", "kind" => "frame_too_large").increment(1);
                                break Some((codes::MESSAGE_TOO_BIG, "Message too big"));
                            }
                            break None;
                        }
                    }
                },
                _ = &mut keepalive => {
                    let idle_until = last_seen + activity;
                    let now = Instant::now();
                    if awaiting_pong {
                        break Some((codes::PONG_TIMEOUT, "Pong reply not received in time"));
                    } else if now < idle_until {
                        keepalive.as_mut().reset(idle_until);
                    } else {
                        self.reply(wire::frame_json("pusher:ping", None, &serde_json::json!({})));
                        awaiting_pong = true;
                        keepalive.as_mut().reset(now + self.front.config.pong_timeout);
                    }
                },
            }
        };
        if let Some((code, reason)) = close_with {
            debug!(code, reason, "closing");
            let _ = socket.send(close(code, reason)).await;
        }
        if self.hub.state().is_some() {
            let subscriptions = self.hub.subscriptions_of(self.id);
            self.hub.disconnect(self.id);
            Box::pin(async {
                for (channel, user) in subscriptions {
                    self.leave_clustered(channel, user, None).await;
                }
            })
            .await;
        } else {
            for change in self.hub.disconnect(self.id) {
                self.front.announcer.announce(&self.hub, &change, None);
            }
        }
        debug!("disconnected");
    }

    fn reply(&self, frame: Bytes) {
        let _ = self.outbox.push(frame);
    }

    fn error(&self, code: u16, message: &str, kind: &'static str) {
        metrics::counter!("herald_errors_total", "kind" => kind).increment(1);
        let data = serde_json::json!({ "code": code, "message": message });
        let raw = serde_json::value::to_raw_value(&data).expect("json");
        self.reply(wire::frame("pusher:error", None, Data::Raw(&raw), None));
    }

    fn subscription_error(&self, channel: &str, kind: &str, status: u16, message: &str) {
        metrics::counter!("herald_errors_total", "kind" => "subscription").increment(1);
        let data = serde_json::json!({ "type": kind, "error": message, "status": status });
        let raw = serde_json::value::to_raw_value(&data).expect("json");
        self.reply(wire::frame("pusher:subscription_error", Some(channel), Data::Raw(&raw), None));
    }

    /// Finishes what [`Session::handle`] started and needs the cluster for.
    async fn settle(&mut self, pending: Pending) {
        match pending {
            Pending::Subscribe { data, ready } => {
                // Wait (bounded) until this node receives the channel from the others, so a confirmed
                // subscriber misses nothing published anywhere in the cluster.
                let prepared = ready.is_some();
                if let Some(ready) = ready {
                    if tokio::time::timeout(CLUSTER_WAIT, ready).await.is_err() {
                        metrics::counter!("herald_errors_total", "kind" => "cluster_subscribe_timeout").increment(1);
                    }
                }
                self.subscribe_clustered(&data).await;
                if prepared {
                    self.hub.release_channel(&data.channel);
                }
            }
            Pending::Leave { channel, user } => self.leave_clustered(channel, user, Some(self.id)).await,
            Pending::SignIn { user, user_data, ready } => {
                if tokio::time::timeout(CLUSTER_WAIT, ready).await.is_err() {
                    metrics::counter!("herald_errors_total", "kind" => "cluster_subscribe_timeout").increment(1);
                }
                self.signed_in(&user_data);
                self.hub.release_user(&user);
            }
        }
    }

    /// Subscribes here, then counts the subscription cluster-wide: presence membership and counts are
    /// the cluster's, so `member_added` fires once per cluster and the member list is everyone's.
    async fn subscribe_clustered(&mut self, data: &SubscribeData) {
        let Some(admitted) = self.admit(data) else { return };
        let channel = data.channel.as_str();
        let Subscribed { already, change, members } = admitted.subscribed;
        let state = match self.hub.state() {
            Some(state) if !already => state.clone(),
            _ => return self.confirm(channel, admitted.cache, members.as_deref(), &change, already),
        };
        let max = self.hub.app().limits.max_presence_members;
        let joined = tokio::time::timeout(CLUSTER_WAIT, state.join(&self.hub.app().id, channel, admitted.member.as_ref(), max)).await;
        match joined {
            Ok(Ok(Joined::Full)) => {
                self.hub.unsubscribe(self.id, channel);
                self.subscription_error(channel, "LimitReached", 403, "The presence channel has its maximum of members");
            }
            Ok(Ok(Joined::Counted { subscribers, member_added, members: everyone })) => {
                let change = ChannelChange::counted_join(change.channel, subscribers, member_added, admitted.member.as_ref());
                self.confirm(channel, admitted.cache, everyone.as_deref(), &change, false);
            }
            Ok(Err(_)) | Err(_) => {
                // The cluster store is unreachable: serve this node's view rather than nothing.
                metrics::counter!("herald_errors_total", "kind" => "cluster_state_unavailable").increment(1);
                self.confirm(channel, admitted.cache, members.as_deref(), &change, false);
            }
        }
    }

    /// Uncounts an ended subscription cluster-wide and announces what that changed.
    async fn leave_clustered(&self, channel: Arc<str>, user: Option<Arc<str>>, actor: Option<SocketId>) {
        let Some(state) = self.hub.state() else { return };
        match tokio::time::timeout(CLUSTER_WAIT, state.leave(&self.hub.app().id, &channel, user.as_deref())).await {
            Ok(Ok(left)) => self.front.announcer.announce(&self.hub, &ChannelChange::counted_leave(channel, left, user), actor),
            Ok(Err(_)) | Err(_) => {
                metrics::counter!("herald_errors_total", "kind" => "cluster_state_unavailable").increment(1);
            }
        }
    }

    /// Handles one client frame. Returns the part that must wait for the cluster, if any.
    fn handle(&mut self, text: &str) -> Option<Pending> {
        metrics::counter!("herald_messages_in_total").increment(1);
        metrics::counter!("herald_bytes_in_total").increment(text.len() as u64);
        let msg = match Incoming::parse(text) {
            Ok(msg) => msg,
            Err(_) => {
                self.error(codes::GENERIC_ERROR, "Invalid JSON: expected {\"event\":..., \"data\":...}", "invalid_json");
                return None;
            }
        };
        match msg.event.as_str() {
            "pusher:ping" => self.reply(wire::frame_json("pusher:pong", None, &serde_json::json!({}))),
            "pusher:pong" => {}
            "pusher:subscribe" => match msg.data_as::<SubscribeData>() {
                Some(data) => {
                    let clustered =
                        self.hub.state().is_some() && is_valid_name(&data.channel) && ChannelKind::of(&data.channel).access != Access::User;
                    if !clustered {
                        self.subscribe(data);
                        return None;
                    }
                    let ready = self.hub.prepare_channel(&data.channel);
                    return Some(Pending::Subscribe { data, ready });
                }
                None => self.error(codes::GENERIC_ERROR, "pusher:subscribe needs data.channel", "invalid_data"),
            },
            "pusher:unsubscribe" => match msg.data_as::<UnsubscribeData>() {
                Some(data) => {
                    let user = self.hub.member_of(self.id, &data.channel);
                    if let Some(change) = self.hub.unsubscribe(self.id, &data.channel) {
                        if self.hub.state().is_some() {
                            return Some(Pending::Leave { channel: change.channel, user });
                        }
                        self.front.announcer.announce(&self.hub, &change, Some(self.id));
                    }
                }
                None => self.error(codes::GENERIC_ERROR, "pusher:unsubscribe needs data.channel", "invalid_data"),
            },
            "pusher:signin" => match msg.data_as::<SigninData>() {
                Some(data) => return self.sign_in(data),
                None => self.error(codes::GENERIC_ERROR, "pusher:signin needs data.auth and data.user_data", "invalid_data"),
            },
            event if event.starts_with("client-") => self.client_event(&msg),
            _ => self.error(codes::GENERIC_ERROR, "Unknown event", "unknown_event"),
        }
        None
    }

    /// Checks a subscribe (name, signature, limits) and subscribes on this node. Replies with the
    /// error and returns `None` when refused, or when it was a user channel (answered already).
    fn admit(&mut self, data: &SubscribeData) -> Option<Admitted> {
        let channel = data.channel.as_str();
        if !is_valid_name(channel) {
            self.subscription_error(channel, "InvalidChannel", 400, "Invalid channel name");
            return None;
        }
        let kind = ChannelKind::of(channel);
        let app = self.hub.app();
        let signed = |message: &str| data.auth.as_deref().is_some_and(|token| auth::verify_token(&app.key, &app.secret, message, token));
        let mut member = None;
        match kind.access {
            Access::Public => {}
            Access::Private | Access::Encrypted => {
                if !signed(&auth::channel_message(&self.id_text, channel, None)) {
                    self.subscription_error(channel, "AuthError", 401, "Invalid signature");
                    return None;
                }
            }
            Access::Presence => {
                let Some(channel_data) = data.channel_data.as_deref() else {
                    self.subscription_error(channel, "AuthError", 401, "Presence channels need channel_data");
                    return None;
                };
                if !signed(&auth::channel_message(&self.id_text, channel, Some(channel_data))) {
                    self.subscription_error(channel, "AuthError", 401, "Invalid signature");
                    return None;
                }
                let parsed: Option<ChannelData> = serde_json::from_str(channel_data).ok();
                let user_id = parsed.as_ref().and_then(|d| match &d.user_id {
                    serde_json::Value::String(s) if !s.is_empty() => Some(s.clone()),
                    serde_json::Value::Number(n) => Some(n.to_string()),
                    _ => None,
                });
                let (Some(parsed), Some(user_id)) = (parsed, user_id) else {
                    self.subscription_error(channel, "AuthError", 400, "channel_data needs a user_id");
                    return None;
                };
                let info = parsed.user_info.map(|raw| Bytes::from(raw.get().to_owned())).unwrap_or_default();
                member = Some(MemberJoin { user_id: Arc::from(user_id), info });
            }
            Access::User => {
                let wanted = &channel[USER_CHANNEL_PREFIX.len()..];
                if self.hub.user_of(self.id).as_deref() != Some(wanted) {
                    self.subscription_error(channel, "AuthError", 403, "Sign in as this user first");
                    return None;
                }
                // Delivery to a user goes through the engine's user routing, not a channel.
                self.reply(wire::frame("pusher_internal:subscription_succeeded", Some(channel), Data::Str("{}"), None));
                return None;
            }
        }
        let subscribed = match self.hub.subscribe(self.id, channel, member.clone()) {
            Ok(s) => s,
            Err(e) => {
                let (kind, status, message) = codes::subscribe_error(&e);
                self.subscription_error(channel, kind, status, &message);
                return None;
            }
        };
        Some(Admitted { cache: kind.cache, subscribed, member })
    }

    /// Subscribes on this node only (no cluster): admit, confirm, announce.
    fn subscribe(&mut self, data: SubscribeData) {
        if let Some(a) = self.admit(&data) {
            let Subscribed { already, change, members } = a.subscribed;
            self.confirm(&data.channel, a.cache, members.as_deref(), &change, already);
        }
    }

    /// Tells the subscriber it is in (with the member list on presence channels), replays a cache
    /// channel's last event, and announces the change to the channel.
    fn confirm(&self, channel: &str, cache: bool, members: Option<&[Member]>, change: &ChannelChange, already: bool) {
        let data = match members {
            Some(members) => presence_data(members),
            None => "{}".to_string(),
        };
        self.reply(wire::frame("pusher_internal:subscription_succeeded", Some(channel), Data::Str(&data), None));
        if cache {
            match self.hub.retained(channel) {
                Some(frame) => self.reply(frame),
                None => {
                    self.reply(wire::frame("pusher:cache_miss", Some(channel), Data::None, None));
                    self.front.announcer.webhooks.emit(&self.hub.app().id, serde_json::json!({ "name": "cache_miss", "channel": channel }));
                }
            }
        }
        if !already {
            self.front.announcer.announce(&self.hub, change, Some(self.id));
        }
    }

    /// Signs the connection in. In a cluster, the confirmation waits (see [`Pending::SignIn`]) so that
    /// the client's `#server-to-user` messages from other nodes are already routed here.
    fn sign_in(&mut self, data: SigninData) -> Option<Pending> {
        let app = self.hub.app();
        if !app.enable_user_authentication {
            self.error(codes::TERMINATED, "User authentication is disabled for this app", "signin");
            return None;
        }
        if !auth::verify_token(&app.key, &app.secret, &auth::user_message(&self.id_text, &data.user_data), &data.auth) {
            self.error(codes::TERMINATED, "Invalid signature for pusher:signin", "signin");
            return None;
        }
        #[derive(serde::Deserialize)]
        struct UserData {
            id: serde_json::Value,
        }
        let id = match serde_json::from_str::<UserData>(&data.user_data).map(|u| u.id) {
            Ok(serde_json::Value::String(id)) if !id.is_empty() => id,
            _ => {
                self.error(codes::TERMINATED, "user_data needs a non-empty string id", "signin");
                return None;
            }
        };
        if let Err(e) = self.hub.sign_in(self.id, &id) {
            self.error(codes::TERMINATED, &e.to_string(), "signin");
            return None;
        }
        match self.hub.prepare_user(&id) {
            Some(ready) => Some(Pending::SignIn { user: id, user_data: data.user_data, ready }),
            None => {
                self.signed_in(&data.user_data);
                None
            }
        }
    }

    fn signed_in(&self, user_data: &str) {
        let reply = serde_json::json!({ "user_data": user_data });
        self.reply(wire::frame_json("pusher:signin_success", None, &reply));
    }

    fn client_event(&mut self, msg: &Incoming) {
        let app = self.hub.app();
        if !app.enable_client_messages {
            return self.error(codes::GENERIC_ERROR, "Client events are disabled for this app", "client_event");
        }
        let Some(channel) = msg.channel.as_deref() else {
            return self.error(codes::GENERIC_ERROR, "Client events need a channel", "client_event");
        };
        if !ChannelKind::of(channel).allows_client_events() {
            return self.error(codes::GENERIC_ERROR, "Client events are only allowed on private and presence channels", "client_event");
        }
        if !self.hub.is_subscribed(self.id, channel) {
            return self.error(codes::GENERIC_ERROR, "Subscribe to the channel before sending client events", "client_event");
        }
        let size = msg.data.as_ref().map_or(0, |d| d.get().len());
        if size > app.limits.max_event_size {
            let message = format!("Client event data is {size} bytes, limit {}", app.limits.max_event_size);
            return self.error(codes::GENERIC_ERROR, &message, "event_too_large");
        }
        if !self.client_events.allow(Instant::now()) {
            return self.error(codes::CLIENT_EVENT_RATE_LIMIT, "Client event rejected due to rate limit", "client_event_rate_limit");
        }
        let null = serde_json::value::RawValue::NULL;
        let data = msg.data.as_deref().unwrap_or(null);
        let user = if ChannelKind::of(channel).access == Access::Presence { self.hub.member_of(self.id, channel) } else { None };
        let frame = wire::frame(&msg.event, Some(channel), Data::Raw(data), user.as_deref());
        self.hub.publish(channel, &frame, Some(self.id));
        if self.front.announcer.webhooks.enabled(&app.id) {
            let mut event = serde_json::json!({
                "name": "client_event", "channel": channel, "event": &msg.event, "data": data.get(), "socket_id": &self.id_text,
            });
            if let Some(user) = &user {
                event["user_id"] = serde_json::Value::from(&**user);
            }
            self.front.announcer.webhooks.emit(&app.id, event);
        }
    }
}
