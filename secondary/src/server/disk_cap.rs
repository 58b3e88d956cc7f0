//! A disk's own point storage cap (`sitrep protect --max-point-storage`, sent by its agent
//! as `PointStorage`, protocol 4, kept in `policy.json`) and the disks no space limit may
//! touch. The quota task (`quota.rs`) calls these; they know nothing of its counters.
//!
//! **The cap is the peer's request, so it obeys the server's floor** (issue 21, item 4:
//! history the primary cannot erase). Past the cap, the disk's oldest point is retired only
//! if it is older than `sitrep server --min-retain` — aged as retention ages points
//! ([`base::points::Retention::keep_flags`]: back from the newest point's cut, capped by the
//! server's clock) — and never the disk's newest point. A hostile primary asking for a
//! 1-byte cap therefore loses nothing younger than the floor; the disk stays over its cap,
//! and the status (`store.disks[].over_point_cap`) and metrics
//! (`sitrep_point_storage_over_cap`) say so. The cap counts [`Disk::points_bytes`] (the undo
//! data): the replica is the disk itself and no retirement shrinks it.
//!
//! **Failover.** A disk failed over here (an unplanned or planned failover, committed or
//! not: its points are what the operator activates) or backing a running test failover is
//! left alone by every space limit: the operator's failover runs on those points.
//!
//! Alternative rejected: clamping the cap to a minimum size — any size can be too small for
//! a busy disk, while the age floor states exactly what a peer cannot erase.

use std::collections::BTreeSet;

use super::snapshot::{DiskSnapshot, PublishedDisk};
use crate::store::Disk;
use base::points::Point;

/// What one step of the cap did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum CapStep {
    /// The disk has no cap, is within it, is not open, or is in a failover.
    Fine,
    /// Retired the oldest point: the disk's store bytes and point bytes after.
    Retired { bytes: u64, point_bytes: u64 },
    /// Over the cap, but every point left is younger than the floor or the newest.
    Stuck,
}

/// True if the disk in `snap` is failed over here or backs a running test failover.
pub(super) fn in_failover(snap: &DiskSnapshot) -> bool {
    snap.state.failed_over.is_some() || super::failover::test_running(&snap.dir)
}

/// True if the oldest of `points` (oldest first) may go for a peer's cap: it is not the
/// newest, and older than `floor_ns` at the server's time `now_ns` (see the module docs).
pub(super) fn oldest_past_floor(points: &[Point], floor_ns: u64, now_ns: u64) -> bool {
    let [oldest, .., newest] = points else {
        return false;
    };
    let reference = newest.cut_time_ns.min(now_ns);
    reference.saturating_sub(oldest.cut_time_ns) > floor_ns
}

/// One step for the disk in `disk`: if it is over its cap, retire its oldest point when
/// that point is past the floor `floor_ns`. `over`: the slot's counters say the disk is
/// over its cap (else nothing is locked). The disk's mutex decides, not its published
/// snapshot: the session that set a cap or applied a cycle wakes the quota task while it
/// still holds the disk, before that snapshot is published.
///
/// # Errors
/// Retiring failed.
pub(super) fn step(
    name: &str,
    disk: &PublishedDisk,
    over: bool,
    floor_ns: u64,
    now_ns: u64,
) -> Result<CapStep, crate::store::StoreError> {
    if !over {
        return Ok(CapStep::Fine);
    }
    let mut g = disk.lock();
    // Read-only until a point goes: the guard publishes a snapshot only when used mutably.
    let Some(d) = g.as_ref() else {
        return Ok(CapStep::Fine);
    };
    if d.state().failed_over.is_some()
        || super::failover::test_running(d.dir())
        || d.point_cap().is_none_or(|c| d.points_bytes() <= c)
    {
        return Ok(CapStep::Fine);
    }
    if !oldest_past_floor(d.points(), floor_ns, now_ns)
        || d.points().first().is_some_and(|p| d.is_held(p.id))
    {
        return Ok(CapStep::Stuck);
    }
    let Some(d) = g.as_mut() else {
        return Ok(CapStep::Fine);
    };
    retire_oldest(name, d).map(|()| CapStep::Retired {
        bytes: d.store_bytes(),
        point_bytes: d.points_bytes(),
    })
}

fn retire_oldest(name: &str, d: &mut Disk) -> Result<(), crate::store::StoreError> {
    let ids: BTreeSet<u64> = d.points().iter().take(1).map(|p| p.id).collect();
    d.retire_points(&ids)?;
    tracing::info!(disk = %name, point = ?ids, "retired for the disk's point storage cap");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use base::points::PointKind;

    fn pt(id: u64, cut_s: u64) -> Point {
        Point {
            id,
            kind: PointKind::CrashConsistent,
            cut_time_ns: cut_s * S,
            first_seq: id,
            created_unix_ns: 0,
            label: None,
            bytes: 0,
        }
    }

    const S: u64 = 1_000_000_000;

    #[test]
    fn only_an_oldest_point_past_the_floor_and_not_the_newest_may_go() {
        let now = 1_000_000 * S;
        let floor = 3600 * S;
        // Newest cut at 100_000 s: the oldest 2 h before it may go, one 30 min before not.
        assert!(oldest_past_floor(
            &[pt(1, 92_800), pt(2, 100_000)],
            floor,
            now
        ));
        assert!(!oldest_past_floor(
            &[pt(1, 98_200), pt(2, 100_000)],
            floor,
            now
        ));
        // Exactly at the floor stays (retention keeps age <= span likewise).
        assert!(!oldest_past_floor(
            &[pt(1, 96_400), pt(2, 100_000)],
            floor,
            now
        ));
        // The newest never, however old.
        assert!(!oldest_past_floor(&[pt(1, 0)], floor, now));
        assert!(!oldest_past_floor(&[], floor, now));
        // A newest cut claimed in the future ages nothing past the server's clock.
        assert!(!oldest_past_floor(
            &[pt(1, 999_000), pt(2, u64::MAX / S)],
            floor,
            now
        ));
    }
}
