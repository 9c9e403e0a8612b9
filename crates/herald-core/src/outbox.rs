//! A connection's bounded outbound queue.
//!
//! The engine pushes ready-to-write frames; the connection's socket task drains them in batches (one
//! flush per batch, not per frame). The queue is bounded in frames *and* bytes. When a push would exceed
//! either bound, the [`OverflowPolicy`] decides; today the only policy is to disconnect the slow consumer,
//! so a publisher never waits for, and other subscribers never suffer from, one slow socket.
//!
//! Direct writes: a front may give the outbox a [`DirectWrite`] for its socket. Delivery to a connection
//! that is idle (nothing queued, its task not writing) then *claims* the outbox and, once it has let go
//! of the engine's maps, writes the frame to the socket itself, without waking the connection's task
//! (no wake-up, no task poll, no run-queue wait per delivery). One writer at a time holds the outbox's
//! write token (the claiming publisher or the connection's task), so frames reach the socket in queue
//! order; whatever the socket does not take at once is left to the connection's task.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::codec::CodecId;
use crate::command::{CommandInbox, Commands, UserAction};
use crate::keepalive::activity_clock;
use crate::latency::Stamp;

/// Queue slots an outbox keeps after draining; a larger capacity left by a burst is released.
const KEEP_CAPACITY: usize = 16;

/// Bounds of one connection's outbound queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutboxLimits {
    /// Frames waiting to be written.
    pub max_messages: usize,
    /// Bytes waiting to be written.
    pub max_bytes: usize,
    /// What happens when a push would exceed a bound.
    pub overflow: OverflowPolicy,
}

impl Default for OutboxLimits {
    fn default() -> Self {
        OutboxLimits { max_messages: 1000, max_bytes: 1 << 20, overflow: OverflowPolicy::DisconnectSlowConsumer }
    }
}

/// What a full outbox does with a new frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum OverflowPolicy {
    /// Drop the queue and close the connection with [`Disconnect::SlowConsumer`]; the client reconnects
    /// with backoff and recovers state from its backend. Counted in `herald_slow_consumer_disconnects_total`.
    DisconnectSlowConsumer,
}

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

/// What [`DirectWrite::write_now`] did with a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direct {
    /// Handed to the kernel.
    Flushed,
    /// Taken in order, but (partly) still in the socket's own buffer: the connection's task must flush.
    Buffered,
    /// Not taken (the socket is busy or full): the connection's task writes it.
    Refused,
}

/// A front's non-blocking writer for one connection's socket ([`Outbox::set_direct`]).
pub trait DirectWrite: Send + Sync + 'static {
    /// Writes `frame` now if the socket can take it without waiting. Never blocks.
    /// `stamp` is when the engine accepted the publication (for the delivery latency histogram).
    fn write_now(&self, frame: &Bytes, stamp: Option<Stamp>) -> Direct;
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

    /// Lets delivery write to this connection's socket through `direct` when the connection is idle.
    /// Only the first call takes effect.
    pub fn set_direct(&self, direct: Arc<dyn DirectWrite>) {
        let _ = self.inner.direct.set(direct);
    }

    /// Like [`Outbox::push`], but an idle outbox with a direct writer is claimed instead of woken: the
    /// caller must hand it to [`Claimed`], which writes it once the caller holds no engine lock.
    pub(crate) fn push_claiming(&self, frame: Bytes, stamp: Option<Stamp>) -> Result<bool, PushError> {
        self.enqueue(frame, stamp, true)
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

    /// Writes what a claim queued (and whatever was queued behind it) through the direct writer, then
    /// returns the token. What the socket refuses stays queued, and the connection's task is woken for
    /// it (and for a flush, or a close requested meanwhile).
    fn write_claimed(&self) {
        let Some(direct) = self.inner.direct.get() else { return };
        let mut must_flush = false;
        loop {
            let frame = {
                let mut state = self.inner.state.lock();
                match state.frames.pop_front() {
                    Some(queued) => {
                        state.bytes -= queued.0.len();
                        queued
                    }
                    None => {
                        state.writer = Writer::Nobody;
                        state.flush |= must_flush;
                        let wake = state.flush || state.closed.is_some();
                        drop(state);
                        if wake {
                            self.inner.ready.notify_one();
                        }
                        return;
                    }
                }
            };
            match direct.write_now(&frame.0, frame.1) {
                Direct::Flushed => {}
                Direct::Buffered => must_flush = true,
                Direct::Refused => {
                    let mut state = self.inner.state.lock();
                    state.bytes += frame.0.len();
                    state.frames.push_front(frame);
                    state.writer = Writer::Nobody;
                    state.flush |= must_flush;
                    drop(state);
                    self.inner.ready.notify_one();
                    return;
                }
            }
        }
    }

    /// Makes this connection receive the user commands meant for it ([`crate::UserCommand`]); the
    /// connection's task waits on the returned inbox. Only the first call gets one.
    pub fn accept_commands(&self) -> Option<CommandInbox> {
        let commands = Arc::new(Commands::default());
        self.inner.commands.set(commands.clone()).ok()?;
        Some(CommandInbox { commands })
    }

    /// Hands `action` to the connection's task. Without an inbox, a disconnect closes the connection
    /// ([`Disconnect::Terminated`]) and anything else is ignored (false). A full inbox closes the
    /// connection as a slow consumer.
    pub(crate) fn command(&self, action: UserAction) -> bool {
        let Some(commands) = self.inner.commands.get() else {
            if matches!(action, UserAction::Disconnect { .. }) {
                self.close(Disconnect::Terminated);
                return true;
            }
            return false;
        };
        if self.is_closed() {
            return false;
        }
        if !commands.push(action) {
            metrics::counter!("herald_slow_consumer_disconnects_total", "reason" => "commands").increment(1);
            self.close(Disconnect::SlowConsumer);
            return false;
        }
        true
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

/// Outboxes a delivery claimed ([`Outbox::push_claiming`]); written when this is dropped, which the
/// delivering code does after releasing the engine's maps. A drop guard, so a claim is never left
/// holding an outbox's write token.
#[derive(Default)]
pub(crate) struct Claimed(Vec<Outbox>);

impl Claimed {
    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }

    pub(crate) fn add(&mut self, outbox: &Outbox) {
        self.0.push(outbox.clone());
    }
}

impl Drop for Claimed {
    fn drop(&mut self) {
        for outbox in self.0.drain(..) {
            outbox.write_claimed();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max_messages: usize, max_bytes: usize) -> OutboxLimits {
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

    #[tokio::test]
    async fn commands_reach_the_inbox_in_order_and_a_full_inbox_closes_as_a_slow_consumer() {
        use crate::command::MAX_PENDING_COMMANDS;
        let outbox = Outbox::new(limits(10, 1000));
        let inbox = outbox.accept_commands().unwrap();
        let refresh = |at| UserAction::Refresh { expire_at: Some(at), expired: false };
        for at in 0..MAX_PENDING_COMMANDS as u64 {
            assert!(outbox.command(refresh(at)));
        }
        assert_eq!(inbox.next().await, refresh(0));
        assert!(outbox.command(refresh(99)), "room again after one was taken");
        assert!(!outbox.command(refresh(100)), "full");
        let mut out = Vec::new();
        assert_eq!(outbox.drain(&mut out).await, Drained::Closed(Disconnect::SlowConsumer));
        assert!(!outbox.command(refresh(101)), "a closed connection takes no commands");
        assert_eq!(inbox.try_next(), Some(refresh(1)), "what was queued stays in order");
    }

    #[tokio::test]
    async fn without_an_inbox_only_a_disconnect_does_anything() {
        let outbox = Outbox::new(limits(10, 1000));
        assert!(!outbox.command(UserAction::Unsubscribe { channel: Arc::from("news") }));
        assert!(!outbox.is_closed());
        assert!(outbox.command(UserAction::Disconnect { code: 4000, reason: Arc::from("bye") }));
        let mut out = Vec::new();
        assert_eq!(outbox.drain(&mut out).await, Drained::Closed(Disconnect::Terminated));
    }

    /// A socket stand-in that records what it takes, refusing or buffering on request.
    #[derive(Default)]
    struct Wire {
        taken: Mutex<Vec<Bytes>>,
        answer: Mutex<Option<Direct>>,
    }

    impl DirectWrite for Wire {
        fn write_now(&self, frame: &Bytes, _stamp: Option<Stamp>) -> Direct {
            let answer = self.answer.lock().unwrap_or(Direct::Flushed);
            if answer != Direct::Refused {
                self.taken.lock().push(frame.clone());
            }
            answer
        }
    }

    fn direct_outbox() -> (Outbox, Arc<Wire>) {
        let outbox = Outbox::new(limits(100, 10_000));
        let wire = Arc::new(Wire::default());
        outbox.set_direct(wire.clone());
        (outbox, wire)
    }

    fn claim_and_write(outbox: &Outbox, frame: &'static str) -> bool {
        let claimed = outbox.push_claiming(Bytes::from(frame), None).unwrap();
        if claimed {
            let mut c = Claimed::default();
            c.add(outbox);
        }
        claimed
    }

    #[tokio::test]
    async fn an_idle_outbox_is_written_directly_without_waking_its_task() {
        let (outbox, wire) = direct_outbox();
        assert!(claim_and_write(&outbox, "a"));
        assert_eq!(*wire.taken.lock(), vec![Bytes::from("a")]);
        assert_eq!(outbox.len(), (0, 0));
        let mut out = Vec::new();
        let woke = tokio::time::timeout(std::time::Duration::from_millis(20), outbox.drain(&mut out)).await;
        assert!(woke.is_err(), "nothing for the connection's task to do");
    }

    #[tokio::test]
    async fn a_refused_frame_stays_queued_in_order_for_the_task() {
        let (outbox, wire) = direct_outbox();
        *wire.answer.lock() = Some(Direct::Refused);
        assert!(outbox.push_claiming(Bytes::from("a"), None).unwrap());
        // Queued behind the claim: neither claimed again nor a reason to wake the task yet.
        assert!(!outbox.push_claiming(Bytes::from("b"), None).unwrap());
        drop({
            let mut c = Claimed::default();
            c.add(&outbox);
            c
        });
        assert!(wire.taken.lock().is_empty());
        let mut out = Vec::new();
        assert_eq!(outbox.drain(&mut out).await, Drained::Frames);
        assert_eq!(out, vec![Bytes::from("a"), Bytes::from("b")]);
    }

    #[tokio::test]
    async fn a_buffered_write_asks_the_task_to_flush_and_blocks_claims_until_it_did() {
        let (outbox, wire) = direct_outbox();
        *wire.answer.lock() = Some(Direct::Buffered);
        assert!(claim_and_write(&outbox, "a"));
        assert!(!outbox.push_claiming(Bytes::from("b"), None).unwrap(), "the socket has unflushed bytes: no direct write");
        let mut out = Vec::new();
        assert_eq!(outbox.drain(&mut out).await, Drained::Frames);
        assert_eq!(out, vec![Bytes::from("b")], "flush, and write what came after");
        *wire.answer.lock() = None;
        assert!(!claim_and_write(&outbox, "c"), "the task holds the write token until written()");
        out.clear();
        assert_eq!(outbox.drain(&mut out).await, Drained::Frames);
        outbox.written();
        assert!(claim_and_write(&outbox, "d"));
        assert_eq!(*wire.taken.lock(), vec![Bytes::from("a"), Bytes::from("d")]);
    }

    #[tokio::test]
    async fn a_closed_outbox_takes_no_claims() {
        let (outbox, _wire) = direct_outbox();
        outbox.close(Disconnect::Ended);
        assert_eq!(outbox.push_claiming(Bytes::from("a"), None), Err(PushError::Closed));
        let mut out = Vec::new();
        assert_eq!(outbox.drain(&mut out).await, Drained::Closed(Disconnect::Ended));
    }

    /// Publishers on several threads claim and write directly while the connection's task drains and
    /// writes the rest: every frame reaches the wire exactly once and each publisher's frames stay in order.
    #[test]
    fn direct_and_task_writes_keep_each_publishers_order() {
        let outbox = Outbox::new(limits(100_000, 1 << 30));
        let wire = Arc::new(Wire::default());
        outbox.set_direct(wire.clone());
        let (publishers, each) = (4usize, 20_000usize);
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let task = {
            let (outbox, wire, done) = (outbox.clone(), wire.clone(), done.clone());
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
                rt.block_on(async {
                    let mut out = Vec::new();
                    loop {
                        let drained = tokio::time::timeout(std::time::Duration::from_millis(50), outbox.drain(&mut out)).await;
                        match drained {
                            Ok(Drained::Frames) => {
                                wire.taken.lock().extend(out.drain(..));
                                outbox.written();
                            }
                            Ok(Drained::Closed(_)) => return,
                            Err(_) if done.load(Ordering::Relaxed) => return,
                            Err(_) => {}
                        }
                    }
                })
            })
        };
        let threads: Vec<_> = (0..publishers)
            .map(|p| {
                let (outbox, wire) = (outbox.clone(), wire.clone());
                std::thread::spawn(move || {
                    for i in 0..each {
                        if i % 7 == 0 {
                            // Now and then the socket is full.
                            *wire.answer.lock() = Some(if i % 2 == 0 { Direct::Refused } else { Direct::Flushed });
                        }
                        let frame = Bytes::from(format!("{p}:{i}"));
                        if outbox.push_claiming(frame, None).unwrap() {
                            let mut c = Claimed::default();
                            c.add(&outbox);
                        }
                    }
                })
            })
            .collect();
        threads.into_iter().for_each(|t| t.join().unwrap());
        *wire.answer.lock() = None;
        done.store(true, Ordering::Relaxed);
        task.join().unwrap();
        // Anything still queued (the task may have stopped first) is written last.
        let rest: Vec<Bytes> = outbox.inner.state.lock().frames.drain(..).map(|(frame, _)| frame).collect();
        wire.taken.lock().extend(rest);
        let taken = wire.taken.lock();
        assert_eq!(taken.len(), publishers * each, "every frame exactly once");
        let mut next = vec![0usize; publishers];
        for frame in taken.iter() {
            let text = std::str::from_utf8(frame).unwrap();
            let (p, i) = text.split_once(':').unwrap();
            let (p, i): (usize, usize) = (p.parse().unwrap(), i.parse().unwrap());
            assert_eq!(i, next[p], "publisher {p}'s frames in order");
            next[p] += 1;
        }
    }
}
