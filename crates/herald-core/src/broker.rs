//! The boundary to other nodes: a [`Broker`] carries publications between Herald nodes that share
//! a backend (Redis), so one node's publish reaches subscribers on every node.
//!
//! Routing is interest-based: a hub tells its broker whenever its *local* interest in a topic may have
//! changed (a channel's first subscriber arrived or its last left, a user's first connection signed in
//! or their last left); the broker re-reads the current state with [`Hub::has_local`] and subscribes or
//! unsubscribes on the backend. Re-reading instead of trusting a flag makes racing joins and leaves
//! converge on the truth.
//!
//! Local subscribers are served directly by the publishing node; the broker only carries the message to
//! the others (and drops its own echo), so a single node pays nothing for the cluster.

use std::sync::Arc;

use crate::change::ChannelEvent;
use crate::idempotency::IdempotencyError;
use crate::ids::SocketId;
use crate::publication::Publication;
use crate::state::BoxFuture;

/// What a cross-node message is about.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Topic {
    /// Subscribers of a channel.
    Channel(Arc<str>),
    /// Connections signed in as a user.
    User(Arc<str>),
}

/// What a cross-node message asks the receiving nodes to do.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Remote {
    /// Deliver `publication` to local subscribers of the topic (honouring its exclusions).
    Publish {
        /// The publication.
        publication: Publication,
    },
    /// Deliver an engine event to local subscribers of the channel, except `except`.
    Event {
        /// The event.
        event: ChannelEvent,
        /// The connection that must not receive it (it may live on any node).
        except: Option<SocketId>,
    },
    /// Close every local connection of the user (the topic is a [`Topic::User`]).
    Terminate,
    /// Hand a command to the user's targeted local connections (the topic is a [`Topic::User`]);
    /// the engine closes them itself for [`Remote::Terminate`], their fronts act on this one.
    Command(crate::command::UserCommand),
}

/// Interest prepared with a [`Broker`] before a first local subscriber (or sign-in) exists: the node
/// receives the topic from other nodes while this guard lives. Dropping it releases the interest, so
/// every exit path (error, cancellation, panic) gives it back; from then on local interest alone decides.
#[must_use = "the interest is released when the guard is dropped"]
pub struct PreparedInterest {
    broker: Arc<dyn Broker>,
    app_id: Arc<str>,
    topic: Topic,
    ready: Option<tokio::sync::oneshot::Receiver<()>>,
    routed: bool,
}

impl PreparedInterest {
    /// Prepares `topic` of `app_id` with `broker`; `None` when there is nothing to wait for.
    pub fn new(broker: &Arc<dyn Broker>, app_id: &str, topic: Topic) -> Option<PreparedInterest> {
        let ready = broker.prepare(app_id, &topic)?;
        Some(PreparedInterest { broker: broker.clone(), app_id: Arc::from(app_id), topic, ready: Some(ready), routed: false })
    }

    /// Whether the topic is routed to this node already (the broker answered at once), without
    /// waiting.
    pub fn routed_now(&mut self) -> bool {
        if let Some(ready) = self.ready.as_mut() {
            match ready.try_recv() {
                Ok(()) => {
                    self.ready = None;
                    self.routed = true;
                }
                Err(tokio::sync::oneshot::error::TryRecvError::Closed) => self.ready = None,
                Err(tokio::sync::oneshot::error::TryRecvError::Empty) => {}
            }
        }
        self.routed
    }

    /// Resolves once the backend routes the topic to this node, with `true`; `false` if the broker gave
    /// up on it (the backend went away). Callers bound the wait themselves.
    pub async fn ready(&mut self) -> bool {
        match self.ready.take() {
            Some(ready) => {
                self.routed = ready.await.is_ok();
                self.routed
            }
            None => self.routed,
        }
    }
}

impl Drop for PreparedInterest {
    fn drop(&mut self) {
        self.broker.release(&self.app_id, &self.topic);
    }
}

impl std::fmt::Debug for PreparedInterest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PreparedInterest").field("app_id", &self.app_id).field("topic", &self.topic).finish()
    }
}

/// Carries [`Remote`] messages between nodes. Called on hot paths: implementations must not block
/// (queue, and say in their docs what happens when the queue is full).
pub trait Broker: Send + Sync + 'static {
    /// Sends `message` about `topic` of app `app_id` to every other node interested in it.
    fn publish(&self, app_id: &str, topic: &Topic, message: Remote);
    /// Local interest of app `app_id` in `topic` may have changed.
    fn interest_changed(&self, app_id: &str, topic: Topic);
    /// Makes this node receive `topic` from other nodes *before* a first local subscriber is added, so
    /// nothing published elsewhere after the subscriber is confirmed can be missed. Returns a receiver
    /// that resolves once the backend subscription is live: at once if it already is, and then the
    /// prepare pins it, so that local interest ending meanwhile (the last subscriber leaving) cannot
    /// drop the route before the new subscriber lands. `None` when there is nothing to wait for (the
    /// backend is unreachable: no routing). Every `Some` must be paired with a [`Broker::release`]; use
    /// [`PreparedInterest`], which does that on drop.
    fn prepare(&self, app_id: &str, topic: &Topic) -> Option<tokio::sync::oneshot::Receiver<()>>;
    /// Ends a [`Broker::prepare`]: from now on local interest alone decides.
    fn release(&self, app_id: &str, topic: &Topic);
    /// Whether the backend is reachable now (for health checks).
    fn healthy(&self) -> bool;
    /// The backend's name, e.g. `redis`.
    fn name(&self) -> &'static str;
    /// Sends `message` like [`Broker::publish`] only if `key` was not seen for `app_id` within the
    /// idempotency window: recording the key and sending are one atomic step on the backend, resolved
    /// once the backend did both (`Ok(true)`: sent; `Ok(false)`: a repeat, nothing sent). A crash can
    /// then never record a key without its publication, which a bus consumer's redelivery would take
    /// for a repeat and lose. `None` (the default): this broker can't, and the caller checks the key
    /// and publishes separately.
    fn publish_once<'a>(
        &'a self,
        _app_id: &'a str,
        _topic: &'a Topic,
        _message: Remote,
        _key: &'a str,
    ) -> Option<BoxFuture<'a, Result<bool, IdempotencyError>>> {
        None
    }
}
