//! Where one replicated disk stands on the server: its [`ReplicaPhase`], derived from the
//! disk's state file in one place — `status` reports it, and the reasons travel with the
//! phase instead of being read from loose optional strings.
//!
//! ```text
//!   attach ──► InitialCopy ──copy done──► Replicating ◄── resync committed ──┐
//!                                           │   │                              │
//!                      chain broke (a cycle │   └── resync starts ──► Resynchronizing
//!                      could not be applied)▼
//!                                         Broken(why) ── new copy or resync ──► …
//!   any phase ── unplanned failover ──► FailedOver(why)   (no more cycles, ever)
//! ```

use super::DiskState;
use base::status::ReplState;

/// Where a replicated disk stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplicaPhase<'a> {
    /// The initial copy has not finished.
    InitialCopy,
    /// Cycles are applied as they come.
    Replicating,
    /// A checksum resync is in progress (cycles are refused meanwhile).
    Resynchronizing,
    /// The chain broke: no cycle is accepted until a new copy or a resync. Why.
    Broken(&'a str),
    /// Activated here by an unplanned failover: the disk takes no more cycles. How.
    FailedOver(&'a str),
}

impl DiskState {
    /// The disk's phase (a failover outranks a broken chain, which outranks a resync).
    #[must_use]
    pub fn phase(&self) -> ReplicaPhase<'_> {
        if let Some(why) = &self.failed_over {
            ReplicaPhase::FailedOver(why)
        } else if let Some(why) = &self.broken {
            ReplicaPhase::Broken(why)
        } else if self.resync.is_some() {
            ReplicaPhase::Resynchronizing
        } else if self.copy.is_some_and(|c| c.done) {
            ReplicaPhase::Replicating
        } else {
            ReplicaPhase::InitialCopy
        }
    }
}

impl ReplicaPhase<'_> {
    /// The `state` of `sitrep status` on the server.
    #[must_use]
    pub fn state(self) -> ReplState {
        match self {
            Self::InitialCopy => ReplState::InitialReplication,
            Self::Replicating => ReplState::Replicating,
            Self::Resynchronizing => ReplState::Resynchronizing,
            Self::Broken(_) => ReplState::Critical,
            Self::FailedOver(_) => ReplState::FailedOver,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::store::CopyProgress;

    fn state() -> DiskState {
        DiskState {
            version: 1,
            name: "d".into(),
            disk_id: "00".into(),
            owner: "sitea".into(),
            size: 1 << 20,
            block_size: 512,
            created_unix_ns: 0,
            copy: None,
            applied: None,
            broken: None,
            resync: None,
            base_seq: None,
            failed_over: None,
            replica_device: None,
        }
    }

    #[test]
    fn the_phase_follows_the_state_file_with_its_reasons() {
        let mut s = state();
        assert_eq!(s.phase(), ReplicaPhase::InitialCopy);
        s.copy = Some(CopyProgress {
            done: true,
            from_seq: 1,
            cursor: 1 << 20,
        });
        assert_eq!(s.phase(), ReplicaPhase::Replicating);
        assert_eq!(s.phase().state(), ReplState::Replicating);
        s.broken = Some("cycle 7 does not follow 5".into());
        assert_eq!(s.phase(), ReplicaPhase::Broken("cycle 7 does not follow 5"));
        assert_eq!(s.phase().state(), ReplState::Critical);
        s.failed_over = Some("unplanned failover to point 3".into());
        assert_eq!(
            s.phase(),
            ReplicaPhase::FailedOver("unplanned failover to point 3")
        );
        assert_eq!(s.phase().state(), ReplState::FailedOver);
    }
}
