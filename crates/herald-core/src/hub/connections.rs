//! Registering and unregistering connections.

use std::sync::atomic::Ordering;

use crate::broker::Topic;
use crate::change::ChannelChange;
use crate::codec::CodecId;
use crate::error::ConnectError;
use crate::ids::SocketId;
use crate::outbox::{Disconnect, Outbox};

use super::{Conn, Hub};

impl Hub {
    /// Registers a connection whose frames use the built-in raw codec (tests, in-process embedders).
    pub fn connect(&self) -> Result<(SocketId, Outbox), ConnectError> {
        self.connect_with(CodecId::RAW)
    }

    /// Registers a connection of a front whose wire encoding is `codec`, enforcing the app's switches
    /// and quota. Returns its id and the outbox its socket task drains (bounded by the app's
    /// [`crate::OutboxLimits`]).
    pub fn connect_with(&self, codec: CodecId) -> Result<(SocketId, Outbox), ConnectError> {
        if !self.app.enabled {
            return Err(ConnectError::AppDisabled);
        }
        let limit = self.app.limits.max_connections.unwrap_or(usize::MAX);
        let admitted = self.connection_count.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < limit).then_some(n + 1));
        if admitted.is_err() {
            return Err(ConnectError::OverQuota { limit });
        }
        let mut id = SocketId::random();
        while self.connections.contains_key(&id) {
            id = SocketId::random();
        }
        let outbox = Outbox::with_codec(self.app.limits.outbox, codec);
        self.connections.insert(id, Conn { outbox: outbox.clone(), user: None, channels: Vec::new() });
        self.metrics.connections.increment(1.0);
        Ok((id, outbox))
    }

    /// Removes a connection and all its subscriptions and sign-in, on this node. Returns the channel
    /// changes (this node's view; in a cluster, [`Hub::depart`] and [`Hub::settle`] let the cluster decide).
    pub fn disconnect(&self, socket: SocketId) -> Vec<ChannelChange> {
        let Some((_, conn)) = self.connections.remove(&socket) else { return Vec::new() };
        self.connection_count.fetch_sub(1, Ordering::AcqRel);
        self.metrics.connections.decrement(1.0);
        if let Some(user) = &conn.user {
            let gone = self.users.remove_if_mut(user, |_, sockets| {
                sockets.retain(|(id, _)| *id != socket);
                sockets.is_empty()
            });
            if gone.is_some() {
                self.interest_changed(Topic::User(user.clone()));
            }
        }
        conn.channels.iter().filter_map(|channel| self.leave_channel(socket, channel)).collect()
    }

    /// Queues `frame` to one connection.
    pub fn send_to(&self, socket: SocketId, frame: bytes::Bytes) -> bool {
        let Some(outbox) = self.connections.get(&socket).map(|c| c.outbox.clone()) else { return false };
        outbox.push(frame).is_ok()
    }

    /// Calls `f` with every connection's outbox (shard by shard; `f` must not touch the hub's maps).
    pub(crate) fn for_each_outbox(&self, mut f: impl FnMut(&Outbox)) {
        self.connections.iter().for_each(|c| f(&c.outbox));
    }

    /// Asks every connection to close for `reason`. Returns how many.
    pub fn close_all(&self, reason: Disconnect) -> usize {
        self.connections.iter().map(|c| c.outbox.close(reason)).count()
    }
}
