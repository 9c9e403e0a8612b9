//! What a session does with each client frame: subscribe (with auth and limits), unsubscribe,
//! sign-in, client events, pings. Everything here is synchronous; the part of a command that needs the
//! cluster is returned as a [`Step`] for the session loop to poll.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::FutureExt;
use herald_core::{
    ChannelChange, Codec, DataKind, HistoryError, Hub, Member, MemberJoin, Outbox, Publication, PublisherInfo, Recovery, SocketId,
    SubscribeError, Subscribed,
};
use tokio::time::Instant;

use super::cluster::{self, Step};
use crate::auth;
use crate::channel::{is_valid_name, Access, ChannelKind, MAX_USER_ID, USER_CHANNEL_PREFIX};
use crate::codec::PusherCodec;
use crate::codes;
use crate::events::presence_data;
use crate::publish::MAX_EVENT_NAME;
use crate::wire::{self, ChannelData, Data, Incoming, SigninData, SubscribeData, UnsubscribeData};
use crate::{Pusher, PusherApp};

/// Counts client events per one-second window.
pub(crate) struct RateLimit {
    window: Instant,
    used: u32,
    per_second: u32,
}

impl RateLimit {
    pub(crate) fn new(per_second: u32) -> RateLimit {
        RateLimit { window: Instant::now(), used: 0, per_second }
    }

    fn allow(&mut self, now: Instant) -> bool {
        if now.duration_since(self.window) >= Duration::from_secs(1) {
            self.window = now;
            self.used = 0;
        }
        self.used += 1;
        self.used <= self.per_second
    }
}

/// Whether a subscription replays a cache channel's last event.
pub(crate) enum Cached {
    /// Not a cache channel.
    No,
    /// A cache channel, with its last event if it has one (else `pusher:cache_miss`).
    Channel(Option<Box<Publication>>),
}

/// The newest publication a history read returned.
pub(crate) fn last(read: Result<Recovery, HistoryError>) -> Option<Box<Publication>> {
    read.ok().and_then(|mut r| r.publications.pop()).map(Box::new)
}

/// A subscribe request that passed the front's checks, ready for the engine.
pub(crate) struct Admitted {
    pub(crate) cache: bool,
    pub(crate) member: Option<MemberJoin>,
}

/// What every command of one connection needs; cheap to clone into a pending cluster [`Step`].
#[derive(Clone)]
pub(crate) struct Ctx {
    pub(crate) front: Arc<Pusher>,
    pub(crate) hub: Arc<Hub>,
    /// The app's Pusher settings (key, secret, switches).
    pub(crate) app: Arc<PusherApp>,
    pub(crate) id: SocketId,
    pub(crate) outbox: Outbox,
}

impl Ctx {
    pub(crate) fn new(front: Arc<Pusher>, hub: Arc<Hub>, app: Arc<PusherApp>, id: SocketId, outbox: Outbox) -> Ctx {
        Ctx { front, hub, app, id, outbox }
    }

    /// The socket id as clients see it (`"123.456"`). Built when needed (signatures, webhooks) rather
    /// than kept by every connection.
    pub(crate) fn id_text(&self) -> String {
        self.id.to_string()
    }

    pub(crate) fn reply(&self, frame: Bytes) {
        let _ = self.outbox.push(frame);
    }

    pub(crate) fn error(&self, code: u16, message: &str, kind: &'static str) {
        metrics::counter!("herald_errors_total", "kind" => kind).increment(1);
        let data = serde_json::json!({ "code": code, "message": message });
        let raw = serde_json::value::to_raw_value(&data).expect("json");
        self.reply(wire::frame("pusher:error", None, Data::Raw(&raw), None));
    }

    pub(crate) fn subscription_error(&self, channel: &str, kind: &str, status: u16, message: &str) {
        metrics::counter!("herald_errors_total", "kind" => "subscription").increment(1);
        let data = serde_json::json!({ "type": kind, "error": message, "status": status });
        let raw = serde_json::value::to_raw_value(&data).expect("json");
        self.reply(wire::frame("pusher:subscription_error", Some(channel), Data::Raw(&raw), None));
    }

    fn pong(&self) {
        self.reply(wire::frame_json("pusher:pong", None, &serde_json::json!({})));
    }

    /// Answers `text` at once if it is a `pusher:ping` (pings change nothing, so they may overtake
    /// frames queued behind a pending cluster step). Returns whether it was one.
    pub(crate) fn answer_ping(&self, text: &str) -> bool {
        let ping = Incoming::parse(text).is_ok_and(|msg| msg.event == "pusher:ping");
        if ping {
            count_in(text);
            self.pong();
        }
        ping
    }

    /// Handles one client frame. Returns the part that must wait for the cluster, if any.
    pub(crate) fn handle(&self, text: &str, client_events: &mut RateLimit) -> Option<Step> {
        count_in(text);
        let msg = match Incoming::parse(text) {
            Ok(msg) => msg,
            Err(_) => {
                self.error(codes::GENERIC_ERROR, "Invalid JSON: expected {\"event\":..., \"data\":...}", "invalid_json");
                return None;
            }
        };
        match msg.event.as_str() {
            "pusher:ping" => self.pong(),
            "pusher:pong" => {}
            "pusher:subscribe" => match msg.data_as::<SubscribeData>() {
                Some(data) => {
                    let admitted = self.admit(&data)?;
                    if self.hub.state().is_some() {
                        return Some(cluster::subscribe(self, data.channel, admitted));
                    }
                    let result = self.hub.subscribe(self.id, &data.channel, admitted.member);
                    // Without a cluster the history is in memory: reading it does not wait.
                    let cached = match admitted.cache {
                        true => Cached::Channel(self.hub.history(&data.channel, None, usize::MAX).now_or_never().and_then(last)),
                        false => Cached::No,
                    };
                    self.subscribed(&data.channel, cached, result);
                }
                None => self.error(codes::GENERIC_ERROR, "pusher:subscribe needs data.channel", "invalid_data"),
            },
            "pusher:unsubscribe" => match msg.data_as::<UnsubscribeData>() {
                Some(data) => {
                    if self.hub.state().is_some() {
                        return Some(cluster::leave(self, data.channel));
                    }
                    if let Some(change) = self.hub.unsubscribe(self.id, &data.channel) {
                        self.hub.announce(&change, Some(self.id));
                    }
                }
                None => self.error(codes::GENERIC_ERROR, "pusher:unsubscribe needs data.channel", "invalid_data"),
            },
            "pusher:signin" => match msg.data_as::<SigninData>() {
                Some(data) => return self.sign_in(data),
                None => self.error(codes::GENERIC_ERROR, "pusher:signin needs data.auth and data.user_data", "invalid_data"),
            },
            event if event.starts_with("client-") => self.client_event(&msg, client_events),
            _ => self.error(codes::GENERIC_ERROR, "Unknown event", "unknown_event"),
        }
        None
    }

    /// Checks a subscribe (name, signature, presence data). Replies with the error and returns `None`
    /// when refused, or when it was a user channel (answered already).
    pub(crate) fn admit(&self, data: &SubscribeData) -> Option<Admitted> {
        let channel = data.channel.as_str();
        if !is_valid_name(channel) {
            self.subscription_error(channel, "InvalidChannel", 400, "Invalid channel name");
            return None;
        }
        let kind = ChannelKind::of(channel);
        let app = &self.app;
        let signed = |message: &str| data.auth.as_deref().is_some_and(|token| auth::verify_token(&app.key, &app.secret, message, token));
        let mut member = None;
        match kind.access {
            Access::Public => {}
            Access::Private | Access::Encrypted => {
                if !signed(&auth::channel_message(&self.id_text(), channel, None)) {
                    self.subscription_error(channel, "AuthError", 401, "Invalid signature");
                    return None;
                }
            }
            Access::Presence => {
                let Some(channel_data) = data.channel_data.as_deref() else {
                    self.subscription_error(channel, "AuthError", 401, "Presence channels need channel_data");
                    return None;
                };
                if !signed(&auth::channel_message(&self.id_text(), channel, Some(channel_data))) {
                    self.subscription_error(channel, "AuthError", 401, "Invalid signature");
                    return None;
                }
                let parsed: Option<ChannelData> = wire::object(channel_data).ok();
                let user_id = parsed.as_ref().and_then(|d| match &d.user_id {
                    serde_json::Value::String(s) if !s.is_empty() => Some(s.clone()),
                    serde_json::Value::Number(n) => Some(n.to_string()),
                    _ => None,
                });
                let (Some(parsed), Some(user_id)) = (parsed, user_id) else {
                    self.subscription_error(channel, "AuthError", 400, "channel_data needs a user_id");
                    return None;
                };
                if user_id.len() > MAX_USER_ID {
                    self.subscription_error(channel, "AuthError", 400, &format!("user_id is longer than {MAX_USER_ID} bytes"));
                    return None;
                }
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
        Some(Admitted { cache: kind.cache, member })
    }

    /// Confirms a subscription the engine accepted (or explains a refusal).
    pub(crate) fn subscribed(&self, channel: &str, cached: Cached, result: Result<Subscribed, SubscribeError>) {
        match result {
            Ok(Subscribed { already, change, members }) => self.confirm(channel, cached, members.as_deref(), &change, already),
            Err(e) => {
                let (kind, status, message) = codes::subscribe_error(&e);
                self.subscription_error(channel, kind, status, &message);
            }
        }
    }

    /// Tells the subscriber it is in (with the member list on presence channels), replays a cache
    /// channel's last event, and announces the change to the channel.
    pub(crate) fn confirm(&self, channel: &str, cached: Cached, members: Option<&[Member]>, change: &ChannelChange, already: bool) {
        let data = match members {
            Some(members) => presence_data(members),
            None => "{}".to_string(),
        };
        self.reply(wire::frame("pusher_internal:subscription_succeeded", Some(channel), Data::Str(&data), None));
        if let Cached::Channel(last) = cached {
            match last.and_then(|p| PusherCodec.publication(&p)) {
                Some(frame) => self.reply(frame),
                None => {
                    self.reply(wire::frame("pusher:cache_miss", Some(channel), Data::None, None));
                    self.front.announcer.webhooks.emit(&self.hub.app().id, serde_json::json!({ "name": "cache_miss", "channel": channel }));
                }
            }
        }
        if !already {
            self.hub.announce(change, Some(self.id));
        }
    }

    /// Signs the connection in. In a cluster, the confirmation waits (see [`Pending::SignIn`]) so that
    /// the client's `#server-to-user` messages from other nodes are already routed here.
    fn sign_in(&self, data: SigninData) -> Option<Step> {
        let app = &self.app;
        if !app.enable_user_authentication {
            self.error(codes::TERMINATED, "User authentication is disabled for this app", "signin");
            return None;
        }
        if !auth::verify_token(&app.key, &app.secret, &auth::user_message(&self.id_text(), &data.user_data), &data.auth) {
            self.error(codes::TERMINATED, "Invalid signature for pusher:signin", "signin");
            return None;
        }
        #[derive(serde::Deserialize)]
        struct UserData {
            id: serde_json::Value,
            /// The connection's device (optional): publications that exclude it (a bus message's
            /// origin device) skip this connection.
            #[serde(default)]
            device_id: Option<serde_json::Value>,
        }
        let (id, device) = match wire::object::<UserData>(&data.user_data).map(|u| (u.id, u.device_id)) {
            Ok((serde_json::Value::String(id), device)) if !id.is_empty() && id.len() <= MAX_USER_ID => {
                // A device id that is not a short string is ignored (the connection just has none).
                let device = match device {
                    Some(serde_json::Value::String(d)) if !d.is_empty() && d.len() <= MAX_USER_ID => Some(d),
                    _ => None,
                };
                (id, device)
            }
            _ => {
                let message = format!("user_data must be an object with a string id of 1 to {MAX_USER_ID} bytes");
                self.error(codes::TERMINATED, &message, "signin");
                return None;
            }
        };
        if let Err(e) = self.hub.sign_in(self.id, &id, device.as_deref()) {
            self.error(codes::TERMINATED, &e.to_string(), "signin");
            return None;
        }
        match self.hub.prepare_user(&id) {
            Some(interest) => Some(cluster::sign_in(self, data.user_data, interest)),
            None => {
                self.signed_in(&data.user_data);
                None
            }
        }
    }

    pub(crate) fn signed_in(&self, user_data: &str) {
        let reply = serde_json::json!({ "user_data": user_data });
        self.reply(wire::frame_json("pusher:signin_success", None, &reply));
    }

    fn client_event(&self, msg: &Incoming, rate: &mut RateLimit) {
        let app = self.hub.app();
        if !self.app.enable_client_messages {
            return self.error(codes::GENERIC_ERROR, "Client events are disabled for this app", "client_event");
        }
        let Some(channel) = msg.channel.as_deref() else {
            return self.error(codes::GENERIC_ERROR, "Client events need a channel", "client_event");
        };
        if msg.event.len() > MAX_EVENT_NAME {
            let message = format!("Client event names are at most {MAX_EVENT_NAME} bytes");
            return self.error(codes::GENERIC_ERROR, &message, "client_event");
        }
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
        if !rate.allow(Instant::now()) {
            return self.error(codes::CLIENT_EVENT_RATE_LIMIT, "Client event rejected due to rate limit", "client_event_rate_limit");
        }
        let null = serde_json::value::RawValue::NULL;
        let data = msg.data.as_deref().unwrap_or(null);
        let user = if ChannelKind::of(channel).access == Access::Presence { self.hub.member_of(self.id, channel) } else { None };
        let mut publication = Publication::new(channel, msg.event.as_str(), Bytes::copy_from_slice(data.get().as_bytes()), DataKind::Json);
        publication.except = Some(self.id);
        publication.publisher = user.clone().map(|user_id| PublisherInfo { user_id, info: Bytes::new() });
        self.hub.publish(&publication);
        if self.front.announcer.webhooks.enabled(&app.id) {
            let mut event = serde_json::json!({
                "name": "client_event", "channel": channel, "event": &msg.event, "data": data.get(), "socket_id": self.id_text(),
            });
            if let Some(user) = &user {
                event["user_id"] = serde_json::Value::from(&**user);
            }
            self.front.announcer.webhooks.emit(&app.id, event);
        }
    }
}

fn count_in(text: &str) {
    metrics::counter!("herald_messages_in_total").increment(1);
    metrics::counter!("herald_bytes_in_total").increment(text.len() as u64);
}
