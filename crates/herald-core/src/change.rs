//! The vocabulary of channel changes: what a subscribe, leave or reaped node did to a channel, which
//! fronts turn into protocol events and webhooks. Shared by the hub and the cluster state.

use std::sync::Arc;

use bytes::Bytes;

use crate::presence::Member;
use crate::publication::StreamPosition;
use crate::state::Left;

/// A presence member joining with a subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberJoin {
    /// The user's id.
    pub user_id: Arc<str>,
    /// The user's info, encoded by the front.
    pub info: Bytes,
}

/// A state change that fronts turn into protocol events and webhooks.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Transition {
    /// The channel got its first subscriber.
    Occupied,
    /// The channel lost its last subscriber.
    Vacated,
    /// A user's first connection joined the presence channel.
    MemberAdded(Member),
    /// A user's last connection left the presence channel.
    MemberRemoved {
        /// The user who left.
        user_id: Arc<str>,
    },
}

/// What changed on one channel after a subscribe, unsubscribe or disconnect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelChange {
    /// The channel.
    pub channel: Arc<str>,
    /// Subscribers after the change.
    pub subscribers: usize,
    /// Transitions in the order they happened.
    pub transitions: Vec<Transition>,
}

impl ChannelChange {
    /// What a join the cluster counted means for `channel`: `Occupied` for its first subscriber,
    /// `MemberAdded` for the user's first connection.
    pub fn counted_join(channel: Arc<str>, subscribers: usize, member_added: bool, member: Option<&MemberJoin>) -> ChannelChange {
        let mut transitions = Vec::new();
        if subscribers == 1 {
            transitions.push(Transition::Occupied);
        }
        if let (true, Some(m)) = (member_added, member) {
            transitions.push(Transition::MemberAdded(Member { user_id: m.user_id.clone(), info: m.info.clone() }));
        }
        ChannelChange { channel, subscribers, transitions }
    }

    /// What a leave the cluster counted means for `channel`: `MemberRemoved` for the user's last
    /// connection, `Vacated` for the channel's last subscriber.
    pub fn counted_leave(channel: Arc<str>, left: Left, user: Option<Arc<str>>) -> ChannelChange {
        let mut transitions = Vec::new();
        if let (true, Some(user_id)) = (left.member_removed, user) {
            transitions.push(Transition::MemberRemoved { user_id });
        }
        if left.subscribers == 0 {
            transitions.push(Transition::Vacated);
        }
        ChannelChange { channel, subscribers: left.subscribers, transitions }
    }
}

/// Events the engine sends to a channel's subscribers, each front in its own wire form (Pusher's
/// `pusher_internal:member_added`, Centrifugo's `join` push, ...).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ChannelEvent {
    /// A user became a member of the presence channel.
    MemberAdded(Member),
    /// A user stopped being a member.
    MemberRemoved {
        /// The user who left.
        user_id: Arc<str>,
    },
    /// The channel's subscriber count changed.
    Count {
        /// Subscribers across the cluster.
        subscribers: usize,
    },
    /// Publications of a channel with history were missed on this node (an offset skipped): clients
    /// that can recover should, from their last position. Local to the node that saw the gap.
    Gap {
        /// The position of the publication that arrived after the gap.
        position: StreamPosition,
    },
}
