//! What a check counts and reports per block: the outcomes ([`Counts`]) and the violations
//! ([`Violation`]) — shared by the image scan (`scan.rs`) and the reports (`check.rs`,
//! `group.rs`).

use serde::Serialize;

use crate::rule::{Holds, Kind, Verdict};

/// Blocks per outcome.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    /// Holding the last write completed by T.
    pub current: u64,
    /// Holding a write in flight at T.
    pub in_flight: u64,
    /// No write completed by T; pre-run content.
    pub unwritten: u64,
    /// Holding a version lost from an unclean history's tail (accepted).
    pub unrecorded: u64,
    /// Violation: not an intact block.
    pub torn: u64,
    /// Violation: a block of another run.
    pub foreign: u64,
    /// Violation: issued at or after T.
    pub future: u64,
    /// Violation: older than the last write completed by T.
    pub stale: u64,
    /// Violation: a version the history does not record.
    pub unknown: u64,
    /// Violation: written for another block (or device).
    pub misplaced: u64,
    /// Without a point time (multi-device checks): holding a recorded version. Only such
    /// checks produce it, and the JSON has it only then, so schema 1 is unchanged.
    #[serde(skip_serializing_if = "is_zero")]
    pub recorded: u64,
}

#[allow(clippy::trivially_copy_pass_by_ref)] // serde's skip_serializing_if passes a reference
fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl Counts {
    /// Adds `other`'s blocks to these.
    pub(crate) fn merge(&mut self, other: &Self) {
        self.current += other.current;
        self.in_flight += other.in_flight;
        self.unwritten += other.unwritten;
        self.unrecorded += other.unrecorded;
        self.torn += other.torn;
        self.foreign += other.foreign;
        self.future += other.future;
        self.stale += other.stale;
        self.unknown += other.unknown;
        self.misplaced += other.misplaced;
        self.recorded += other.recorded;
    }

    pub(crate) fn add(&mut self, v: &Verdict) {
        let c = match v {
            Verdict::Ok(Holds::Current) => &mut self.current,
            Verdict::Ok(Holds::InFlight) => &mut self.in_flight,
            Verdict::Ok(Holds::Unwritten) => &mut self.unwritten,
            Verdict::Ok(Holds::Unrecorded) => &mut self.unrecorded,
            Verdict::Ok(Holds::Recorded) => &mut self.recorded,
            Verdict::Bad(Kind::Torn, _) => &mut self.torn,
            Verdict::Bad(Kind::Foreign, _) => &mut self.foreign,
            Verdict::Bad(Kind::Future, _) => &mut self.future,
            Verdict::Bad(Kind::Stale, _) => &mut self.stale,
            Verdict::Bad(Kind::Unknown, _) => &mut self.unknown,
            Verdict::Bad(Kind::Misplaced, _) => &mut self.misplaced,
        };
        *c += 1;
    }
}

/// One block that is not consistent with T.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Violation {
    /// Block index.
    pub block: u64,
    /// What is wrong.
    pub kind: Kind,
    /// The seq the block holds (as its header claims; `None` if there is no header).
    pub found_seq: Option<u64>,
    /// The last write completed by T: the oldest allowed version.
    pub allowed_from_seq: Option<u64>,
    /// The newest write issued before T: the newest allowed version.
    pub allowed_to_seq: Option<u64>,
    /// A sentence: what was found.
    pub detail: String,
}
