//! Throughput of [`DirtyMap::insert`], the bounded-memory dirty-extent map that trackers and
//! the shipper's cycle reader coalesce changes in.
//!
//! Run: `cargo bench -p sitrep-hrl --bench dirty`. Each iteration builds a fresh map of a
//! 1 GiB disk from [`EVENTS`] write extents and reads its size; events/s.
//!
//! - `hrl_dirty_map/random_4k_1GiB`: random 4 KiB writes, default budget (the map stays
//!   exact: about 46 000 runs, under the 65 536-extent cap);
//! - `hrl_dirty_map/random_4k_1GiB_coarse`: the same writes with a 1 024-extent budget, so
//!   the map falls back to its bitmap early and most inserts are bitmap updates;
//! - `hrl_dirty_map/sequential_4k`: consecutive 4 KiB writes (one growing run).

// criterion_group! expands to an undocumented `pub fn benches()`.
#![allow(missing_docs)]
// A bench whose fixed setup is invalid has nothing to measure: failing loudly is right.
#![allow(clippy::expect_used)]

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use hrl::Extent;
use hrl::dirty::{DirtyBudget, DirtyMap};

/// Size of the simulated disk.
const DISK: u64 = 1 << 30;
/// Size of one write.
const BLOCK: u64 = 4096;
/// Inserts per iteration (the eBPF tracker's largest coalescing window).
const EVENTS: usize = 1 << 16;

/// `EVENTS` random 4 KiB-aligned extents of the disk (xorshift64, deterministic).
fn random_extents() -> Vec<Extent> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..EVENTS)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            Extent::new((x % (DISK / BLOCK)) * BLOCK, BLOCK).expect("extent inside the disk")
        })
        .collect()
}

/// `EVENTS` consecutive 4 KiB extents from offset 0.
fn sequential_extents() -> Vec<Extent> {
    (0..EVENTS as u64)
        .map(|i| Extent::new(i * BLOCK, BLOCK).expect("extent inside the disk"))
        .collect()
}

fn bench_dirty(c: &mut Criterion) {
    let mut group = c.benchmark_group("hrl_dirty_map");
    group.throughput(Throughput::Elements(EVENTS as u64));
    let coarse = DirtyBudget::new(1024, DirtyBudget::DEFAULT_BITMAP_BYTES).expect("budget");
    let cases = [
        ("random_4k_1GiB", random_extents(), DirtyBudget::default()),
        ("random_4k_1GiB_coarse", random_extents(), coarse),
        (
            "sequential_4k",
            sequential_extents(),
            DirtyBudget::default(),
        ),
    ];
    for (name, extents, budget) in &cases {
        group.bench_function(*name, |b| {
            b.iter(|| {
                let mut map = DirtyMap::new(DISK, *budget).expect("map of a 1 GiB disk");
                for e in extents {
                    map.insert(*e);
                }
                black_box((map.dirty_bytes(), map.mode()))
            });
        });
    }
    group.finish();
}

criterion_group!(benches, bench_dirty);
criterion_main!(benches);
