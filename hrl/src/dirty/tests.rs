//! Unit tests: merge, adjacency, split, clamp and fallback edge cases.

use super::*;

const KIB: u64 = 1024;

fn ext(offset: u64, len: u64) -> Extent {
    Extent::new(offset, len).unwrap()
}

fn ranges(map: &DirtyMap) -> Vec<(u64, u64)> {
    map.iter().map(|e| (e.offset(), e.end())).collect()
}

/// A fine map that never falls back.
fn fine(disk_size: u64) -> DirtyMap {
    DirtyMap::new(disk_size, DirtyBudget::new(usize::MAX, 8).unwrap()).unwrap()
}

/// A map that falls back as soon as it would hold more than `max_extents` extents.
fn tiny(disk_size: u64, max_extents: usize, bitmap_bytes: usize) -> DirtyMap {
    DirtyMap::new(
        disk_size,
        DirtyBudget::new(max_extents, bitmap_bytes).unwrap(),
    )
    .unwrap()
}

#[test]
fn new_validates_inputs() {
    assert_eq!(
        DirtyMap::new(0, DirtyBudget::default()).unwrap_err(),
        DirtyMapError::EmptyDisk
    );
    assert_eq!(
        DirtyBudget::new(10, 7).unwrap_err(),
        DirtyMapError::BitmapBudgetTooSmall { bitmap_bytes: 7 }
    );
    let map = DirtyMap::new(1, DirtyBudget::new(0, 8).unwrap()).unwrap();
    assert_eq!((map.mode(), map.coarse_granule()), (Mode::Fine, 4096));
    assert!(map.is_empty() && map.dirty_bytes() == 0);
    assert_eq!(map.len(), 0);
    assert_eq!(
        DirtyMap::new(u64::MAX, DirtyBudget::default())
            .unwrap()
            .disk_size(),
        u64::MAX
    );
}

#[test]
fn granule_is_smallest_power_of_two_that_fits() {
    let g = |disk, bytes| tiny(disk, 1, bytes).coarse_granule();
    assert_eq!(g(1 << 40, DirtyBudget::DEFAULT_BITMAP_BYTES), 32 * KIB);
    assert_eq!(g(128 << 30, DirtyBudget::DEFAULT_BITMAP_BYTES), 4 * KIB);
    assert_eq!(
        g((128 << 30) + 1, DirtyBudget::DEFAULT_BITMAP_BYTES),
        8 * KIB
    );
    // One word = 64 bits: 64 granules of 4 KiB exactly, then one byte more doubles it.
    assert_eq!(g(256 * KIB, 8), 4 * KIB);
    assert_eq!(g(256 * KIB + 1, 8), 8 * KIB);
    // Only whole words count: 15 bytes is one word.
    assert_eq!(g(256 * KIB + 1, 15), 8 * KIB);
    assert_eq!(g(256 * KIB + 1, 16), 4 * KIB);
    assert_eq!(g(u64::MAX, 8), 1 << 58);
}

#[test]
fn insert_merges_overlapping_and_adjacent() {
    let mut m = fine(1 << 20);
    m.insert(ext(100, 100)); // [100, 200)
    m.insert(ext(300, 100)); // [300, 400)
    assert_eq!(ranges(&m), [(100, 200), (300, 400)]);
    m.insert(ext(200, 50)); // touches the first on the left
    assert_eq!(ranges(&m), [(100, 250), (300, 400)]);
    m.insert(ext(251, 48)); // one-byte gaps on both sides stay gaps
    assert_eq!(ranges(&m), [(100, 250), (251, 299), (300, 400)]);
    m.insert(ext(299, 1)); // fills the right gap: adjacent both sides
    assert_eq!(ranges(&m), [(100, 250), (251, 400)]);
    m.insert(ext(50, 50)); // adjacent on the right of the new range
    assert_eq!(ranges(&m), [(50, 250), (251, 400)]);
    m.insert(ext(120, 10)); // inside: no change
    assert_eq!(ranges(&m), [(50, 250), (251, 400)]);
    assert_eq!(m.dirty_bytes(), 200 + 149);
}

#[test]
fn insert_bridges_many_ranges() {
    let mut m = fine(1 << 20);
    for i in 0..10 {
        m.insert(ext(i * 1000, 10));
    }
    assert_eq!(m.len(), 10);
    m.insert(ext(5, 9000)); // from inside the first to exactly the start of the last
    assert_eq!(ranges(&m), [(0, 9010)]);
    assert_eq!(m.dirty_bytes(), 9010);
}

#[test]
fn remove_trims_and_splits() {
    let mut m = fine(1 << 20);
    m.insert(ext(0, 1000));
    m.remove(ext(400, 100)); // split
    assert_eq!(ranges(&m), [(0, 400), (500, 1000)]);
    m.remove(ext(0, 10)); // head
    m.remove(ext(990, 100)); // tail, past the range
    assert_eq!(ranges(&m), [(10, 400), (500, 990)]);
    m.remove(ext(300, 300)); // across the gap: trims both
    assert_eq!(ranges(&m), [(10, 300), (600, 990)]);
    m.remove(ext(10, 290)); // exactly one range
    assert_eq!(ranges(&m), [(600, 990)]);
    m.remove(ext(0, 1 << 20));
    assert!(m.is_empty() && m.dirty_bytes() == 0);
    m.remove(ext(5, 5)); // from empty: no-op
    assert!(m.is_empty());
}

#[test]
fn queries_in_fine_mode() {
    let mut m = fine(10_000);
    m.insert(ext(100, 100));
    assert!(!m.contains(99) && m.contains(100) && m.contains(199) && !m.contains(200));
    assert!(m.covers(ext(100, 100)) && m.covers(ext(150, 1)));
    assert!(!m.covers(ext(99, 2)) && !m.covers(ext(199, 2)));
    assert!(!m.contains(10_000) && !m.covers(ext(9_999, 2)));
}

#[test]
fn inserts_are_clamped_to_the_disk_and_counted() {
    let mut m = fine(10_000);
    m.insert(ext(9_000, 2_000));
    assert_eq!(ranges(&m), [(9_000, 10_000)]);
    m.insert(ext(10_000, 5)); // wholly outside: dropped
    m.insert(ext(u64::MAX - 1, 1));
    assert_eq!(ranges(&m), [(9_000, 10_000)]);
    let s = m.stats();
    assert_eq!(s.out_of_range_inserts, 3);
    assert_eq!(s.out_of_range_bytes, 1_000 + 5 + 1);
    m.remove(ext(9_500, 1 << 40)); // removes are clamped silently
    assert_eq!(ranges(&m), [(9_000, 9_500)]);
    assert_eq!(m.stats().out_of_range_inserts, 3);
}

#[test]
fn falls_back_when_an_insert_would_exceed_the_budget() {
    // 100 KiB disk, 4 KiB granules (25 bits); 2 extents allowed.
    let mut m = tiny(100 * KIB, 2, 8);
    m.insert(ext(0, 10));
    m.insert(ext(5_000, 10));
    m.insert(ext(10, 90)); // merges: still fine at the budget
    assert_eq!((m.mode(), m.len()), (Mode::Fine, 2));
    m.insert(ext(20 * KIB + 1, 1)); // a third extent: fall back
    assert_eq!(m.mode(), Mode::Coarse { granule: 4096 });
    assert_eq!(m.stats().fallbacks, 1);
    assert_eq!(ranges(&m), [(0, 8 * KIB), (20 * KIB, 24 * KIB)]);
    assert_eq!(m.dirty_bytes(), 12 * KIB);
    assert!(m.contains(4095) && m.contains(8191) && !m.contains(8192));
    assert!(m.covers(ext(0, 8 * KIB)) && !m.covers(ext(0, 8 * KIB + 1)));
}

#[test]
fn coarse_last_granule_ends_at_the_disk() {
    let mut m = tiny(10_000, 0, 8); // granules 4096: [0,4096) [4096,8192) [8192,10000)
    m.insert(ext(9_999, 1));
    assert_eq!(m.mode(), Mode::Coarse { granule: 4096 });
    assert_eq!(ranges(&m), [(8192, 10_000)]);
    assert_eq!(m.dirty_bytes(), 10_000 - 8192);
    m.insert(ext(0, 1));
    assert_eq!(m.dirty_bytes(), 4096 + 10_000 - 8192);
    m.remove(ext(8192, 1_000)); // partial last granule: stays
    assert_eq!(ranges(&m), [(0, 4096), (8192, 10_000)]);
    m.remove(ext(8000, 1 << 20)); // reaches the disk's end: the last granule is whole
    assert_eq!(ranges(&m), [(0, 4096)]);
}

#[test]
fn coarse_remove_clears_only_whole_granules() {
    let mut m = tiny(64 * KIB, 0, 8);
    m.insert(ext(0, 64 * KIB));
    assert_eq!(ranges(&m), [(0, 64 * KIB)]);
    m.remove(ext(4096 + 1, 3 * 4096)); // covers granule 2 and 3 wholly, 1 and 4 in part
    assert_eq!(ranges(&m), [(0, 8 * KIB), (16 * KIB, 64 * KIB)]);
    m.remove(ext(20 * KIB, 4095)); // inside one granule: nothing cleared
    assert_eq!(ranges(&m), [(0, 8 * KIB), (16 * KIB, 64 * KIB)]);
    assert_eq!(m.len(), 2);
}

#[test]
fn splitting_remove_at_the_budget_falls_back() {
    let mut m = tiny(64 * KIB, 1, 8);
    m.insert(ext(0, 64 * KIB));
    m.remove(ext(10, 20_000)); // would split: coarse, then clear granules 1..=3
    assert_eq!(m.mode(), Mode::Coarse { granule: 4096 });
    assert_eq!(ranges(&m), [(0, 4096), (16 * KIB, 64 * KIB)]);
    let mut m = tiny(64 * KIB, 1, 8);
    m.insert(ext(0, 64 * KIB));
    m.remove(ext(0, 20_000)); // a trim does not add an extent: stays exact
    assert_eq!(
        (m.mode(), ranges(&m)),
        (Mode::Fine, vec![(20_000, 64 * KIB)])
    );
}

#[test]
fn coarse_runs_cross_word_boundaries() {
    // 8 MiB at 4 KiB: 2048 bits, 32 words.
    let mut m = tiny(8 << 20, 0, 1 << 10);
    m.insert(ext(63 * 4096, 2 * 4096)); // bits 63-64
    m.insert(ext(128 * 4096, 256 * 4096)); // bits 128..384: whole words
    m.insert(ext(2047 * 4096, 4096)); // the very last bit
    assert_eq!(
        ranges(&m),
        [
            (63 * 4096, 65 * 4096),
            (128 * 4096, 384 * 4096),
            (2047 * 4096, 2048 * 4096)
        ]
    );
    assert_eq!(m.len(), 3);
    assert_eq!(m.dirty_bytes(), (2 + 256 + 1) * 4096);
    m.insert(ext(65 * 4096, 63 * 4096)); // joins the first two runs
    assert_eq!(m.len(), 2);
    m.insert(ext(0, 8 << 20));
    assert_eq!((m.len(), ranges(&m)), (1, vec![(0, 8 << 20)]));
}

#[test]
fn take_moves_out_and_returns_to_fine() {
    let mut m = tiny(64 * KIB, 1, 8);
    m.insert(ext(0, 1));
    m.insert(ext(10_000, 1));
    m.insert(ext(70_000, 1)); // out of range
    assert!(matches!(m.mode(), Mode::Coarse { .. }));
    let taken = m.take();
    assert_eq!(ranges(&taken), [(0, 4096), (8192, 12_288)]);
    assert_eq!(taken.stats(), DirtyStats::default());
    assert!(m.is_empty() && m.mode() == Mode::Fine && m.memory_bytes() == 0);
    assert_eq!(m.stats().fallbacks, 1);
    assert_eq!(m.stats().out_of_range_inserts, 1);
    // Shipping failed: put it back.
    m.extend(taken);
    assert_eq!(ranges(&m), [(0, 4096), (8192, 12_288)]);
    m.clear();
    assert!(m.is_empty() && m.mode() == Mode::Fine);
}

#[test]
fn into_iter_matches_iter() {
    for max_extents in [0, usize::MAX] {
        let mut m = tiny(1 << 20, max_extents, 64);
        for i in 0..20 {
            m.insert(ext(i * 30_000, 5_000));
        }
        let borrowed: Vec<Extent> = (&m).into_iter().collect();
        let owned: Vec<Extent> = m.into_iter().collect();
        assert_eq!(borrowed, owned);
    }
}

#[test]
fn memory_stays_within_budget() {
    let budget = DirtyBudget::new(100, 1 << 10).unwrap();
    let mut m = DirtyMap::new(1 << 30, budget).unwrap();
    for i in 0..100 {
        m.insert(ext(i * (1 << 20), 1));
    }
    assert_eq!(m.mode(), Mode::Fine);
    assert_eq!(m.memory_bytes(), 100 * FINE_BYTES_PER_EXTENT);
    for i in 0..100_000 {
        m.insert(ext(i * 7919 % (1 << 30), 512));
    }
    assert_eq!(m.mode(), Mode::Coarse { granule: 128 * KIB });
    assert_eq!(m.memory_bytes(), 1 << 10);
    assert!(m.memory_bytes() <= budget.max_memory_bytes());
}

/// Micro-measurement, not a test: inserts per second of random 4 KiB extents on a 1 TiB disk
/// with the default budget. Run with
/// `cargo test --release -p sitrep-hrl dirty::tests::measure -- --ignored --nocapture`.
#[test]
#[ignore = "measurement; run by hand in release mode"]
fn measure_insert_rate() {
    use std::time::Instant;
    const TIB: u64 = 1 << 40;
    let mut x = 0x9E37_79B9_7F4A_7C15_u64;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        ext((x % (TIB / 4096)) * 4096, 4096)
    };
    let rate = |n: u64, t: Instant| n as f64 / t.elapsed().as_secs_f64() / 1e6;

    for max_extents in [DirtyBudget::DEFAULT_MAX_EXTENTS, 1 << 20] {
        let budget = DirtyBudget::new(max_extents, DirtyBudget::DEFAULT_BITMAP_BYTES).unwrap();
        let mut m = DirtyMap::new(TIB, budget).unwrap();
        let (t, mut n) = (Instant::now(), 0u64);
        while m.mode() == Mode::Fine {
            m.insert(next());
            n += 1;
        }
        println!(
            "fine, budget {max_extents} extents: {n} inserts until fallback, {:.1} M inserts/s \
             (incl. one conversion)",
            rate(n, t)
        );
    }

    let mut m = DirtyMap::new(TIB, DirtyBudget::default()).unwrap();
    let (n, t) = (10_000_000, Instant::now());
    for i in 0..n {
        m.insert(ext(i * 4096, 4096));
    }
    println!(
        "fine, sequential 4 KiB: {:.1} M inserts/s, {} extent",
        rate(n, t),
        m.len()
    );

    let mut m = DirtyMap::new(
        TIB,
        DirtyBudget::new(0, DirtyBudget::DEFAULT_BITMAP_BYTES).unwrap(),
    )
    .unwrap();
    let n = 50_000_000;
    let t = Instant::now();
    for _ in 0..n {
        m.insert(next());
    }
    println!(
        "coarse, granule {}: {:.1} M inserts/s; {} extents, {} MiB dirty",
        m.coarse_granule(),
        rate(n, t),
        m.len(),
        m.dirty_bytes() >> 20
    );
    let t = Instant::now();
    let runs = m.iter().count();
    println!("coarse iteration: {runs} runs in {:?}", t.elapsed());
}
