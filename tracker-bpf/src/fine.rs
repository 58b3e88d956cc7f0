//! The fine write bitmap: where plain writes are recorded when
//! [`TrackerConfig::write_bitmap`](crate::TrackerConfig) is on.
//!
//! The BPF program sets one bit per granule (4 KiB unless the device is too big for its
//! share of the map) and then one summary bit per touched 64-bit word. The consumer scans
//! only the summary, takes summary words and then the fine words they point at with atomic
//! swaps (in that order, the mirror of the program's), and turns the bits into extents.
//!
//! Each device owns a region of the map aligned to 64 words, so no summary word is shared
//! between devices. Regions are allocated first-fit when a device is added and freed when it
//! is removed.

use std::sync::atomic::{AtomicU64, Ordering};

use hrl::Extent;

/// Collects granule ranges in ascending order into extents, merging touching ones (shared
/// by the fine bitmap and the ring-overflow bitmap drains).
#[derive(Debug, Default)]
pub(crate) struct Runs {
    out: Vec<Extent>,
    run: Option<(u64, u64)>,
}

impl Runs {
    /// Adds `[start, end)`; empty ranges are ignored. Ranges must come in ascending order.
    pub(crate) fn push(&mut self, start: u64, end: u64) {
        if start >= end {
            return;
        }
        self.run = match self.run {
            Some((rs, re)) if start == re => Some((rs, end)),
            Some((rs, re)) => {
                self.out.extend(Extent::from_bounds(rs, re));
                Some((start, end))
            }
            None => Some((start, end)),
        };
    }

    /// The merged extents.
    pub(crate) fn finish(mut self) -> Vec<Extent> {
        if let Some((rs, re)) = self.run {
            self.out.extend(Extent::from_bounds(rs, re));
        }
        self.out
    }
}

/// A device's region of the fine bitmap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Region {
    /// First fine word (a multiple of 64).
    pub(crate) base: u32,
    /// Fine words in the region (a multiple of 64).
    pub(crate) words: u32,
    /// log2 of 512-byte sectors per bit.
    pub(crate) shift: u32,
}

/// First-fit allocator of 64-word-aligned regions in a map of `total` words.
#[derive(Debug)]
pub(crate) struct Allocator {
    total: u32,
    used: Vec<(u32, u32)>,
}

/// The finest granule: 4 KiB (8 sectors).
const MIN_SHIFT: u32 = 3;
/// Coarser than 1 MiB per bit is no longer worth a bitmap: such a device uses the ring.
const MAX_SHIFT: u32 = 11;

impl Allocator {
    pub(crate) fn new(total_words: u32) -> Self {
        Self {
            total: total_words - total_words % 64,
            used: Vec::new(),
        }
    }

    /// A region for a device of `nr_sects` sectors, at the finest granule that fits.
    pub(crate) fn alloc(&mut self, nr_sects: u64) -> Option<Region> {
        for shift in MIN_SHIFT..=MAX_SHIFT {
            let bits = nr_sects.div_ceil(1 << shift);
            let words = u32::try_from(bits.div_ceil(64).next_multiple_of(64)).ok()?;
            if let Some(base) = self.find(words) {
                self.used.push((base, words));
                self.used.sort_unstable();
                return Some(Region { base, words, shift });
            }
        }
        None
    }

    fn find(&self, words: u32) -> Option<u32> {
        let mut at = 0u32;
        for &(b, w) in &self.used {
            if b - at >= words {
                return Some(at);
            }
            at = b + w;
        }
        (self.total.checked_sub(at)? >= words).then_some(at)
    }

    pub(crate) fn free(&mut self, r: Region) {
        self.used.retain(|&(b, _)| b != r.base);
    }
}

/// Clears a region (before a device starts using it).
pub(crate) fn clear(fine: &[AtomicU64], summary: &[AtomicU64], r: Region) {
    let (b, n) = (r.base as usize, r.words as usize);
    for w in fine.get(b..b + n).unwrap_or_default() {
        w.store(0, Ordering::Relaxed);
    }
    for s in summary.get(b / 64..(b + n) / 64).unwrap_or_default() {
        s.store(0, Ordering::Relaxed);
    }
}

/// Takes the set bits of a device's region and returns them as byte extents relative to the
/// device (clamped to its end, adjacent granules merged), and how many bits were set.
pub(crate) fn drain(
    fine: &[AtomicU64],
    summary: &[AtomicU64],
    r: Region,
    nr_sects: u64,
) -> (Vec<Extent>, u64) {
    let disk_end = nr_sects.saturating_mul(hrl::SECTOR_SIZE);
    let granule = hrl::SECTOR_SIZE << r.shift;
    let first_summary = r.base as usize / 64;
    let mut runs = Runs::default();
    let mut bits_set = 0u64;
    let sums = summary
        .get(first_summary..first_summary + r.words as usize / 64)
        .unwrap_or_default();
    for (si, s) in sums.iter().enumerate() {
        if s.load(Ordering::Relaxed) == 0 {
            continue;
        }
        let mut sbits = s.swap(0, Ordering::AcqRel);
        while sbits != 0 {
            let sb = sbits.trailing_zeros() as usize;
            sbits &= sbits - 1;
            let local_word = si * 64 + sb;
            let Some(w) = fine.get(r.base as usize + local_word) else {
                continue;
            };
            let mut bits = w.swap(0, Ordering::AcqRel);
            bits_set += u64::from(bits.count_ones());
            while bits != 0 {
                let b = u64::from(bits.trailing_zeros());
                bits &= bits - 1;
                let g = local_word as u64 * 64 + b;
                runs.push(g * granule, ((g + 1) * granule).min(disk_end));
            }
        }
    }
    (runs.finish(), bits_set)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(n: usize) -> Vec<AtomicU64> {
        (0..n).map(|_| AtomicU64::new(0)).collect()
    }

    #[test]
    fn allocates_first_fit_aligned_and_coarsens_when_short() {
        let mut a = Allocator::new(1024);
        // 64 MiB disk at 4 KiB: 16384 bits = 256 words.
        let r1 = a.alloc(64 << 11).unwrap();
        assert_eq!(
            r1,
            Region {
                base: 0,
                words: 256,
                shift: 3
            }
        );
        let r2 = a.alloc(64 << 11).unwrap();
        assert_eq!(r2.base, 256);
        // 1 GiB disk does not fit at 4 KiB (4096 words): coarser granule.
        let r3 = a.alloc(1 << 21).unwrap();
        assert!(r3.shift > 3 && r3.base == 512 && r3.words <= 512, "{r3:?}");
        a.free(r1);
        assert_eq!(a.alloc(32 << 11).unwrap().base, 0, "freed space is reused");
        assert_eq!(
            Allocator::new(64).alloc(1 << 40),
            None,
            "too big even at 1 MiB/bit"
        );
    }

    #[test]
    fn drains_through_the_summary_and_clears() {
        let (fine, summary) = (words(256), words(4));
        let r = Region {
            base: 128,
            words: 128,
            shift: 3,
        };
        // Device-local word 0 bits 1..=2, word 1 bit 0 (adjacent? no: bit 63 of word 0 is
        // not set), and local word 70 bit 5.
        fine[128].store(0b110, Ordering::Relaxed);
        fine[129].store(1, Ordering::Relaxed);
        fine[128 + 70].store(1 << 5, Ordering::Relaxed);
        summary[2].store(0b11, Ordering::Relaxed); // words 128, 129
        summary[3].store(1 << 6, Ordering::Relaxed); // word 198
        let nr_sects = 128 * 64 * 8;
        let (got, bits) = drain(&fine, &summary, r, nr_sects);
        assert_eq!(bits, 4);
        let x = |g: u64, n: u64| Extent::new(g * 4096, n * 4096).unwrap();
        assert_eq!(got, vec![x(1, 2), x(64, 1), x(70 * 64 + 5, 1)]);
        assert!(
            fine.iter()
                .chain(summary.iter())
                .all(|w| w.load(Ordering::Relaxed) == 0)
        );
    }

    #[test]
    fn a_fine_bit_without_its_summary_bit_waits_for_the_next_drain() {
        let (fine, summary) = (words(64), words(1));
        let r = Region {
            base: 0,
            words: 64,
            shift: 3,
        };
        fine[3].store(1, Ordering::Relaxed); // the program has not set the summary yet
        assert_eq!(drain(&fine, &summary, r, 64 * 64 * 8).0, vec![]);
        summary[0].store(1 << 3, Ordering::Relaxed);
        assert_eq!(
            drain(&fine, &summary, r, 64 * 64 * 8).0,
            vec![Extent::new(3 * 64 * 4096, 4096).unwrap()]
        );
    }
}
