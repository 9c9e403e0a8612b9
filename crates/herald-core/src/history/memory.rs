//! History kept in this process: for a single node (or tests). Each channel's stream is a ring of its
//! last publications; streams expire lazily when touched, and [`MemoryHistory::sweep`] drops the expired
//! ones nobody touches.
//!
//! Bounds: per stream, `options.size` publications (oldest trimmed); per app, `max_channels_per_app`
//! streams (policy at the limit: refuse the new stream with [`HistoryError::TooManyChannels`], counted
//! in `herald_history_refused_total{app, reason="too_many_channels"}`). One map entry per app that ever
//! used history (apps come from configuration).
//!
//! Time comes from a [`HistoryClock`] (the system's by default), so tests can run on tokio's paused clock.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use parking_lot::Mutex;

use super::{HistoryError, HistoryOptions, HistoryStore, Recovery};
use crate::publication::{Publication, StreamPosition};
use crate::state::BoxFuture;

/// Where [`MemoryHistory`] reads the time. Tests pass `|| tokio::time::Instant::now().into_std()` to
/// follow tokio's paused clock.
pub type HistoryClock = Arc<dyn Fn() -> Instant + Send + Sync>;

/// How long a stream created empty (by a read) is kept when no publication follows, by default.
const PENDING_TTL: Duration = Duration::from_secs(5 * 60);

/// One channel's stream.
struct Stream {
    epoch: Arc<str>,
    /// The offset of the last publication (0: none yet).
    offset: u64,
    /// The last publications, oldest first, with consecutive offsets ending at `offset`.
    ring: VecDeque<Publication>,
    /// When the stream is gone.
    expires: Instant,
}

impl Stream {
    fn new(expires: Instant) -> Stream {
        Stream { epoch: new_epoch(), offset: 0, ring: VecDeque::new(), expires }
    }

    fn position(&self) -> StreamPosition {
        StreamPosition { offset: self.offset, epoch: self.epoch.clone() }
    }

    /// The offset of the oldest kept publication (`offset + 1` when none is kept).
    fn first(&self) -> u64 {
        self.offset + 1 - self.ring.len() as u64
    }

    fn since(&self, since: Option<&StreamPosition>, limit: usize) -> Recovery {
        let position = self.position();
        let (skip, complete) = match since {
            None => (0, self.first() == 1),
            Some(p) if *p.epoch != *self.epoch || p.offset > self.offset => {
                return Recovery { publications: Vec::new(), position, recovered: false };
            }
            // Kept publications after `p`; complete when the one right after it is still kept.
            Some(p) => ((p.offset + 1).saturating_sub(self.first()) as usize, p.offset + 1 >= self.first()),
        };
        let after = self.ring.len() - skip;
        let publications: Vec<Publication> = self.ring.iter().skip(skip).take(limit).cloned().collect();
        Recovery { publications, position, recovered: complete && after <= limit }
    }
}

/// A fresh epoch: 8 random hex digits.
fn new_epoch() -> Arc<str> {
    Arc::from(format!("{:08x}", fastrand::u32(..)))
}

/// Channel history in memory ([`HistoryStore`]).
pub struct MemoryHistory {
    apps: DashMap<Arc<str>, Mutex<HashMap<Arc<str>, Stream>>>,
    max_channels_per_app: usize,
    pending_ttl: Duration,
    clock: HistoryClock,
}

impl MemoryHistory {
    /// A store keeping streams for at most `max_channels_per_app` channels of each app, on the system
    /// clock.
    pub fn new(max_channels_per_app: usize) -> MemoryHistory {
        MemoryHistory { apps: DashMap::new(), max_channels_per_app, pending_ttl: PENDING_TTL, clock: Arc::new(Instant::now) }
    }

    /// Reads the time from `clock` instead of the system's.
    pub fn with_clock(mut self, clock: HistoryClock) -> MemoryHistory {
        self.clock = clock;
        self
    }

    /// How long a stream created empty by [`HistoryStore::position`] or [`HistoryStore::since`] is
    /// kept (its epoch promised) when no publication follows; 5 minutes by default.
    pub fn with_pending_ttl(mut self, ttl: Duration) -> MemoryHistory {
        self.pending_ttl = ttl;
        self
    }

    /// Drops every expired stream; returns how many. The engine calls it periodically so that streams
    /// nobody reads or appends to do not stay in memory.
    pub fn sweep(&self) -> usize {
        let now = (self.clock)();
        let mut dropped = 0;
        for app in self.apps.iter() {
            let mut streams = app.lock();
            let before = streams.len();
            streams.retain(|_, s| s.expires > now);
            dropped += before - streams.len();
        }
        dropped
    }

    /// Streams kept for `app_id` now (expired ones not swept yet included).
    pub fn channels(&self, app_id: &str) -> usize {
        self.apps.get(app_id).map_or(0, |streams| streams.lock().len())
    }

    /// Runs `f` on the app's streams (the map entry's guard is held meanwhile, so nothing can race
    /// with it; `f` is short and never awaits).
    fn with_app<T>(&self, app_id: &str, f: impl FnOnce(&mut HashMap<Arc<str>, Stream>) -> T) -> T {
        if let Some(streams) = self.apps.get(app_id) {
            return f(&mut streams.lock());
        }
        let streams = self.apps.entry(Arc::from(app_id)).or_default();
        let result = f(&mut streams.lock());
        result
    }

    /// The channel's live stream, created (empty, expiring at `expires`) if it has none; refused at
    /// the app's channel limit.
    fn stream<'m>(
        &self,
        app_id: &str,
        streams: &'m mut HashMap<Arc<str>, Stream>,
        channel: &str,
        now: Instant,
        expires: Instant,
    ) -> Result<&'m mut Stream, HistoryError> {
        let live = streams.get(channel).is_some_and(|s| s.expires > now);
        if !live {
            if streams.remove(channel).is_none() && streams.len() >= self.max_channels_per_app {
                streams.retain(|_, s| s.expires > now);
                if streams.len() >= self.max_channels_per_app {
                    metrics::counter!("herald_history_refused_total", "app" => app_id.to_owned(), "reason" => "too_many_channels")
                        .increment(1);
                    return Err(HistoryError::TooManyChannels { limit: self.max_channels_per_app });
                }
            }
            streams.insert(Arc::from(channel), Stream::new(expires));
        }
        Ok(streams.get_mut(channel).expect("present"))
    }

    pub(crate) fn append_now(
        &self,
        app_id: &str,
        publication: &Publication,
        options: HistoryOptions,
    ) -> Result<StreamPosition, HistoryError> {
        let now = (self.clock)();
        let expires = now + options.ttl;
        self.with_app(app_id, |streams| {
            let stream = self.stream(app_id, streams, &publication.channel, now, expires)?;
            stream.offset += 1;
            stream.expires = expires;
            let position = stream.position();
            let mut kept = publication.clone();
            kept.position = Some(position.clone());
            kept.except = None;
            stream.ring.push_back(kept);
            while stream.ring.len() > options.size {
                stream.ring.pop_front();
            }
            Ok(position)
        })
    }

    pub(crate) fn remove_now(&self, app_id: &str, channel: &str) {
        if let Some(streams) = self.apps.get(app_id) {
            streams.lock().remove(channel);
        }
    }

    /// The channel's position, creating its (empty) stream if it has none.
    pub(crate) fn position_now(&self, app_id: &str, channel: &str) -> Result<StreamPosition, HistoryError> {
        self.since_now(app_id, channel, None, 0).map(|r| r.position)
    }

    pub(crate) fn since_now(
        &self,
        app_id: &str,
        channel: &str,
        since: Option<&StreamPosition>,
        limit: usize,
    ) -> Result<Recovery, HistoryError> {
        let now = (self.clock)();
        self.with_app(app_id, |streams| Ok(self.stream(app_id, streams, channel, now, now + self.pending_ttl)?.since(since, limit)))
    }
}

impl HistoryStore for MemoryHistory {
    fn append<'a>(
        &'a self,
        app_id: &'a str,
        publication: &'a Publication,
        options: HistoryOptions,
    ) -> BoxFuture<'a, Result<StreamPosition, HistoryError>> {
        let result = self.append_now(app_id, publication, options);
        Box::pin(std::future::ready(result))
    }

    fn since<'a>(
        &'a self,
        app_id: &'a str,
        channel: &'a str,
        since: Option<&'a StreamPosition>,
        limit: usize,
    ) -> BoxFuture<'a, Result<Recovery, HistoryError>> {
        let result = self.since_now(app_id, channel, since, limit);
        Box::pin(std::future::ready(result))
    }

    /// Creates the (empty) stream if the channel has none, so that the epoch returned is the one its
    /// first publication will carry; refused at the app's channel limit like an append.
    fn position<'a>(&'a self, app_id: &'a str, channel: &'a str) -> BoxFuture<'a, Result<StreamPosition, HistoryError>> {
        Box::pin(std::future::ready(self.position_now(app_id, channel)))
    }

    fn remove<'a>(&'a self, app_id: &'a str, channel: &'a str) -> BoxFuture<'a, Result<(), HistoryError>> {
        self.remove_now(app_id, channel);
        Box::pin(std::future::ready(Ok(())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    use crate::publication::DataKind;

    fn publication(channel: &str, n: u64) -> Publication {
        Publication::new(channel, "e", Bytes::from(n.to_string()), DataKind::Text)
    }

    /// A store on a clock the test moves by hand.
    fn manual(max: usize) -> (MemoryHistory, Arc<Mutex<Instant>>) {
        let now = Arc::new(Mutex::new(Instant::now()));
        let clock = now.clone();
        (MemoryHistory::new(max).with_clock(Arc::new(move || *clock.lock())), now)
    }

    const OPTIONS: HistoryOptions = HistoryOptions { size: 3, ttl: Duration::from_secs(10) };

    #[test]
    fn sweep_drops_only_expired_streams_and_frees_their_places() {
        let (history, now) = manual(2);
        history.append_now("a", &publication("old", 1), OPTIONS).unwrap();
        *now.lock() += Duration::from_secs(6);
        history.append_now("a", &publication("new", 1), OPTIONS).unwrap();
        *now.lock() += Duration::from_secs(5);
        assert_eq!(history.sweep(), 1, "only the stream last appended 11 s ago is gone");
        assert_eq!(history.channels("a"), 1);
        assert_eq!(history.since_now("a", "new", None, 10).unwrap().publications.len(), 1);
        history.append_now("a", &publication("third", 1), OPTIONS).unwrap();
        assert_eq!(history.channels("a"), 2);
    }

    #[test]
    fn a_stream_created_by_a_read_lives_for_the_pending_ttl() {
        let (history, now) = manual(1);
        let history = history.with_pending_ttl(Duration::from_secs(2));
        let promised = history.since_now("a", "c", None, 0).unwrap().position;
        *now.lock() += Duration::from_secs(1);
        assert_eq!(history.append_now("a", &publication("c", 1), OPTIONS).unwrap().epoch, promised.epoch);
        history.remove_now("a", "c");
        let promised = history.since_now("a", "c", None, 0).unwrap().position;
        *now.lock() += Duration::from_secs(2);
        assert_eq!(history.sweep(), 1, "an empty stream nobody published to is dropped");
        assert_ne!(history.append_now("a", &publication("c", 1), OPTIONS).unwrap().epoch, promised.epoch);
    }

    #[test]
    fn expired_streams_do_not_count_against_the_channel_limit() {
        let (history, now) = manual(1);
        history.append_now("a", &publication("x", 1), OPTIONS).unwrap();
        assert_eq!(history.append_now("a", &publication("y", 1), OPTIONS), Err(HistoryError::TooManyChannels { limit: 1 }));
        *now.lock() += OPTIONS.ttl;
        assert_eq!(history.append_now("a", &publication("y", 1), OPTIONS).unwrap().offset, 1, "the expired stream made room");
    }
}
