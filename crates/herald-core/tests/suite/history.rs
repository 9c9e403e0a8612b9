//! The `HistoryStore` conformance suite: one body of tests, run against every implementation (memory
//! in `herald-core/tests/history_conformance.rs`, Redis in `herald-redis/tests/history.rs`), so both
//! give the same answers: offsets, epochs, recovery at and around every boundary, the channel cap and
//! concurrent appends.
//!
//! Include it with `#[path = ".../suite/history.rs"] #[macro_use] mod history_suite;` and instantiate
//! every test with `history_conformance!(#[tokio::test(...)] make_harness().await);`.

#![allow(dead_code)]

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use herald_core::{DataKind, HistoryError, HistoryOptions, HistoryStore, Publication, PublisherInfo, Recovery, SocketId, StreamPosition};

/// The app every test uses (another one where apps must not interfere).
pub const APP: &str = "app";
/// The channel cap harnesses build their store with.
pub const CAP: usize = 4;
/// The TTL of streams meant to expire (harnesses wait it out).
pub const SHORT_TTL: Duration = Duration::from_secs(1);

/// A store under test and the means to let its streams expire.
pub trait Harness {
    /// The store, built with at most [`CAP`] channels per app.
    fn store(&self) -> Arc<dyn HistoryStore>;
    /// Returns once `channel`'s stream (of [`APP`], last appended with [`SHORT_TTL`]) expired: on
    /// memory by moving the paused clock, on Redis by polling with a deadline.
    fn wait_expired(&self, channel: &str) -> impl Future<Output = ()>;
}

/// Generates one `#[test]` per conformance test, each on a fresh harness.
#[macro_export]
macro_rules! history_conformance {
    (#[$attr:meta] $harness:expr) => {
        $crate::history_conformance!(@tests #[$attr] $harness;
            offsets_count_from_one_in_append_order,
            streams_of_other_channels_and_apps_are_independent,
            a_removed_stream_comes_back_with_a_new_epoch,
            an_expired_stream_comes_back_with_a_new_epoch_and_is_not_recovered,
            since_the_current_position_is_recovered_with_nothing,
            since_the_oldest_kept_minus_one_is_recovered,
            one_trimmed_publication_makes_the_recovery_incomplete,
            a_limit_that_cuts_makes_the_recovery_incomplete,
            since_none_is_complete_only_when_nothing_was_trimmed,
            another_epoch_or_a_future_offset_is_not_recovered,
            a_position_taken_before_the_first_publication_recovers_it,
            a_stream_of_size_one_keeps_the_last_publication,
            publications_come_back_as_published_with_their_position,
            the_channel_cap_refuses_a_new_stream_not_an_existing_one,
            concurrent_appends_get_distinct_consecutive_offsets,
        );
    };
    (@tests #[$attr:meta] $harness:expr; $($name:ident),* $(,)?) => {
        $(
            #[$attr]
            async fn $name() {
                let harness = $harness;
                history_suite::$name(&harness).await;
            }
        )*
    };
}

const LONG: HistoryOptions = HistoryOptions { size: 100, ttl: Duration::from_secs(600) };

fn sized(size: usize) -> HistoryOptions {
    HistoryOptions { size, ttl: Duration::from_secs(600) }
}

fn publication(channel: &str, n: u64) -> Publication {
    Publication::new(channel, "update", Bytes::from(format!("{{\"n\":{n}}}")), DataKind::Json)
}

/// Appends publications `1..=n` (their data says which) to `channel`; returns the last position.
async fn fill(store: &dyn HistoryStore, channel: &str, n: u64, options: HistoryOptions) -> StreamPosition {
    let mut last = None;
    for i in 1..=n {
        last = Some(store.append(APP, &publication(channel, i), options).await.unwrap());
    }
    last.expect("n > 0")
}

/// The offsets a recovery returned, checking each publication's data matches its offset.
fn offsets(recovery: &Recovery) -> Vec<u64> {
    recovery
        .publications
        .iter()
        .map(|p| {
            let position = p.position.as_ref().expect("publications come back with their position");
            assert_eq!(position.epoch, recovery.position.epoch, "a publication of the stream's epoch");
            assert_eq!(p.data, publication(&p.channel, position.offset).data, "offset {} carries its own publication", position.offset);
            position.offset
        })
        .collect()
}

fn at(offset: u64, epoch: &Arc<str>) -> StreamPosition {
    StreamPosition { offset, epoch: epoch.clone() }
}

pub async fn offsets_count_from_one_in_append_order(h: &impl Harness) {
    let store = h.store();
    let mut epoch = None;
    for i in 1..=5 {
        let position = store.append(APP, &publication("c", i), LONG).await.unwrap();
        assert_eq!(position.offset, i);
        assert_eq!(position.epoch, *epoch.get_or_insert(position.epoch.clone()), "one epoch for the stream");
    }
    let epoch = epoch.unwrap();
    assert_eq!(store.position(APP, "c").await.unwrap(), at(5, &epoch));
    let all = store.since(APP, "c", None, 100).await.unwrap();
    assert_eq!(offsets(&all), [1, 2, 3, 4, 5]);
    assert!(all.recovered);
    assert_eq!(all.position, at(5, &epoch));
}

pub async fn streams_of_other_channels_and_apps_are_independent(h: &impl Harness) {
    let store = h.store();
    fill(&*store, "a", 3, LONG).await;
    assert_eq!(store.append(APP, &publication("b", 1), LONG).await.unwrap().offset, 1);
    assert_eq!(store.append("other-app", &publication("a", 1), LONG).await.unwrap().offset, 1);
    assert_eq!(store.position(APP, "a").await.unwrap().offset, 3);
    assert_eq!(offsets(&store.since("other-app", "a", None, 10).await.unwrap()), [1]);
}

pub async fn a_removed_stream_comes_back_with_a_new_epoch(h: &impl Harness) {
    let store = h.store();
    let old = fill(&*store, "c", 2, LONG).await;
    store.remove(APP, "c").await.unwrap();
    let new = store.append(APP, &publication("c", 1), LONG).await.unwrap();
    assert_eq!(new.offset, 1, "offsets start over");
    assert_ne!(new.epoch, old.epoch, "a lost stream is a new epoch");
    let missed = store.since(APP, "c", Some(&old), 10).await.unwrap();
    assert!(!missed.recovered, "a client of the old epoch cannot recover");
    assert!(missed.publications.is_empty());
    assert_eq!(missed.position, new);
}

pub async fn an_expired_stream_comes_back_with_a_new_epoch_and_is_not_recovered(h: &impl Harness) {
    let store = h.store();
    let short = HistoryOptions { size: 10, ttl: SHORT_TTL };
    let old = fill(&*store, "c", 2, short).await;
    h.wait_expired("c").await;
    let missed = store.since(APP, "c", Some(&old), 10).await.unwrap();
    assert!(!missed.recovered);
    assert!(missed.publications.is_empty());
    assert_eq!(missed.position.offset, 0, "the stream is gone");
    assert_ne!(missed.position.epoch, old.epoch);
    let new = store.append(APP, &publication("c", 1), short).await.unwrap();
    assert_eq!(new, at(1, &missed.position.epoch), "the epoch the reader was told is the new stream's");
}

pub async fn since_the_current_position_is_recovered_with_nothing(h: &impl Harness) {
    let store = h.store();
    let now = fill(&*store, "c", 4, sized(2)).await;
    let recovery = store.since(APP, "c", Some(&now), 10).await.unwrap();
    assert_eq!(recovery, Recovery { publications: Vec::new(), position: now, recovered: true });
}

pub async fn since_the_oldest_kept_minus_one_is_recovered(h: &impl Harness) {
    let store = h.store();
    let now = fill(&*store, "c", 5, sized(3)).await;
    let recovery = store.since(APP, "c", Some(&at(2, &now.epoch)), 10).await.unwrap();
    assert_eq!(offsets(&recovery), [3, 4, 5], "exactly `size` publications are kept");
    assert!(recovery.recovered, "offsets 3..=5 are all there");
    assert_eq!(recovery.position, now);
}

pub async fn one_trimmed_publication_makes_the_recovery_incomplete(h: &impl Harness) {
    let store = h.store();
    let now = fill(&*store, "c", 5, sized(3)).await;
    let recovery = store.since(APP, "c", Some(&at(1, &now.epoch)), 10).await.unwrap();
    assert!(!recovery.recovered, "offset 2 was trimmed");
    assert_eq!(offsets(&recovery), [3, 4, 5], "what is left is still returned");
    assert_eq!(recovery.position, now);
}

pub async fn a_limit_that_cuts_makes_the_recovery_incomplete(h: &impl Harness) {
    let store = h.store();
    let now = fill(&*store, "c", 5, sized(10)).await;
    let from = at(1, &now.epoch);
    let cut = store.since(APP, "c", Some(&from), 2).await.unwrap();
    assert_eq!(offsets(&cut), [2, 3], "the oldest first, so the client can page on");
    assert!(!cut.recovered);
    let exact = store.since(APP, "c", Some(&from), 4).await.unwrap();
    assert_eq!(offsets(&exact), [2, 3, 4, 5]);
    assert!(exact.recovered, "a limit of exactly what was missed cuts nothing");
    let nothing = store.since(APP, "c", Some(&from), 0).await.unwrap();
    assert!(nothing.publications.is_empty() && !nothing.recovered);
    let all = store.since(APP, "c", None, 4).await.unwrap();
    assert_eq!((offsets(&all), all.recovered), (vec![1, 2, 3, 4], false));
    let all = store.since(APP, "c", None, 5).await.unwrap();
    assert_eq!((offsets(&all), all.recovered), (vec![1, 2, 3, 4, 5], true));
}

pub async fn since_none_is_complete_only_when_nothing_was_trimmed(h: &impl Harness) {
    let store = h.store();
    fill(&*store, "trimmed", 5, sized(3)).await;
    let trimmed = store.since(APP, "trimmed", None, 10).await.unwrap();
    assert_eq!((offsets(&trimmed), trimmed.recovered), (vec![3, 4, 5], false));
    fill(&*store, "whole", 3, sized(3)).await;
    let whole = store.since(APP, "whole", None, 10).await.unwrap();
    assert_eq!((offsets(&whole), whole.recovered), (vec![1, 2, 3], true));
    let empty = store.since(APP, "never", None, 10).await.unwrap();
    assert_eq!((empty.publications.len(), empty.position.offset, empty.recovered), (0, 0, true), "nothing was ever published");
}

pub async fn another_epoch_or_a_future_offset_is_not_recovered(h: &impl Harness) {
    let store = h.store();
    let now = fill(&*store, "c", 3, LONG).await;
    let other_epoch = store.since(APP, "c", Some(&at(1, &Arc::from("not-this-one"))), 10).await.unwrap();
    assert_eq!(other_epoch, Recovery { publications: Vec::new(), position: now.clone(), recovered: false });
    let future = store.since(APP, "c", Some(&at(9, &now.epoch)), 10).await.unwrap();
    assert_eq!(future, Recovery { publications: Vec::new(), position: now, recovered: false });
}

pub async fn a_position_taken_before_the_first_publication_recovers_it(h: &impl Harness) {
    let store = h.store();
    let before = store.position(APP, "c").await.unwrap();
    assert_eq!(before.offset, 0);
    assert_eq!(store.position(APP, "c").await.unwrap(), before, "asking again promises the same epoch");
    fill(&*store, "c", 2, LONG).await;
    let recovery = store.since(APP, "c", Some(&before), 10).await.unwrap();
    assert_eq!(offsets(&recovery), [1, 2]);
    assert!(recovery.recovered, "the subscriber missed nothing it cannot get back");
}

pub async fn a_stream_of_size_one_keeps_the_last_publication(h: &impl Harness) {
    let store = h.store();
    let now = fill(&*store, "cache-c", 3, sized(1)).await;
    let last = store.since(APP, "cache-c", None, 1).await.unwrap();
    assert_eq!((offsets(&last), last.recovered), (vec![3], false));
    let after_two = store.since(APP, "cache-c", Some(&at(2, &now.epoch)), 1).await.unwrap();
    assert_eq!((offsets(&after_two), after_two.recovered), (vec![3], true));
}

pub async fn publications_come_back_as_published_with_their_position(h: &impl Harness) {
    let store = h.store();
    let mut sent = Publication::new("c", "client-moved", Bytes::from_static(b"\x00\xffbinary"), DataKind::Binary);
    sent.publisher = Some(PublisherInfo { user_id: Arc::from("alice"), info: Bytes::from_static(b"{\"name\":\"Alice\"}") });
    sent.except = Some(SocketId::random());
    sent.except_device = Some(Arc::from("phone"));
    sent.tags = vec![(Arc::from("k"), Arc::from("v")), (Arc::from("é"), Arc::from(""))];
    let position = store.append(APP, &sent, LONG).await.unwrap();
    let mut text = Publication::new("c", "", Bytes::from_static(b"plain"), DataKind::Text);
    text.position = Some(StreamPosition { offset: 77, epoch: Arc::from("ignored") });
    let second = store.append(APP, &text, LONG).await.unwrap();
    let got = store.since(APP, "c", None, 10).await.unwrap().publications;
    let mut expected = sent.clone();
    expected.position = Some(position);
    expected.except = None;
    text.position = Some(second);
    assert_eq!(got, [expected, text], "everything but the connection exclusion is kept; the position is the stream's");
}

pub async fn the_channel_cap_refuses_a_new_stream_not_an_existing_one(h: &impl Harness) {
    let store = h.store();
    for c in 0..CAP {
        store.append(APP, &publication(&format!("c{c}"), 1), LONG).await.unwrap();
    }
    let refused = HistoryError::TooManyChannels { limit: CAP };
    assert_eq!(store.append(APP, &publication("one-more", 1), LONG).await.unwrap_err(), refused);
    assert_eq!(store.position(APP, "one-more").await.unwrap_err(), refused, "a read creates no stream either");
    assert_eq!(store.since(APP, "one-more", None, 10).await.unwrap_err(), refused);
    assert_eq!(store.append(APP, &publication("c0", 2), LONG).await.unwrap().offset, 2, "existing streams go on");
    assert_eq!(store.append("other-app", &publication("one-more", 1), LONG).await.unwrap().offset, 1, "the cap is per app");
    store.remove(APP, "c1").await.unwrap();
    assert_eq!(store.append(APP, &publication("one-more", 1), LONG).await.unwrap().offset, 1, "a removed stream frees its place");
}

pub async fn concurrent_appends_get_distinct_consecutive_offsets(h: &impl Harness) {
    let store = h.store();
    let (tasks, each) = (8u64, 25u64);
    let options = sized(1000);
    let handles: Vec<_> = (0..tasks)
        .map(|t| {
            let store = store.clone();
            tokio::spawn(async move {
                let mut got = Vec::new();
                for i in 0..each {
                    let p = Publication::new("c", format!("{t}"), Bytes::from(i.to_string()), DataKind::Text);
                    got.push(store.append(APP, &p, options).await.unwrap());
                }
                got
            })
        })
        .collect();
    let mut all = Vec::new();
    for handle in handles {
        let got = handle.await.unwrap();
        assert!(got.windows(2).all(|w| w[0].offset < w[1].offset), "one task's appends in order");
        all.extend(got);
    }
    let epoch = all[0].epoch.clone();
    assert!(all.iter().all(|p| p.epoch == epoch), "one epoch");
    let mut offsets: Vec<u64> = all.iter().map(|p| p.offset).collect();
    offsets.sort_unstable();
    assert_eq!(offsets, (1..=tasks * each).collect::<Vec<_>>(), "distinct and consecutive");
    let stored = store.since(APP, "c", None, 1000).await.unwrap();
    assert!(stored.recovered);
    assert_eq!(stored.publications.len() as u64, tasks * each);
    for (i, p) in stored.publications.iter().enumerate() {
        assert_eq!(p.position.as_ref().unwrap().offset, i as u64 + 1);
    }
}
