//! Delivery latency: from a publication accepted by this node to its frame written to a socket.
//!
//! A [`Stamp`] is taken once per publication (8 bytes, `Copy`: the engine stamps the publication when
//! it accepts it, the outbox carries the stamp with the queued frame). The writer of a connection
//! records when it has written a batch: [`LatencyHistogram::record`] per frame, or
//! [`LatencyHistogram::record_n`] for frames of one publication written together.
//!
//! Recording takes no lock and allocates nothing: a histogram is a fixed set of atomic bucket counters
//! (Prometheus-style cumulative-on-read buckets from 0.1 ms to 10 s), striped over a few cache-line
//! aligned shards chosen per thread, so writers on different cores do not fight over one cache line.
//! Reading (for `/metrics` and the stats endpoints) sums the shards; percentiles are interpolated
//! inside a bucket, as Prometheus' `histogram_quantile` does.
//!
//! A stamp is node-local (a monotonic clock of this process): for a publication that arrived from
//! another node, latency starts when this node received it.
//!
//! Per channel: a stamp may also name its channel's latency slot ([`ChannelLatencies`]), and a front's
//! histogram records such a delivery into that slot too, still without a lock or an allocation (an
//! index into a fixed table, checked by generation). Policy, bounded: a channel takes a slot when it
//! becomes occupied on this node, while the app has fewer than [`MAX_CHANNEL_LATENCIES`] in use, and
//! gives it back when it is vacated here (a guard in the channel's entry); a channel occupied while
//! every slot is taken reports no latency of its own. A slot's histogram is allocated on first use
//! and reused (reset) by later channels, so memory stays at most that many small histograms per app.
//!
//! Recording can be switched off per app ([`Latencies::set_recording`], the server's
//! `latency_histograms = false`) to measure what it costs: fronts then get no histogram to record into.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// Upper bounds of the histogram buckets, in microseconds (then `+Inf`): 0.1 ms to 10 s.
pub const BUCKET_BOUNDS_MICROS: [u64; 16] =
    [100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000, 2_500_000, 5_000_000, 10_000_000];

/// Buckets including the last, unbounded one.
const BUCKETS: usize = BUCKET_BOUNDS_MICROS.len() + 1;
/// Shards a front's histogram is striped over (a power of two).
const SHARDS: usize = 8;
/// Shards a channel's histogram is striped over (a power of two): fewer, as there may be many.
const CHANNEL_SHARDS: usize = 4;
/// Channels per app with a latency histogram of their own on this node, at most (see the module doc).
pub const MAX_CHANNEL_LATENCIES: usize = 1024;

/// When a publication was accepted: nanoseconds on this process's monotonic clock, and the latency
/// slot of its channel, if it has one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Stamp {
    nanos: u64,
    channel: ChannelTag,
}

/// A channel's latency slot as a stamp carries it: index + 1 (0: none) and the slot's generation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ChannelTag {
    slot: u32,
    generation: u32,
}

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

impl Stamp {
    /// Now.
    pub fn now() -> Stamp {
        Stamp::at(epoch().elapsed().as_nanos() as u64)
    }

    fn at(nanos: u64) -> Stamp {
        Stamp { nanos, channel: ChannelTag::default() }
    }

    /// This stamp, naming `channel`'s latency slot (deliveries then count for the channel too).
    pub fn for_channel(self, channel: ChannelTag) -> Stamp {
        Stamp { channel, ..self }
    }

    /// The time from `self` to `later` (zero if `later` is earlier).
    pub fn until(self, later: Stamp) -> Duration {
        Duration::from_nanos(later.nanos.saturating_sub(self.nanos))
    }

    /// The time since `self`.
    pub fn elapsed(self) -> Duration {
        self.until(Stamp::now())
    }
}

/// The bucket a latency falls into.
fn bucket(latency: Duration) -> usize {
    let micros = latency.as_micros().min(u128::from(u64::MAX)) as u64;
    BUCKET_BOUNDS_MICROS.iter().position(|&bound| micros <= bound).unwrap_or(BUCKETS - 1)
}

/// One stripe: its own cache lines, so two cores recording at once touch different memory.
#[repr(align(64))]
#[derive(Default)]
struct Shard {
    counts: [AtomicU64; BUCKETS],
    sum_nanos: AtomicU64,
}

/// This thread's shard: threads take shards round-robin as they first record.
fn shard_index() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static INDEX: usize = NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS;
    }
    INDEX.with(|i| *i)
}

/// Delivery latencies of one app through one front (or of one channel): lock-free, allocation-free
/// recording.
pub struct LatencyHistogram {
    /// A power of two of them.
    shards: Box<[Shard]>,
    /// Where deliveries whose stamp names a channel are recorded too (fronts' histograms only).
    channels: Option<Arc<ChannelLatencies>>,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        LatencyHistogram::with_shards(SHARDS, None)
    }
}

impl std::fmt::Debug for LatencyHistogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LatencyHistogram").field("count", &self.snapshot().count()).finish()
    }
}

impl LatencyHistogram {
    fn with_shards(shards: usize, channels: Option<Arc<ChannelLatencies>>) -> Self {
        debug_assert!(shards.is_power_of_two());
        LatencyHistogram { shards: (0..shards).map(|_| Shard::default()).collect(), channels }
    }

    /// Records one delivery of a publication stamped `start`, written now.
    pub fn record(&self, start: Stamp) {
        self.record_n(start, Stamp::now(), 1);
    }

    /// Records `n` deliveries of a publication stamped `start`, written at `written` (a writer takes
    /// one [`Stamp::now`] per batch and records every frame of the batch against it).
    pub fn record_n(&self, start: Stamp, written: Stamp, n: u64) {
        let latency = start.until(written);
        self.add(latency, n);
        if let (Some(channels), true) = (&self.channels, start.channel.slot != 0) {
            channels.record(start.channel, latency, n);
        }
    }

    /// Records one latency directly (for sources that measured it themselves).
    pub fn record_duration(&self, latency: Duration) {
        self.add(latency, 1);
    }

    fn reset(&self) {
        for shard in self.shards.iter() {
            shard.counts.iter().for_each(|c| c.store(0, Ordering::Relaxed));
            shard.sum_nanos.store(0, Ordering::Relaxed);
        }
    }

    fn add(&self, latency: Duration, n: u64) {
        if n == 0 {
            return;
        }
        let shard = &self.shards[shard_index() & (self.shards.len() - 1)];
        shard.counts[bucket(latency)].fetch_add(n, Ordering::Relaxed);
        let nanos = latency.as_nanos().min(u128::from(u64::MAX)) as u64;
        shard.sum_nanos.fetch_add(nanos.saturating_mul(n), Ordering::Relaxed);
    }

    /// The counts so far (summed over shards; concurrent records may or may not be included).
    pub fn snapshot(&self) -> LatencySnapshot {
        let mut snapshot = LatencySnapshot::default();
        for shard in self.shards.iter() {
            for (total, count) in snapshot.counts.iter_mut().zip(&shard.counts) {
                *total += count.load(Ordering::Relaxed);
            }
            snapshot.sum_nanos += shard.sum_nanos.load(Ordering::Relaxed);
        }
        snapshot
    }
}

/// A histogram's counts at one moment; snapshots of several histograms can be merged.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LatencySnapshot {
    counts: [u64; BUCKETS],
    sum_nanos: u64,
}

impl LatencySnapshot {
    /// Deliveries recorded.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// The sum of every recorded latency.
    pub fn sum(&self) -> Duration {
        Duration::from_nanos(self.sum_nanos)
    }

    /// Deliveries per bucket (not cumulative), the last one above [`BUCKET_BOUNDS_MICROS`]'s last bound.
    pub fn buckets(&self) -> &[u64] {
        &self.counts
    }

    /// Adds `other`'s counts to these.
    pub fn merge(&mut self, other: &LatencySnapshot) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.sum_nanos += other.sum_nanos;
    }

    /// Counts recorded since `earlier` (a snapshot of the same histogram taken before).
    pub fn since(&self, earlier: &LatencySnapshot) -> LatencySnapshot {
        let mut out = self.clone();
        for (a, b) in out.counts.iter_mut().zip(&earlier.counts) {
            *a = a.saturating_sub(*b);
        }
        out.sum_nanos = out.sum_nanos.saturating_sub(earlier.sum_nanos);
        out
    }

    /// The `q` quantile (0.0 to 1.0), interpolated linearly inside its bucket; `None` with no samples.
    /// Above the last bound the answer is that bound (10 s).
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let rank = (q.clamp(0.0, 1.0) * total as f64).max(1.0);
        let mut seen = 0u64;
        for (i, &count) in self.counts.iter().enumerate() {
            if count == 0 {
                continue;
            }
            if (seen + count) as f64 >= rank {
                let Some(&upper) = BUCKET_BOUNDS_MICROS.get(i) else {
                    return Some(Duration::from_micros(BUCKET_BOUNDS_MICROS[BUCKETS - 2]));
                };
                let lower = if i == 0 { 0 } else { BUCKET_BOUNDS_MICROS[i - 1] };
                let within = (rank - seen as f64) / count as f64;
                let micros = lower as f64 + (upper - lower) as f64 * within;
                return Some(Duration::from_nanos((micros * 1000.0) as u64));
            }
            seen += count;
        }
        None
    }
}

/// Fronts (protocols) a hub keeps latency histograms for, at most.
pub const MAX_FRONTS: usize = 8;

/// The latency histograms of one app, one per front. Looking one up ([`Latencies::get`]) is lock-free
/// (a scan of at most [`MAX_FRONTS`] set-once slots), so a writer may do it per batch; creating one
/// ([`Latencies::front`]) takes a lock, once per front.
pub struct Latencies {
    slots: [OnceLock<(&'static str, Arc<LatencyHistogram>)>; MAX_FRONTS],
    create: Mutex<()>,
    channels: Arc<ChannelLatencies>,
    recording: AtomicBool,
}

impl Default for Latencies {
    fn default() -> Self {
        Latencies {
            slots: Default::default(),
            create: Mutex::new(()),
            channels: Arc::new(ChannelLatencies::new(MAX_CHANNEL_LATENCIES)),
            recording: AtomicBool::new(true),
        }
    }
}

impl std::fmt::Debug for Latencies {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.slots.iter().filter_map(|s| s.get().map(|(front, _)| front))).finish()
    }
}

impl Latencies {
    /// The histogram a writer of `front` records into: `None` if it was not created, or while
    /// recording is off ([`Latencies::set_recording`]).
    pub fn get(&self, front: &str) -> Option<&Arc<LatencyHistogram>> {
        if !self.recording.load(Ordering::Relaxed) {
            return None;
        }
        self.histogram(front)
    }

    fn histogram(&self, front: &str) -> Option<&Arc<LatencyHistogram>> {
        self.slots.iter().map_while(OnceLock::get).find(|(name, _)| *name == front).map(|(_, h)| h)
    }

    /// Turns recording on or off for writers that look their histogram up from now on (connections
    /// opened later): off, [`Latencies::get`] answers `None`, so they neither read the clock nor
    /// count. For measuring what recording costs; on by default.
    pub fn set_recording(&self, on: bool) {
        self.recording.store(on, Ordering::Relaxed);
    }

    /// Whether recording is on.
    pub fn recording(&self) -> bool {
        self.recording.load(Ordering::Relaxed)
    }

    /// The per-channel latency slots of this app.
    pub fn channels(&self) -> &Arc<ChannelLatencies> {
        &self.channels
    }

    /// The histogram of `front`, created on first use. With [`MAX_FRONTS`] fronts already, a new one
    /// gets a histogram of its own that is not listed (recorded, never rendered).
    pub fn front(&self, front: &'static str) -> Arc<LatencyHistogram> {
        if let Some(h) = self.histogram(front) {
            return h.clone();
        }
        let _creating = self.create.lock();
        if let Some(h) = self.histogram(front) {
            return h.clone();
        }
        let histogram = Arc::new(LatencyHistogram::with_shards(SHARDS, Some(self.channels.clone())));
        if let Some(slot) = self.slots.iter().find(|s| s.get().is_none()) {
            let _ = slot.set((front, histogram.clone()));
        }
        histogram
    }

    /// Every front's histogram, by front name.
    pub fn all(&self) -> Vec<(&'static str, Arc<LatencyHistogram>)> {
        self.slots.iter().map_while(OnceLock::get).cloned().collect()
    }

    /// Every front's counts merged.
    pub fn merged(&self) -> LatencySnapshot {
        let mut total = LatencySnapshot::default();
        for (_, histogram) in self.all() {
            total.merge(&histogram.snapshot());
        }
        total
    }
}

/// One channel latency slot: its generation (bumped when the slot is given back, so late deliveries
/// of the old channel stop counting) and its histogram (allocated on first use, reset on reuse).
#[derive(Default)]
struct ChannelSlot {
    generation: AtomicU32,
    histogram: OnceLock<LatencyHistogram>,
}

/// The fixed table of one app's per-channel latency histograms (see the module doc for the policy).
pub struct ChannelLatencies {
    slots: Box<[ChannelSlot]>,
    /// Slots given back, and how many were ever handed out (the next fresh index).
    free: Mutex<(Vec<u32>, u32)>,
}

impl std::fmt::Debug for ChannelLatencies {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChannelLatencies").field("capacity", &self.slots.len()).finish()
    }
}

impl ChannelLatencies {
    /// A table of `capacity` slots (nothing allocated per slot until it is first used).
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.min(u32::MAX as usize - 1);
        ChannelLatencies { slots: (0..capacity).map(|_| ChannelSlot::default()).collect(), free: Mutex::new((Vec::new(), 0)) }
    }

    /// A slot for a channel that just became occupied, or `None` when every slot is taken. The slot
    /// is given back when the returned guard drops.
    pub fn acquire(self: &Arc<Self>) -> Option<ChannelLatency> {
        let index = {
            let mut free = self.free.lock();
            match free.0.pop() {
                Some(index) => index,
                None if (free.1 as usize) < self.slots.len() => {
                    free.1 += 1;
                    free.1 - 1
                }
                None => return None,
            }
        };
        let slot = &self.slots[index as usize];
        let histogram = slot.histogram.get_or_init(|| LatencyHistogram::with_shards(CHANNEL_SHARDS, None));
        histogram.reset();
        let generation = slot.generation.load(Ordering::Acquire);
        Some(ChannelLatency { owner: self.clone(), tag: ChannelTag { slot: index + 1, generation } })
    }

    /// Slots in use now.
    pub fn in_use(&self) -> usize {
        let free = self.free.lock();
        free.1 as usize - free.0.len()
    }

    fn record(&self, tag: ChannelTag, latency: Duration, n: u64) {
        let Some(slot) = self.slots.get(tag.slot as usize - 1) else { return };
        // A delivery still in flight when its channel went (and its slot possibly went to another
        // channel in between) may count once for the new one: a sample, never memory unsafety.
        if slot.generation.load(Ordering::Relaxed) != tag.generation {
            return;
        }
        if let Some(histogram) = slot.histogram.get() {
            histogram.add(latency, n);
        }
    }

    fn release(&self, tag: ChannelTag) {
        let index = tag.slot - 1;
        self.slots[index as usize].generation.fetch_add(1, Ordering::AcqRel);
        self.free.lock().0.push(index);
    }
}

/// A channel's latency slot, held in the channel's entry while it is occupied on this node; given
/// back on drop.
pub struct ChannelLatency {
    owner: Arc<ChannelLatencies>,
    tag: ChannelTag,
}

impl std::fmt::Debug for ChannelLatency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChannelLatency").field("slot", &self.tag.slot).finish()
    }
}

impl ChannelLatency {
    /// What stamps of this channel's deliveries carry.
    pub fn tag(&self) -> ChannelTag {
        self.tag
    }

    /// The channel's counts so far.
    pub fn snapshot(&self) -> LatencySnapshot {
        self.owner.slots[self.tag.slot as usize - 1].histogram.get().map(LatencyHistogram::snapshot).unwrap_or_default()
    }
}

impl Drop for ChannelLatency {
    fn drop(&mut self) {
        self.owner.release(self.tag);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_cover_the_range() {
        assert_eq!(bucket(Duration::from_micros(0)), 0);
        assert_eq!(bucket(Duration::from_micros(100)), 0);
        assert_eq!(bucket(Duration::from_micros(101)), 1);
        assert_eq!(bucket(Duration::from_millis(1)), 3);
        assert_eq!(bucket(Duration::from_secs(10)), 15);
        assert_eq!(bucket(Duration::from_secs(11)), 16);
        assert_eq!(bucket(Duration::MAX), 16);
    }

    #[test]
    fn records_and_reads_back() {
        let h = LatencyHistogram::default();
        let start = Stamp::at(1_000_000);
        h.record_n(start, Stamp::at(1_000_000 + 2_000_000), 3); // 2 ms, three deliveries
        h.record_n(start, Stamp::at(1_000_000 + 50_000), 1); // 50 µs
        h.record_n(start, Stamp::at(0), 1); // clock went "backwards": zero, never a panic
        let s = h.snapshot();
        assert_eq!(s.count(), 5);
        assert_eq!(s.buckets()[0], 2);
        assert_eq!(s.buckets()[4], 3);
        assert_eq!(s.sum(), Duration::from_nanos(3 * 2_000_000 + 50_000));
        let p50 = s.quantile(0.5).unwrap();
        assert!(p50 > Duration::from_millis(1) && p50 <= Duration::from_micros(2500), "{p50:?}");
        assert!(s.quantile(0.2).unwrap() <= Duration::from_micros(100));
        assert_eq!(LatencySnapshot::default().quantile(0.5), None);
    }

    #[test]
    fn overflow_bucket_answers_the_last_bound() {
        let h = LatencyHistogram::default();
        h.record_duration(Duration::from_secs(60));
        assert_eq!(h.snapshot().quantile(0.99), Some(Duration::from_secs(10)));
    }

    #[test]
    fn concurrent_records_are_all_counted() {
        let h = Arc::new(LatencyHistogram::default());
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let h = h.clone();
                std::thread::spawn(move || {
                    for _ in 0..10_000 {
                        h.record(Stamp::now());
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(h.snapshot().count(), 40_000);
    }

    #[test]
    fn since_and_merge() {
        let h = LatencyHistogram::default();
        h.record_duration(Duration::from_millis(1));
        let before = h.snapshot();
        h.record_duration(Duration::from_millis(3));
        let delta = h.snapshot().since(&before);
        assert_eq!(delta.count(), 1);
        assert_eq!(delta.buckets()[5], 1);
        let mut merged = before.clone();
        merged.merge(&delta);
        assert_eq!(merged, h.snapshot());
    }

    #[test]
    fn fronts_share_one_histogram_each() {
        let l = Latencies::default();
        let a = l.front("pusher");
        assert!(Arc::ptr_eq(&a, &l.front("pusher")));
        l.front("centrifugo").record_duration(Duration::from_millis(1));
        a.record_duration(Duration::from_millis(1));
        assert_eq!(l.all().len(), 2);
        assert_eq!(l.merged().count(), 2);
        assert!(Arc::ptr_eq(l.get("pusher").unwrap(), &a));
        assert!(l.get("relay").is_none());
    }

    #[test]
    fn channel_slots_record_bounded_and_are_given_back() {
        let l = Latencies::default();
        let front = l.front("pusher");
        let a = l.channels().acquire().unwrap();
        let b = l.channels().acquire().unwrap();
        let start = Stamp::at(0);
        front.record_n(start.for_channel(a.tag()), Stamp::at(1_000_000), 2);
        front.record_n(start.for_channel(b.tag()), Stamp::at(3_000_000), 1);
        front.record_n(start, Stamp::at(3_000_000), 1);
        assert_eq!(front.snapshot().count(), 4, "the front counts every delivery");
        assert_eq!((a.snapshot().count(), b.snapshot().count()), (2, 1));
        let stale = a.tag();
        drop(a);
        assert_eq!(l.channels().in_use(), 1);
        // The slot goes to the next channel, reset; a late delivery of the old channel is not counted.
        let c = l.channels().acquire().unwrap();
        assert_eq!(c.snapshot().count(), 0);
        front.record_n(start.for_channel(stale), Stamp::at(1_000_000), 1);
        assert_eq!(c.snapshot().count(), 0);
        // Bounded: a full table hands out nothing more.
        let small = Arc::new(ChannelLatencies::new(1));
        let only = small.acquire().unwrap();
        assert!(small.acquire().is_none());
        drop(only);
        assert!(small.acquire().is_some());
    }

    #[test]
    fn recording_can_be_switched_off() {
        let l = Latencies::default();
        l.front("pusher");
        assert!(l.get("pusher").is_some());
        l.set_recording(false);
        assert!(l.get("pusher").is_none());
        assert_eq!(l.all().len(), 1, "still listed (rendered as zero)");
    }
}
