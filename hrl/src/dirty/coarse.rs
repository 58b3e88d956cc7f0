//! Coarse mode: one bit per granule, a superset of the dirty bytes in bounded memory.

use std::fmt;

/// Smallest granule the bitmap uses: a page, the unit most writes come in.
pub(super) const MIN_GRANULE_SHIFT: u32 = 12;

/// The shape of a disk's bitmap: granule `1 << shift`, `nbits` granules, `nwords` words.
///
/// Computed (and validated) once when the map is created, so that falling back to coarse
/// mode later, in the middle of an insert, cannot fail.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Geometry {
    disk_size: u64,
    shift: u32,
    nbits: u64,
    nwords: usize,
}

impl Geometry {
    /// The smallest granule (a power of two ≥ `1 << MIN_GRANULE_SHIFT`) whose bitmap for
    /// `disk_size` bytes fits in `bitmap_bytes`, counting whole 64-bit words only. `None`
    /// when `disk_size` is zero or `bitmap_bytes` is below one word.
    pub(super) fn new(disk_size: u64, bitmap_bytes: usize) -> Option<Self> {
        let max_words = bitmap_bytes / 8;
        let max_bits = u64::try_from(max_words)
            .unwrap_or(u64::MAX)
            .saturating_mul(64);
        if max_bits == 0 || disk_size == 0 {
            return None;
        }
        // With shift 63 a disk has at most 2 granules, so a one-word bitmap always fits.
        let shift = (MIN_GRANULE_SHIFT..64).find(|&s| disk_size.div_ceil(1 << s) <= max_bits)?;
        let nbits = disk_size.div_ceil(1 << shift);
        // nbits <= max_bits, so nwords <= max_words, which is a usize.
        let nwords = usize::try_from(nbits.div_ceil(64)).ok()?;
        Some(Self {
            disk_size,
            shift,
            nbits,
            nwords,
        })
    }

    /// Bytes per bit.
    pub(super) fn granule(&self) -> u64 {
        1 << self.shift
    }

    /// Size of the disk the bitmap describes.
    pub(super) fn disk_size(&self) -> u64 {
        self.disk_size
    }
}

/// A bitmap with one bit per granule of a disk; bit `i` covers bytes
/// `[i * granule, min((i + 1) * granule, disk_size))`.
///
/// Invariants: bits at or past `nbits` are never set; `set` is the number of set bits;
/// `words.len() == nwords == nbits.div_ceil(64)`, a `usize`, so every bit index below
/// `nbits` has a word index that converts and looks up successfully.
#[derive(Clone)]
pub(super) struct Bitmap {
    shift: u32,
    disk_size: u64,
    nbits: u64,
    words: Vec<u64>,
    set: u64,
}

/// The mask of bits `[lo, hi)` of one word, `lo < hi <= 64`.
const fn mask(lo: u64, hi: u64) -> u64 {
    (!0u64 << lo) & (!0u64 >> (64 - hi))
}

/// Calls `f(word, mask)` for each word that bits `[b0, b1)` touch.
fn for_each_word(b0: u64, b1: u64, mut f: impl FnMut(u64, u64)) {
    let mut b = b0;
    while b < b1 {
        let w = b >> 6;
        let base = w << 6;
        f(w, mask(b - base, (b1 - base).min(64)));
        b = base + 64;
    }
}

impl Bitmap {
    /// An all-clear bitmap of the given shape (allocates `geo.nwords` words).
    pub(super) fn new(geo: Geometry) -> Self {
        Self {
            shift: geo.shift,
            disk_size: geo.disk_size,
            nbits: geo.nbits,
            words: vec![0; geo.nwords],
            set: 0,
        }
    }

    /// Whether no bit is set.
    pub(super) fn is_empty(&self) -> bool {
        self.set == 0
    }

    /// Bytes per bit.
    pub(super) fn granule(&self) -> u64 {
        1 << self.shift
    }

    /// Bytes of heap the bitmap holds.
    pub(super) fn heap_bytes(&self) -> u64 {
        u64::try_from(self.words.capacity())
            .unwrap_or(u64::MAX)
            .saturating_mul(8)
    }

    fn word(&self, w: u64) -> u64 {
        // The index is below `words.len()` for every bit below `nbits` (type invariant), so
        // the conversion and the lookup both succeed; 0 is the safe reading otherwise.
        usize::try_from(w)
            .ok()
            .and_then(|i| self.words.get(i))
            .copied()
            .unwrap_or(0)
    }

    /// Replaces word `w` by `f(word)`, keeping the set-bit count.
    fn update(&mut self, w: u64, f: impl FnOnce(u64) -> u64) {
        let Some(slot) = usize::try_from(w).ok().and_then(|i| self.words.get_mut(i)) else {
            return; // Unreachable: see `word`.
        };
        let old = *slot;
        let new = f(old);
        *slot = new;
        self.set = self.set - u64::from(old.count_ones()) + u64::from(new.count_ones());
    }

    /// Marks every granule that `[start, end)` touches (`start < end <= disk_size`).
    /// No allocation; one or two word updates for a page-sized write.
    pub(super) fn insert(&mut self, start: u64, end: u64) {
        let (b0, b1) = (start >> self.shift, ((end - 1) >> self.shift) + 1);
        for_each_word(b0, b1, |w, m| self.update(w, |x| x | m));
    }

    /// Clears the granules lying wholly inside `[start, end)` (`start < end <= disk_size`);
    /// the last granule ends at `disk_size`, so a removal reaching the disk's end clears it.
    /// Granules only partly inside stay set: their other bytes may still be dirty.
    pub(super) fn remove(&mut self, start: u64, end: u64) {
        let b0 = start.div_ceil(self.granule());
        let b1 = if end >= self.disk_size {
            self.nbits
        } else {
            end >> self.shift
        };
        for_each_word(b0, b1, |w, m| self.update(w, |x| x & !m));
    }

    /// Whether the granule holding byte `x` (< disk_size) is set.
    pub(super) fn contains(&self, x: u64) -> bool {
        let b = x >> self.shift;
        self.word(b >> 6) & (1 << (b & 63)) != 0
    }

    /// Whether every granule touched by `[start, end)` is set (`start < end <= disk_size`).
    pub(super) fn covers(&self, start: u64, end: u64) -> bool {
        let (b0, b1) = (start >> self.shift, ((end - 1) >> self.shift) + 1);
        let mut all = true;
        for_each_word(b0, b1, |w, m| all &= self.word(w) & m == m);
        all
    }

    /// Bytes reported dirty: set granules times the granule, less the part of a set last
    /// granule that lies past the end of the disk.
    pub(super) fn bytes(&self) -> u64 {
        // Neither product can overflow: both stay below `last << shift`, which is below
        // `disk_size`.
        let last = self.nbits - 1;
        if self.word(last >> 6) & (1 << (last & 63)) != 0 {
            (self.set - 1) * self.granule() + (self.disk_size - (last << self.shift))
        } else {
            self.set * self.granule()
        }
    }

    /// Number of runs of set bits (extents iteration yields): O(words), counting the set bits
    /// that have a clear (or no) bit before them.
    pub(super) fn count_runs(&self) -> usize {
        let mut carry = 0;
        let mut runs = 0usize;
        for &w in &self.words {
            let starts = w & !((w << 1) | carry);
            runs += usize::try_from(starts.count_ones()).unwrap_or(usize::MAX);
            carry = w >> 63;
        }
        runs
    }

    /// The first set bit at or after `from`, skipping zero words.
    fn next_set(&self, from: u64) -> Option<u64> {
        if from >= self.nbits {
            return None;
        }
        let mut w = from >> 6;
        let mut word = self.word(w) & (!0u64 << (from & 63));
        let last_word = (self.nbits - 1) >> 6;
        while word == 0 {
            w += 1;
            if w > last_word {
                return None;
            }
            word = self.word(w);
        }
        Some((w << 6) + u64::from(word.trailing_zeros()))
    }

    /// The first clear bit at or after `from`, or `nbits`, skipping all-ones words.
    fn next_clear(&self, from: u64) -> u64 {
        let mut w = from >> 6;
        let mut word = !self.word(w) & (!0u64 << (from & 63));
        let last_word = (self.nbits - 1) >> 6;
        while word == 0 {
            w += 1;
            if w > last_word {
                return self.nbits;
            }
            word = !self.word(w);
        }
        ((w << 6) + u64::from(word.trailing_zeros())).min(self.nbits)
    }

    /// The byte range of the first run of set bits at or after bit `*cursor`, advancing the
    /// cursor past it.
    pub(super) fn next_run(&self, cursor: &mut u64) -> Option<(u64, u64)> {
        let b0 = self.next_set(*cursor)?;
        let b1 = self.next_clear(b0);
        *cursor = b1;
        let start = b0 << self.shift;
        let end = b1.saturating_mul(self.granule()).min(self.disk_size);
        Some((start, end))
    }
}

impl fmt::Debug for Bitmap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bitmap")
            .field("granule", &self.granule())
            .field("bits", &self.nbits)
            .field("set", &self.set)
            .finish_non_exhaustive()
    }
}
