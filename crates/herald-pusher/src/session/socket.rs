//! The connection's socket, shared by its session task and by delivering tasks that write to it
//! directly ([`herald_core::DirectWrite`]).
//!
//! Every use takes the lock for one poll only, never across an `.await`: the session's read, its batch
//! writes and a publisher's direct write each run whole under it, so frames enter the WebSocket in one
//! order. A publisher only ever `try_lock`s and never waits; what it can't write at once it leaves to
//! the session (the outbox keeps the order, see `herald_core::Outbox`).

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use herald_core::{Direct, DirectWrite};
use parking_lot::Mutex;
use tokio::io::{AsyncRead, ReadBuf};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use crate::upgrade::Socket;

/// A WebSocket that a session and delivering tasks share.
pub(crate) struct SharedSocket(Mutex<Socket>);

impl SharedSocket {
    pub(crate) fn new(socket: Socket) -> Self {
        SharedSocket(Mutex::new(socket))
    }

    /// The next message from the client.
    pub(crate) async fn next(&self) -> Option<Result<Message, WsError>> {
        poll_fn(|cx| self.0.lock().poll_next_unpin(cx)).await
    }

    /// Queues `message` in the WebSocket's write buffer (waiting for room first).
    pub(crate) async fn feed(&self, message: Message) -> Result<(), WsError> {
        let mut message = Some(message);
        poll_fn(|cx| {
            let mut socket = self.0.lock();
            match socket.poll_ready_unpin(cx) {
                Poll::Ready(Ok(())) => Poll::Ready(message.take().map_or(Ok(()), |m| socket.start_send_unpin(m))),
                other => other,
            }
        })
        .await
    }

    /// Writes out the WebSocket's write buffer.
    pub(crate) async fn flush(&self) -> Result<(), WsError> {
        poll_fn(|cx| self.0.lock().poll_flush_unpin(cx)).await
    }

    /// Feeds and flushes one message.
    pub(crate) async fn send(&self, message: Message) -> Result<(), WsError> {
        self.feed(message).await?;
        self.flush().await
    }

    /// Reads raw bytes past the WebSocket layer (to drain a client's unparseable input before closing).
    pub(crate) async fn read_raw(&self, buf: &mut [u8]) -> io::Result<usize> {
        poll_fn(|cx| {
            let mut socket = self.0.lock();
            let mut read = ReadBuf::new(buf);
            match Pin::new(socket.get_mut()).poll_read(cx, &mut read) {
                Poll::Ready(Ok(())) => Poll::Ready(Ok(read.filled().len())),
                Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                Poll::Pending => Poll::Pending,
            }
        })
        .await
    }
}

impl DirectWrite for SharedSocket {
    fn write_now(&self, frame: &Bytes) -> Direct {
        // A backed-up scheduler (tasks spilled to the shared queue) means the server is saturated: let
        // connection tasks write, so frames that pile up meanwhile go out in batches (fewer syscalls)
        // instead of one write per frame from here.
        if tokio::runtime::Handle::try_current().is_ok_and(|rt| rt.metrics().global_queue_depth() > 0) {
            return Direct::Refused;
        }
        let Some(mut socket) = self.0.try_lock() else { return Direct::Refused };
        let mut cx = Context::from_waker(Waker::noop());
        match socket.poll_ready_unpin(&mut cx) {
            Poll::Ready(Ok(())) => {}
            // Broken: the session finds out on its next write or read.
            Poll::Ready(Err(_)) => return Direct::Buffered,
            Poll::Pending => return Direct::Refused,
        }
        let Some(message) = super::text(frame.clone()) else { return Direct::Flushed };
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
