//! One WebSocket connection speaking Pusher v7: registration, the read/write loop, closing.
//!
//! The session task owns the socket. Everything it sends, replies included, goes through the
//! connection's [`Outbox`], so replies and fan-out keep their order and share one bound. The loop
//! writes queued frames in batches (feed each, flush once), each batch under a deadline: a client that
//! stops reading is disconnected, never waited on.
//!
//! In a cluster, a subscribe, a leave or a sign-in needs Redis round trips (routing ready, counts and
//! presence decided cluster-wide). [`commands`] returns that part as a [`cluster::Step`], which is one
//! more branch of the loop: while it is pending the session keeps writing, answers pings, watches
//! keep-alive and shutdown, and queues (bounded) the frames that arrive, to handle them in order once
//! the step is done. Without a cluster everything is synchronous.
//!
//! Keep-alive and shutdown reach the session through its outbox: the front's sweep
//! (`herald_core::KeepalivePolicy`) queues `pusher:ping` to idle clients and closes those that don't
//! answer (4201), and shutdown closes every outbox (4200). Every frame read stamps the outbox's activity.
//!
//! The connection's registration is a guard ([`registration::Registered`]): whatever ends the session
//! (close, error, shutdown, cancellation, a panic) unregisters it, and in a cluster uncounts it.

mod cluster;
mod commands;
mod registration;

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use herald_core::{Drained, Hub};
use tokio::sync::OwnedSemaphorePermit;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};
use tracing::{debug, info_span};

use crate::codes;
use crate::wire::{self, Data};
use crate::{Pusher, PusherApp};

use cluster::Step;
use commands::{Ctx, RateLimit};
use herald_ws::{text, FrameKind, SharedSocket, Socket};
use registration::Registered;

/// Client frames queued while a cluster step is pending; beyond it the session stops reading (TCP
/// pushes back) until the step is done.
const MAX_WAITING: usize = 32;
/// WebSocket pings a client may send per second; a flood (each ping costs a pong) is closed with 1008.
const MAX_PINGS_PER_SECOND: u32 = 50;
/// How long the session sends its close frame for, and then reads the client's remaining input (so
/// the close frame is not lost to a reset) before it drops the socket.
const CLOSE_LINGER: Duration = Duration::from_secs(2);

/// Sends an error frame and a close frame, for connections refused before they start.
pub(crate) async fn refuse(socket: Socket, code: u16, message: &str) {
    refuse_shared(&SharedSocket::new(socket, FrameKind::Text, None), code, message).await
}

async fn refuse_shared(socket: &SharedSocket, code: u16, message: &str) {
    let data = serde_json::json!({ "code": code, "message": message });
    metrics::counter!("herald_connections_refused_total", "code" => code.to_string()).increment(1);
    let refusal = async {
        let raw = serde_json::value::to_raw_value(&data).expect("json");
        if let Some(frame) = text(wire::frame("pusher:error", None, Data::Raw(&raw), None)) {
            socket.feed(frame).await?;
        }
        socket.send(close(code, message)).await
    };
    if tokio::time::timeout(CLOSE_LINGER, refusal).await.is_ok_and(|sent| sent.is_ok()) {
        socket.linger(CLOSE_LINGER).await;
    }
}

fn close(code: u16, reason: &str) -> Message {
    Message::Close(Some(CloseFrame { code: CloseCode::from(code), reason: Utf8Bytes::from(reason) }))
}

/// `pusher:connection_established`, built and dropped before the session loop so it holds no memory.
fn established(socket_id: &str, activity: Duration) -> Bytes {
    let data = serde_json::json!({ "socket_id": socket_id, "activity_timeout": activity.as_secs() });
    wire::frame_json("pusher:connection_established", None, &data)
}

/// A cluster step in progress and the client frames that arrived behind it. Boxed: only a session
/// waiting on the cluster has one.
struct Busy {
    step: Step,
    waiting: VecDeque<Utf8Bytes>,
}

/// How a session ends, and what it still owes the client.
enum Ending {
    /// Send this close code and reason.
    Close(u16, &'static str),
    /// The client sent a close frame: echo it (tungstenite queued the reply).
    Echo,
    /// The socket is broken or stuck: drop it without another word.
    Drop,
}

impl Ending {
    /// The short name the stats endpoints count this ending under.
    fn reason(&self) -> &'static str {
        match self {
            Ending::Echo => "client_closed",
            Ending::Drop => "connection_lost",
            Ending::Close(code, _) => match *code {
                codes::OVER_CAPACITY => "slow_consumer",
                codes::RECONNECT_NOW => "shutdown",
                codes::PONG_TIMEOUT => "pong_timeout",
                codes::TERMINATED => "terminated",
                codes::MESSAGE_TOO_BIG => "message_too_big",
                1002 | 1007 => "protocol_error",
                1008 => "policy",
                _ => "other",
            },
        }
    }
}

/// A registered connection, ready to be served.
pub(crate) struct Session {
    // Fields drop in order: the admission slot is freed before the registration cleans up.
    admission: Option<OwnedSemaphorePermit>,
    conn: Registered,
    client_events: RateLimit,
}

/// Registers a new connection with its app's hub. On refusal (e.g. the app's connection quota),
/// returns the Pusher code and message to close with.
///
/// This is a plain function, not part of the session future: every connection's task holds that future
/// for its whole life, and each level of `async fn` nesting adds to its size.
pub(crate) fn open(
    front: Arc<Pusher>,
    hub: Arc<Hub>,
    app: Arc<PusherApp>,
    admission: OwnedSemaphorePermit,
) -> Result<Session, (u16, String)> {
    let (id, outbox) = hub.connect_with(front.codec).map_err(|e| codes::connect_error(&e))?;
    let client_events = RateLimit::new(hub.app().limits.client_events_per_second);
    let ctx = Ctx::new(front, hub, app, id, outbox);
    Ok(Session { admission: Some(admission), conn: Registered::new(ctx), client_events })
}

impl Session {
    /// The socket, ready to be shared by the session and direct writes (which record delivery latency
    /// into the app's histogram for this front).
    pub(crate) fn share(&self, socket: Socket) -> Arc<SharedSocket> {
        Arc::new(SharedSocket::new(socket, FrameKind::Text, self.conn.hub.latency().get(crate::LATENCY_FRONT).cloned()))
    }

    /// The tracing span of this connection.
    pub(crate) fn span(&self) -> tracing::Span {
        info_span!("conn", app = %self.conn.hub.app().id, socket_id = %self.conn.id)
    }

    /// Runs the connection to completion, then closes the socket politely (bounded).
    ///
    /// Takes the socket already shared (see [`share`]): a `Socket` argument would stay in this
    /// future's state after being moved, for the connection's whole life.
    pub(crate) async fn serve(mut self, socket: Arc<SharedSocket>) {
        if let Err((code, message)) = Box::pin(self.conn.count_in_cluster()).await {
            return Box::pin(refuse_shared(&socket, code, message)).await;
        }
        // Delivery may write to the socket itself while this session is idle.
        self.conn.outbox.set_direct(socket.clone());
        let ending = self.run(&socket).await;
        self.conn.hub.stats().disconnected(ending.reason());
        // Nothing more goes out after this but the goodbye.
        self.conn.outbox.close(herald_core::Disconnect::Ended);
        // Free the admission slot now: the goodbye below may take a while for a slow client.
        drop(self.admission.take());
        Box::pin(finish(&socket, ending)).await;
        debug!("disconnected");
    }

    async fn run(&mut self, socket: &SharedSocket) -> Ending {
        // Shutdown closes every registered outbox (4200); one registered after that sees the token.
        if self.conn.front.shutdown.is_cancelled() {
            return ending(codes::disconnect(herald_core::Disconnect::Shutdown));
        }
        let activity = self.conn.front.config.activity_timeout;
        self.conn.reply(established(&self.conn.id_text(), activity));
        debug!("connected");

        // The socket is not split (no BiLock): every use locks it for one poll (see `socket`).
        // Keep-alive (pings, pong timeout) and shutdown arrive through the outbox (the front's sweep
        // queues pings and closes), so an idle session holds no timer and no shutdown future.
        let mut batch: Vec<Bytes> = Vec::new();
        let mut stamps = Vec::new();
        let mut busy: Option<Box<Busy>> = None;
        let mut pings = (this_second(), 0u32);

        loop {
            tokio::select! {
                drained = self.conn.outbox.drain_stamped(&mut batch, Some(&mut stamps)) => match drained {
                    Drained::Frames => {
                        if !socket.write_batch(&mut batch, self.conn.front.config.write_timeout).await {
                            return Ending::Drop;
                        }
                        socket.written(&mut stamps);
                        if stamps.capacity() > 64 {
                            stamps = Vec::new();
                        }
                        self.conn.outbox.written();
                    }
                    Drained::Closed(reason) => return ending(codes::disconnect(reason)),
                },
                () = async { match busy.as_mut() { Some(busy) => busy.step.as_mut().await, None => std::future::pending().await } } => {
                    // Frames that arrived meanwhile, in order, until one needs the cluster again.
                    let mut waiting = busy.take().map_or_else(VecDeque::new, |done| done.waiting);
                    while let Some(frame) = waiting.pop_front() {
                        if let Some(step) = self.conn.handle(frame.as_str(), &mut self.client_events) {
                            busy = Some(Box::new(Busy { step, waiting }));
                            break;
                        }
                    }
                },
                incoming = socket.next(), if busy.as_ref().is_none_or(|busy| busy.waiting.len() < MAX_WAITING) => {
                    self.conn.outbox.touch();
                    match incoming {
                        Some(Ok(Message::Text(t))) => match busy.as_mut() {
                            None => {
                                busy = self.conn.handle(t.as_str(), &mut self.client_events).map(|step| Box::new(Busy { step, waiting: VecDeque::new() }));
                            }
                            Some(busy) => {
                                if !self.conn.answer_ping(t.as_str()) {
                                    busy.waiting.push_back(t);
                                }
                            }
                        },
                        Some(Ok(Message::Binary(_))) => self.conn.error(codes::GENERIC_ERROR, "binary frames are not supported", "binary"),
                        Some(Ok(Message::Ping(_))) => {
                            let second = this_second();
                            if second != pings.0 {
                                pings = (second, 0);
                            }
                            pings.1 += 1;
                            if pings.1 > MAX_PINGS_PER_SECOND {
                                metrics::counter!("herald_errors_total", "kind" => "ping_flood").increment(1);
                                return Ending::Close(u16::from(CloseCode::Policy), "Too many pings");
                            }
                        }
                        Some(Ok(Message::Pong(_) | Message::Frame(_))) => {}
                        Some(Ok(Message::Close(_))) => return Ending::Echo,
                        None => return Ending::Drop,
                        Some(Err(e)) => return protocol_error(e),
                    }
                },
            }
        }
    }
}

/// Whole seconds on the engine's activity clock: a 4-byte clock for per-second counters that every
/// idle session keeps.
fn this_second() -> u32 {
    herald_core::activity_clock() / 1000
}

fn ending((code, reason): (u16, &'static str)) -> Ending {
    debug!(code, reason, "closing");
    Ending::Close(code, reason)
}

/// The close a read error calls for: 1009 for an oversized frame, 1007 for invalid UTF-8, 1002 for
/// any other protocol violation; a broken connection is just dropped.
fn protocol_error(e: WsError) -> Ending {
    debug!(error = %e, "read failed");
    let (kind, code, reason) = match e {
        WsError::Capacity(_) => ("frame_too_large", codes::MESSAGE_TOO_BIG, "Message too big"),
        WsError::Utf8(_) => ("invalid_utf8", u16::from(CloseCode::Invalid), "Invalid UTF-8 in a text frame"),
        WsError::Protocol(_) => ("websocket_protocol", u16::from(CloseCode::Protocol), "WebSocket protocol violation"),
        _ => return Ending::Drop,
    };
    metrics::counter!("herald_errors_total", "kind" => kind).increment(1);
    Ending::Close(code, reason)
}

/// Says goodbye: sends the close frame and reads what the client still sends until its close reply,
/// so the close frame is not destroyed by a TCP reset; or echoes the client's close. Bounded.
async fn finish(socket: &SharedSocket, ending: Ending) {
    match ending {
        Ending::Close(code, reason) => {
            if tokio::time::timeout(CLOSE_LINGER, socket.send(close(code, reason))).await.is_ok_and(|sent| sent.is_ok()) {
                socket.linger(CLOSE_LINGER).await;
            }
        }
        Ending::Echo => {
            let _ = tokio::time::timeout(CLOSE_LINGER, socket.flush()).await;
        }
        Ending::Drop => {}
    }
}
