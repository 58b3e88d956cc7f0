//! Throughput of [`Key::digest`] — fine and coarse digests of 64 MiB — for both algorithms.
//!
//! Run: `cargo bench -p sitrep-base --bench digest`. The resync reads a disk at device speed
//! (1–3 GiB/s for an NVMe drive), so a digest that keeps up on one core keeps the resync IO-bound.

// criterion_group! expands to an undocumented `pub fn benches()`.
#![allow(missing_docs)]

use base::digest::{Algo, Digest, Key};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;

/// Bytes digested per iteration.
const LEN: usize = 64 << 20;

fn bench_digest(c: &mut Criterion) {
    // Incompressible-looking data; the hashes' speed does not depend on content.
    let data: Vec<u8> = (0..LEN)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13).to_le_bytes()[0])
        .collect();
    let mut group = c.benchmark_group("digest_64MiB");
    group.throughput(Throughput::Bytes(u64::try_from(LEN).unwrap_or(u64::MAX)));
    group.sample_size(10);
    for algo in [Algo::Xxh3, Algo::Blake3] {
        let Ok(key) = Key::random(algo) else {
            eprintln!("skipping {algo}: no random source");
            continue;
        };
        let mut fines: Vec<Digest> = Vec::with_capacity(LEN / base::digest::FINE);
        let mut coarses: Vec<Digest> = Vec::with_capacity(LEN / base::digest::COARSE);
        group.bench_function(algo.name(), |b| {
            b.iter(|| {
                fines.clear();
                coarses.clear();
                key.digest(black_box(&data), &mut fines, &mut coarses);
                black_box((&fines, &coarses));
            });
        });
    }
    group.finish();
}

criterion_group!(benches, bench_digest);
criterion_main!(benches);
