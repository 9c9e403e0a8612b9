//! What a session does with each command: connect (JWT), subscribe (permissions, presence, history
//! and recovery), unsubscribe, publish, presence, presence_stats, history, refresh, sub_refresh,
//! rpc, send. A frame's commands are handled in order by [`handle`], which owns the session's
//! [`State`] while it runs.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use herald_core::{DataKind, Delivery, HistoryOptions, MemberJoin, Publication, PublisherInfo, StreamPosition, SubscribeOverrides};
use tokio::time::Instant;

use super::{Ctx, Ending, Handled};
use crate::codec::{to_pub, ENGINE_USER_PREFIX, PERSONAL_PREFIX};
use crate::codes::{self, ErrorCode};
use crate::json::{self, DecodeError};
use crate::options::{allowed_users, namespace_of, valid_channel, ChannelOptions};
use crate::protocol::{
    ClientInfo, Command, ConnectRequest, ConnectResult, HistoryRequest, Method, Reply, SubscribeRequest, SubscribeResult,
};
use crate::ratelimit::{self, ConnectionWindows};
use crate::token::{now_unix, TokenError};
use crate::{Encoding, VERSION};

/// Most publications a recovery or a history call returns.
const MAX_RECOVERED: usize = 1000;
/// Channel prefixes the Pusher front protects with signatures: a Centrifugo client needs a
/// subscription token for them, whatever the channel options say.
const PUSHER_PROTECTED: [&str; 2] = ["private-", "presence-"];

/// One subscription of the connection.
#[derive(Debug, Default)]
pub(crate) struct Sub {
    /// When its token expires (Unix seconds).
    pub(super) expire_at: Option<u64>,
    /// It is the personal channel (the user's deliveries, not an engine channel).
    pub(super) personal: bool,
}

/// What a subscription's grant adds to its request: a subscription token's claims, or a server-side
/// subscription's settings (the server API's `info` and `override`).
#[derive(Debug, Default)]
pub(super) struct Grant {
    /// Member info in this channel, instead of the connection's.
    pub(super) info: Option<Bytes>,
    /// When the subscription expires (Unix seconds).
    pub(super) expire_at: Option<u64>,
    /// Overrides of the channel's options for this subscription.
    pub(super) overrides: SubscribeOverrides,
}

/// The protocol state of one connection.
#[derive(Debug)]
pub(crate) struct State {
    pub(crate) connected: bool,
    pub(super) user: Arc<str>,
    info: Option<Bytes>,
    pub(super) expire_at: Option<u64>,
    pub(super) subs: HashMap<String, Sub>,
    pub(crate) next_ping: Instant,
    /// Client publish windows of this connection, by namespace.
    publish_windows: ConnectionWindows,
}

impl Default for State {
    fn default() -> Self {
        State {
            connected: false,
            user: Arc::from(""),
            info: None,
            expire_at: None,
            subs: HashMap::new(),
            next_ping: Instant::now(),
            publish_windows: ConnectionWindows::default(),
        }
    }
}

impl State {
    /// The ending due to an expired token not refreshed within `grace`, if any.
    pub(crate) fn expired(&self, grace: Duration) -> Option<Ending> {
        let now = now_unix();
        let past = |at: Option<u64>| at.is_some_and(|at| now >= at.saturating_add(grace.as_secs()));
        if past(self.expire_at) {
            return Some(Ending::Close(codes::CONNECTION_EXPIRED));
        }
        self.subs.values().any(|s| past(s.expire_at)).then_some(Ending::Close(codes::SUB_EXPIRED))
    }
}

fn ttl(expire_at: Option<u64>) -> (bool, u32) {
    match expire_at {
        Some(at) => (true, u32::try_from(at.saturating_sub(now_unix())).unwrap_or(u32::MAX)),
        None => (false, 0),
    }
}

/// Handles one frame's commands in order. A bad frame closes the connection with 3501.
pub(crate) async fn handle(ctx: Ctx, mut state: Box<State>, frame: Bytes) -> Handled {
    metrics::counter!("herald_messages_in_total", "app" => ctx.hub.app().id.clone()).increment(1);
    let uni = ctx.encoding == Encoding::UniJson;
    if uni && state.connected {
        // A unidirectional client's later frames (pongs, or anything) change nothing.
        return (state, None);
    }
    let (commands, error) = ctx.encoding.decode(&frame);
    for command in commands {
        if let Err(ending) = command_of(&ctx, &mut state, command).await {
            return (state, Some(ending));
        }
    }
    let ending = match error {
        // A unidirectional client has no replies: a refused connect closes it.
        None if uni && !state.connected => Some(Ending::Close(codes::INVALID_TOKEN)),
        None => None,
        Some(DecodeError::UnknownMethod { id }) => {
            reply(&ctx, id, &Reply::Error(codes::METHOD_NOT_FOUND));
            None
        }
        Some(e) => {
            debug_error("bad_command", &e);
            Some(Ending::Close(codes::BAD_REQUEST_DISCONNECT))
        }
    };
    (state, ending)
}

fn debug_error(kind: &'static str, e: &dyn std::fmt::Display) {
    tracing::debug!(error = %e, kind, "refused");
    metrics::counter!("herald_errors_total", "kind" => kind).increment(1);
}

fn reply(ctx: &Ctx, id: u32, reply: &Reply) {
    ctx.reply(id, reply);
}

fn error(ctx: &Ctx, id: u32, code: ErrorCode) {
    metrics::counter!("herald_errors_total", "kind" => "centrifugo_error").increment(1);
    reply(ctx, id, &Reply::Error(code));
}

async fn command_of(ctx: &Ctx, state: &mut State, command: Command) -> Result<(), Ending> {
    let id = command.id;
    match command.method {
        Method::Pong => Ok(()),
        Method::Connect(req) => connect(ctx, state, id, req).await,
        _ if !state.connected => Err(Ending::Close(codes::BAD_REQUEST_DISCONNECT)),
        Method::Subscribe(req) => subscribe(ctx, state, id, req).await,
        Method::Unsubscribe { channel } => {
            if let Some(sub) = state.subs.remove(&channel) {
                if !sub.personal {
                    if let Some(change) = ctx.hub.leave(ctx.id, &channel).await {
                        ctx.hub.announce(&change, Some(ctx.id));
                    }
                }
            }
            reply(ctx, id, &Reply::Unsubscribe);
            Ok(())
        }
        Method::Publish { channel, data } => {
            publish(ctx, state, id, &channel, data).await;
            Ok(())
        }
        Method::Presence { channel } => {
            presence(ctx, state, id, &channel, false).await;
            Ok(())
        }
        Method::PresenceStats { channel } => {
            presence(ctx, state, id, &channel, true).await;
            Ok(())
        }
        Method::History(req) => {
            history(ctx, state, id, req).await;
            Ok(())
        }
        Method::Rpc { .. } => {
            error(ctx, id, codes::NOT_AVAILABLE);
            Ok(())
        }
        Method::Send { .. } => {
            // No upstream to relay asynchronous messages to: dropped, and counted.
            metrics::counter!("herald_errors_total", "kind" => "centrifugo_send_dropped").increment(1);
            Ok(())
        }
        Method::Refresh { token } => refresh(ctx, state, id, &token).await,
        Method::SubRefresh { channel, token } => sub_refresh(ctx, state, id, &channel, &token).await,
    }
}

fn token_refusal(ctx: &Ctx, id: u32, e: &TokenError) -> Result<(), Ending> {
    match e {
        TokenError::Expired => {
            error(ctx, id, codes::TOKEN_EXPIRED);
            Ok(())
        }
        other => {
            debug_error("invalid_token", other);
            Err(Ending::Close(codes::INVALID_TOKEN))
        }
    }
}

async fn connect(ctx: &Ctx, state: &mut State, id: u32, req: ConnectRequest) -> Result<(), Ending> {
    if state.connected {
        return Err(Ending::Close(codes::BAD_REQUEST_DISCONNECT));
    }
    let settings = &ctx.app.settings;
    let claims = if req.token.is_empty() {
        if !settings.allow_anonymous_connect_without_token {
            error(ctx, id, codes::UNAUTHORIZED);
            return Ok(());
        }
        Default::default()
    } else {
        ctx.app.verifier.prepare(&req.token).await;
        match ctx.app.verifier.connect(&req.token, now_unix()) {
            Ok(claims) => claims,
            Err(e) => return token_refusal(ctx, id, &e),
        }
    };
    if claims.user.is_empty() && !settings.allow_anonymous_connect_without_token {
        error(ctx, id, codes::UNAUTHORIZED);
        return Ok(());
    }
    state.user = Arc::from(claims.user.as_str());
    state.info = claims.info;
    state.expire_at = claims.expire_at;
    if !claims.user.is_empty() {
        if ctx.hub.sign_in(ctx.id, &claims.user, claims.device.as_deref()).is_err() {
            return Err(Ending::Close(codes::SERVER_ERROR));
        }
        super::user_ready(&ctx.hub, &claims.user).await;
    }
    state.connected = true;
    state.next_ping = Instant::now() + ctx.front.config.ping_interval;
    // Server-side subscriptions: the token's channels, then the personal channel.
    let mut subs = Vec::new();
    // Released once the connect reply (which carries these subscriptions) is queued.
    let mut releases = Vec::new();
    for channel in claims.channels {
        let recover = req.subs.iter().find(|(c, _)| *c == channel).map(|(_, s)| s.clone()).unwrap_or_default();
        let request = SubscribeRequest { channel: channel.clone(), ..recover };
        releases.push(Release::new(ctx, &channel));
        let release = releases.last_mut().expect("just pushed");
        match join(ctx, state, &request, Grant::default(), release).await {
            Ok(result) => subs.push((channel, result)),
            Err(e) => tracing::debug!(channel, code = e.code, "server-side subscription refused"),
        }
    }
    if settings.user_subscribe_to_personal && !state.user.is_empty() {
        let channel = format!("{PERSONAL_PREFIX}{}", state.user);
        state.subs.insert(channel.clone(), Sub { expire_at: None, personal: true });
        subs.push((channel, SubscribeResult::default()));
    }
    let (expires, ttl) = ttl(state.expire_at);
    let result = ConnectResult {
        client: ctx.id.to_string(),
        version: VERSION.into(),
        expires,
        ttl,
        subs,
        ping: u32::try_from(ctx.front.config.ping_interval.as_secs()).unwrap_or(25),
        pong: true,
        data: None,
    };
    reply(ctx, id, &Reply::Connect(result));
    drop(releases);
    Ok(())
}

/// Ends the hold on a subscription's deliveries when dropped (after its reply is queued, or on any
/// error): the held publications follow the reply, those the reply covered are skipped.
pub(crate) struct Release {
    hub: Arc<herald_core::Hub>,
    socket: herald_core::SocketId,
    channel: String,
    /// The subscription was made held.
    held: bool,
    /// The position the reply tells the client.
    after: Option<StreamPosition>,
}

impl Release {
    /// A release for `channel`'s subscription of this connection (held deliveries flow once dropped).
    pub(super) fn new(ctx: &Ctx, channel: &str) -> Release {
        Release { hub: ctx.hub.clone(), socket: ctx.id, channel: channel.to_string(), held: false, after: None }
    }
}

impl Drop for Release {
    fn drop(&mut self) {
        if self.held {
            self.hub.release(self.socket, &self.channel, self.after.as_ref());
        }
    }
}

async fn subscribe(ctx: &Ctx, state: &mut State, id: u32, req: SubscribeRequest) -> Result<(), Ending> {
    let channel = req.channel.as_str();
    if !valid_channel(channel) || channel.starts_with(ENGINE_USER_PREFIX) {
        error(ctx, id, codes::UNKNOWN_CHANNEL);
        return Ok(());
    }
    if state.subs.contains_key(channel) && !req.recover {
        error(ctx, id, codes::ALREADY_SUBSCRIBED);
        return Ok(());
    }
    let Some(options) = ctx.app.options(channel) else {
        error(ctx, id, codes::UNKNOWN_CHANNEL);
        return Ok(());
    };
    let mut grant = Grant::default();
    if !req.token.is_empty() {
        ctx.app.verifier.prepare(&req.token).await;
        match ctx.app.verifier.subscribe(&req.token, now_unix()) {
            Ok(claims) if claims.channel == channel && *claims.user == *state.user => {
                grant = Grant { info: claims.info, expire_at: claims.expire_at, ..Grant::default() };
            }
            Ok(_) => {
                debug_error("invalid_token", &"subscription token for another channel or user");
                return Err(Ending::Close(codes::INVALID_TOKEN));
            }
            Err(e) => return token_refusal(ctx, id, &e),
        }
    } else {
        let user = &*state.user;
        let listed = options.allow_user_limited_channels && allowed_users(channel).is_some_and(|mut users| users.any(|u| u == user));
        let allowed = listed
            || (!PUSHER_PROTECTED.iter().any(|p| channel.starts_with(p))
                && if user.is_empty() { options.allow_subscribe_for_anonymous } else { options.allow_subscribe_for_client });
        if !allowed {
            error(ctx, id, codes::PERMISSION_DENIED);
            return Ok(());
        }
    }
    let mut release = Release::new(ctx, &req.channel);
    match join(ctx, state, &req, grant, &mut release).await {
        Ok(result) => reply(ctx, id, &Reply::Subscribe(result)),
        Err(code) => error(ctx, id, code),
    }
    drop(release);
    Ok(())
}

/// The history a channel keeps: its Centrifugo options, else the app's history rules.
fn history_of(ctx: &Ctx, options: &ChannelOptions, channel: &str) -> Option<HistoryOptions> {
    options.history().or_else(|| ctx.hub.history_options(channel))
}

/// Joins `req.channel` in the engine (unless already subscribed: then only the recovery), and builds
/// the subscribe result with the stream position and recovered publications. Client subscribes,
/// the connect token's channels and the server API's subscribes all come through here.
pub(super) async fn join(
    ctx: &Ctx,
    state: &mut State,
    req: &SubscribeRequest,
    grant: Grant,
    release: &mut Release,
) -> Result<SubscribeResult, ErrorCode> {
    let channel = req.channel.as_str();
    let options = ctx.app.options(channel).ok_or(codes::UNKNOWN_CHANNEL)?.overridden(&grant.overrides);
    let options = &*options;
    let history = history_of(ctx, options, channel);
    let recoverable = history.is_some() && (options.force_recovery || options.allow_recovery);
    let recovering = recoverable && (options.force_recovery || req.recover);
    let positioned = history.is_some() && (recovering || options.force_positioning || (options.allow_positioning && req.positioned));
    let fresh = !state.subs.contains_key(channel);
    if fresh {
        let member = (options.presence && !state.user.is_empty()).then(|| MemberJoin {
            user_id: state.user.clone(),
            info: grant.info.clone().or_else(|| state.info.clone()).unwrap_or_default(),
        });
        // Deliveries wait until the reply is queued ([`Release`]): the client drops publications of a
        // subscription it has no reply for, and the reply's position says where they continue.
        let delivery = Delivery { held: true, member_events: options.join_leave && (req.join_leave || options.force_push_join_leave) };
        let subscribed = ctx.hub.join_with(ctx.id, channel, member, delivery).await.map_err(|e| codes::subscribe_error(&e))?;
        release.held = true;
        if !subscribed.already {
            ctx.hub.announce(&subscribed.change, Some(ctx.id));
        }
        state.subs.insert(channel.to_string(), Sub { expire_at: grant.expire_at, personal: false });
    }
    let (expires, ttl) = ttl(grant.expire_at);
    let mut result = SubscribeResult { expires, ttl, recoverable, positioned, was_recovering: req.recover, ..Default::default() };
    if history.is_none() {
        return Ok(result);
    }
    let read = if recovering && req.recover {
        let since = StreamPosition { offset: req.offset, epoch: Arc::from(req.epoch.as_str()) };
        ctx.hub.history(channel, Some(&since), MAX_RECOVERED).await.map(|recovery| {
            result.recovered = recovery.recovered;
            result.publications = recovery.publications.iter().map(to_pub).collect();
            recovery.position
        })
    } else {
        ctx.hub.stream_position(channel).await
    };
    match read {
        Ok(position) => {
            result.offset = position.offset;
            result.epoch = position.epoch.to_string();
            release.after = Some(position);
            Ok(result)
        }
        Err(_) => {
            // The client is told the subscribe failed: a subscription made here must not stay behind
            // (nor its held deliveries go out unfiltered).
            if fresh {
                release.held = false;
                state.subs.remove(channel);
                if let Some(change) = ctx.hub.leave(ctx.id, channel).await {
                    ctx.hub.announce(&change, Some(ctx.id));
                }
            }
            Err(codes::INTERNAL)
        }
    }
}

async fn publish(ctx: &Ctx, state: &mut State, id: u32, channel: &str, data: Bytes) {
    if !valid_channel(channel) {
        return error(ctx, id, codes::UNKNOWN_CHANNEL);
    }
    let Some(options) = ctx.app.options(channel) else { return error(ctx, id, codes::UNKNOWN_CHANNEL) };
    let subscribed = state.subs.contains_key(channel);
    let allowed = (options.allow_publish_for_client || (subscribed && options.allow_publish_for_subscriber))
        && (!state.user.is_empty() || options.allow_publish_for_anonymous)
        && !PUSHER_PROTECTED.iter().any(|p| channel.starts_with(p) && !subscribed)
        && !channel.starts_with(PERSONAL_PREFIX);
    if !allowed {
        return error(ctx, id, codes::PERMISSION_DENIED);
    }
    if data.len() > ctx.hub.app().limits.max_event_size {
        return error(ctx, id, codes::LIMIT_EXCEEDED);
    }
    let limits = options.client_publish_limits.as_ref().unwrap_or(&ctx.app.settings.client_publish_limits);
    if ratelimit::admit(&mut state.publish_windows, &ctx.app.user_publish, &state.user, namespace_of(channel), limits).is_err() {
        metrics::counter!("herald_errors_total", "kind" => "centrifugo_publish_rate_limited").increment(1);
        return error(ctx, id, codes::TOO_MANY_REQUESTS);
    }
    // Protobuf clients publish bytes: JSON ones reach JSON clients too, others only binary clients.
    let kind = if json::is_json(&data) { DataKind::Json } else { DataKind::Binary };
    let mut publication = Publication::new(channel, "", data, kind);
    if !state.user.is_empty() {
        publication.publisher = Some(PublisherInfo { user_id: state.user.clone(), info: state.info.clone().unwrap_or_default() });
    }
    match ctx.hub.publish_confirmed(&publication, history_of(ctx, options, channel), None).await {
        Ok(_) => reply(ctx, id, &Reply::Publish),
        Err(e) => {
            debug_error("publish_failed", &e);
            error(ctx, id, codes::INTERNAL);
        }
    }
}

async fn presence(ctx: &Ctx, state: &State, id: u32, channel: &str, stats: bool) {
    let Some(options) = ctx.app.options(channel) else { return error(ctx, id, codes::UNKNOWN_CHANNEL) };
    if !options.presence {
        return error(ctx, id, codes::NOT_AVAILABLE);
    }
    let subscribed = state.subs.contains_key(channel);
    if !(options.allow_presence_for_client || (subscribed && options.allow_presence_for_subscriber)) {
        return error(ctx, id, codes::PERMISSION_DENIED);
    }
    let (members, clients) = match ctx.hub.state() {
        Some(cluster) => {
            let app = &ctx.hub.app().id;
            match (cluster.members(app, channel).await, cluster.channel(app, channel).await) {
                (Ok(members), Ok(info)) => (members, info.map_or(0, |i| i.subscribers)),
                _ => return error(ctx, id, codes::INTERNAL),
            }
        }
        None => (ctx.hub.members(channel).unwrap_or_default(), ctx.hub.channel(channel).map_or(0, |i| i.subscribers)),
    };
    if stats {
        let num = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        return reply(ctx, id, &Reply::PresenceStats { num_clients: num(clients), num_users: num(members.len()) });
    }
    let infos = members
        .into_iter()
        .map(|m| ClientInfo {
            user: m.user_id.to_string(),
            client: m.user_id.to_string(),
            conn_info: (!m.info.is_empty() && json::is_json(&m.info)).then_some(m.info),
            chan_info: None,
        })
        .collect();
    reply(ctx, id, &Reply::Presence(infos));
}

async fn history(ctx: &Ctx, state: &State, id: u32, req: HistoryRequest) {
    let channel = req.channel.as_str();
    let Some(options) = ctx.app.options(channel) else { return error(ctx, id, codes::UNKNOWN_CHANNEL) };
    let Some(_) = history_of(ctx, options, channel) else { return error(ctx, id, codes::NOT_AVAILABLE) };
    let subscribed = state.subs.contains_key(channel);
    if !(options.allow_history_for_client || (subscribed && options.allow_history_for_subscriber)) {
        return error(ctx, id, codes::PERMISSION_DENIED);
    }
    let since = req.since.as_ref().map(|(offset, epoch)| StreamPosition { offset: *offset, epoch: Arc::from(epoch.as_str()) });
    let limit = match req.limit {
        0 => {
            return match ctx.hub.stream_position(channel).await {
                Ok(p) => reply(ctx, id, &Reply::History { publications: Vec::new(), epoch: p.epoch.to_string(), offset: p.offset }),
                Err(_) => error(ctx, id, codes::INTERNAL),
            };
        }
        n if n < 0 => MAX_RECOVERED,
        n => usize::try_from(n).unwrap_or(MAX_RECOVERED).min(MAX_RECOVERED),
    };
    // Newest first without a position: read what is kept and take the newest.
    let read_limit = if req.reverse && since.is_none() { usize::MAX } else { limit };
    let read = match ctx.hub.history(channel, since.as_ref(), read_limit).await {
        Ok(read) => read,
        Err(_) => return error(ctx, id, codes::INTERNAL),
    };
    if let Some(since) = &since {
        if *since.epoch != *read.position.epoch || since.offset > read.position.offset {
            return error(ctx, id, codes::UNRECOVERABLE_POSITION);
        }
    }
    let mut publications: Vec<_> = read.publications.iter().map(to_pub).collect();
    if req.reverse {
        publications.reverse();
        publications.truncate(limit);
    }
    reply(ctx, id, &Reply::History { publications, epoch: read.position.epoch.to_string(), offset: read.position.offset });
}

async fn refresh(ctx: &Ctx, state: &mut State, id: u32, token: &str) -> Result<(), Ending> {
    ctx.app.verifier.prepare(token).await;
    match ctx.app.verifier.connect(token, now_unix()) {
        Ok(claims) if *claims.user == *state.user => {
            state.expire_at = claims.expire_at;
            let (expires, ttl) = ttl(state.expire_at);
            reply(ctx, id, &Reply::Refresh { client: ctx.id.to_string(), version: VERSION.into(), expires, ttl });
            Ok(())
        }
        Ok(_) => Err(Ending::Close(codes::INVALID_TOKEN)),
        Err(e) => token_refusal(ctx, id, &e),
    }
}

async fn sub_refresh(ctx: &Ctx, state: &mut State, id: u32, channel: &str, token: &str) -> Result<(), Ending> {
    ctx.app.verifier.prepare(token).await;
    match ctx.app.verifier.subscribe(token, now_unix()) {
        Ok(claims) if claims.channel == channel && *claims.user == *state.user => {
            let Some(sub) = state.subs.get_mut(channel) else {
                error(ctx, id, codes::PERMISSION_DENIED);
                return Ok(());
            };
            sub.expire_at = claims.expire_at;
            let (expires, ttl) = ttl(sub.expire_at);
            reply(ctx, id, &Reply::SubRefresh { expires, ttl });
            Ok(())
        }
        Ok(_) => Err(Ending::Close(codes::INVALID_TOKEN)),
        Err(e) => token_refusal(ctx, id, &e),
    }
}
