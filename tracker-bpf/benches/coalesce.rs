//! Throughput of the eBPF tracker's [`Coalescer`]: one full window of events pushed, then
//! drained (sorted, merged) into records.
//!
//! Run: `cargo bench -p sitrep-tracker-bpf --bench coalesce`. Each iteration pushes
//! [`EVENTS`] write events — the disk thread's largest window — and drains them for a 1 GiB
//! disk; events/s.
//!
//! - `tracker_coalesce/random_4k_1GiB`: random 4 KiB writes (few merge: most become extents);
//! - `tracker_coalesce/sequential_4k`: consecutive 4 KiB writes (all merge into one extent).

// criterion_group! expands to an undocumented `pub fn benches()`.
#![allow(missing_docs)]

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use sitrep_tracker_bpf::coalesce::Coalescer;
use sitrep_tracker_bpf::event::{Event, Op};

/// Size of the simulated disk.
const DISK: u64 = 1 << 30;
/// Size of one write, in bytes and in 512-byte sectors.
const BLOCK: u32 = 4096;
const BLOCK_SECTORS: u64 = 8;
/// Events per window (`MAX_WINDOW_EVENTS` in the disk thread).
const EVENTS: u64 = 1 << 16;

fn write(seq: u64, sector: u64) -> Event {
    Event {
        seq,
        sector,
        bytes: BLOCK,
        dev: 0,
        slot: 0,
        op: Op::Write,
        flags: 0,
    }
}

/// `EVENTS` random 4 KiB-aligned writes (xorshift64, deterministic).
fn random_events() -> Vec<Event> {
    let blocks = DISK / u64::from(BLOCK);
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..EVENTS)
        .map(|seq| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            write(seq, (x % blocks) * BLOCK_SECTORS)
        })
        .collect()
}

/// `EVENTS` consecutive 4 KiB writes from sector 0.
fn sequential_events() -> Vec<Event> {
    (0..EVENTS)
        .map(|seq| write(seq, seq * BLOCK_SECTORS))
        .collect()
}

fn bench_coalesce(c: &mut Criterion) {
    let mut group = c.benchmark_group("tracker_coalesce");
    group.throughput(Throughput::Elements(EVENTS));
    for (name, events) in [
        ("random_4k_1GiB", random_events()),
        ("sequential_4k", sequential_events()),
    ] {
        // One window reused across iterations, as the disk thread reuses its own.
        let mut window = Coalescer::default();
        group.bench_function(name, |b| {
            b.iter(|| {
                for e in &events {
                    window.push(e);
                }
                let drained = window.drain(DISK);
                black_box((drained.extents, drained.records.len()))
            });
        });
    }
    group.finish();
}

criterion_group!(benches, bench_coalesce);
criterion_main!(benches);
