//! One WebSocket connection speaking the Centrifugo client protocol: registration, the read/write
//! loop, server pings, token expiry, closing.
//!
//! The session task owns the socket. Everything it sends, replies included, goes through the
//! connection's [`Outbox`](herald_core::Outbox), so replies and fan-out keep their order and share
//! one bound. A frame's commands are handled in order by one boxed future ([`commands::handle`]),
//! which owns the session's protocol state while it runs and gives it back when done; meanwhile the
//! loop keeps writing, watches shutdown, and queues (bounded) frames that arrive behind it.
//!
//! The socket is shared ([`herald_ws::SharedSocket`]): while the session is idle, delivery writes
//! fan-out frames to it directly (the outbox's write token decides who writes), and every frame of a
//! publication written, by either, records its delivery latency in the app's `centrifugo` histogram.
//!
//! The connection's registration is a guard ([`Registered`]): whatever ends the session (close,
//! error, shutdown, cancellation, a panic) unregisters it, and in a cluster uncounts it.

mod commands;
mod user;

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use herald_core::{Admission, Drained, Hub, Outbox, SocketId, CLUSTER_WAIT};
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};
use tracing::{debug, info_span};

use crate::app::ReadyApp;
use crate::codes::{self, DisconnectCode};
use crate::{Centrifugo, Encoding};
use herald_ws::{FrameKind, SharedSocket, Socket};

pub(crate) use commands::State;

/// Client frames queued while a frame's commands are being handled; beyond it the session stops
/// reading (TCP pushes back) until they are done.
const MAX_WAITING: usize = 32;
/// WebSocket pings a client may send per second; a flood is closed with 1008.
const MAX_PINGS_PER_SECOND: u32 = 50;
/// How long the session sends its close frame for, and then reads the client's remaining input.
const CLOSE_LINGER: Duration = Duration::from_secs(2);

/// What every command of one connection needs; cheap to clone into the handling future.
#[derive(Clone)]
pub(crate) struct Ctx {
    pub(crate) front: Arc<Centrifugo>,
    pub(crate) hub: Arc<Hub>,
    pub(crate) app: Arc<ReadyApp>,
    pub(crate) id: SocketId,
    pub(crate) outbox: Outbox,
    pub(crate) encoding: Encoding,
}

impl Ctx {
    pub(crate) fn send(&self, frame: Bytes) {
        let _ = self.outbox.push(frame);
    }

    /// Queues the reply to command `id` (if it has one and this encoding carries it).
    pub(crate) fn reply(&self, id: u32, reply: &crate::protocol::Reply) {
        if id != 0 {
            if let Some(frame) = self.encoding.reply(id, reply) {
                self.send(frame);
            }
        }
    }
}

/// Closes a connection refused before it starts, with a reason (so terminal codes stay terminal).
pub(crate) async fn refuse(socket: Socket, (code, reason): DisconnectCode) {
    metrics::counter!("herald_connections_refused_total", "code" => code.to_string()).increment(1);
    let socket = SharedSocket::new(socket, FrameKind::Text, None);
    if tokio::time::timeout(CLOSE_LINGER, socket.send(close(code, reason))).await.is_ok_and(|sent| sent.is_ok()) {
        socket.linger(CLOSE_LINGER).await;
    }
}

fn close(code: u16, reason: &str) -> Message {
    Message::Close(Some(CloseFrame { code: CloseCode::from(code), reason: Utf8Bytes::from(reason) }))
}

/// How a session ends, and what it still owes the client.
pub(crate) enum Ending {
    /// Send this close code and reason.
    Close(DisconnectCode),
    /// Send an operator's close code and reason (the server API's `disconnect`), after this frame
    /// (a unidirectional connection's `disconnect` push).
    Custom(u16, String, Option<Bytes>),
    /// The client sent a close frame: echo it.
    Echo,
    /// The socket is broken or stuck: drop it.
    Drop,
}

/// What a frame's handling gives back: the state, and whether the session must end.
pub(crate) type Handled = (Box<State>, Option<Ending>);

/// A frame being handled and the frames that arrived behind it.
struct Busy {
    work: Pin<Box<dyn Future<Output = Handled> + Send>>,
    waiting: VecDeque<Bytes>,
}

/// A registered connection; unregistered on drop (any exit: close, error, cancellation, panic).
pub(crate) struct Registered {
    ctx: Ctx,
    /// The connection is counted in the cluster's per-app connection total (taken back on drop).
    counted: bool,
}

impl Registered {
    /// Counts the connection against the app's cluster-wide quota (the Pusher front's too), when the
    /// app has one and this node is in a cluster. Refused: 3504. If the cluster can't be asked in
    /// time, the connection is admitted on this node's own count (counted in `herald_errors_total`).
    async fn count_in_cluster(&mut self) -> Result<(), DisconnectCode> {
        match self.ctx.hub.admit().await {
            Admission::Counted => self.counted = true,
            Admission::Uncounted => {}
            Admission::OverQuota => return Err(codes::CONNECTION_LIMIT),
        }
        Ok(())
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        let ctx = &self.ctx;
        let Some(departure) = ctx.hub.depart(ctx.id, self.counted) else { return };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        let hub = ctx.hub.clone();
        ctx.front.tasks.spawn_on(async move { hub.settle(departure).await }, &runtime);
    }
}

/// A registered connection, ready to be served.
pub(crate) struct Session {
    admission: Option<OwnedSemaphorePermit>,
    conn: Registered,
    /// A frame to handle before reading any (a unidirectional connection's `cf_connect`).
    initial: Option<Bytes>,
}

/// Registers a new connection with its app's hub. Refused: the disconnect to close with.
pub(crate) fn open(
    front: Arc<Centrifugo>,
    hub: Arc<Hub>,
    app: Arc<ReadyApp>,
    admission: OwnedSemaphorePermit,
    encoding: Encoding,
    initial: Option<Bytes>,
) -> Result<Session, DisconnectCode> {
    let codec = match encoding {
        Encoding::Json => front.json,
        Encoding::Protobuf => front.protobuf,
        Encoding::UniJson => front.uni,
    };
    let (id, outbox) = hub.connect_with(codec).map_err(|e| codes::connect_error(&e))?;
    Ok(Session {
        admission: Some(admission),
        conn: Registered { ctx: Ctx { front, hub, app, id, outbox, encoding }, counted: false },
        initial,
    })
}

impl Session {
    /// The tracing span of this connection.
    pub(crate) fn span(&self) -> tracing::Span {
        info_span!("centrifugo", app = %self.conn.ctx.hub.app().id, client = %self.conn.ctx.id)
    }

    /// The socket, ready to be shared by the session and direct writes (which record delivery latency
    /// into the app's histogram for this front).
    pub(crate) fn share(&self, socket: Socket) -> Arc<SharedSocket> {
        let ctx = &self.conn.ctx;
        let kind = if ctx.encoding == Encoding::Protobuf { FrameKind::Binary } else { FrameKind::Text };
        Arc::new(SharedSocket::new(socket, kind, ctx.hub.latency().get(crate::LATENCY_FRONT).cloned()))
    }

    /// Runs the connection to completion, then closes the socket politely (bounded).
    ///
    /// Takes the socket already shared (see [`Session::share`]): a `Socket` argument would stay in
    /// this future's state after being moved, for the connection's whole life.
    pub(crate) async fn serve(mut self, socket: Arc<SharedSocket>) {
        // Delivery may write to the socket itself while this session is idle.
        self.conn.ctx.outbox.set_direct(socket.clone());
        let ending = match Box::pin(self.conn.count_in_cluster()).await {
            Ok(()) => self.run(&socket).await,
            Err(refusal) => {
                metrics::counter!("herald_connections_refused_total", "code" => refusal.0.to_string()).increment(1);
                Ending::Close(refusal)
            }
        };
        // Nothing more goes out after this but the goodbye (and no more direct writes).
        self.conn.ctx.outbox.close(herald_core::Disconnect::Ended);
        drop(self.admission.take());
        Box::pin(finish(&socket, ending)).await;
        debug!("disconnected");
    }

    async fn run(&mut self, socket: &SharedSocket) -> Ending {
        let ctx = self.conn.ctx.clone();
        let config = &ctx.front.config;
        let shutdown = ctx.front.shutdown.clone();
        let cancelled = shutdown.cancelled();
        tokio::pin!(cancelled);
        let mut state: Option<Box<State>> = Some(Box::default());
        // User commands (the server API's disconnect, unsubscribe, subscribe, refresh); they need the
        // state, so they wait while a frame is being handled.
        let Some(inbox) = ctx.outbox.accept_commands() else { return Ending::Close(codes::SERVER_ERROR) };
        let mut batch: Vec<Bytes> = Vec::new();
        let mut stamps = Vec::new();
        let mut busy: Option<Box<Busy>> = None;
        if let Some(frame) = self.initial.take() {
            let s = state.take().unwrap_or_default();
            busy = Some(Box::new(Busy { work: Box::pin(commands::handle(ctx.clone(), s, frame)), waiting: VecDeque::new() }));
        }
        let mut heard = true;
        let mut pings = (Instant::now(), 0u32);
        let opened = Instant::now();
        // At most a second, as every later tick: expiry (a token's, or one set by the server API) is seen in time.
        let tick = tokio::time::sleep(config.stale_timeout.min(config.ping_interval).min(Duration::from_secs(1)));
        tokio::pin!(tick);

        loop {
            tokio::select! {
                _ = &mut cancelled => return Ending::Close(codes::SHUTDOWN),
                drained = ctx.outbox.drain_stamped(&mut batch, Some(&mut stamps)) => match drained {
                    Drained::Frames => {
                        if !socket.write_batch(&mut batch, config.write_timeout).await {
                            return Ending::Drop;
                        }
                        socket.written(&mut stamps);
                        if stamps.capacity() > 64 {
                            stamps = Vec::new();
                        }
                        ctx.outbox.written();
                    }
                    Drained::Closed(reason) => return Ending::Close(codes::disconnect(reason)),
                },
                action = inbox.next(), if state.is_some() => {
                    // Handled like a frame: the loop keeps writing and reading meanwhile.
                    let Some(s) = state.take() else { continue };
                    busy = Some(Box::new(Busy { work: Box::pin(user::run(ctx.clone(), s, action)), waiting: VecDeque::new() }));
                },
                handled = async { match busy.as_mut() { Some(b) => b.work.as_mut().await, None => std::future::pending().await } } => {
                    let (done, ending) = handled;
                    if let Some(ending) = ending {
                        return ending;
                    }
                    let mut waiting = busy.take().map_or_else(VecDeque::new, |b| b.waiting);
                    // Commands that waited for this frame go first, so a busy client can't starve them.
                    if let Some(action) = inbox.try_next() {
                        busy = Some(Box::new(Busy { work: Box::pin(user::run(ctx.clone(), done, action)), waiting }));
                        continue;
                    }
                    match waiting.pop_front() {
                        Some(frame) => busy = Some(Box::new(Busy { work: Box::pin(commands::handle(ctx.clone(), done, frame)), waiting })),
                        None => state = Some(done),
                    }
                },
                incoming = socket.next(), if busy.as_ref().is_none_or(|b| b.waiting.len() < MAX_WAITING) => {
                    heard = true;
                    let frame = match incoming {
                        Some(Ok(Message::Text(t))) if ctx.encoding != Encoding::Protobuf => Bytes::from(t),
                        Some(Ok(Message::Binary(b))) if ctx.encoding == Encoding::Protobuf => b,
                        Some(Ok(Message::Text(_) | Message::Binary(_))) => return Ending::Close(codes::BAD_REQUEST_DISCONNECT),
                        Some(Ok(Message::Ping(_))) => {
                            if pings.0.elapsed() >= Duration::from_secs(1) {
                                pings = (Instant::now(), 0);
                            }
                            pings.1 += 1;
                            if pings.1 > MAX_PINGS_PER_SECOND {
                                metrics::counter!("herald_errors_total", "kind" => "ping_flood").increment(1);
                                return Ending::Close((u16::from(CloseCode::Policy), "too many pings"));
                            }
                            continue;
                        }
                        Some(Ok(Message::Pong(_) | Message::Frame(_))) => continue,
                        Some(Ok(Message::Close(_))) => return Ending::Echo,
                        None => return Ending::Drop,
                        Some(Err(e)) => return protocol_error(e),
                    };
                    match (busy.as_mut(), state.take()) {
                        (Some(b), _) => b.waiting.push_back(frame),
                        (None, Some(s)) => busy = Some(Box::new(Busy { work: Box::pin(commands::handle(ctx.clone(), s, frame)), waiting: VecDeque::new() })),
                        (None, None) => return Ending::Close(codes::SERVER_ERROR),
                    }
                },
                _ = &mut tick => {
                    let now = Instant::now();
                    tick.as_mut().reset(now + config.ping_interval.min(Duration::from_secs(1)).max(Duration::from_millis(100)));
                    // Checks need the state; while a frame is being handled they wait for the next tick.
                    let Some(s) = state.as_mut() else { continue };
                    if !s.connected {
                        if opened.elapsed() >= config.stale_timeout {
                            return Ending::Close(codes::STALE);
                        }
                        continue;
                    }
                    if let Some(ending) = s.expired(config.expired_grace) {
                        return ending;
                    }
                    if now >= s.next_ping {
                        if !heard {
                            return Ending::Close(codes::NO_PONG);
                        }
                        heard = false;
                        s.next_ping = now + config.ping_interval;
                        ctx.send(ctx.encoding.ping());
                    }
                },
            }
        }
    }
}

/// The close a read error calls for: 1009 for an oversized frame, 1007 for invalid UTF-8, 3501 for
/// any other protocol violation; a broken connection is just dropped.
fn protocol_error(e: WsError) -> Ending {
    debug!(error = %e, "read failed");
    let (kind, code) = match e {
        WsError::Capacity(_) => ("frame_too_large", codes::MESSAGE_TOO_BIG),
        WsError::Utf8(_) => ("invalid_utf8", (u16::from(CloseCode::Invalid), "invalid UTF-8")),
        WsError::Protocol(_) => ("websocket_protocol", codes::BAD_REQUEST_DISCONNECT),
        _ => return Ending::Drop,
    };
    metrics::counter!("herald_errors_total", "kind" => kind).increment(1);
    Ending::Close(code)
}

/// Sends the close frame and reads until the client's close reply, or echoes the client's close.
async fn finish(socket: &SharedSocket, ending: Ending) {
    match ending {
        Ending::Close((code, reason)) => {
            debug!(code, reason, "closing");
            if tokio::time::timeout(CLOSE_LINGER, socket.send(close(code, reason))).await.is_ok_and(|sent| sent.is_ok()) {
                socket.linger(CLOSE_LINGER).await;
            }
        }
        Ending::Custom(code, reason, push) => {
            debug!(code, reason, "closing on request");
            if let Some(push) = push {
                if !socket.write_batch(&mut vec![push], CLOSE_LINGER).await {
                    return;
                }
            }
            if tokio::time::timeout(CLOSE_LINGER, socket.send(close(code, &reason))).await.is_ok_and(|sent| sent.is_ok()) {
                socket.linger(CLOSE_LINGER).await;
            }
        }
        Ending::Echo => {
            let _ = tokio::time::timeout(CLOSE_LINGER, socket.flush()).await;
        }
        Ending::Drop => {}
    }
}

/// Waits (bounded) until this node receives `user`'s deliveries from the cluster.
pub(crate) async fn user_ready(hub: &Hub, user: &str) {
    if let Some(mut interest) = hub.prepare_user(user) {
        if !matches!(tokio::time::timeout(CLUSTER_WAIT, interest.ready()).await, Ok(true)) {
            metrics::counter!("herald_errors_total", "kind" => "cluster_subscribe_timeout").increment(1);
        }
    }
}
