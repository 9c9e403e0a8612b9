//! Channels: subscribing, leaving, and delivering publications and engine events to subscribers.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use dashmap::mapref::entry::Entry;

use crate::broker::{Remote, Topic};
use crate::change::{ChannelChange, ChannelEvent, MemberJoin, Transition};
use crate::codec::Encoded;
use crate::error::SubscribeError;
use crate::ids::SocketId;
use crate::outbox::Claimed;
use crate::presence::{Member, Presence};
use crate::publication::{DataKind, Publication};
use crate::stats::ChannelStats;

use super::gate::{Delivery, Gate};
use super::{Channel, Hub, Subscribed, Subscriber};

impl Hub {
    /// Subscribes `socket` to `channel` on this node; `member` makes it a presence subscription.
    pub fn subscribe(&self, socket: SocketId, channel: &str, member: Option<MemberJoin>) -> Result<Subscribed, SubscribeError> {
        self.subscribe_with(socket, channel, member, Delivery::default())
    }

    /// [`Hub::subscribe`] with a choice of how the subscription takes deliveries ([`Delivery`]); an
    /// existing subscription keeps its own.
    pub fn subscribe_with(
        &self,
        socket: SocketId,
        channel: &str,
        member: Option<MemberJoin>,
        delivery: Delivery,
    ) -> Result<Subscribed, SubscribeError> {
        let limits = &self.app.limits;
        let (outbox, count) = {
            let conn = self.connections.get(&socket).ok_or(SubscribeError::UnknownConnection)?;
            (conn.outbox.clone(), conn.channels.len())
        };
        if let Some(m) = &member {
            if m.info.len() > limits.max_presence_member_size {
                return Err(SubscribeError::MemberInfoTooLarge { size: m.info.len(), limit: limits.max_presence_member_size });
            }
        }
        let name: Arc<str> = Arc::from(channel);
        // Everything below runs under the channel's shard lock. A channel entry exists only while it has
        // subscribers (the last leave removes it under the same lock), so `Occupied` is decided by
        // creating the entry and `Vacated` by removing it: racing connections can't both decide either.
        let (mut entry, created) = match self.channels.entry(name.clone()) {
            Entry::Occupied(entry) => {
                let ch = entry.get();
                if ch.subscribers.contains_key(&socket) {
                    let info = ch.info();
                    let members = ch.presence.as_ref().map(Presence::snapshot);
                    return Ok(Subscribed {
                        already: true,
                        change: ChannelChange { channel: name, subscribers: info.subscribers, transitions: Vec::new() },
                        members,
                    });
                }
                if count >= limits.max_channels_per_connection {
                    return Err(SubscribeError::TooManyChannels { limit: limits.max_channels_per_connection });
                }
                (entry.into_ref(), false)
            }
            Entry::Vacant(entry) => {
                if count >= limits.max_channels_per_connection {
                    return Err(SubscribeError::TooManyChannels { limit: limits.max_channels_per_connection });
                }
                let presence = member.as_ref().map(|_| Presence::default());
                (
                    entry.insert(Channel {
                        subscribers: HashMap::new(),
                        presence,
                        last: None,
                        stats: ChannelStats::new(self.channel_latency_slot()),
                        holding: 0,
                    }),
                    true,
                )
            }
        };
        let ch = entry.value_mut();
        let mut transitions = Vec::new();
        if created {
            transitions.push(Transition::Occupied);
        }
        let mut user = None;
        if let Some(m) = &member {
            // A channel keeps presence once a member joins, whoever subscribed first (a Centrifugo
            // channel's first subscriber may be anonymous, or a server-side subscription without
            // presence).
            let presence = ch.presence.get_or_insert_with(Presence::default);
            match presence.join(&m.user_id, &m.info, limits.max_presence_members) {
                Ok(true) => transitions.push(Transition::MemberAdded(Member { user_id: m.user_id.clone(), info: m.info.clone() })),
                Ok(false) => {}
                Err(e) => {
                    drop(entry);
                    if created {
                        // Only reachable with a member limit of 0: take back the entry this call made.
                        self.channels.remove_if(&name, |_, ch| ch.subscribers.is_empty());
                    }
                    return Err(e);
                }
            }
            user = Some(m.user_id.clone());
        }
        let gate = delivery.held.then(|| Box::new(Gate::holding()));
        ch.holding += usize::from(delivery.held);
        ch.subscribers.insert(socket, Subscriber { outbox, user, gate, member_events: delivery.member_events });
        let subscribers = ch.subscribers.len();
        ch.stats.subscribers(subscribers);
        let members = ch.presence.as_ref().map(Presence::snapshot);
        drop(entry);
        self.metrics.subscriptions.increment(1.0);
        if let Some(mut conn) = self.connections.get_mut(&socket) {
            conn.channels.push(name.clone());
        }
        if created {
            self.metrics.channels.increment(1.0);
            self.interest_changed(Topic::Channel(name.clone()));
        }
        Ok(Subscribed { already: false, change: ChannelChange { channel: name, subscribers, transitions }, members })
    }

    /// A latency slot for a channel becoming occupied (none while recording is off or all are taken).
    fn channel_latency_slot(&self) -> Option<crate::latency::ChannelLatency> {
        if !self.latency.recording() {
            return None;
        }
        self.latency.channels().acquire()
    }

    /// Unsubscribes `socket` from `channel` on this node. `None` if it was not subscribed.
    pub fn unsubscribe(&self, socket: SocketId, channel: &str) -> Option<ChannelChange> {
        {
            let mut conn = self.connections.get_mut(&socket)?;
            let before = conn.channels.len();
            conn.channels.retain(|c| &**c != channel);
            if conn.channels.len() == before {
                return None;
            }
        }
        self.leave_channel(socket, channel)
    }

    pub(super) fn leave_channel(&self, socket: SocketId, channel: &str) -> Option<ChannelChange> {
        // One shard lock for the whole leave: the subscriber that empties the channel removes it, so
        // `Vacated` is decided once, by the call that removed the entry.
        let mut left = None;
        let removed = self.channels.remove_if_mut(channel, |name, ch| {
            let Some(sub) = ch.subscribers.remove(&socket) else { return false };
            if sub.gate.as_ref().is_some_and(|g| g.is_holding()) {
                ch.holding = ch.holding.saturating_sub(1);
            }
            let mut transitions = Vec::new();
            if let (Some(presence), Some(user)) = (ch.presence.as_mut(), &sub.user) {
                if presence.leave(user) {
                    transitions.push(Transition::MemberRemoved { user_id: user.clone() });
                }
            }
            left = Some(ChannelChange { channel: name.clone(), subscribers: ch.subscribers.len(), transitions });
            ch.subscribers.is_empty()
        });
        let mut change = left?;
        self.metrics.subscriptions.decrement(1.0);
        if removed.is_some() {
            self.metrics.channels.decrement(1.0);
            change.transitions.push(Transition::Vacated);
            self.interest_changed(Topic::Channel(change.channel.clone()));
        }
        Some(change)
    }

    /// Delivers `publication` to its channel's subscribers on this node and (through the broker) on
    /// every other, except its excluded connection and device. Returns how many local subscribers got it.
    pub fn publish(&self, publication: &Publication) -> usize {
        self.stats.published();
        self.broadcast(|| Topic::Channel(publication.channel.clone()), || Remote::Publish { publication: publication.clone() });
        self.deliver(publication)
    }

    /// Publishes a finished frame as-is to `channel` (delivered to raw-codec subscribers only; fronts
    /// publish [`Publication`]s). For tests and in-process embedders.
    pub fn publish_raw(&self, channel: &str, frame: &Bytes, except: Option<SocketId>) -> usize {
        let mut publication = Publication::new(channel, "", frame.clone(), DataKind::Binary);
        publication.except = except;
        self.publish(&publication)
    }

    pub(super) fn deliver(&self, publication: &Publication) -> usize {
        // Declared first, so the claimed outboxes are written after the map guard is gone.
        let mut claimed = Claimed::default();
        let Some(ch) = self.channels.get(&*publication.channel) else { return 0 };
        ch.stats.published(publication.data.len());
        let mut encoded = Encoded::new(&self.codecs, |codec| codec.publication(publication));
        let position = publication.position.as_ref();
        let targets = ch
            .subscribers
            .iter()
            .filter(|(_, sub)| sub.gate.as_ref().is_none_or(|g| g.admits(position)))
            .map(|(id, sub)| (id, &sub.outbox));
        let except_device = publication.except_device.as_deref();
        let tag = ch.stats.latency().map(|l| l.tag());
        let delivered = self.push_all(targets, publication.except, except_device, &mut encoded, &mut claimed, tag);
        let not_excluded = |sub: &Subscriber| except_device.is_none() || sub.outbox.device() != except_device;
        ch.hold_all(&mut |outbox| encoded.frame(outbox.codec()).cloned(), position, publication.except, &not_excluded, self.hold_bounds());
        delivered
    }

    /// How much one held subscription keeps: the app's outbox bounds.
    fn hold_bounds(&self) -> (usize, usize) {
        (self.app.limits.outbox.max_messages, self.app.limits.outbox.max_bytes)
    }

    /// Sends an engine event to `channel`'s subscribers on every node (each front encodes its own wire
    /// form), except `except`. Returns how many local subscribers got it.
    pub fn publish_event(&self, channel: &str, event: &ChannelEvent, except: Option<SocketId>) -> usize {
        self.broadcast(|| Topic::Channel(Arc::from(channel)), || Remote::Event { event: event.clone(), except });
        self.deliver_event(channel, event, except)
    }

    pub(super) fn deliver_event(&self, channel: &str, event: &ChannelEvent, except: Option<SocketId>) -> usize {
        let mut claimed = Claimed::default();
        let Some(ch) = self.channels.get(channel) else { return 0 };
        let mut encoded = Encoded::new(&self.codecs, |codec| codec.event(channel, event));
        let member_event = matches!(event, ChannelEvent::MemberAdded(_) | ChannelEvent::MemberRemoved { .. });
        let wants = |sub: &Subscriber| sub.member_events || !member_event;
        let targets = ch
            .subscribers
            .iter()
            .filter(|(_, sub)| wants(sub) && sub.gate.as_ref().is_none_or(|g| g.admits(None)))
            .map(|(id, sub)| (id, &sub.outbox));
        let delivered = self.push_all(targets, except, None, &mut encoded, &mut claimed, None);
        ch.hold_all(&mut |outbox| encoded.frame(outbox.codec()).cloned(), None, except, &wants, self.hold_bounds());
        delivered
    }
}
