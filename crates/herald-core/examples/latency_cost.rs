//! Measures the cost of recording a delivery latency (one thread, with a channel slot, then two at once).
use herald_core::latency::{LatencyHistogram, Stamp};
use std::sync::Arc;
use std::time::Instant;
fn main() {
    let h = Arc::new(LatencyHistogram::default());
    let n = 20_000_000u64;
    let start = Stamp::now();
    let t = Instant::now();
    for _ in 0..n {
        h.record_n(start, Stamp::now(), 1);
    }
    println!("1 thread, with a clock read each: {:.1} ns/record", t.elapsed().as_nanos() as f64 / n as f64);
    let written = Stamp::now();
    let t = Instant::now();
    for _ in 0..n {
        h.record_n(start, written, 1);
    }
    println!("1 thread, one clock read per batch: {:.1} ns/record", t.elapsed().as_nanos() as f64 / n as f64);
    // A front's histogram recording a stamp that names a channel slot: front and channel both count.
    let latencies = herald_core::latency::Latencies::default();
    let front = latencies.front("pusher");
    let slot = latencies.channels().acquire().expect("a free slot");
    let tagged = start.for_channel(slot.tag());
    let t = Instant::now();
    for _ in 0..n {
        front.record_n(tagged, written, 1);
    }
    println!("1 thread, front + channel histogram: {:.1} ns/record", t.elapsed().as_nanos() as f64 / n as f64);
    let t = Instant::now();
    let th: Vec<_> = (0..2)
        .map(|_| {
            let h = h.clone();
            std::thread::spawn(move || {
                let w = Stamp::now();
                for _ in 0..n {
                    h.record_n(start, w, 1);
                }
            })
        })
        .collect();
    for x in th {
        x.join().unwrap();
    }
    println!("2 threads at once: {:.1} ns/record per thread", t.elapsed().as_nanos() as f64 / n as f64);
    println!("count {}", h.snapshot().count());
}
