//! The boundary to a channel's history: a bounded, expiring stream of publications with offsets and an
//! epoch, from which a reconnecting client recovers what it missed.
//!
//! Implementations: in memory (one node) and in Redis (every node; there, appending is done by the
//! broker's confirmable publish in one script with the broadcast, and this trait reads).

use std::time::Duration;

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
