//! Which byte ranges of a disk are dirty, remembered in bounded memory.
//!
//! The change trackers (eBPF, ublk) feed every write's [`Extent`] into a [`DirtyMap`]; at
//! each cycle the shipper [`take`](DirtyMap::take)s the map and reads the data its extents
//! cover, while new writes go into the emptied map (double buffering, like the logs).
//!
//! # Design
//! One of two representations at a time:
//! - **Fine** (the start): a `BTreeMap<start, end>` of disjoint, non-adjacent byte ranges.
//!   Exact to the byte, O(log n) insert and remove, sorted iteration for free, and memory
//!   proportional to the number of *runs*, which stays small for the sequential and
//!   hot-spot writes that dominate real workloads.
//! - **Coarse** (the fallback): when an insert (or a splitting remove) would take the fine
//!   map past [`DirtyBudget::max_extents`], it is converted, once, into a bitmap with one bit
//!   per *granule*: the smallest power of two ≥ 4 KiB for which the whole disk fits in
//!   [`DirtyBudget::bitmap_bytes`]. From then on the map is a **superset** of the truth:
//!   it never loses a byte and over-reports only up to granule boundaries. An insert sets a
//!   bit or two in place, with no allocation.
//!
//! Rejected alternatives:
//! - *Always a bitmap*: a 4 KiB granule costs 32 MiB per TiB per buffer even when ten
//!   extents are dirty, and sub-page writes (512-byte sectors) would still be rounded up.
//! - *A roaring bitmap crate*: compresses well but is still a set of granule numbers (same
//!   rounding), its memory grows with fragmentation so it would need this same budget and
//!   fallback, and it is a dependency for what is here a few hundred lines.
//! - *An interval tree crate*: answers "which stored intervals overlap X", which we never
//!   ask; we need coalescing, which a sorted map of disjoint ranges does directly.
//!
//! # Semantics
//! - **Out of range**: the map covers `[0, disk_size)`. Inserts are *clamped* to it (the part
//!   past the end is dropped, and counted in [`DirtyStats`], so a tracker fed odd ranges by
//!   the kernel keeps the in-range part instead of failing the whole event); removes and
//!   queries are clamped silently (nothing past the end is ever dirty).
//! - **Coarse remove** clears only granules lying *wholly* inside the removed range (the last
//!   granule ends at `disk_size`). A granule the range covers only in part stays set, since
//!   its other bytes may still be dirty: a coarse map never forgets a byte it was not told
//!   is clean.
//! - **Back to fine**: [`take`](DirtyMap::take) and [`clear`](DirtyMap::clear) leave the map
//!   empty and in fine mode, freeing the bitmap; the next cycle starts exact again.
//!
//! # Memory bound
//! At most `max_extents × FINE_BYTES_PER_EXTENT` bytes in fine mode, the bitmap (≤
//! `bitmap_bytes`) in coarse mode, and their sum for the moment of the conversion:
//! [`DirtyBudget::max_memory_bytes`]. No insert/remove sequence can exceed it. A taken map
//! holds its own storage, so a tracker double-buffering holds twice that.

mod coarse;
mod fine;
#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;

use std::collections::btree_map;
use std::mem;

use crate::units::Extent;
use coarse::{Bitmap, Geometry};
use fine::FineSet;

/// Upper estimate of the heap bytes one fine-mode extent costs in a `BTreeMap<u64, u64>`.
///
/// A leaf node is 192 bytes for 11 entries and (except the root) never holds fewer than 5;
/// internal nodes and allocator headers add roughly a quarter. Measured: 27–35 bytes per entry
/// for random, sequential and heavily-removed maps; 64 leaves a 2× margin.
pub const FINE_BYTES_PER_EXTENT: u64 = 64;

/// How much memory a [`DirtyMap`] may use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DirtyBudget {
    max_extents: usize,
    bitmap_bytes: usize,
}

impl DirtyBudget {
    /// Default cap on fine-mode extents: 65 536, about 4 MiB at [`FINE_BYTES_PER_EXTENT`].
    pub const DEFAULT_MAX_EXTENTS: usize = 65_536;
    /// Default bitmap cap: 4 MiB, i.e. 4 KiB granules up to 128 GiB, 32 KiB at 1 TiB.
    pub const DEFAULT_BITMAP_BYTES: usize = 4 << 20;

    /// A budget of at most `max_extents` fine-mode extents (0 makes the map coarse from its
    /// first insert) and a coarse bitmap of at most `bitmap_bytes` (whole 8-byte words
    /// count; a larger disk gets a larger granule).
    ///
    /// # Errors
    /// [`DirtyMapError::BitmapBudgetTooSmall`] when `bitmap_bytes` is below 8.
    pub fn new(max_extents: usize, bitmap_bytes: usize) -> Result<Self, DirtyMapError> {
        if bitmap_bytes < 8 {
            return Err(DirtyMapError::BitmapBudgetTooSmall { bitmap_bytes });
        }
        Ok(Self {
            max_extents,
            bitmap_bytes,
        })
    }

    /// Cap on the number of extents in fine mode.
    #[must_use]
    pub const fn max_extents(&self) -> usize {
        self.max_extents
    }

    /// Cap on the coarse bitmap's size in bytes.
    #[must_use]
    pub const fn bitmap_bytes(&self) -> usize {
        self.bitmap_bytes
    }

    /// The most heap a map with this budget can hold: the fine extents plus the bitmap,
    /// which coexist only while the map converts.
    #[must_use]
    pub fn max_memory_bytes(&self) -> u64 {
        let extents = u64::try_from(self.max_extents).unwrap_or(u64::MAX);
        let bitmap = u64::try_from(self.bitmap_bytes).unwrap_or(u64::MAX);
        extents
            .saturating_mul(FINE_BYTES_PER_EXTENT)
            .saturating_add(bitmap)
    }
}

impl Default for DirtyBudget {
    fn default() -> Self {
        Self {
            max_extents: Self::DEFAULT_MAX_EXTENTS,
            bitmap_bytes: Self::DEFAULT_BITMAP_BYTES,
        }
    }
}

/// Why a [`DirtyMap`] or [`DirtyBudget`] cannot be created.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DirtyMapError {
    /// The disk size is zero; a map needs at least one byte to track.
    #[error("cannot track dirty ranges of a zero-byte disk")]
    EmptyDisk,
    /// The bitmap budget cannot hold even one 64-bit word.
    #[error("dirty bitmap budget of {bitmap_bytes} bytes is below the 8-byte minimum")]
    BitmapBudgetTooSmall {
        /// The budget asked for.
        bitmap_bytes: usize,
    },
}

/// The representation a [`DirtyMap`] currently uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum Mode {
    /// Exact byte ranges.
    Fine,
    /// A bitmap: reported extents are unions of whole granules (the last one ends at the
    /// disk's end) and a superset of the bytes written.
    Coarse {
        /// Bytes per bit.
        granule: u64,
    },
}

/// Counters a [`DirtyMap`] keeps across [`take`](DirtyMap::take) and
/// [`clear`](DirtyMap::clear), for the tracker's metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct DirtyStats {
    /// Times the map fell back from fine to coarse mode.
    pub fallbacks: u64,
    /// Inserts that reached past the end of the disk (clamped or dropped).
    pub out_of_range_inserts: u64,
    /// Bytes of those inserts that lay past the end of the disk and were dropped.
    pub out_of_range_bytes: u64,
}

/// The set of dirty byte ranges of one disk, exact while it fits its [`DirtyBudget`] and a
/// granule-rounded superset after that (see the [module docs](self)).
#[derive(Clone, Debug)]
pub struct DirtyMap {
    budget: DirtyBudget,
    geo: Geometry,
    /// Empty whenever `coarse` is `Some`.
    fine: FineSet,
    coarse: Option<Bitmap>,
    stats: DirtyStats,
}

impl DirtyMap {
    /// An empty map, in fine mode, for a disk of `disk_size` bytes.
    ///
    /// # Errors
    /// [`DirtyMapError::EmptyDisk`] when `disk_size` is zero.
    pub fn new(disk_size: u64, budget: DirtyBudget) -> Result<Self, DirtyMapError> {
        let Some(geo) = Geometry::new(disk_size, budget.bitmap_bytes) else {
            return Err(if disk_size == 0 {
                DirtyMapError::EmptyDisk
            } else {
                DirtyMapError::BitmapBudgetTooSmall {
                    bitmap_bytes: budget.bitmap_bytes,
                }
            });
        };
        Ok(Self {
            budget,
            geo,
            fine: FineSet::default(),
            coarse: None,
            stats: DirtyStats::default(),
        })
    }

    /// Size of the disk the map describes.
    #[must_use]
    pub fn disk_size(&self) -> u64 {
        self.geo.disk_size()
    }

    /// The budget the map was created with.
    #[must_use]
    pub fn budget(&self) -> DirtyBudget {
        self.budget
    }

    /// The current representation.
    #[must_use]
    pub fn mode(&self) -> Mode {
        match &self.coarse {
            None => Mode::Fine,
            Some(b) => Mode::Coarse {
                granule: b.granule(),
            },
        }
    }

    /// The granule the map uses (or would use) in coarse mode; fixed by the disk size and
    /// the budget.
    #[must_use]
    pub fn coarse_granule(&self) -> u64 {
        self.geo.granule()
    }

    /// Counters since the map was created.
    #[must_use]
    pub fn stats(&self) -> DirtyStats {
        self.stats
    }

    /// Marks `extent` dirty, clamped to the disk (the part past its end is counted in
    /// [`DirtyStats`] and dropped). Merges with every range it overlaps or touches; falls back
    /// to coarse mode when it would otherwise exceed the extent budget.
    ///
    /// O(log n) in fine mode; a word update or two, without allocation, in coarse mode.
    pub fn insert(&mut self, extent: Extent) {
        let Some((start, end)) = self.clamp_insert(extent) else {
            return;
        };
        if let Some(bitmap) = &mut self.coarse {
            bitmap.insert(start, end);
        } else if self.fine.len() < self.budget.max_extents
            || !self.fine.insert_would_grow(start, end)
        {
            self.fine.insert(start, end);
        } else {
            self.coarse_mut().insert(start, end);
        }
    }

    /// Marks `extent` clean (e.g. shipped or resynced), clamped to the disk.
    ///
    /// Fine mode: exact, splitting a range in two when needed (if that split would exceed
    /// the extent budget, the map falls back to coarse mode first). Coarse mode: clears only
    /// the granules lying wholly inside `extent`; partly covered granules stay dirty.
    pub fn remove(&mut self, extent: Extent) {
        let Some((start, end)) = clamp(extent, self.disk_size()) else {
            return;
        };
        if let Some(bitmap) = &mut self.coarse {
            bitmap.remove(start, end);
        } else if self.fine.len() < self.budget.max_extents
            || !self.fine.remove_would_grow(start, end)
        {
            self.fine.remove(start, end);
        } else {
            self.coarse_mut().remove(start, end);
        }
    }

    /// Whether the byte at `offset` is dirty (as reported: in coarse mode, its granule is).
    #[must_use]
    pub fn contains(&self, offset: u64) -> bool {
        if offset >= self.disk_size() {
            return false;
        }
        match &self.coarse {
            None => self.fine.contains(offset),
            Some(b) => b.contains(offset),
        }
    }

    /// Whether every byte of `extent` is dirty (as reported); `false` if it reaches past the
    /// end of the disk.
    #[must_use]
    pub fn covers(&self, extent: Extent) -> bool {
        if !extent.fits_in(self.disk_size()) {
            return false;
        }
        let (start, end) = (extent.offset(), extent.end());
        match &self.coarse {
            None => self.fine.covers(start, end),
            Some(b) => b.covers(start, end),
        }
    }

    /// Total bytes reported dirty (the sum of [`iter`](Self::iter)'s lengths). O(1).
    #[must_use]
    pub fn dirty_bytes(&self) -> u64 {
        match &self.coarse {
            None => self.fine.bytes(),
            Some(b) => b.bytes(),
        }
    }

    /// Number of extents [`iter`](Self::iter) yields: O(1) in fine mode, one pass over the
    /// bitmap words in coarse mode.
    #[must_use]
    pub fn len(&self) -> usize {
        match &self.coarse {
            None => self.fine.len(),
            Some(b) => b.count_runs(),
        }
    }

    /// Whether nothing is dirty.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        match &self.coarse {
            None => self.fine.len() == 0,
            Some(b) => b.is_empty(),
        }
    }

    /// The dirty extents, sorted, disjoint and non-adjacent (each maximal run once).
    #[must_use]
    pub fn iter(&self) -> Iter<'_> {
        Iter(match &self.coarse {
            None => IterInner::Fine(self.fine.iter()),
            Some(bitmap) => IterInner::Coarse { bitmap, cursor: 0 },
        })
    }

    /// Forgets everything, returning to fine mode and freeing the bitmap. Counters stay.
    pub fn clear(&mut self) {
        self.fine = FineSet::default();
        self.coarse = None;
    }

    /// Moves the contents out into a new map (same disk and budget, zeroed counters), leaving
    /// this one empty and in fine mode; no copy is made. The shipper's cycle boundary.
    #[must_use]
    pub fn take(&mut self) -> DirtyMap {
        DirtyMap {
            budget: self.budget,
            geo: self.geo,
            fine: mem::take(&mut self.fine),
            coarse: self.coarse.take(),
            stats: DirtyStats::default(),
        }
    }

    /// Estimated heap bytes held now: extents × [`FINE_BYTES_PER_EXTENT`] or the bitmap.
    /// Never above [`DirtyBudget::max_memory_bytes`].
    #[must_use]
    pub fn memory_bytes(&self) -> u64 {
        let extents = u64::try_from(self.fine.len()).unwrap_or(u64::MAX);
        let bitmap = self.coarse.as_ref().map_or(0, Bitmap::heap_bytes);
        extents
            .saturating_mul(FINE_BYTES_PER_EXTENT)
            .saturating_add(bitmap)
    }

    /// Clamps an insert to the disk, counting what falls outside.
    fn clamp_insert(&mut self, extent: Extent) -> Option<(u64, u64)> {
        let disk_size = self.disk_size();
        if extent.end() > disk_size {
            let outside = extent.end() - extent.offset().max(disk_size);
            self.stats.out_of_range_inserts = self.stats.out_of_range_inserts.saturating_add(1);
            self.stats.out_of_range_bytes = self.stats.out_of_range_bytes.saturating_add(outside);
        }
        clamp(extent, disk_size)
    }

    /// The bitmap, converting the fine ranges into it first if the map is still fine.
    fn coarse_mut(&mut self) -> &mut Bitmap {
        let (fine, stats, geo) = (&mut self.fine, &mut self.stats, self.geo);
        self.coarse.get_or_insert_with(|| {
            stats.fallbacks = stats.fallbacks.saturating_add(1);
            let mut bitmap = Bitmap::new(geo);
            for (&start, &end) in fine.iter() {
                bitmap.insert(start, end);
            }
            *fine = FineSet::default();
            bitmap
        })
    }
}

/// `extent` as `(start, end)` cut at `disk_size`; `None` if nothing is left.
fn clamp(extent: Extent, disk_size: u64) -> Option<(u64, u64)> {
    let end = extent.end().min(disk_size);
    (extent.offset() < end).then_some((extent.offset(), end))
}

impl Extend<Extent> for DirtyMap {
    /// Inserts every extent, e.g. to put back a taken map whose shipping failed.
    fn extend<I: IntoIterator<Item = Extent>>(&mut self, extents: I) {
        for extent in extents {
            self.insert(extent);
        }
    }
}

/// Iterator over a [`DirtyMap`]'s extents, in order; see [`DirtyMap::iter`].
#[derive(Debug)]
pub struct Iter<'a>(IterInner<'a>);

#[derive(Debug)]
enum IterInner<'a> {
    Fine(btree_map::Iter<'a, u64, u64>),
    Coarse { bitmap: &'a Bitmap, cursor: u64 },
}

impl Iterator for Iter<'_> {
    type Item = Extent;

    fn next(&mut self) -> Option<Extent> {
        loop {
            let (start, end) = match &mut self.0 {
                IterInner::Fine(it) => it.next().map(|(&s, &e)| (s, e))?,
                IterInner::Coarse { bitmap, cursor } => bitmap.next_run(cursor)?,
            };
            // Ranges are never empty (type invariants), so this never loops.
            if let Some(extent) = Extent::from_bounds(start, end) {
                return Some(extent);
            }
        }
    }
}

/// Owning iterator over a [`DirtyMap`]'s extents, in order.
#[derive(Debug)]
pub struct IntoIter(IntoIterInner);

#[derive(Debug)]
enum IntoIterInner {
    Fine(btree_map::IntoIter<u64, u64>),
    Coarse { bitmap: Bitmap, cursor: u64 },
}

impl Iterator for IntoIter {
    type Item = Extent;

    fn next(&mut self) -> Option<Extent> {
        loop {
            let (start, end) = match &mut self.0 {
                IntoIterInner::Fine(it) => it.next()?,
                IntoIterInner::Coarse { bitmap, cursor } => bitmap.next_run(cursor)?,
            };
            if let Some(extent) = Extent::from_bounds(start, end) {
                return Some(extent);
            }
        }
    }
}

impl IntoIterator for DirtyMap {
    type Item = Extent;
    type IntoIter = IntoIter;

    fn into_iter(self) -> IntoIter {
        IntoIter(match self.coarse {
            None => IntoIterInner::Fine(self.fine.into_ranges()),
            Some(bitmap) => IntoIterInner::Coarse { bitmap, cursor: 0 },
        })
    }
}

impl<'a> IntoIterator for &'a DirtyMap {
    type Item = Extent;
    type IntoIter = Iter<'a>;

    fn into_iter(self) -> Iter<'a> {
        self.iter()
    }
}
