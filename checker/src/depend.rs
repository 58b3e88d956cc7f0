//! The dependency rule: what makes a *set* of images, one per device, a state the devices
//! passed through together.
//!
//! Every write of a multi-device run records the write it depends on: the most recently
//! completed write on another device when it was issued ([`HistoryRecord::depends_on`]).
//! That write completed before this one was issued — a happens-before. So in any state of
//! the devices at one instant, if some device holds write `w` and `w` depends on `d`, then
//! `d` had completed by then, and `d`'s block on `d`'s device holds `d` or a newer version
//! of that block (a seq ≥ `d`'s: per block, seq order is write order). An image set that
//! breaks this for some `w` mixes instants: the image holding `w` is from after `w` was
//! issued, so after `d` completed, while `d`'s image is from before `d` was written. That
//! is the violation this module finds; it needs no point time, which is what lets the
//! multi-image check run without one. (With `--queue-depth 1` the writes form one causal
//! chain, so any two images taken at different instants of the random phase break it.)
//!
//! A dependency's block that holds no intact, recorded version of this run (torn, foreign,
//! unknown, misplaced, or pre-run content) does not hold `d` or newer: the dependency is
//! violated too. (Its block is also counted by the per-block rules; the two counts answer
//! different questions.) A write found whose own record was lost from an unclean history's
//! tail has no known dependency and is not judged here.
//!
//! Memory: one `u32` per record (a seq → record index), and for every block some write
//! depends on, 24 bytes (its key and the version found); plus 8 bytes per write found in
//! an image that has a dependency. No per-block table of whole devices.

use serde::Serialize;

use crate::block::{BadBlock, BlockHeader};
use crate::history::{History, HistoryRecord};
use crate::rule::{BlockCase, Holds, Verdict, judge_intact, recorded};
use crate::{Error, Result};

/// A write found in an image whose dependency's block holds an older version (or none).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DependencyViolation {
    /// Always `"dependency"`.
    pub kind: &'static str,
    /// The device holding the dependent write.
    pub device: u16,
    /// Its block.
    pub block: u64,
    /// The dependent write found there.
    pub seq: u64,
    /// The device of the write it depends on.
    pub depends_on_device: u16,
    /// That write's block.
    pub depends_on_block: u64,
    /// That write.
    pub depends_on_seq: u64,
    /// What that block holds in its image: the seq of an intact recorded version of this
    /// run, or `None` (torn, foreign, unknown, misplaced, pre-run).
    pub found_seq: Option<u64>,
    /// A sentence.
    pub detail: String,
}

/// The rule for one pair: `w` (found in an image) depends on `d`, whose block holds the
/// version `found` (`None`: no intact recorded version). A violation unless `found ≥ d`.
#[must_use]
pub fn judge_dependency(
    w: &HistoryRecord,
    d: &HistoryRecord,
    found: Option<u64>,
) -> Option<DependencyViolation> {
    if found.is_some_and(|s| s >= d.seq) {
        return None;
    }
    let holds = found.map_or_else(
        || "no intact version of this run".to_owned(),
        |s| format!("seq {s}"),
    );
    Some(DependencyViolation {
        kind: "dependency",
        device: w.device,
        block: w.block,
        seq: w.seq,
        depends_on_device: d.device,
        depends_on_block: d.block,
        depends_on_seq: d.seq,
        found_seq: found,
        detail: format!(
            "device {} block {} holds seq {}, which was issued after seq {} completed on \
             device {} block {}; that block holds {holds}, older",
            w.device, w.block, w.seq, d.seq, d.device, d.block
        ),
    })
}

/// The dependency rule over a set of images: fed every block of every image
/// ([`Self::observe`]), then asked for the violations ([`Self::violations`]).
pub(crate) struct Dependencies<'a> {
    /// The history's records, sorted by (device, block, seq).
    records: &'a [HistoryRecord],
    /// Indices into `records`, sorted by seq.
    by_seq: Vec<u32>,
    /// (device, block) of every write some write depends on, sorted, once each.
    targets: Vec<(u16, u64)>,
    /// Per target: the version its image holds (`None` until seen, or no intact one).
    found: Vec<Option<u64>>,
    /// Where [`Self::observe`] looks first in `targets` (images are scanned in order).
    cursor: usize,
    /// Seqs of the writes found in the images that have a dependency, in scan order.
    present: Vec<u64>,
}

impl<'a> Dependencies<'a> {
    /// Indexes `records` (the history's, sorted by device, block, seq) after checking every
    /// dependency: recorded, on another device, completed before its dependent was issued.
    ///
    /// # Errors
    /// [`Error::CorruptHistory`]: a dependency that breaks one of those.
    pub(crate) fn new(history: &History, records: &'a [HistoryRecord]) -> Result<Self> {
        let mut by_seq: Vec<u32> = (0..records.len())
            .map(|i| u32::try_from(i).unwrap_or(u32::MAX))
            .collect();
        by_seq.sort_unstable_by_key(|&i| records[i as usize].seq);
        let mut deps = Self {
            records,
            by_seq,
            targets: Vec::new(),
            found: Vec::new(),
            cursor: 0,
            present: Vec::new(),
        };
        let bad = |cause: String| Error::CorruptHistory {
            path: history.path.clone(),
            offset: 0,
            cause,
        };
        for w in records {
            let Some(s) = w.depends_on else { continue };
            let Some(d) = deps.record(s) else {
                return Err(bad(format!(
                    "write seq {} depends on seq {s}, which the history does not record",
                    w.seq
                )));
            };
            if d.device == w.device || d.complete_ns > w.issue_ns {
                return Err(bad(format!(
                    "write seq {} (device {}, issued {} ns) depends on seq {s} (device {}, \
                     completed {} ns): not a completed write on another device (was the \
                     clock stepped back?)",
                    w.seq, w.device, w.issue_ns.0, d.device, d.complete_ns.0
                )));
            }
            deps.targets.push((d.device, d.block));
        }
        deps.targets.sort_unstable();
        deps.targets.dedup();
        deps.found = vec![None; deps.targets.len()];
        Ok(deps)
    }

    /// The record of write `seq`.
    fn record(&self, seq: u64) -> Option<&'a HistoryRecord> {
        let records = self.records;
        let i = self
            .by_seq
            .binary_search_by_key(&seq, |&i| records[i as usize].seq)
            .ok()?;
        Some(&records[self.by_seq[i] as usize])
    }

    /// Takes note of the block `case` of an image holding `found`.
    pub(crate) fn observe(
        &mut self,
        case: &BlockCase<'_>,
        found: &std::result::Result<BlockHeader, BadBlock>,
    ) {
        let verdict = judge_intact(case, found);
        let version = match (&verdict, found) {
            (Verdict::Ok(Holds::Recorded | Holds::Unrecorded), Ok(h)) => Some(h.seq),
            _ => None,
        };
        if let Some(slot) = self.slot((case.device, case.index)) {
            self.found[slot] = version;
        }
        if let (Verdict::Ok(Holds::Recorded), Ok(h)) = (&verdict, found)
            && let Some(w) = recorded(case, h)
            && w.depends_on.is_some()
        {
            self.present.push(w.seq);
        }
    }

    /// The index of `key` in `targets`, if it is one: a cursor for blocks seen in order, a
    /// binary search when they are not.
    fn slot(&mut self, key: (u16, u64)) -> Option<usize> {
        if self.cursor > 0 && self.targets.get(self.cursor - 1).is_some_and(|&t| t >= key) {
            self.cursor = self.targets.partition_point(|&t| t < key);
        }
        while self.targets.get(self.cursor).is_some_and(|&t| t < key) {
            self.cursor += 1;
        }
        (self.targets.get(self.cursor) == Some(&key)).then_some(self.cursor)
    }

    /// After every image was observed: how many writes found have a dependency, how many of
    /// those are violated, and the first `max_listed` violations (in image, block order).
    pub(crate) fn violations(&self, max_listed: usize) -> (u64, u64, Vec<DependencyViolation>) {
        let mut total = 0;
        let mut listed = Vec::new();
        for &seq in &self.present {
            let Some(w) = self.record(seq) else { continue };
            let Some(d) = w.depends_on.and_then(|s| self.record(s)) else {
                continue;
            };
            let found = self
                .targets
                .binary_search(&(d.device, d.block))
                .ok()
                .and_then(|i| self.found[i]);
            if let Some(v) = judge_dependency(w, d, found) {
                total += 1;
                if listed.len() < max_listed {
                    listed.push(v);
                }
            }
        }
        (self.present.len() as u64, total, listed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::units::UnixNs;

    fn rec(seq: u64, device: u16, block: u64) -> HistoryRecord {
        HistoryRecord {
            seq,
            device,
            block,
            issue_ns: UnixNs(10 * seq + 1),
            complete_ns: UnixNs(10 * seq + 5),
            depends_on: seq.checked_sub(1),
        }
    }

    #[test]
    fn the_dependency_or_a_newer_version_of_its_block_satisfies_it() {
        let (w, d) = (rec(9, 1, 2), rec(8, 0, 1));
        assert_eq!(judge_dependency(&w, &d, Some(8)), None);
        assert_eq!(judge_dependency(&w, &d, Some(12)), None);
        let v = judge_dependency(&w, &d, Some(1)).unwrap();
        assert_eq!((v.kind, v.device, v.block, v.seq), ("dependency", 1, 2, 9));
        assert_eq!(
            (
                v.depends_on_device,
                v.depends_on_block,
                v.depends_on_seq,
                v.found_seq
            ),
            (0, 1, 8, Some(1))
        );
        assert!(v.detail.contains("holds seq 1, older"), "{}", v.detail);
        let v = judge_dependency(&w, &d, None).unwrap();
        assert!(v.detail.contains("no intact version"), "{}", v.detail);
    }
}
