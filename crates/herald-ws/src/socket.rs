//! The connection's socket, shared by its session task and by delivering tasks that write to it
//! directly ([`herald_core::DirectWrite`]).
//!
//! Every use takes the lock for one poll only, never across an `.await`: the session's read, its batch
//! writes and a publisher's direct write each run whole under it, so frames enter the WebSocket in one
//! order. A publisher only ever `try_lock`s and never waits; what it can't write at once it leaves to
//! the session (the outbox keeps the order, see `herald_core::Outbox`).
//!
//! The socket is front-neutral: the front says whether its frames go out as text or binary messages
//! ([`FrameKind`]) and which histogram (its own, of the connection's app) delivery latency goes to.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{FutureExt, SinkExt, StreamExt};
use herald_core::latency::{LatencyHistogram, Stamp};
use herald_core::{Direct, DirectWrite};
use parking_lot::Mutex;
use tokio::io::{AsyncRead, ReadBuf};
use tokio_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};

use crate::upgrade::Socket;

/// How a front's frames go out on the WebSocket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameKind {
    /// Text messages (JSON protocols); a frame that is not UTF-8 is dropped and counted.
    Text,
    /// Binary messages (protobuf).
    Binary,
}

impl FrameKind {
    /// `frame` as a WebSocket message of this kind; `None` (counted) for a text frame that is not UTF-8.
    pub fn message(self, frame: Bytes) -> Option<Message> {
        match self {
            FrameKind::Text => text(frame),
            FrameKind::Binary => Some(Message::Binary(frame)),
        }
    }
}

/// A frame as a WebSocket text message. Frames reach the outbox already validated as UTF-8 (encoded
/// by the front, or checked where they entered from another node); one that is not is dropped and
/// counted (`herald_errors_total{kind="invalid_outgoing_frame"}`), never a panic.
pub fn text(frame: Bytes) -> Option<Message> {
    match Utf8Bytes::try_from(frame) {
        Ok(text) => Some(Message::Text(text)),
        Err(_) => {
            metrics::counter!("herald_errors_total", "kind" => "invalid_outgoing_frame").increment(1);
            None
        }
    }
}

/// A WebSocket that a session and delivering tasks share, the kind of message its frames become, and
/// the histogram its writes record delivery latency into.
pub struct SharedSocket {
    socket: Mutex<Socket>,
    kind: FrameKind,
    latency: Option<Arc<LatencyHistogram>>,
}

impl SharedSocket {
    /// Shares `socket`, whose outgoing frames are `kind` messages; delivery latency of the frames
    /// written through it is recorded into `latency` (the app's histogram for the front), if any.
    pub fn new(socket: Socket, kind: FrameKind, latency: Option<Arc<LatencyHistogram>>) -> Self {
        SharedSocket { socket: Mutex::new(socket), kind, latency }
    }

    /// Records the delivery latency of frames written now (by the session, see
    /// `herald_core::Outbox::drain_stamped`), and empties `stamps`.
    pub fn written(&self, stamps: &mut Vec<Stamp>) {
        if let Some(histogram) = &self.latency {
            let now = Stamp::now();
            stamps.drain(..).for_each(|stamp| histogram.record_n(stamp, now, 1));
        } else {
            stamps.clear();
        }
    }

    /// The next message from the client.
    pub async fn next(&self) -> Option<Result<Message, WsError>> {
        poll_fn(|cx| self.socket.lock().poll_next_unpin(cx)).await
    }

    /// Queues `message` in the WebSocket's write buffer (waiting for room first).
    pub async fn feed(&self, message: Message) -> Result<(), WsError> {
        let mut message = Some(message);
        poll_fn(|cx| {
            let mut socket = self.socket.lock();
            match socket.poll_ready_unpin(cx) {
                Poll::Ready(Ok(())) => Poll::Ready(message.take().map_or(Ok(()), |m| socket.start_send_unpin(m))),
                other => other,
            }
        })
        .await
    }

    /// Writes out the WebSocket's write buffer.
    pub async fn flush(&self) -> Result<(), WsError> {
        poll_fn(|cx| self.socket.lock().poll_flush_unpin(cx)).await
    }

    /// Feeds and flushes one message.
    pub async fn send(&self, message: Message) -> Result<(), WsError> {
        self.feed(message).await?;
        self.flush().await
    }

    /// Reads raw bytes past the WebSocket layer (to drain a client's unparseable input before closing).
    pub async fn read_raw(&self, buf: &mut [u8]) -> io::Result<usize> {
        poll_fn(|cx| {
            let mut socket = self.socket.lock();
            let mut read = ReadBuf::new(buf);
            match Pin::new(socket.get_mut()).poll_read(cx, &mut read) {
                Poll::Ready(Ok(())) => Poll::Ready(Ok(read.filled().len())),
                Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                Poll::Pending => Poll::Pending,
            }
        })
        .await
    }

    /// Writes a batch of frames (as this socket's [`FrameKind`]) and flushes it once, within
    /// `deadline`, and empties `batch`. False if the socket failed or the client did not take the
    /// bytes in time: a stalled reader, counted as a slow consumer
    /// (`herald_slow_consumer_disconnects_total{reason="write_timeout"}`).
    pub async fn write_batch(&self, batch: &mut Vec<Bytes>, deadline: Duration) -> bool {
        let kind = self.kind;
        let written = {
            let mut write = std::pin::pin!(async {
                for frame in batch.drain(..) {
                    if let Some(message) = kind.message(frame) {
                        self.feed(message).await?;
                    }
                }
                self.flush().await
            });
            // Most writes complete at once (the kernel takes the bytes); only one that has to wait gets
            // a timer, boxed, so that idle sessions don't each carry one.
            match write.as_mut().now_or_never() {
                Some(result) => result.is_ok(),
                None => match Box::pin(tokio::time::timeout(deadline, write)).await {
                    Ok(result) => result.is_ok(),
                    Err(_) => {
                        metrics::counter!("herald_slow_consumer_disconnects_total", "reason" => "write_timeout").increment(1);
                        tracing::debug!("write timed out; dropping the connection");
                        false
                    }
                },
            }
        };
        batch.clear();
        // A burst may have grown the batch; idle connections should not keep it.
        if batch.capacity() > 64 {
            *batch = Vec::new();
        }
        written
    }

    /// Reads (and discards) until the client's close reply or `limit`. Once tungstenite can no longer
    /// parse the input (the rest of an oversized or invalid frame), the raw bytes are drained until the
    /// client closes: so a close frame just sent is not destroyed by a TCP reset.
    pub async fn linger(&self, limit: Duration) {
        let drain = async {
            loop {
                match self.next().await {
                    Some(Ok(Message::Close(_))) => return,
                    Some(Ok(_)) => {}
                    None | Some(Err(_)) => break,
                }
            }
            let mut buf = vec![0u8; 4096];
            while matches!(self.read_raw(&mut buf).await, Ok(n) if n > 0) {}
        };
        let _ = tokio::time::timeout(limit, drain).await;
    }

    fn write_frame(&self, frame: &Bytes) -> Direct {
        // A backed-up scheduler (tasks spilled to the shared queue) means the server is saturated: let
        // connection tasks write, so frames that pile up meanwhile go out in batches (fewer syscalls)
        // instead of one write per frame from here.
        if tokio::runtime::Handle::try_current().is_ok_and(|rt| rt.metrics().global_queue_depth() > 0) {
            return Direct::Refused;
        }
        let Some(mut socket) = self.socket.try_lock() else { return Direct::Refused };
        let mut cx = Context::from_waker(Waker::noop());
        match socket.poll_ready_unpin(&mut cx) {
            Poll::Ready(Ok(())) => {}
            // Broken: the session finds out on its next write or read.
            Poll::Ready(Err(_)) => return Direct::Buffered,
            Poll::Pending => return Direct::Refused,
        }
        let Some(message) = self.kind.message(frame.clone()) else { return Direct::Flushed };
        if socket.start_send_unpin(message).is_err() {
            return Direct::Buffered;
        }
        match socket.poll_flush_unpin(&mut cx) {
            Poll::Ready(Ok(())) => Direct::Flushed,
            // Still in the WebSocket's buffer (the session flushes it, with a real waker) or broken.
            _ => Direct::Buffered,
        }
    }
}

impl DirectWrite for SharedSocket {
    fn write_now(&self, frame: &Bytes, stamp: Option<Stamp>) -> Direct {
        let wrote = self.write_frame(frame);
        if let (Direct::Flushed | Direct::Buffered, Some(stamp), Some(histogram)) = (wrote, stamp, &self.latency) {
            histogram.record(stamp);
        }
        wrote
    }
}
