//! A connection's bounded outbound queue.
//!
//! The engine pushes ready-to-write frames; the connection's socket task drains them in batches (one
//! flush per batch, not per frame). The queue is bounded in frames *and* bytes. When a push would exceed
//! either bound, the [`OverflowPolicy`] decides; today the only policy is to disconnect the slow consumer,
//! so a publisher never waits for, and other subscribers never suffer from, one slow socket.
//!
//! Direct writes, which spare an idle connection's task a wake-up, are in `direct`; user commands for
//! the connection's task in `commands`; the bounds and the overflow policy in `limits`.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::codec::CodecId;
use crate::command::Commands;
use crate::keepalive::activity_clock;
use crate::latency::Stamp;

mod commands;
mod direct;
mod limits;

pub(crate) use direct::Claimed;
pub use direct::{Direct, DirectWrite};
pub use limits::{OutboxLimits, OverflowPolicy};

/// Queue slots an outbox keeps after draining; a larger capacity left by a burst is released.
const KEEP_CAPACITY: usize = 16;

/// Why the engine asks a connection to close. Fronts map these to protocol close codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Disconnect {
    /// The outbound queue overflowed.
    SlowConsumer,
    /// An operator terminated the connection (e.g. terminate a user's connections).
    Terminated,
    /// The server is shutting down; reconnect elsewhere now.
    Shutdown,
    /// The client did not answer a keep-alive ping in time ([`crate::KeepalivePolicy`]).
    NoPong,
    /// The connection's session is ending (the client closed, or the socket failed): take nothing more.
    Ended,
}

/// Who holds an outbox's write token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Writer {
    Nobody,
    /// The connection's task, between [`Outbox::drain`] and [`Outbox::written`].
    Session,
    /// A delivering task that claimed the idle outbox ([`Claimed`]).
    Publisher,
}

/// Why a push failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PushError {
    /// The outbox is closed; the frame was dropped.
    #[error("connection is closing")]
    Closed,
    /// The outbox was full; the overflow policy was applied and the frame dropped.
    #[error("outbound queue is full")]
    Overflow,
}

/// What [`Outbox::drain`] returns: frames to write, then, once the queue is empty, a close request.
#[derive(Debug, PartialEq, Eq)]
pub enum Drained {
    /// Frames were moved into the caller's buffer.
    Frames,
    /// The outbox is closed and empty: close the socket for this reason.
    Closed(Disconnect),
}

/// The sending side is shared (cloned into every subscription); the socket task drains it.
#[derive(Clone)]
pub struct Outbox {
    inner: Arc<Inner>,
}

struct Inner {
    state: Mutex<State>,
    ready: Notify,
    limits: OutboxLimits,
    /// The encoding of what is delivered here (the connection's front).
    codec: CodecId,
    /// The device the connection signed in from, once it did.
    device: OnceLock<Arc<str>>,
    /// When the client last sent anything ([`activity_clock`]).
    seen: AtomicU32,
    /// When a keep-alive ping was queued and not yet answered (0: none).
    pinged: AtomicU32,
    /// The front's direct writer, once the connection's task installed it.
    direct: OnceLock<Arc<dyn DirectWrite>>,
    /// User commands for the connection's task, once its front accepts them.
    commands: OnceLock<Arc<Commands>>,
}

struct State {
    /// Frames, each with when its publication was accepted (`None`: replies, not measured).
    frames: VecDeque<(Bytes, Option<Stamp>)>,
    bytes: usize,
    closed: Option<Disconnect>,
    writer: Writer,
    /// A direct write left bytes in the socket's buffer: the connection's task must flush.
    flush: bool,
}

impl Outbox {
    /// An empty outbox with these bounds.
    pub fn new(limits: OutboxLimits) -> Self {
        Outbox::with_codec(limits, CodecId::RAW)
    }

    /// An empty outbox with these bounds for a connection whose frames use `codec`. The outbox is the
    /// connection's delivery endpoint: every subscription holds a clone, so what delivery needs to know
    /// about the connection (its codec, its device) lives here, once per connection.
    pub fn with_codec(limits: OutboxLimits, codec: CodecId) -> Self {
        Outbox {
            inner: Arc::new(Inner {
                state: Mutex::new(State { frames: VecDeque::new(), bytes: 0, closed: None, writer: Writer::Nobody, flush: false }),
                ready: Notify::new(),
                limits,
                codec,
                device: OnceLock::new(),
                seen: AtomicU32::new(activity_clock()),
                pinged: AtomicU32::new(0),
                direct: OnceLock::new(),
                commands: OnceLock::new(),
            }),
        }
    }

    /// The encoding of this connection's frames.
    pub fn codec(&self) -> CodecId {
        self.inner.codec
    }

    /// The device the connection signed in from, if it did.
    pub fn device(&self) -> Option<&str> {
        self.inner.device.get().map(|d| &**d)
    }

    /// Records the connection's device; only the first call takes effect.
    pub(crate) fn set_device(&self, device: Arc<str>) {
        let _ = self.inner.device.set(device);
    }

    /// Notes that the client sent something (any frame): it is alive, and a pending ping is answered.
    pub fn touch(&self) {
        self.touch_at(activity_clock());
    }

    pub(crate) fn touch_at(&self, now: u32) {
        self.inner.seen.store(now, Ordering::Relaxed);
        if self.inner.pinged.load(Ordering::Relaxed) != 0 {
            self.inner.pinged.store(0, Ordering::Relaxed);
        }
    }

    /// Last activity and the unanswered ping, if any.
    pub(crate) fn activity(&self) -> (u32, Option<u32>) {
        let pinged = self.inner.pinged.load(Ordering::Relaxed);
        (self.inner.seen.load(Ordering::Relaxed), (pinged != 0).then_some(pinged))
    }

    pub(crate) fn mark_pinged(&self, now: u32) {
        self.inner.pinged.store(now.max(1), Ordering::Relaxed);
    }

    /// Queues one frame, applying the overflow policy if a bound would be exceeded.
    pub fn push(&self, frame: Bytes) -> Result<(), PushError> {
        self.enqueue(frame, None, false).map(|_| ())
    }

    /// Like [`Outbox::push`], for a frame of a publication accepted at `stamp` (its delivery latency
    /// is recorded when it is written).
    pub fn push_stamped(&self, frame: Bytes, stamp: Stamp) -> Result<(), PushError> {
        self.enqueue(frame, Some(stamp), false).map(|_| ())
    }

    /// Queues `frame`; returns whether the caller claimed the write token (only when `claim`).
    fn enqueue(&self, frame: Bytes, stamp: Option<Stamp>, claim: bool) -> Result<bool, PushError> {
        let mut state = self.inner.state.lock();
        if state.closed.is_some() {
            return Err(PushError::Closed);
        }
        let limits = &self.inner.limits;
        if state.frames.len() >= limits.max_messages || state.bytes + frame.len() > limits.max_bytes {
            match limits.overflow {
                OverflowPolicy::DisconnectSlowConsumer => {
                    state.frames.clear();
                    state.bytes = 0;
                    state.closed = Some(Disconnect::SlowConsumer);
                }
            }
            drop(state);
            metrics::counter!("herald_slow_consumer_disconnects_total").increment(1);
            self.inner.ready.notify_one();
            return Err(PushError::Overflow);
        }
        let was_empty = state.frames.is_empty();
        state.bytes += frame.len();
        state.frames.push_back((frame, stamp));
        if claim && was_empty && state.writer == Writer::Nobody && !state.flush && self.inner.direct.get().is_some() {
            state.writer = Writer::Publisher;
            return Ok(true);
        }
        // A claiming publisher writes what is queued behind its frame too; nobody else needs waking.
        let wake = was_empty && state.writer != Writer::Publisher;
        drop(state);
        if wake {
            self.inner.ready.notify_one();
        }
        Ok(false)
    }

    /// Asks the connection to close once it has written what is already queued. The first reason wins.
    pub fn close(&self, reason: Disconnect) {
        let mut state = self.inner.state.lock();
        if state.closed.is_none() {
            state.closed = Some(reason);
        }
        drop(state);
        self.inner.ready.notify_one();
    }

    /// Whether a close has been requested.
    pub fn is_closed(&self) -> bool {
        self.inner.state.lock().closed.is_some()
    }

    /// Frames and bytes currently queued.
    pub fn len(&self) -> (usize, usize) {
        let state = self.inner.state.lock();
        (state.frames.len(), state.bytes)
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.inner.state.lock().frames.is_empty()
    }

    /// Waits until frames are queued (or a direct write left bytes to flush), or a close is requested.
    /// Moves every queued frame into `out` (one lock, so the writer can flush once per batch) and takes
    /// the write token: call [`Outbox::written`] once they are written. `Frames` with nothing in `out`
    /// means: just flush. Only the connection's own task calls this.
    pub async fn drain(&self, out: &mut Vec<Bytes>) -> Drained {
        self.drain_stamped(out, None).await
    }

    /// Like [`Outbox::drain`], also collecting the stamps of the frames that have one, so the writer can
    /// record their delivery latency once they are written.
    pub async fn drain_stamped(&self, out: &mut Vec<Bytes>, stamps: Option<&mut Vec<Stamp>>) -> Drained {
        loop {
            {
                let mut state = self.inner.state.lock();
                if state.writer != Writer::Publisher {
                    if !state.frames.is_empty() || state.flush {
                        match stamps {
                            Some(stamps) => out.extend(state.frames.drain(..).map(|(frame, stamp)| {
                                stamps.extend(stamp);
                                frame
                            })),
                            None => out.extend(state.frames.drain(..).map(|(frame, _)| frame)),
                        }
                        state.bytes = 0;
                        state.flush = false;
                        state.writer = Writer::Session;
                        // A burst grew the queue; an idle connection should not keep that capacity.
                        if state.frames.capacity() > KEEP_CAPACITY {
                            state.frames = VecDeque::new();
                        }
                        return Drained::Frames;
                    }
                    if let Some(reason) = state.closed {
                        return Drained::Closed(reason);
                    }
                }
            }
            self.inner.ready.notified().await;
        }
    }

    /// The connection's task wrote (and flushed) what [`Outbox::drain`] gave it: delivery may write
    /// directly again.
    pub fn written(&self) {
        let mut state = self.inner.state.lock();
        if state.writer == Writer::Session {
            state.writer = Writer::Nobody;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bounds with the only overflow policy.
    pub(super) fn limits(max_messages: usize, max_bytes: usize) -> OutboxLimits {
        OutboxLimits { max_messages, max_bytes, overflow: OverflowPolicy::DisconnectSlowConsumer }
    }

    #[tokio::test]
    async fn drains_in_order_as_one_batch() {
        let outbox = Outbox::new(limits(10, 1000));
        for i in 0..3 {
            outbox.push(Bytes::from(format!("m{i}"))).unwrap();
        }
        let mut out = Vec::new();
        assert_eq!(outbox.drain(&mut out).await, Drained::Frames);
        assert_eq!(out, vec![Bytes::from("m0"), Bytes::from("m1"), Bytes::from("m2")]);
        assert_eq!(outbox.len(), (0, 0));
    }

    #[tokio::test]
    async fn message_bound_disconnects_slow_consumer() {
        let outbox = Outbox::new(limits(2, 1000));
        outbox.push(Bytes::from("a")).unwrap();
        outbox.push(Bytes::from("b")).unwrap();
        assert_eq!(outbox.push(Bytes::from("c")), Err(PushError::Overflow));
        assert_eq!(outbox.push(Bytes::from("d")), Err(PushError::Closed));
        let mut out = Vec::new();
        assert_eq!(outbox.drain(&mut out).await, Drained::Closed(Disconnect::SlowConsumer));
        assert!(out.is_empty(), "an overflowed queue is dropped, not flushed");
    }

    #[tokio::test]
    async fn byte_bound_disconnects_slow_consumer() {
        let outbox = Outbox::new(limits(100, 10));
        outbox.push(Bytes::from("123456")).unwrap();
        assert_eq!(outbox.push(Bytes::from("123456")), Err(PushError::Overflow));
        assert!(outbox.is_closed());
    }

    #[tokio::test]
    async fn close_flushes_queued_frames_first() {
        let outbox = Outbox::new(limits(10, 1000));
        outbox.push(Bytes::from("last words")).unwrap();
        outbox.close(Disconnect::Terminated);
        outbox.close(Disconnect::Shutdown);
        let mut out = Vec::new();
        assert_eq!(outbox.drain(&mut out).await, Drained::Frames);
        assert_eq!(out.len(), 1);
        assert_eq!(outbox.drain(&mut out).await, Drained::Closed(Disconnect::Terminated));
    }

    #[tokio::test]
    async fn outbox_releases_burst_capacity_after_drain() {
        let outbox = Outbox::new(limits(2000, 1 << 20));
        for _ in 0..1000 {
            outbox.push(Bytes::from_static(b"x")).unwrap();
        }
        assert!(outbox.inner.state.lock().frames.capacity() >= 1000);
        let mut out = Vec::new();
        assert_eq!(outbox.drain(&mut out).await, Drained::Frames);
        assert_eq!(out.len(), 1000);
        assert!(outbox.inner.state.lock().frames.capacity() <= KEEP_CAPACITY, "burst capacity is released");
    }

    #[tokio::test]
    async fn drain_wakes_on_push_from_another_task() {
        let outbox = Outbox::new(limits(10, 1000));
        let sender = outbox.clone();
        let task = tokio::spawn(async move {
            tokio::task::yield_now().await;
            sender.push(Bytes::from("hello")).unwrap();
        });
        let mut out = Vec::new();
        assert_eq!(outbox.drain(&mut out).await, Drained::Frames);
        assert_eq!(out, vec![Bytes::from("hello")]);
        task.await.unwrap();
    }
}
