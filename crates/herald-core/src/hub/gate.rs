//! Held subscriptions: a front whose subscribe reply must reach the client before the channel's
//! deliveries (Centrifugo: a client drops publications of a subscription it has no reply for, and
//! the reply carries the stream position the next publication must follow).
//!
//! [`Hub::join_with`] with [`Delivery::held`] subscribes the connection with its deliveries held in
//! the subscription (bounded by the app's outbox limits; beyond them the connection is closed as a
//! slow consumer, as a full outbox would be). The front queues its reply, then calls
//! [`Hub::release`] with the position the reply told the client: under the channel's shard lock the
//! held frames are queued after the reply, in delivery order, skipping publications at or before
//! that position (they are in the reply's recovered list, or before its position). Publications at
//! or before it that arrive later (another node's delivery racing the history read) are skipped too,
//! so the client sees every offset once, in order.

use bytes::Bytes;
use parking_lot::Mutex;

use crate::ids::SocketId;
use crate::outbox::{Disconnect, Outbox};
use crate::publication::StreamPosition;

use super::{Channel, Hub};

/// How a new subscription takes its deliveries ([`Hub::join_with`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivery {
    /// Hold deliveries until [`Hub::release`].
    pub held: bool,
    /// Deliver member added/removed events (presence channels) to this subscription.
    pub member_events: bool,
}

impl Default for Delivery {
    /// Deliveries go straight to the connection, member events included (what the Pusher front wants).
    fn default() -> Self {
        Delivery { held: false, member_events: true }
    }
}

/// What a subscription's deliveries pass through before its outbox.
#[derive(Debug, Default)]
pub(super) struct Gate {
    /// Deliveries held until release (`None` once released).
    held: Option<Mutex<Held>>,
    /// Publications at or before this position (same epoch) are skipped.
    after: Option<StreamPosition>,
}

#[derive(Debug, Default)]
struct Held {
    frames: Vec<(Bytes, Option<StreamPosition>)>,
    bytes: usize,
    /// The bound was hit: the connection was closed, nothing more is kept.
    overflowed: bool,
}

impl Gate {
    pub(super) fn holding() -> Gate {
        Gate { held: Some(Mutex::new(Held::default())), after: None }
    }

    pub(super) fn is_holding(&self) -> bool {
        self.held.is_some()
    }

    /// Whether a delivery at `position` goes straight to the outbox.
    pub(super) fn admits(&self, position: Option<&StreamPosition>) -> bool {
        self.held.is_none() && after(self.after.as_ref(), position)
    }

    /// Keeps `frame` for release; past the bound, closes `outbox` as a slow consumer.
    pub(super) fn hold(&self, frame: &Bytes, position: Option<&StreamPosition>, outbox: &Outbox, max_messages: usize, max_bytes: usize) {
        let Some(held) = &self.held else { return };
        let mut held = held.lock();
        if held.overflowed {
            return;
        }
        if held.frames.len() >= max_messages || held.bytes.saturating_add(frame.len()) > max_bytes {
            held.overflowed = true;
            held.frames = Vec::new();
            metrics::counter!("herald_slow_consumer_disconnects_total", "reason" => "held_overflow").increment(1);
            outbox.close(Disconnect::SlowConsumer);
            return;
        }
        held.bytes += frame.len();
        held.frames.push((frame.clone(), position.cloned()));
    }
}

/// Whether `position` is after `after` (or they can't be compared: another epoch, no position).
fn after(after: Option<&StreamPosition>, position: Option<&StreamPosition>) -> bool {
    match (after, position) {
        (Some(a), Some(p)) if a.epoch == p.epoch => p.offset > a.offset,
        _ => true,
    }
}

impl Channel {
    /// Keeps `frame` for each held subscriber of this channel (except `except`) that `wants` it.
    pub(super) fn hold_all(
        &self,
        frame_of: &mut dyn FnMut(&Outbox) -> Option<Bytes>,
        position: Option<&StreamPosition>,
        except: Option<SocketId>,
        wants: &dyn Fn(&super::Subscriber) -> bool,
        (max_messages, max_bytes): (usize, usize),
    ) {
        if self.holding == 0 {
            return;
        }
        for (id, sub) in &self.subscribers {
            let Some(gate) = sub.gate.as_deref().filter(|g| g.is_holding()) else { continue };
            if Some(*id) == except || !wants(sub) {
                continue;
            }
            if let Some(frame) = frame_of(&sub.outbox) {
                gate.hold(&frame, position, &sub.outbox, max_messages, max_bytes);
            }
        }
    }
}

impl Hub {
    /// Ends the hold of `socket`'s subscription to `channel` ([`Delivery::held`]): queues what was held
    /// (after whatever the front queued already, i.e. its subscribe reply), skipping publications at or
    /// before `after`, and from now on skips those that arrive late. Does nothing for a connection not
    /// subscribed (any more) or not held.
    pub fn release(&self, socket: SocketId, channel: &str, after: Option<&StreamPosition>) {
        let Some(mut entry) = self.channels.get_mut(channel) else { return };
        let ch = &mut *entry;
        let Some(sub) = ch.subscribers.get_mut(&socket) else { return };
        if !sub.gate.as_ref().is_some_and(|g| g.is_holding()) {
            return;
        }
        let Some(held) = sub.gate.take().and_then(|g| g.held).map(Mutex::into_inner) else { return };
        ch.holding = ch.holding.saturating_sub(1);
        for (frame, position) in held.frames {
            if self::after(after, position.as_ref()) {
                let _ = sub.outbox.push(frame);
            }
        }
        sub.gate = after.map(|a| Box::new(Gate { held: None, after: Some(a.clone()) }));
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn at(offset: u64) -> StreamPosition {
        StreamPosition { offset, epoch: Arc::from("e") }
    }

    #[test]
    fn skips_only_what_the_reply_covered() {
        assert!(!after(Some(&at(5)), Some(&at(5))));
        assert!(!after(Some(&at(5)), Some(&at(3))));
        assert!(after(Some(&at(5)), Some(&at(6))));
        assert!(after(None, Some(&at(1))));
        assert!(after(Some(&at(5)), None), "events have no position");
        let other = StreamPosition { offset: 1, epoch: Arc::from("f") };
        assert!(after(Some(&at(5)), Some(&other)), "a new epoch is not comparable");
    }

    #[tokio::test]
    async fn held_deliveries_follow_the_reply_without_what_it_covered() {
        let hub = Hub::new(crate::App::dev());
        let (id, outbox) = hub.connect().unwrap();
        let (other, other_box) = hub.connect().unwrap();
        hub.subscribe(other, "ch", None).unwrap();
        hub.subscribe_with(id, "ch", None, Delivery { held: true, member_events: true }).unwrap();
        let publish = |offset: u64| {
            let mut p = crate::Publication::new("ch", "", Bytes::from(format!("p{offset}")), crate::DataKind::Binary);
            p.position = Some(at(offset));
            hub.publish(&p);
        };
        for offset in 1..=3 {
            publish(offset);
        }
        assert!(outbox.is_empty(), "held until the reply");
        assert_eq!(other_box.len().0, 3, "other subscribers are not held");
        outbox.push(Bytes::from_static(b"reply")).unwrap();
        hub.release(id, "ch", Some(&at(2)));
        publish(2); // a late copy of what the reply covered
        publish(4);
        let mut out = Vec::new();
        outbox.drain(&mut out).await;
        assert_eq!(out, [&b"reply"[..], b"p3", b"p4"], "the reply, then each later offset once, in order");
        // Releasing again, or a connection not held, changes nothing.
        hub.release(id, "ch", None);
        hub.release(other, "ch", None);
        publish(1);
        assert!(outbox.is_empty(), "still skipping what the reply covered");
    }

    #[test]
    fn a_hold_is_bounded() {
        let gate = Gate::holding();
        let outbox = Outbox::new(Default::default());
        let frame = Bytes::from_static(b"0123456789");
        gate.hold(&frame, None, &outbox, 2, 1000);
        gate.hold(&frame, None, &outbox, 2, 1000);
        assert!(!outbox.is_closed());
        gate.hold(&frame, None, &outbox, 2, 1000);
        assert!(outbox.is_closed(), "the third frame is over the bound: a slow consumer");
        let held = gate.held.unwrap().into_inner();
        assert!(held.overflowed && held.frames.is_empty());
    }
}
