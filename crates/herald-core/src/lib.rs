//! Herald's engine: apps, connections, channels, subscriptions, presence, per-user routing, fan-out.
//!
//! The engine knows nothing about JSON, WebSockets or HTTP. Fronts (such as `herald-pusher`) publish
//! protocol-neutral [`Publication`]s and register a [`Codec`]; delivery encodes a publication once per
//! codec and queues the same bytes (a refcount, no copy) to every subscriber's bounded [`Outbox`].
//! The engine also owns the cluster protocol ([`Hub::join`], [`Hub::leave`], [`Hub::settle`]) and
//! channel history with offsets and epochs ([`Hub::publish_with_history`], [`Hub::history`]).
//!
//! Invariants:
//! - every queue a client can grow is bounded ([`OutboxLimits`], [`HistoryOptions`]) and has a named
//!   overflow policy;
//! - subscriber and member counts are maintained, never computed by scanning;
//! - presence is keyed by user id with a per-user connection count, so a user with several tabs is one
//!   member, added on their first connection and removed on their last;
//! - state changes that fronts turn into protocol events or webhooks are reported as [`Transition`]s;
//! - with a [`Broker`] attached, publications also reach the other nodes interested in them, and local
//!   interest changes are reported to it.

mod app;
mod broker;
mod change;
mod codec;
mod command;
mod engine;
mod error;
mod history;
mod hub;
mod idempotency;
mod ids;
mod keepalive;
pub mod latency;
mod local;
mod outbox;
mod presence;
mod publication;
pub mod ratelimit;
mod state;
mod stats;

pub use app::{App, AppLimits, HistoryRule};
pub use broker::{Broker, PreparedInterest, Remote, Topic};
pub use change::{ChannelChange, ChannelEvent, MemberJoin, Transition};
pub use codec::{Codec, CodecId, RawCodec};
pub use command::{
    CommandError, CommandInbox, SubscribeOverrides, UserAction, UserCommand, MAX_COMMAND_DATA, MAX_COMMAND_TEXT, MAX_EXCEPT,
    MAX_PENDING_COMMANDS,
};
pub use engine::Engine;
pub use error::{ConnectError, SignInError, SubscribeError};
pub use history::{HistoryBroadcast, HistoryClock, HistoryError, HistoryOptions, HistoryStore, MemoryHistory, Recovery};
pub use hub::{Admission, ChannelInfo, ConfirmError, Delivery, Departure, EngineListener, Hub, Published, Subscribed, CLUSTER_WAIT};
pub use idempotency::{Idempotency, IdempotencyError, IdempotencyLimits, IdempotencyStore, MAX_IDEMPOTENCY_KEY};
pub use ids::{ParseSocketIdError, SocketId};
pub use keepalive::{activity_clock, KeepalivePolicy, Swept};
pub use local::{LocalBroker, LocalCluster, LocalClusterLimits, LocalState};
pub use outbox::{Direct, DirectWrite, Disconnect, Drained, Outbox, OutboxLimits, OverflowPolicy, PushError};
pub use presence::Member;
pub use publication::{DataKind, Publication, PublisherInfo, StreamPosition};
pub use state::{BoxFuture, ClusterState, Joined, Left, StateError};
pub use stats::{ChannelStatsSnapshot, HubStats, HubStatsSnapshot};
