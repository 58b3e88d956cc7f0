//! The store quota (`sitrep server --max-store-bytes`): when the store's bytes pass it, the
//! oldest recovery points across all disks (by cut time) are retired until they fit again —
//! never a disk's newest point, and never by refusing a cycle: replication keeps flowing.
//!
//! **Cheap to keep.** Each disk reports its store bytes ([`Disk::store_bytes`]: one `fstat`,
//! the undo index in memory, the staging directory) into its slot after every applied cycle
//! and verdict ([`noted`]); the total is the sum of those counters, never a walk of the store.
//! Passing the quota wakes one task ([`run`]) which retires points on the blocking pool, off
//! the sessions' frame loops and the control loop, one point at a time through
//! [`Disk::retire_points`] (the one way points leave), re-reading the disk's bytes after each.
//!
//! **What it may retire.** A disk's oldest point, if the disk has another: the newest point
//! of every disk survives whatever the quota. If only newest points remain and the store is
//! still over, the quota stays exceeded (status shows it); nothing else is deleted.
//!
//! The history budget (`store/budget.rs`, refusing cycles whose undo would pass a disk's
//! budget) is unchanged: the quota works on what is kept, the budget on what may come.
//! Rejected: refusing cycles at the quota (the primary's data would stop reaching the
//! secondary — worse for an operator than losing the oldest history).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::Notify;

use super::{Shared, Slot, lock};
use crate::store::Disk;
use base::store_space::{DiskSpace, RetiredCounts, StoreSpace};

/// The quota and the wake-up of its task.
#[derive(Debug, Default)]
pub(super) struct Quota {
    /// `--max-store-bytes` (None: no quota).
    max: Option<u64>,
    wake: Notify,
}

impl Quota {
    /// A quota of `max` bytes (None: none).
    pub(super) fn new(max: Option<u64>) -> Self {
        Self {
            max,
            wake: Notify::new(),
        }
    }
}

/// A disk slot's store bytes and retired-point counters (since the server started).
#[derive(Debug, Default)]
pub(super) struct SlotSpace {
    bytes: AtomicU64,
    quota: AtomicU64,
    retention: AtomicU64,
    operator: AtomicU64,
}

impl SlotSpace {
    fn counts(&self) -> RetiredCounts {
        RetiredCounts {
            quota: self.quota.load(Ordering::Relaxed),
            retention: self.retention.load(Ordering::Relaxed),
            operator: self.operator.load(Ordering::Relaxed),
        }
    }

    /// `n` points retired by the retention policy.
    pub(super) fn retired_by_retention(&self, n: u64) {
        self.retention.fetch_add(n, Ordering::Relaxed);
    }

    /// `n` points deleted by the operator.
    pub(super) fn retired_by_operator(&self, n: u64) {
        self.operator.fetch_add(n, Ordering::Relaxed);
    }
}

/// Records disk `d`'s store bytes in `slot` (after an applied cycle, a verdict, an open, a
/// delete) and wakes the quota task if the store is over its quota.
pub(super) fn noted(sh: &Shared, slot: &Slot, d: &Disk) {
    slot.space.bytes.store(d.store_bytes(), Ordering::Relaxed);
    if let Some(max) = sh.quota.max
        && total(sh) > max
    {
        sh.quota.wake.notify_one();
    }
}

fn total(sh: &Shared) -> u64 {
    lock(&sh.slots)
        .values()
        .map(|s| s.space.bytes.load(Ordering::Relaxed))
        .fold(0, u64::saturating_add)
}

/// The `store` part of the server's status.
pub(super) fn report(sh: &Shared) -> StoreSpace {
    let slots = lock(&sh.slots).clone();
    StoreSpace {
        bytes: slots
            .values()
            .map(|s| s.space.bytes.load(Ordering::Relaxed))
            .fold(0, u64::saturating_add),
        quota_bytes: sh.quota.max,
        disks: slots
            .iter()
            .map(|(name, s)| DiskSpace {
                name: name.clone(),
                bytes: s.space.bytes.load(Ordering::Relaxed),
                points_retired: s.space.counts(),
            })
            .collect(),
    }
}

/// The quota's task: each time a disk reports the store over the quota, retire points until
/// it fits (or only newest points are left). Returns at once without a quota.
pub(super) async fn run(sh: Arc<Shared>) {
    let Some(max) = sh.quota.max else {
        return;
    };
    loop {
        sh.quota.wake.notified().await;
        let s = sh.clone();
        let _ = tokio::task::spawn_blocking(move || enforce(&s, max)).await;
    }
}

/// Retires the oldest retirable point across disks, one at a time, while the store is over
/// `max`. Returns how many it retired.
pub(super) fn enforce(sh: &Shared, max: u64) -> u64 {
    let mut retired = 0;
    while total(sh) > max {
        let Some((name, slot)) = oldest_retirable(sh) else {
            tracing::warn!(
                store_bytes = total(sh),
                quota = max,
                "the store is over its quota and only each disk's newest point is left"
            );
            break;
        };
        match retire_oldest(&name, &slot) {
            Ok(Some(bytes)) => {
                // After the guard published the disk without the point: status never shows
                // a count or a byte total the points list does not match yet.
                slot.space.quota.fetch_add(1, Ordering::Relaxed);
                slot.space.bytes.store(bytes, Ordering::Relaxed);
            }
            Ok(None) => continue,
            Err(e) => {
                tracing::error!(disk = %name, "the quota could not retire a point: {e}");
                break;
            }
        }
        retired += 1;
    }
    retired
}

/// Retires the oldest point of the disk in `slot` if it has another; its store bytes after
/// (None: nothing to retire after all — the snapshot that chose it was a step behind).
fn retire_oldest(name: &str, slot: &Slot) -> Result<Option<u64>, crate::store::StoreError> {
    let mut g = slot.disk.lock();
    let Some(d) = g.as_mut() else {
        return Ok(None);
    };
    let ids: BTreeSet<u64> = match d.points() {
        [oldest, _, ..] => [oldest.id].into(),
        _ => return Ok(None),
    };
    d.retire_points(&ids)?;
    tracing::info!(disk = %name, point = ?ids, "retired for the store quota");
    Ok(Some(d.store_bytes()))
}

/// The disk whose oldest point has the oldest cut time among disks with two points or more
/// (from the published snapshots: no disk's mutex is taken to choose).
fn oldest_retirable(sh: &Shared) -> Option<(String, Arc<Slot>)> {
    let slots = lock(&sh.slots).clone();
    slots
        .into_iter()
        .filter_map(|(name, slot)| {
            let snap = slot.disk.snapshot()?;
            let cut = match &*snap.points {
                [oldest, _, ..] => oldest.cut_time_ns,
                _ => return None,
            };
            Some((cut, name, slot))
        })
        .min_by_key(|(cut, name, _)| (*cut, name.clone()))
        .map(|(_, name, slot)| (name, slot))
}
