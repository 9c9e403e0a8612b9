//! Control messages to the connections of one user ("user commands"): an operator (a front's server
//! API) asks every connection of a user, or one of them, on every node, to disconnect with a code and
//! reason, to drop or take a channel subscription, or to take a new expiry.
//!
//! Why in the engine: only the engine knows where a user's connections are (their sign-ins on this
//! node, the [`crate::Broker`] for the others). What a command *means* on the wire is the front's
//! business, so a command carries no protocol data: numbers, names and opaque bytes. A front that wants
//! commands takes its connection's [`CommandInbox`] ([`crate::Outbox::accept_commands`]) and acts on
//! what arrives there; a connection whose front takes none ignores them, except a
//! [`UserAction::Disconnect`], which then closes it like a terminate ([`crate::Disconnect::Terminated`]).
//!
//! A server-side subscribe may carry what the subscription's grant would (member info, a stream
//! position to recover from, per-subscription overrides of the front's channel options): plain bytes,
//! booleans and positions the front interprets.
//!
//! Bounded: a command names at most [`MAX_EXCEPT`] spared connections, and a connection holds at most
//! [`MAX_PENDING_COMMANDS`] commands its task has not taken yet; one more closes it as a slow consumer
//! (a lost unsubscribe would leave the client receiving a channel it was removed from).

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::ids::SocketId;
use crate::publication::StreamPosition;

/// Most connections one command may spare ([`UserCommand::except`]).
pub const MAX_EXCEPT: usize = 1000;
/// Commands one connection may have waiting for its task; one more closes it
/// ([`crate::Disconnect::SlowConsumer`]).
pub const MAX_PENDING_COMMANDS: usize = 64;
/// Longest reason, channel name or epoch a command carries, in bytes.
pub const MAX_COMMAND_TEXT: usize = 1024;
/// Largest opaque payload a command carries ([`UserAction::Subscribe::data`], and separately its
/// `info`).
pub const MAX_COMMAND_DATA: usize = 64 * 1024;

/// Per-subscription overrides of the front's channel options (`None`: the channel's own).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SubscribeOverrides {
    /// The subscriber joins the channel's presence.
    pub presence: Option<bool>,
    /// Presence joins and leaves are announced for this subscription.
    pub join_leave: Option<bool>,
    /// The subscriber receives join and leave events without asking.
    pub force_push_join_leave: Option<bool>,
    /// The subscription recovers (and is recoverable) without asking.
    pub force_recovery: Option<bool>,
    /// The subscription is positioned without asking.
    pub force_positioning: Option<bool>,
}

impl SubscribeOverrides {
    /// No override is set.
    pub fn is_empty(&self) -> bool {
        *self == SubscribeOverrides::default()
    }
}

/// What a command asks the connections to do.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum UserAction {
    /// Close with this code and reason (the front's protocol decides how; the code is the operator's).
    Disconnect {
        /// The close code.
        code: u32,
        /// The close reason.
        reason: Arc<str>,
    },
    /// Leave `channel`, telling the client.
    Unsubscribe {
        /// The channel.
        channel: Arc<str>,
    },
    /// Subscribe to `channel` on the server's initiative, telling the client; `data` and `info` are
    /// opaque to the engine (the front's subscribe payload and member info, e.g. JSON).
    Subscribe {
        /// The channel.
        channel: Arc<str>,
        /// Opaque data the front hands to its client with the subscription.
        data: Option<Bytes>,
        /// The subscriber's presence member info for this channel (`None`: the connection's own).
        info: Option<Bytes>,
        /// Recover the publications after this position.
        recover_since: Option<StreamPosition>,
        /// Overrides of the channel options for this subscription.
        overrides: SubscribeOverrides,
    },
    /// Take a new expiry (`expire_at`, Unix seconds), or (`expired`) expire now.
    Refresh {
        /// When the connection now expires (`None`: it does not).
        expire_at: Option<u64>,
        /// The connection is expired now.
        expired: bool,
    },
}

impl UserAction {
    /// A plain server-side subscribe to `channel` (no info, recovery or overrides).
    pub fn subscribe(channel: impl Into<Arc<str>>, data: Option<Bytes>) -> Self {
        UserAction::Subscribe { channel: channel.into(), data, info: None, recover_since: None, overrides: SubscribeOverrides::default() }
    }
}

/// A command to the connections of one user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserCommand {
    /// Only this connection of the user (`None`: all of them).
    pub only: Option<SocketId>,
    /// Connections left alone (at most [`MAX_EXCEPT`]).
    pub except: Vec<SocketId>,
    /// What to do.
    pub action: UserAction,
}

impl UserCommand {
    /// A command to every connection of the user.
    pub fn all(action: UserAction) -> Self {
        UserCommand { only: None, except: Vec::new(), action }
    }

    /// Whether the command is for connection `socket`.
    pub fn targets(&self, socket: SocketId) -> bool {
        self.only.is_none_or(|only| only == socket) && !self.except.contains(&socket)
    }

    /// Checks the bounds (fronts check their input with it; the engine refuses what fails it).
    pub fn check(&self) -> Result<(), CommandError> {
        if self.except.len() > MAX_EXCEPT {
            return Err(CommandError::TooManyExcept { limit: MAX_EXCEPT });
        }
        let (text, data) = match &self.action {
            UserAction::Disconnect { reason, .. } => (reason.len(), 0),
            UserAction::Unsubscribe { channel } => (channel.len(), 0),
            UserAction::Subscribe { channel, data, info, recover_since, .. } => {
                let epoch = recover_since.as_ref().map_or(0, |p| p.epoch.len());
                let len = |b: &Option<Bytes>| b.as_ref().map_or(0, Bytes::len);
                (channel.len().max(epoch), len(data).max(len(info)))
            }
            UserAction::Refresh { .. } => (0, 0),
        };
        if text > MAX_COMMAND_TEXT {
            return Err(CommandError::TextTooLong { limit: MAX_COMMAND_TEXT });
        }
        if data > MAX_COMMAND_DATA {
            return Err(CommandError::DataTooLarge { limit: MAX_COMMAND_DATA });
        }
        Ok(())
    }
}

/// Why a command was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CommandError {
    /// More spared connections than [`MAX_EXCEPT`].
    #[error("a command spares at most {limit} connections")]
    TooManyExcept {
        /// The limit.
        limit: usize,
    },
    /// A reason, channel or epoch longer than [`MAX_COMMAND_TEXT`].
    #[error("a command's reason, channel or epoch is at most {limit} bytes")]
    TextTooLong {
        /// The limit.
        limit: usize,
    },
    /// Data or info larger than [`MAX_COMMAND_DATA`].
    #[error("a command's data or info is at most {limit} bytes")]
    DataTooLarge {
        /// The limit.
        limit: usize,
    },
}

/// The queue between delivery and one connection's task (shared by the outbox and the inbox).
#[derive(Default)]
pub(crate) struct Commands {
    queue: Mutex<VecDeque<UserAction>>,
    ready: Notify,
}

impl Commands {
    /// Queues `action`; false when [`MAX_PENDING_COMMANDS`] are already waiting.
    pub(crate) fn push(&self, action: UserAction) -> bool {
        let mut queue = self.queue.lock();
        if queue.len() >= MAX_PENDING_COMMANDS {
            return false;
        }
        queue.push_back(action);
        drop(queue);
        self.ready.notify_one();
        true
    }
}

/// Where one connection's task receives the commands meant for it ([`crate::Outbox::accept_commands`]).
pub struct CommandInbox {
    pub(crate) commands: Arc<Commands>,
}

impl CommandInbox {
    /// Waits for the next command (in the order they were delivered). Only the connection's own
    /// task calls this.
    pub async fn next(&self) -> UserAction {
        loop {
            if let Some(action) = self.commands.queue.lock().pop_front() {
                return action;
            }
            self.commands.ready.notified().await;
        }
    }

    /// The next command if one is waiting.
    pub fn try_next(&self) -> Option<UserAction> {
        self.commands.queue.lock().pop_front()
    }
}

impl std::fmt::Debug for CommandInbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CommandInbox").field("waiting", &self.commands.queue.lock().len()).finish()
    }
}
