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
//! Bounded: a command names at most [`MAX_EXCEPT`] spared connections, and a connection holds at most
//! [`MAX_PENDING_COMMANDS`] commands its task has not taken yet; one more closes it as a slow consumer
//! (a lost unsubscribe would leave the client receiving a channel it was removed from).

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::ids::SocketId;

/// Most connections one command may spare ([`UserCommand::except`]).
pub const MAX_EXCEPT: usize = 1000;
/// Commands one connection may have waiting for its task; one more closes it
/// ([`crate::Disconnect::SlowConsumer`]).
pub const MAX_PENDING_COMMANDS: usize = 64;
/// Longest reason or channel name a command carries, in bytes.
pub const MAX_COMMAND_TEXT: usize = 1024;
/// Largest opaque payload a command carries ([`UserAction::Subscribe::data`]).
pub const MAX_COMMAND_DATA: usize = 64 * 1024;

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
    /// Subscribe to `channel` on the server's initiative, telling the client; `data` is opaque to the
    /// engine (the front's subscribe payload, e.g. JSON).
    Subscribe {
        /// The channel.
        channel: Arc<str>,
        /// Opaque data the front hands to its client with the subscription.
        data: Option<Bytes>,
    },
    /// Take a new expiry (`expire_at`, Unix seconds), or (`expired`) expire now.
    Refresh {
        /// When the connection now expires (`None`: it does not).
        expire_at: Option<u64>,
        /// The connection is expired now.
        expired: bool,
    },
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
            UserAction::Subscribe { channel, data } => (channel.len(), data.as_ref().map_or(0, Bytes::len)),
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
    /// A reason or channel longer than [`MAX_COMMAND_TEXT`].
    #[error("a command's reason or channel is at most {limit} bytes")]
    TextTooLong {
        /// The limit.
        limit: usize,
    },
    /// Data larger than [`MAX_COMMAND_DATA`].
    #[error("a command's data is at most {limit} bytes")]
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
