//! Undo compaction: at most one pre-image per byte per *retained interval*.
//!
//! Point `j` is rebuilt from the replica overlaid, byte by byte, with the earliest undo file
//! ordered after `j` that covers the byte (`crate::undo`). Call the cycles between two
//! retained points `P < Q` — the files with a sequence in `(P, Q]`, and after the newest point
//! `N` the files in `(N, ∞)` — an interval, keyed by `P`. No retained point lies inside an
//! interval, so for every retained point only the *first* file of an interval that covers a
//! byte is ever read: a later file's copy of that byte is dead weight. Hence:
//!
//! - **At apply** (a cycle's undo, a resync's undo part) only what the interval has not saved
//!   yet is saved ([`Disk::undo_needed`]): `ranges − coverage(interval)`. With no retained
//!   point older than the cycle, nothing is saved at all: no point could use it. (A point is
//!   only ever made from the newest applied cycle, so a cycle applied after another can no
//!   longer turn that one into a point.)
//! - **When a point is retired** its interval merges into the one before it
//!   ([`Disk::merge_intervals`]): each of its files is trimmed to what the earlier interval
//!   does not cover ([`crate::undo::trim`]), keeping the older pre-image; an interval with no
//!   retained point before it serves nothing and its files are deleted.
//!
//! So the files of one interval never overlap, and the undo data kept for a disk is at most
//! Σ over retained intervals of min(bytes changed in it, disk size), plus entry tables.
//!
//! The coverage of each interval is kept in memory (`Disk::cov`, sorted range lists), rebuilt
//! when the disk opens ([`Disk::rebuild_coverage`]) — which also finishes what a crash
//! interrupted: files no point needs are deleted, overlaps left by a merge that did not
//! finish (or by a store written before compaction existed) are trimmed. A trim that fails
//! leaves its file as it was: redundant, never wrong.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;

use super::Disk;
use crate::undo::{self, UndoIndex};
use base::ranges::{Range, intersect, normalize, subtract, total, union};

/// Every interval's coverage, keyed by the retained point that opens it (`Disk::cov`).
type Coverage = BTreeMap<u64, Vec<Range>>;

/// One retired point's merge (see `Disk::plan_merges`).
struct MergeStep {
    /// Its interval's files (indices into `Disk::undo`).
    files: Vec<usize>,
    /// The coverage of the interval they merge into, before they join it; `None`: no retained
    /// point is older, the files are deleted.
    into: Option<Vec<Range>>,
}

/// The data ranges of `u` (entries that hold data, not zero ranges).
fn data_ranges(u: &UndoIndex) -> Vec<Range> {
    normalize(
        u.entries
            .iter()
            .filter(|e| e.data_pos.is_some())
            .map(|e| (e.offset, e.len))
            .collect(),
    )
}

impl Disk {
    /// The interval a file of sequence `seq` belongs to: the newest retained point older
    /// than `seq` (`None`: no point needs it).
    fn interval_key(&self, seq: u64) -> Option<u64> {
        self.points
            .points
            .iter()
            .rev()
            .map(|p| p.id)
            .find(|&id| id < seq)
    }

    /// What the interval of cycle `seq` has saved so far (`None`: no retained point is older
    /// than `seq`, so nothing needs saving).
    fn coverage_of(&self, seq: u64) -> Option<&[Range]> {
        let key = self.interval_key(seq)?;
        Some(self.cov.get(&key).map_or(&[][..], Vec::as_slice))
    }

    /// What of `ranges` (normalized) the undo of cycle `seq` — or of a resync part before it —
    /// must save: the bytes its interval has not saved yet. `None` when no retained point is
    /// older than `seq` (nothing to save).
    #[must_use]
    pub(super) fn undo_needed(&self, seq: u64, ranges: &[Range]) -> Option<Vec<Range>> {
        self.coverage_of(seq).map(|c| subtract(ranges, c))
    }

    /// What the interval of cycle `seq` has saved already (`None`: no retained point is
    /// older than `seq`, so nothing needs saving).
    #[must_use]
    pub(super) fn undo_coverage(&self, seq: u64) -> Option<Vec<Range>> {
        self.coverage_of(seq).map(<[Range]>::to_vec)
    }

    /// Adds a newly written undo file: its ranges join its interval's coverage.
    pub(super) fn note_undo(&mut self, idx: UndoIndex) {
        if let Some(key) = self.interval_key(idx.seq) {
            let c = self.cov.entry(key).or_default();
            *c = union(c, &undo::covered(&idx));
        }
        self.undo.push(idx);
        self.undo.sort_by_key(UndoIndex::order);
    }

    /// A new newest point `id`: the interval after it starts empty.
    pub(super) fn open_interval(&mut self, id: u64) {
        self.cov.insert(id, Vec::new());
    }

    /// How retiring the points of `old` (ids, oldest first) that are not in `now` merges
    /// intervals: each retired point's interval goes into the one of the retained point
    /// before it — its files trimmed to what that interval does not cover yet — or, with no
    /// retained point before it, its files are deleted. Returns the steps in order and every
    /// interval's coverage after them. [`Self::merge_intervals`] carries a plan out;
    /// [`Self::undo_freed_estimate`] prices one: one planner, so they cannot drift apart.
    fn plan_merges(&self, old: &[u64], now: &BTreeSet<u64>) -> (Vec<MergeStep>, Coverage) {
        let mut cov = self.cov.clone();
        let mut steps = Vec::new();
        for (i, &p) in old.iter().enumerate() {
            if now.contains(&p) {
                continue;
            }
            let hi = old.get(i + 1).copied();
            let files = (0..self.undo.len())
                .filter(|&f| self.undo[f].seq > p && hi.is_none_or(|h| self.undo[f].seq <= h))
                .collect();
            let mine = cov.remove(&p).unwrap_or_default();
            let into = now.range(..p).next_back().copied();
            let earlier = into.and_then(|t| cov.remove(&t)).unwrap_or_default();
            if let Some(t) = into {
                cov.insert(t, union(&earlier, &mine));
            }
            steps.push(MergeStep {
                files,
                into: into.map(|_| earlier),
            });
        }
        // Coverage of intervals whose point is gone (none should be left).
        cov.retain(|k, _| now.contains(k));
        (steps, cov)
    }

    /// The points `old` (ids, oldest first) were the retained ones; some are gone now (already
    /// saved in `points.json`). Merges each retired point's interval into the one before it,
    /// trimming its files to what that one does not cover — or deletes its files when no
    /// retained point is older.
    pub(super) fn merge_intervals(&mut self, old: &[u64]) {
        let now: BTreeSet<u64> = self.points.points.iter().map(|p| p.id).collect();
        let (steps, cov) = self.plan_merges(old, &now);
        let mut files: Vec<Option<UndoIndex>> = std::mem::take(&mut self.undo)
            .into_iter()
            .map(Some)
            .collect();
        let mut kept = Vec::with_capacity(files.len());
        for step in &steps {
            for &f in &step.files {
                let Some(u) = files.get_mut(f).and_then(Option::take) else {
                    continue;
                };
                match &step.into {
                    None => {
                        let _ = fs::remove_file(&u.path);
                    }
                    Some(earlier) => kept.extend(self.trimmed(u, earlier)),
                }
            }
        }
        kept.extend(files.into_iter().flatten());
        kept.sort_by_key(UndoIndex::order);
        self.undo = kept;
        self.cov = cov;
    }

    /// Undo bytes retiring `ids` would free, without changing anything: whole files of
    /// intervals left with no retained point before them, and the data a merge would trim
    /// (entry tables are not counted: an estimate within a few bytes per trimmed entry).
    #[must_use]
    pub(super) fn undo_freed_estimate(&self, ids: &BTreeSet<u64>) -> u64 {
        let old: Vec<u64> = self.points.points.iter().map(|p| p.id).collect();
        let now: BTreeSet<u64> = old.iter().copied().filter(|p| !ids.contains(p)).collect();
        let (steps, _) = self.plan_merges(&old, &now);
        let mut freed = 0u64;
        for step in &steps {
            for u in step.files.iter().filter_map(|&f| self.undo.get(f)) {
                let gone = match &step.into {
                    None => u.bytes,
                    Some(earlier) if subtract(&undo::covered(u), earlier).is_empty() => u.bytes,
                    Some(earlier) => total(&intersect(&data_ranges(u), earlier)),
                };
                freed = freed.saturating_add(gone);
            }
        }
        freed
    }

    /// `u` without what `earlier` covers (the file rewritten, or removed when nothing is
    /// left). A failed trim keeps the file as it was (redundant, never wrong).
    fn trimmed(&self, u: UndoIndex, earlier: &[Range]) -> Option<UndoIndex> {
        let mine = undo::covered(&u);
        let keep = subtract(&mine, earlier);
        if keep == mine {
            return Some(u);
        }
        match undo::trim(&u, &keep) {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(disk = %self.name(), "trimming {}: {e} (kept as it was)", u.path.display());
                Some(u)
            }
        }
    }

    /// Rebuilds every interval's coverage from the undo files (at open). When `writable`,
    /// also finishes what a crash interrupted: files no retained point needs are deleted,
    /// files overlapping an earlier one of their interval are trimmed.
    pub(super) fn rebuild_coverage(&mut self, writable: bool) {
        self.cov.clear();
        for &id in self.points.points.iter().map(|p| &p.id) {
            self.cov.insert(id, Vec::new());
        }
        let files = std::mem::take(&mut self.undo);
        for u in files {
            let Some(key) = self.interval_key(u.seq) else {
                if writable {
                    let _ = fs::remove_file(&u.path);
                } else {
                    self.undo.push(u);
                }
                continue;
            };
            let mine = undo::covered(&u);
            let seen = self.cov.remove(&key).unwrap_or_default();
            let u = if writable {
                self.trimmed(u, &seen)
            } else {
                Some(u)
            };
            self.cov.insert(key, union(&seen, &mine));
            self.undo.extend(u);
        }
        self.undo.sort_by_key(UndoIndex::order);
    }
}
