//! Fine mode: the exact dirty ranges, in a B-tree keyed by start offset.

use std::collections::BTreeMap;
use std::collections::btree_map;
use std::ops::Bound::{Excluded, Included};

/// An exact set of byte ranges, stored as `start -> end` (half-open).
///
/// Invariants: every range is non-empty; ranges are disjoint and **non-adjacent** (for two
/// consecutive entries, `prev.end < next.start`), so each maximal dirty run is one entry and
/// the entry count is the number of extents a consumer will see; `bytes` is the sum of the
/// lengths.
#[derive(Debug, Default, Clone)]
pub(super) struct FineSet {
    ranges: BTreeMap<u64, u64>,
    bytes: u64,
}

impl FineSet {
    /// Number of ranges.
    pub(super) fn len(&self) -> usize {
        self.ranges.len()
    }

    /// Total bytes covered.
    pub(super) fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The range that starts at or before `x`, if any.
    fn at_or_before(&self, x: u64) -> Option<(u64, u64)> {
        self.ranges.range(..=x).next_back().map(|(&s, &e)| (s, e))
    }

    /// Whether inserting `[start, end)` would add an entry, i.e. it neither overlaps nor
    /// touches any existing range.
    pub(super) fn insert_would_grow(&self, start: u64, end: u64) -> bool {
        let touches_pred = self.at_or_before(start).is_some_and(|(_, e)| e >= start);
        let touches_succ = self
            .ranges
            .range((Excluded(start), Included(end)))
            .next()
            .is_some();
        !touches_pred && !touches_succ
    }

    /// Adds `[start, end)` (`start < end`), merging every range it overlaps or touches.
    ///
    /// O(log n) plus O(log n) per range absorbed; each range is absorbed at most once after
    /// it was created, so a sequence of inserts is O(log n) amortized per insert.
    pub(super) fn insert(&mut self, start: u64, end: u64) {
        // The range at or before `start` that overlaps or touches it grows in place.
        let pred = self.at_or_before(start).filter(|&(_, pe)| pe >= start);
        if let Some((_, pe)) = pred
            && pe >= end
        {
            return; // Already wholly dirty: the common case for rewrites of hot blocks.
        }
        let lo = pred.map_or(start, |(ps, _)| ps);
        let mut hi = end;
        // Absorb every range starting in (lo, hi]: a start equal to `hi` touches, so merges.
        while let Some((&qs, &qe)) = self.ranges.range((Excluded(lo), Included(hi))).next() {
            self.ranges.remove(&qs);
            self.bytes -= qe - qs;
            hi = hi.max(qe);
        }
        // Replaces the predecessor's end in place when there is one.
        let old_end = self.ranges.insert(lo, hi);
        self.bytes += (hi - lo) - old_end.map_or(0, |pe| pe - lo);
    }

    /// Whether removing `[start, end)` would split a range in two (add an entry).
    pub(super) fn remove_would_grow(&self, start: u64, end: u64) -> bool {
        self.ranges
            .range(..start)
            .next_back()
            .is_some_and(|(_, &e)| e > end)
    }

    /// Clears `[start, end)` (`start < end`), trimming or splitting the ranges it overlaps.
    pub(super) fn remove(&mut self, start: u64, end: u64) {
        // A range that starts before `start` and reaches into the removed span: keep its
        // head, and its tail if it also reaches past `end` (the split case).
        if let Some((&ps, &pe)) = self.ranges.range(..start).next_back()
            && pe > start
        {
            self.ranges.insert(ps, start);
            self.bytes -= pe - start;
            if pe > end {
                self.ranges.insert(end, pe);
                self.bytes += pe - end;
            }
        }
        // Ranges that start inside the removed span: drop them, keep any tail past `end`.
        while let Some((&qs, &qe)) = self.ranges.range(start..end).next() {
            self.ranges.remove(&qs);
            self.bytes -= qe - qs;
            if qe > end {
                self.ranges.insert(end, qe);
                self.bytes += qe - end;
            }
        }
    }

    /// Whether byte `x` is dirty.
    pub(super) fn contains(&self, x: u64) -> bool {
        self.at_or_before(x).is_some_and(|(_, e)| x < e)
    }

    /// Whether every byte of `[start, end)` is dirty (ranges are maximal, so one range must
    /// hold it all).
    pub(super) fn covers(&self, start: u64, end: u64) -> bool {
        self.at_or_before(start).is_some_and(|(_, e)| end <= e)
    }

    /// The ranges in order.
    pub(super) fn iter(&self) -> btree_map::Iter<'_, u64, u64> {
        self.ranges.iter()
    }

    /// The ranges in order, by value.
    pub(super) fn into_ranges(self) -> btree_map::IntoIter<u64, u64> {
        self.ranges.into_iter()
    }
}
