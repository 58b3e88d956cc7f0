//! A cross-host group round as the agent sees it (`group.rs` serves its prepare and cut
//! between cycles): the step the server asked for, and the release, answered on receipt by
//! the session's reader side (`session.rs`) — docs/architecture.md, *Consistency groups*.

use super::{DiskRt, lock};

/// A step of a cross-host group round, as the server asked (`GroupRound`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RoundStep {
    /// The group.
    pub(crate) group: String,
    /// The round.
    pub(crate) round: u64,
    /// 0: prepare, 1: cut, 2: release.
    pub(crate) step: u8,
}

/// The tag a round's release leaves in the log (never a cycle's sequence, so no verdict
/// mistakes it for its own tag).
const RELEASE_TAG: u64 = u64::MAX;

/// A round's release (step 2), answered the moment it arrives, wherever the disk's task is:
/// the tracker is drained into the log (a tag no verdict reads) and the change count compared
/// with the one before the round's cut — quiet if no change was recorded since
/// (docs/architecture.md, *Consistency groups*: the window from a cut to the release must be
/// quiet on every member, so it is kept as short as a round trip).
pub(crate) fn release(rt: &DiskRt, group: String, round: u64) -> proto::Msg {
    let dev = lock(&rt.prot).device.clone();
    let cut = *lock(&rt.round);
    let (seq, quiet) = match cut {
        Some((r, seq, before)) if r == round => {
            let now = tokio::task::block_in_place(|| {
                let mut g = lock(&rt.source);
                let t = g.as_mut()?;
                t.mark(&dev, RELEASE_TAG).ok()?;
                Some(t.records(&dev))
            });
            (seq, now == Some(before))
        }
        _ => (0, false),
    };
    proto::Msg::GroupRoundDone {
        group,
        round,
        step: 2,
        seq,
        quiet,
    }
}
