//! The crash-consistency rule for one block, as a pure function.
//!
//! An image is a crash-consistent state of the device at point time T when every block holds
//! a version the device could have held at T:
//!
//! - issued before T (`issue_ns < T`): a version issued at or after T is from the future;
//! - no older than the last write to that block that completed by T (`complete_ns ≤ T`):
//!   that write was acknowledged before T, so the device at T had it or a newer one.
//!
//! Because the workload never has two writes to one block in flight, that leaves at most two
//! versions: the last completed one, and one write in flight at T (issued before, completed
//! after) — either is right, a crash at T could leave either. Before the first write to a
//! block completes, the block may hold anything that was there before the run (even bytes
//! that fail the block checksum, or a block of an older run): "unwritten".
//!
//! Timestamps are conservative: `issue_ns` is taken before `pwrite` is called and
//! `complete_ns` after it returns, so "completed by T" and "issued at or after T" are both
//! certain, never guesses.
//!
//! When the history was not closed cleanly (the workload was killed), the completions of its
//! last ~100 ms may be missing. A block holding a version the history does not know is then
//! accepted ("unrecorded") if it is newer than every recorded write to that block and was
//! issued before T; with a clean history it is a violation ("unknown").
//!
//! Without a point time ([`judge_intact`], multi-device checks only, where the dependency
//! rule of [`crate::depend`] carries the cross-disk argument) only intactness is judged: a
//! block must hold an intact version of this run, written for this device and block, that
//! the history records (or, with an unclean history, a plausible unrecorded one). Versions
//! cannot be future or stale without a T; pre-run content is allowed only on a block the
//! history never wrote, because without T nothing says the image predates its first write.

use serde::Serialize;

use crate::block::{BadBlock, BlockHeader};
use crate::history::HistoryRecord;
use crate::units::{RunId, UnixNs};

/// What a consistent block holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Holds {
    /// The last write completed by T.
    Current,
    /// A write in flight at T (issued before T, completed after).
    InFlight,
    /// No write to this block had completed by T; the content is from before the run.
    Unwritten,
    /// A version missing from an unclean history's tail, issued before T, newer than every
    /// recorded write to the block.
    Unrecorded,
    /// Without a point time: a version the history records for this block.
    Recorded,
}

/// The kinds of violation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// Not an intact workload block (bad magic, version, size or checksum) although a write
    /// to it had completed by T.
    Torn,
    /// An intact block of another run although a write of this run had completed by T.
    Foreign,
    /// A version issued at or after T.
    Future,
    /// A version older than the last write completed by T.
    Stale,
    /// A version of this run the history does not record for this block (or records with
    /// another issue time).
    Unknown,
    /// A block of this run written for another block index, or for another device.
    Misplaced,
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Torn => "torn",
            Self::Foreign => "foreign",
            Self::Future => "future",
            Self::Stale => "stale",
            Self::Unknown => "unknown",
            Self::Misplaced => "misplaced",
        })
    }
}

/// The verdict on one block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Consistent with T.
    Ok(Holds),
    /// A violation, with a sentence saying what was found.
    Bad(Kind, String),
}

/// The versions (write seqs) a block may hold at T.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct Allowed {
    /// The last write completed by T (`None`: pre-run content is allowed too).
    pub from_seq: Option<u64>,
    /// The newest write issued before T.
    pub to_seq: Option<u64>,
}

impl std::fmt::Display for Allowed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.from_seq, self.to_seq) {
            (Some(a), Some(b)) if a == b => write!(f, "seq {a}"),
            (Some(a), Some(b)) => write!(f, "seq {a}..={b}"),
            (None, Some(b)) => write!(f, "pre-run content or seq ..={b}"),
            _ => write!(f, "pre-run content"),
        }
    }
}

/// What [`judge`] needs to know about one block.
#[derive(Debug, Clone, Copy)]
pub struct BlockCase<'a> {
    /// The device the image is of (0 for a single-device run).
    pub device: u16,
    /// The block's index.
    pub index: u64,
    /// Its recorded writes, sorted by seq.
    pub writes: &'a [HistoryRecord],
    /// The point time ([`judge_intact`] ignores it).
    pub t: UnixNs,
    /// The history's run.
    pub run_id: RunId,
    /// Whether the history was closed cleanly.
    pub clean: bool,
}

/// Judges the block found at `case.index`.
#[must_use]
pub fn judge(case: &BlockCase<'_>, found: &Result<BlockHeader, BadBlock>) -> (Verdict, Allowed) {
    let t = case.t;
    let allowed = Allowed {
        from_seq: case
            .writes
            .iter()
            .rev()
            .find(|w| w.complete_ns <= t)
            .map(|w| w.seq),
        to_seq: case
            .writes
            .iter()
            .rev()
            .find(|w| w.issue_ns < t)
            .map(|w| w.seq),
    };
    let written = allowed.from_seq.is_some();
    let v = match found {
        _ if !written && !is_ours(case, found) => Verdict::Ok(Holds::Unwritten),
        Err(bad) => Verdict::Bad(Kind::Torn, bad.to_string()),
        Ok(h) if h.run_id != case.run_id => Verdict::Bad(
            Kind::Foreign,
            format!(
                "a block of run {} (seq {}, block {})",
                h.run_id, h.seq, h.index
            ),
        ),
        Ok(h) => match misplaced(case, h) {
            Some(why) => Verdict::Bad(Kind::Misplaced, why),
            None => judge_version(case, h, allowed),
        },
    };
    (v, allowed)
}

/// Judges the block found at `case.index` without a point time: intactness only (see the
/// module documentation). Never [`Kind::Future`] or [`Kind::Stale`].
#[must_use]
pub fn judge_intact(case: &BlockCase<'_>, found: &Result<BlockHeader, BadBlock>) -> Verdict {
    match found {
        _ if case.writes.is_empty() && !is_ours(case, found) => Verdict::Ok(Holds::Unwritten),
        Err(bad) => Verdict::Bad(Kind::Torn, bad.to_string()),
        Ok(h) if h.run_id != case.run_id => Verdict::Bad(
            Kind::Foreign,
            format!(
                "a block of run {} (seq {}, block {})",
                h.run_id, h.seq, h.index
            ),
        ),
        Ok(h) => match misplaced(case, h) {
            Some(why) => Verdict::Bad(Kind::Misplaced, why),
            None => match case.writes.binary_search_by_key(&h.seq, |w| w.seq) {
                Ok(pos) if case.writes[pos].issue_ns == h.issue_ns => Verdict::Ok(Holds::Recorded),
                Ok(pos) => other_issue_time(h, &case.writes[pos]),
                Err(_) => not_unrecorded(case, h).unwrap_or(Verdict::Ok(Holds::Unrecorded)),
            },
        },
    }
}

/// The recorded write `h` is a version of: same seq and issue time in this block's writes.
#[must_use]
pub fn recorded<'a>(case: &BlockCase<'a>, h: &BlockHeader) -> Option<&'a HistoryRecord> {
    let pos = case.writes.binary_search_by_key(&h.seq, |w| w.seq).ok()?;
    let w = &case.writes[pos];
    (w.issue_ns == h.issue_ns).then_some(w)
}

/// Why `h` (of this run) is not a block of `case`'s device and index, if it is not.
fn misplaced(case: &BlockCase<'_>, h: &BlockHeader) -> Option<String> {
    if h.device_index() != case.device {
        Some(format!(
            "seq {} written for device {} block {}",
            h.seq,
            h.device_index(),
            h.index
        ))
    } else if h.index != case.index {
        Some(format!("seq {} written for block {}", h.seq, h.index))
    } else {
        None
    }
}

/// Whether `found` is an intact block of this run (which is never "pre-run content").
fn is_ours(case: &BlockCase<'_>, found: &Result<BlockHeader, BadBlock>) -> bool {
    matches!(found, Ok(h) if h.run_id == case.run_id)
}

fn judge_version(case: &BlockCase<'_>, h: &BlockHeader, allowed: Allowed) -> Verdict {
    let t = case.t;
    let Ok(pos) = case.writes.binary_search_by_key(&h.seq, |w| w.seq) else {
        return unrecorded(case, h);
    };
    let w = case.writes[pos];
    if w.issue_ns != h.issue_ns {
        return other_issue_time(h, &w);
    }
    if w.issue_ns >= t {
        return Verdict::Bad(
            Kind::Future,
            format!(
                "seq {} issued {} ns after the point time",
                w.seq,
                w.issue_ns.0 - t.0
            ),
        );
    }
    match allowed.from_seq {
        Some(last) if w.seq < last => Verdict::Bad(
            Kind::Stale,
            format!(
                "seq {} but seq {last} had completed by the point time",
                w.seq
            ),
        ),
        Some(last) if w.seq == last => Verdict::Ok(Holds::Current),
        _ => Verdict::Ok(Holds::InFlight),
    }
}

fn other_issue_time(h: &BlockHeader, w: &HistoryRecord) -> Verdict {
    Verdict::Bad(
        Kind::Unknown,
        format!(
            "seq {} says issued at {} ns, the history says {} ns",
            h.seq, h.issue_ns.0, w.issue_ns.0
        ),
    )
}

/// `None` if `h`, a seq the history does not record for this block, can be a write whose
/// record was lost from an unclean history's tail; the [`Kind::Unknown`] verdict otherwise.
fn not_unrecorded(case: &BlockCase<'_>, h: &BlockHeader) -> Option<Verdict> {
    let newest = case.writes.last();
    let plausible =
        !case.clean && newest.is_none_or(|w| h.seq > w.seq && h.issue_ns >= w.complete_ns);
    if plausible {
        return None;
    }
    let why = if case.clean {
        "the history (closed cleanly) has no such write to this block"
    } else {
        "older than the history's last write to this block, yet not recorded"
    };
    Some(Verdict::Bad(Kind::Unknown, format!("seq {}: {why}", h.seq)))
}

fn unrecorded(case: &BlockCase<'_>, h: &BlockHeader) -> Verdict {
    if let Some(unknown) = not_unrecorded(case, h) {
        return unknown;
    }
    if h.issue_ns >= case.t {
        return Verdict::Bad(
            Kind::Future,
            format!(
                "seq {} (unrecorded) issued {} ns after the point time",
                h.seq,
                h.issue_ns.0 - case.t.0
            ),
        );
    }
    Verdict::Ok(Holds::Unrecorded)
}

#[cfg(test)]
mod tests {
    use super::*;

    const RUN: RunId = RunId([7; 16]);

    /// Block 3's writes: seq 10 [100, 110], seq 20 [200, 210], seq 30 [300, 310].
    fn writes() -> Vec<HistoryRecord> {
        [(10, 100, 110), (20, 200, 210), (30, 300, 310)]
            .map(|(seq, i, c)| HistoryRecord {
                seq,
                device: 0,
                block: 3,
                issue_ns: UnixNs(i),
                complete_ns: UnixNs(c),
                depends_on: None,
            })
            .to_vec()
    }

    fn holding(seq: u64, issue: u64) -> Result<BlockHeader, BadBlock> {
        Ok(BlockHeader {
            run_id: RUN,
            index: 3,
            seq,
            issue_ns: UnixNs(issue),
            device: None,
        })
    }

    fn at(t: u64, clean: bool, found: &Result<BlockHeader, BadBlock>) -> Verdict {
        let w = writes();
        let case = BlockCase {
            device: 0,
            index: 3,
            writes: &w,
            t: UnixNs(t),
            run_id: RUN,
            clean,
        };
        judge(&case, found).0
    }

    fn kind(v: &Verdict) -> Option<Kind> {
        match v {
            Verdict::Bad(k, _) => Some(*k),
            Verdict::Ok(_) => None,
        }
    }

    #[test]
    fn the_last_completed_version_is_current() {
        assert_eq!(
            at(250, true, &holding(20, 200)),
            Verdict::Ok(Holds::Current)
        );
        assert_eq!(
            at(210, true, &holding(20, 200)),
            Verdict::Ok(Holds::Current)
        );
        assert_eq!(
            at(1000, true, &holding(30, 300)),
            Verdict::Ok(Holds::Current)
        );
    }

    #[test]
    fn a_version_issued_after_t_is_future() {
        assert_eq!(kind(&at(250, true, &holding(30, 300))), Some(Kind::Future));
        // Issued exactly at T: not before T.
        assert_eq!(kind(&at(300, true, &holding(30, 300))), Some(Kind::Future));
    }

    #[test]
    fn older_than_the_last_completed_is_stale() {
        let v = at(250, true, &holding(10, 100));
        assert_eq!(kind(&v), Some(Kind::Stale));
        let Verdict::Bad(_, msg) = v else { panic!() };
        assert!(msg.contains("seq 10") && msg.contains("seq 20"), "{msg}");
    }

    #[test]
    fn a_write_in_flight_at_t_may_be_either_version() {
        // T = 205: seq 20 issued (200) but not completed (210).
        assert_eq!(
            at(205, true, &holding(10, 100)),
            Verdict::Ok(Holds::Current)
        );
        assert_eq!(
            at(205, true, &holding(20, 200)),
            Verdict::Ok(Holds::InFlight)
        );
        let w = writes();
        let case = BlockCase {
            device: 0,
            index: 3,
            writes: &w,
            t: UnixNs(205),
            run_id: RUN,
            clean: true,
        };
        let allowed = judge(&case, &holding(10, 100)).1;
        assert_eq!((allowed.from_seq, allowed.to_seq), (Some(10), Some(20)));
        assert_eq!(allowed.to_string(), "seq 10..=20");
    }

    #[test]
    fn torn_and_foreign_blocks() {
        let torn = Err(BadBlock::Crc { index: 3, seq: 20 });
        assert_eq!(kind(&at(250, true, &torn)), Some(Kind::Torn));
        let foreign = Ok(BlockHeader {
            run_id: RunId([8; 16]),
            index: 3,
            seq: 20,
            issue_ns: UnixNs(200),
            device: None,
        });
        assert_eq!(kind(&at(250, true, &foreign)), Some(Kind::Foreign));
        // Before the first write completed, anything from before the run is fine...
        assert_eq!(at(105, true, &torn), Verdict::Ok(Holds::Unwritten));
        assert_eq!(at(50, true, &foreign), Verdict::Ok(Holds::Unwritten));
        assert_eq!(
            at(50, true, &Err(BadBlock::NoMagic)),
            Verdict::Ok(Holds::Unwritten)
        );
        // ...but not a block of this run from the future.
        assert_eq!(kind(&at(50, true, &holding(10, 100))), Some(Kind::Future));
    }

    #[test]
    fn misplaced_and_unknown_versions() {
        let other_index = Ok(BlockHeader {
            run_id: RUN,
            index: 4,
            seq: 20,
            issue_ns: UnixNs(200),
            device: None,
        });
        assert_eq!(kind(&at(250, true, &other_index)), Some(Kind::Misplaced));
        assert_eq!(kind(&at(250, true, &holding(15, 150))), Some(Kind::Unknown));
        assert_eq!(kind(&at(250, true, &holding(20, 201))), Some(Kind::Unknown));
        assert_eq!(
            kind(&at(1000, true, &holding(40, 400))),
            Some(Kind::Unknown)
        );
    }

    #[test]
    fn unclean_history_accepts_a_newer_unrecorded_version() {
        assert_eq!(
            at(1000, false, &holding(40, 400)),
            Verdict::Ok(Holds::Unrecorded)
        );
        assert_eq!(kind(&at(350, false, &holding(40, 400))), Some(Kind::Future));
        // Older than a recorded write: the record cannot have been lost.
        assert_eq!(
            kind(&at(1000, false, &holding(25, 250))),
            Some(Kind::Unknown)
        );
        // Overlapping the last recorded write: impossible for this workload.
        assert_eq!(
            kind(&at(1000, false, &holding(40, 305))),
            Some(Kind::Unknown)
        );
    }

    fn intact(clean: bool, found: &Result<BlockHeader, BadBlock>) -> Verdict {
        let w = writes();
        let case = BlockCase {
            device: 0,
            index: 3,
            writes: &w,
            t: UnixNs(0),
            run_id: RUN,
            clean,
        };
        judge_intact(&case, found)
    }

    #[test]
    fn a_block_of_another_device_is_misplaced() {
        let on_device = |d: u16| {
            Ok(BlockHeader {
                device: Some(d),
                ..holding(20, 200).unwrap()
            })
        };
        // A version-2 block of device 0 is as good as a version-1 block.
        assert_eq!(at(250, true, &on_device(0)), Verdict::Ok(Holds::Current));
        let v = at(250, true, &on_device(1));
        assert_eq!(kind(&v), Some(Kind::Misplaced));
        let Verdict::Bad(_, msg) = v else { panic!() };
        assert!(msg.contains("device 1 block 3"), "{msg}");
        assert_eq!(kind(&intact(true, &on_device(1))), Some(Kind::Misplaced));
    }

    #[test]
    fn without_a_point_time_only_intactness_is_judged() {
        // Any recorded version: neither future nor stale without a T.
        for (seq, issue) in [(10, 100), (20, 200), (30, 300)] {
            assert_eq!(
                intact(true, &holding(seq, issue)),
                Verdict::Ok(Holds::Recorded)
            );
        }
        let torn = Err(BadBlock::Crc { index: 3, seq: 20 });
        assert_eq!(kind(&intact(true, &torn)), Some(Kind::Torn));
        let foreign = Ok(BlockHeader {
            run_id: RunId([8; 16]),
            ..holding(20, 200).unwrap()
        });
        assert_eq!(kind(&intact(true, &foreign)), Some(Kind::Foreign));
        assert_eq!(kind(&intact(true, &holding(20, 201))), Some(Kind::Unknown));
        assert_eq!(kind(&intact(true, &holding(40, 400))), Some(Kind::Unknown));
        assert_eq!(
            intact(false, &holding(40, 400)),
            Verdict::Ok(Holds::Unrecorded)
        );
        assert_eq!(kind(&intact(false, &holding(25, 250))), Some(Kind::Unknown));
        // Pre-run content only on a block the history never wrote.
        let none: Vec<HistoryRecord> = Vec::new();
        let case = BlockCase {
            device: 0,
            index: 3,
            writes: &none,
            t: UnixNs(0),
            run_id: RUN,
            clean: true,
        };
        assert_eq!(judge_intact(&case, &torn), Verdict::Ok(Holds::Unwritten));
    }
}
