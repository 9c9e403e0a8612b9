//! Direct writes: a front may give the outbox a [`DirectWrite`] for its socket. Delivery to a connection
//! that is idle (nothing queued, its task not writing) then *claims* the outbox and, once it has let go
//! of the engine's maps, writes the frame to the socket itself, without waking the connection's task
//! (no wake-up, no task poll, no run-queue wait per delivery). One writer at a time holds the outbox's
//! write token (the claiming publisher or the connection's task), so frames reach the socket in queue
//! order; whatever the socket does not take at once is left to the connection's task.
//!
//! Apart from the queue because this is the one path where a task other than the connection's own
//! writes to its socket.

use std::sync::Arc;

use bytes::Bytes;

use super::{Outbox, PushError, Writer};
use crate::latency::Stamp;

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

impl Outbox {
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
    use std::sync::atomic::Ordering;

    use parking_lot::Mutex;

    use super::super::tests::limits;
    use super::super::{Disconnect, Drained};
    use super::*;

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
