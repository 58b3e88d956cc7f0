//! Where one protected disk stands: the [`Phase`] enum.
//!
//! ```text
//!   protect ──► InitialCopy ──copy done──► Protected ◄──────────── resync done ─┐
//!                  │  ▲                    │   │   │                              │
//!     gap / re-copy│  └────── re-copy ─────┘   │   └─► PlannedFailover(step) ──► FailedOverToPeer
//!                  ▼                           ▼              │ aborted: back to Protected
//!            ResyncRequired ◄── gap, broken chain, verify, threshold, operator
//!                  │ window open (or --now)
//!                  ▼
//!            Resynchronizing ──────────────────────────────────────────────────┘
//!   any phase ──non-recoverable error──► Critical (until the operator acts)
//! ```
//!
//! The phase is a pure function of what the disk's task publishes (the protection it saved
//! and its run-time fields, `snapshot::DiskSnapshot`), recomputed at every publication — so
//! the protection file (which survives restarts) stays the one record of the durable part,
//! and no second copy of it can disagree.

use super::jobs::JobStep;
use super::state::Protection;
use base::status::ReplState;

/// Where a disk stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// The initial copy runs (or waits to resume).
    InitialCopy,
    /// Cycles flow.
    Protected,
    /// A checksum resync (or a re-copy standing in for one) is required and waits.
    ResyncRequired,
    /// The checksum resync runs.
    Resynchronizing,
    /// A planned failover runs, at this step (cycles paused).
    PlannedFailover(JobStep),
    /// The disk is active on the other site; this site no longer replicates it.
    FailedOverToPeer,
    /// A non-recoverable error: the operator must act.
    Critical,
}

impl Phase {
    /// The phase of a disk with protection `p`, in a non-recoverable error or not
    /// (`critical`), its resync running (`resync_running`: past its window), and at this
    /// planned-failover step.
    pub(crate) fn of(
        p: &Protection,
        critical: bool,
        resync_running: bool,
        planned: Option<JobStep>,
    ) -> Self {
        let running = resync_running;
        if p.failed_over.is_some() {
            Self::FailedOverToPeer
        } else if critical {
            Self::Critical
        } else if p.resync.is_some() && running {
            Self::Resynchronizing
        } else if p.resync.is_some() || (!p.copy.done && p.resync_reason.is_some()) {
            Self::ResyncRequired
        } else if !p.copy.done {
            Self::InitialCopy
        } else if let Some(step) = planned {
            Self::PlannedFailover(step)
        } else {
            Self::Protected
        }
    }

    /// The `state` of `sitrep status` (a planned failover shows as protected until it
    /// activates the replica).
    pub(crate) fn state(self) -> ReplState {
        match self {
            Self::InitialCopy => ReplState::InitialReplication,
            Self::Protected | Self::PlannedFailover(_) => ReplState::Protected,
            Self::ResyncRequired => ReplState::ResyncRequired,
            Self::Resynchronizing => ReplState::Resynchronizing,
            Self::FailedOverToPeer => ReplState::FailedOverToPeer,
            Self::Critical => ReplState::Critical,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base::agent_state::{CopyPlan, FailedOverInfo, FailoverKind, ResyncPlan};
    use base::config::Frequency;

    fn prot() -> Protection {
        Protection {
            version: 1,
            name: "d".into(),
            device: "/dev/loop0".into(),
            to: "h:1".into(),
            frequency: Frequency::Continuous,
            disk_id: String::new(),
            created_unix_ns: 0,
            copy: CopyPlan {
                from_seq: 1,
                done: false,
                restart: false,
            },
            resync_reason: None,
            app_consistent_every_secs: None,
            points: base::points::PointPolicy::default(),
            pre_hook: None,
            post_hook: None,
            resync: None,
            points_from_seq: 0,
            failed_over: None,
            reverse: None,
            server_name: None,
            group: None,
        }
    }

    #[test]
    fn phases_follow_the_protection_and_the_run() {
        let mut p = prot();
        assert_eq!(Phase::of(&p, false, false, None), Phase::InitialCopy);
        assert_eq!(
            Phase::of(&p, false, false, None).state(),
            ReplState::InitialReplication
        );
        p.resync_reason = Some("gap".into());
        assert_eq!(Phase::of(&p, false, false, None), Phase::ResyncRequired);
        p.resync_reason = None;
        p.copy.done = true;
        assert_eq!(Phase::of(&p, false, false, None), Phase::Protected);
        let planned = Phase::of(&p, false, false, Some(JobStep::Quiesce));
        assert_eq!(planned, Phase::PlannedFailover(JobStep::Quiesce));
        assert_eq!(planned.state(), ReplState::Protected);
        p.resync = Some(ResyncPlan {
            id: 1,
            reason: "gap".into(),
            scope: None,
            from_seq: None,
        });
        assert_eq!(Phase::of(&p, false, false, None), Phase::ResyncRequired);
        assert_eq!(Phase::of(&p, false, true, None), Phase::Resynchronizing);
        assert_eq!(Phase::of(&p, true, true, None).state(), ReplState::Critical);
        p.failed_over = Some(FailedOverInfo {
            kind: FailoverKind::Planned,
            unix_ns: 0,
            point: 1,
            cut_time_unix_ns: 0,
            device: String::new(),
            image: String::new(),
            quiesced: String::new(),
        });
        assert_eq!(
            Phase::of(&p, true, false, None).state(),
            ReplState::FailedOverToPeer
        );
    }
}
