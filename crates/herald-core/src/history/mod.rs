//! The boundary to a channel's history: a bounded, expiring stream of publications with offsets and an
//! epoch, from which a reconnecting client recovers what it missed.
//!
//! Implementations: in memory ([`MemoryHistory`], one node) and in Redis (`herald_redis::RedisHistory`,
//! every node; there, appending can be done in one script with the broadcast, and this trait reads).
//!
//! Semantics every implementation follows (the conformance suite checks them on both):
//! - a stream is created by its first append, or by [`HistoryStore::position`] / [`HistoryStore::since`]
//!   on a channel without one: then it is empty (offset 0) but its epoch is already the one its first
//!   publication will carry, so a client that subscribed before anything was published recovers it;
//! - every append adds 1 to the offset (the first publication has offset 1); the stream keeps the last
//!   `size` publications and is gone `ttl` after its last append (a stream created empty lives for the
//!   store's own "pending" TTL); a stream that was removed or expired comes back with a new epoch;
//! - an app keeps at most a fixed number of streams (expired ones do not count); creating one more, by
//!   an append or by a read, is refused with [`HistoryError::TooManyChannels`];
//! - [`HistoryStore::since`] with `None` returns the kept publications, oldest first, at most `limit`;
//!   `recovered` is true only if that is the channel's whole history (nothing trimmed: the oldest kept
//!   has offset 1, or nothing was ever published) and the limit cut nothing;
//! - with `Some(position)`: an epoch other than the stream's, or an offset beyond the stream's (a client
//!   "from the future", e.g. after a Redis flush), gives `recovered: false` and no publications; an
//!   offset equal to the stream's gives `recovered: true` and none; otherwise the kept publications
//!   after that offset, oldest first (the first `limit` of them, so a client can page on), with
//!   `recovered: true` only if the stream still held the next offset and the limit cut nothing;
//! - publications come back with their `position` set and without `except` (a connection id means
//!   nothing once the client reconnected); `except_device` is kept.

mod memory;

use std::time::Duration;

pub use memory::{HistoryClock, MemoryHistory};

use crate::publication::{Publication, StreamPosition};
use crate::state::BoxFuture;

/// How much history a channel keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryOptions {
    /// Publications kept (older ones are trimmed).
    pub size: usize,
    /// How long the stream lives after its last publication.
    pub ttl: Duration,
}

/// What a client missed since a position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovery {
    /// The publications after the position given, oldest first (at most the limit asked for).
    pub publications: Vec<Publication>,
    /// The stream's current position.
    pub position: StreamPosition,
    /// True only when the epoch matched and the stream still held every offset after the one given
    /// (and the limit did not cut the list): the client missed nothing else.
    pub recovered: bool,
}

/// The history backend failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HistoryError {
    /// The store could not be reached or answered in time.
    #[error("history unavailable: {0}")]
    Unavailable(String),
    /// The store answered something that is not a stream (bad input from the backend).
    #[error("history corrupt: {0}")]
    Corrupt(String),
    /// The app already keeps history for its maximum number of channels.
    #[error("too many channels with history (limit {limit})")]
    TooManyChannels {
        /// The app's limit.
        limit: usize,
    },
}

/// Channel history of every app.
pub trait HistoryStore: Send + Sync + 'static {
    /// Appends `publication` to its channel's stream (creating the stream, with a new epoch, if there
    /// is none), trims it to `options`, and returns the publication's position.
    fn append<'a>(
        &'a self,
        app_id: &'a str,
        publication: &'a Publication,
        options: HistoryOptions,
    ) -> BoxFuture<'a, Result<StreamPosition, HistoryError>>;
    /// Publications after `since` (all kept ones when `None`), at most `limit`, with whether that is
    /// a complete recovery.
    fn since<'a>(
        &'a self,
        app_id: &'a str,
        channel: &'a str,
        since: Option<&'a StreamPosition>,
        limit: usize,
    ) -> BoxFuture<'a, Result<Recovery, HistoryError>>;
    /// The stream's current position (offset 0 and a fresh epoch when it has none).
    fn position<'a>(&'a self, app_id: &'a str, channel: &'a str) -> BoxFuture<'a, Result<StreamPosition, HistoryError>>;
    /// Drops the channel's stream; its next publication starts a new epoch.
    fn remove<'a>(&'a self, app_id: &'a str, channel: &'a str) -> BoxFuture<'a, Result<(), HistoryError>>;
}

/// A backend that appends to a channel's history and broadcasts the publication to every node in one
/// step (Redis: one script does the offset, the append and the PUBLISH), so every node, the publishing
/// one included, receives history publications in offset order.
pub trait HistoryBroadcast: Send + Sync + 'static {
    /// Appends `publication` to its channel's stream of app `app_id` and sends it, with its position,
    /// to every node interested in the channel. Returns the position once the backend accepted it.
    fn append_and_broadcast<'a>(
        &'a self,
        app_id: &'a str,
        publication: &'a Publication,
        options: HistoryOptions,
    ) -> BoxFuture<'a, Result<StreamPosition, HistoryError>>;
}
