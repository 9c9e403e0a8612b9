//! The `HistoryStore` conformance suite (`suite/history.rs`) on [`MemoryHistory`], on tokio's paused
//! clock, plus what only memory has: [`MemoryHistory::sweep`] and appends from several threads.

#[path = "suite/history.rs"]
#[macro_use]
mod history_suite;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use herald_core::{DataKind, HistoryOptions, HistoryStore, MemoryHistory, Publication};
use history_suite::{Harness, APP, CAP, SHORT_TTL};

/// A memory store on tokio's clock (paused in these tests).
struct Memory(Arc<MemoryHistory>);

fn memory() -> Memory {
    Memory(Arc::new(MemoryHistory::new(CAP).with_clock(Arc::new(|| tokio::time::Instant::now().into_std()))))
}

impl Harness for Memory {
    fn store(&self) -> Arc<dyn HistoryStore> {
        self.0.clone()
    }

    async fn wait_expired(&self, _channel: &str) {
        tokio::time::advance(SHORT_TTL).await;
    }
}

history_conformance!(
    #[tokio::test(start_paused = true)]
    memory()
);

const OPTIONS: HistoryOptions = HistoryOptions { size: 10, ttl: Duration::from_secs(60) };

#[tokio::test(start_paused = true)]
async fn a_stream_lives_until_exactly_its_ttl_after_the_last_append() {
    let h = memory();
    let first = h.0.append(APP, &Publication::new("c", "e", Bytes::new(), DataKind::Text), OPTIONS).await.unwrap();
    tokio::time::advance(OPTIONS.ttl - Duration::from_millis(1)).await;
    h.0.append(APP, &Publication::new("c", "e", Bytes::new(), DataKind::Text), OPTIONS).await.unwrap();
    tokio::time::advance(OPTIONS.ttl - Duration::from_millis(1)).await;
    assert_eq!(h.0.position(APP, "c").await.unwrap().epoch, first.epoch, "each append extends the life");
    tokio::time::advance(Duration::from_millis(1)).await;
    assert_eq!(h.0.sweep(), 1, "gone at exactly ttl after the last append");
    assert_eq!(h.0.channels(APP), 0);
}

#[tokio::test(start_paused = true)]
async fn sweep_frees_the_places_of_expired_streams_for_new_channels() {
    let h = memory();
    for c in 0..CAP {
        h.0.append(APP, &Publication::new(format!("c{c}"), "e", Bytes::new(), DataKind::Text), OPTIONS).await.unwrap();
    }
    tokio::time::advance(OPTIONS.ttl).await;
    assert_eq!(h.0.sweep(), CAP);
    assert_eq!(h.0.channels(APP), 0);
    for c in 0..CAP {
        h.0.append(APP, &Publication::new(format!("d{c}"), "e", Bytes::new(), DataKind::Text), OPTIONS).await.unwrap();
    }
}

#[test]
fn appends_from_several_threads_get_distinct_consecutive_offsets() {
    let history = Arc::new(MemoryHistory::new(CAP));
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let history = history.clone();
            std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
                runtime.block_on(async {
                    let mut offsets = Vec::new();
                    for i in 0..500 {
                        let p = Publication::new("c", format!("{t}"), Bytes::from(format!("{i}")), DataKind::Text);
                        offsets.push(
                            history.append(APP, &p, HistoryOptions { size: 5000, ttl: Duration::from_secs(60) }).await.unwrap().offset,
                        );
                    }
                    offsets
                })
            })
        })
        .collect();
    let mut all: Vec<u64> = threads.into_iter().flat_map(|t| t.join().unwrap()).collect();
    all.sort_unstable();
    assert_eq!(all, (1..=2000).collect::<Vec<_>>());
}
