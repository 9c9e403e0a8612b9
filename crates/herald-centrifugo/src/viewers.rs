//! Viewer counts (Herald's own channel option `viewer_counts`, for live streams): when a channel's
//! subscriber count changes, its subscribers get a publication on the channel with the data
//! `{"viewer_count":N,"peak_viewers":P}` — no offset, not kept in history — which centrifuge-js
//! surfaces as a `publication` event of the subscription (pusher-js clients on the same channel get
//! the event `herald:viewer_count`).
//!
//! N is the channel's cluster-wide subscriber count (the cluster state's, or this node's without a
//! cluster), read when the push is made: each node pushes for the changes it decided ([`herald_core::EngineListener`]
//! hears each change once per cluster), one push at a time per channel, so the last push after the
//! last change carries the final count even when changes are heard out of order. P is the highest
//! N this node pushed since the channel was last vacated (in a cluster each node keeps its own; a
//! count coalesced away is not a peak).
//! Changes that arrive while a push is being made are coalesced into the next one; above
//! [`COALESCE_ABOVE`] subscribers a channel is pushed at most once per [`COALESCE_EVERY`], so a
//! stampede of joins costs one publication a second, not one per join.
//!
//! Bounded: at most [`MAX_CHANNELS`] channels are tracked per app and node; a change of a new channel
//! beyond that is not pushed (counted in `herald_errors_total{kind="viewer_counts_full"}`).

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bytes::Bytes;
use herald_core::{ChannelChange, DataKind, EngineListener, Hub, Publication, SocketId, Transition, CLUSTER_WAIT};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::app::ReadyApp;

/// Subscriber counts up to which a change is pushed as soon as the previous push is done.
pub const COALESCE_ABOVE: usize = 100;
/// Least time between two pushes of a channel above [`COALESCE_ABOVE`].
pub const COALESCE_EVERY: Duration = Duration::from_secs(1);
/// Channels whose counts are tracked at once (per app and node).
pub const MAX_CHANNELS: usize = 100_000;
/// The Pusher event name of the publication.
pub const EVENT: &str = "herald:viewer_count";

#[derive(Debug, Default)]
struct Tracked {
    peak: usize,
    /// A change arrived since the last count was read.
    dirty: bool,
    /// A flusher task is pushing this channel.
    flushing: bool,
}

/// The peaks and pending changes of one app's viewer-count channels.
#[derive(Debug, Default)]
pub(crate) struct Counts {
    channels: Mutex<HashMap<Arc<str>, Tracked>>,
}

impl Counts {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, Tracked>> {
        self.channels.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Records a change of `channel`. True: no flusher runs for it, start one ([`flush`]).
    pub(crate) fn change(&self, channel: &Arc<str>, vacated: bool) -> bool {
        let mut channels = self.lock();
        if !channels.contains_key(channel) && channels.len() >= MAX_CHANNELS {
            metrics::counter!("herald_errors_total", "kind" => "viewer_counts_full").increment(1);
            return false;
        }
        let t = channels.entry(channel.clone()).or_default();
        if vacated {
            // The peak starts again with the next viewer.
            t.peak = 0;
        }
        t.dirty = true;
        !std::mem::replace(&mut t.flushing, true)
    }

    /// Whether there is a change to push; if not, the flusher ends, and a channel with no peak or no
    /// subscriber on this node (`local`) is forgotten: another node may decide its vacating, so this
    /// node would never hear a count of 0 for it.
    fn take_dirty(&self, channel: &str, local: bool) -> bool {
        let mut channels = self.lock();
        let Some(t) = channels.get_mut(channel) else { return false };
        if std::mem::take(&mut t.dirty) {
            return true;
        }
        t.flushing = false;
        if t.peak == 0 || !local {
            channels.remove(channel);
        }
        false
    }

    /// Marks `channel` changed again (its count could not be read).
    fn retry(&self, channel: &str) {
        if let Some(t) = self.lock().get_mut(channel) {
            t.dirty = true;
        }
    }

    /// Notes a pushed `count`; the peak.
    fn observe(&self, channel: &str, count: usize) -> usize {
        let mut channels = self.lock();
        let Some(t) = channels.get_mut(channel) else { return count };
        t.peak = if count == 0 { 0 } else { t.peak.max(count) };
        t.peak
    }
}

/// Pushes `channel`'s count until no change is pending: `read` gives the current count, `push` sends
/// it with the peak, `local` says whether this node still has subscribers. One runs per channel at a
/// time ([`Counts::change`]); a count that can't be read is tried again a second later.
pub(crate) async fn flush<R, F>(
    counts: &Counts,
    channel: &str,
    read: R,
    push: impl Fn(usize, usize),
    local: impl Fn() -> bool,
    shutdown: &CancellationToken,
) where
    R: Fn() -> F,
    F: Future<Output = Option<usize>>,
{
    while counts.take_dirty(channel, local()) {
        let Some(count) = read().await else {
            counts.retry(channel);
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(COALESCE_EVERY) => continue,
            }
        };
        let peak = counts.observe(channel, count);
        if count > 0 {
            push(count, peak);
        }
        if count > COALESCE_ABOVE {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(COALESCE_EVERY) => {}
            }
        }
    }
}

/// The JSON data of a viewer-count publication.
pub fn data(count: usize, peak: usize) -> Bytes {
    Bytes::from(format!(r#"{{"viewer_count":{count},"peak_viewers":{peak}}}"#))
}

/// Hears one app's channel changes and pushes viewer counts for channels with the option.
pub(crate) struct Listener {
    pub(crate) app: Arc<ReadyApp>,
    pub(crate) hub: Weak<Hub>,
    pub(crate) counts: Arc<Counts>,
    pub(crate) tasks: TaskTracker,
    pub(crate) shutdown: CancellationToken,
}

/// The channel's subscriber count: the cluster's, or this node's.
async fn current(hub: &Hub, channel: &str) -> Option<usize> {
    match hub.state() {
        Some(state) => match tokio::time::timeout(CLUSTER_WAIT, state.channel(&hub.app().id, channel)).await {
            Ok(Ok(info)) => Some(info.map_or(0, |i| i.subscribers)),
            _ => {
                metrics::counter!("herald_errors_total", "kind" => "cluster_state_unavailable").increment(1);
                None
            }
        },
        None => Some(hub.channel(channel).map_or(0, |i| i.subscribers)),
    }
}

impl EngineListener for Listener {
    fn on_change(&self, _hub: &Hub, change: &ChannelChange, _actor: Option<SocketId>) {
        if !self.app.options(&change.channel).is_some_and(|o| o.viewer_counts) {
            return;
        }
        let vacated = change.transitions.iter().any(|t| matches!(t, Transition::Vacated));
        if !self.counts.change(&change.channel, vacated) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        let (hub, counts, channel, shutdown) = (self.hub.clone(), self.counts.clone(), change.channel.clone(), self.shutdown.clone());
        self.tasks.spawn_on(
            async move {
                let Some(hub) = hub.upgrade() else { return };
                let push = |count, peak| {
                    // Not through history: a count is state, not a position a client recovers from.
                    hub.publish(&Publication::new(channel.clone(), EVENT, data(count, peak), DataKind::Json));
                };
                let local = || hub.channel(&channel).is_some();
                flush(&counts, &channel, || current(&hub, &channel), push, local, &shutdown).await;
            },
            &runtime,
        );
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio::time::Instant;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn pushes_the_latest_count_and_at_most_one_a_second_above_100() {
        let counts = Counts::default();
        let ch: Arc<str> = Arc::from("live");
        let shutdown = CancellationToken::new();
        let now = AtomicUsize::new(0);
        let pushed = Mutex::new(Vec::new());
        let start = Instant::now();
        let push = |count, peak| pushed.lock().unwrap().push((count, peak, start.elapsed().as_secs()));
        let read = || async { Some(now.load(Ordering::SeqCst)) };

        // Below 100: one change, one push; a second change while no flusher runs starts another.
        now.store(3, Ordering::SeqCst);
        assert!(counts.change(&ch, false));
        assert!(!counts.change(&ch, false), "one flusher per channel");
        flush(&counts, &ch, read, push, || true, &shutdown).await;
        assert_eq!(*pushed.lock().unwrap(), [(3, 3, 0)], "two changes before the read: one push");

        // Above 100: the flusher waits a second after each push; changes meanwhile are coalesced.
        pushed.lock().unwrap().clear();
        now.store(150, Ordering::SeqCst);
        assert!(counts.change(&ch, false));
        let flusher = flush(&counts, &ch, read, push, || true, &shutdown);
        let changes = async {
            for n in 151..=160 {
                tokio::time::sleep(Duration::from_millis(150)).await;
                now.store(n, Ordering::SeqCst);
                assert!(!counts.change(&ch, false));
            }
            now.store(120, Ordering::SeqCst);
            assert!(!counts.change(&ch, false));
        };
        tokio::join!(flusher, changes);
        let pushed = pushed.lock().unwrap().clone();
        assert_eq!(pushed.first(), Some(&(150, 150, 0)));
        let highest = pushed.iter().map(|p| p.0).max();
        assert_eq!(pushed.last().map(|p| (p.0, Some(p.1))), Some((120, highest)), "the final count last, with the peak pushed");
        assert!(pushed.len() <= 3, "at most one push a second over ~1.6 s: {pushed:?}");
        assert!(pushed.windows(2).all(|w| w[1].2 > w[0].2), "a second apart: {pushed:?}");

        // Vacated: the peak starts again.
        now.store(0, Ordering::SeqCst);
        assert!(counts.change(&ch, true));
        flush(&counts, &ch, read, |_, _| panic!("nothing to tell an empty channel"), || true, &shutdown).await;
        assert!(counts.lock().is_empty(), "a vacated channel is forgotten");
    }

    #[test]
    fn data_is_the_documented_json() {
        assert_eq!(&data(3, 7)[..], br#"{"viewer_count":3,"peak_viewers":7}"#);
    }

    #[tokio::test(start_paused = true)]
    async fn a_channel_without_local_subscribers_is_forgotten_and_a_failed_read_is_retried() {
        let counts = Counts::default();
        let ch: Arc<str> = Arc::from("live");
        let shutdown = CancellationToken::new();
        let pushed = Mutex::new(Vec::new());
        let push = |count, peak| pushed.lock().unwrap().push((count, peak));
        // Another node decides the vacating: this one pushed a peak, then loses its subscribers.
        assert!(counts.change(&ch, false));
        flush(&counts, &ch, || async { Some(5) }, push, || false, &shutdown).await;
        assert_eq!(*pushed.lock().unwrap(), [(5, 5)]);
        assert!(counts.lock().is_empty(), "no subscriber here: not kept for a count of 0 it may never hear");

        // The first read fails (cluster state unavailable): the change is pushed once it can be read.
        let reads = AtomicUsize::new(0);
        let read = || {
            let n = reads.fetch_add(1, Ordering::SeqCst);
            async move { (n > 0).then_some(7) }
        };
        assert!(counts.change(&ch, false));
        flush(&counts, &ch, read, push, || true, &shutdown).await;
        assert_eq!(pushed.lock().unwrap().last(), Some(&(7, 7)), "pushed after the retry");
        assert_eq!(reads.load(Ordering::SeqCst), 2);
    }
}
