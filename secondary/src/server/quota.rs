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
//! **What it may retire.** A disk's oldest point, if the disk has another and is not in a
//! failover: the newest point of every disk survives whatever the quota. If only newest points remain and the store is
//! still over, the quota stays exceeded (status shows it); nothing else is deleted.
//!
//! The history budget (`store/budget.rs`, refusing cycles whose undo would pass a disk's
//! budget) is unchanged: the quota works on what is kept, the budget on what may come.
//! Rejected: refusing cycles at the quota (the primary's data would stop reaching the
//! secondary — worse for an operator than losing the oldest history).
//!
//! **Whose limit.** `--max-store-bytes` is this site's operator's own limit, so it overrides
//! `--min-retain`: past it, points younger than the floor go too (the operator chose a store
//! too small for the floor; the newest point of each disk still survives). A peer's
//! per-disk cap (`--max-point-storage`, `disk_cap.rs`) does not: it retires only points
//! older than the floor, and is honoured first, disk by disk, before the store-wide quota.
//! Neither touches a disk in a failover (failed over here, or backing a running test
//! failover): the operator's failover runs on those points.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tokio::sync::Notify;

use super::disk_cap::{self, CapStep};
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

/// A disk slot's store bytes, point bytes and cap, and retired-point counters (since the
/// server started).
#[derive(Debug, Default)]
pub(super) struct SlotSpace {
    bytes: AtomicU64,
    /// Of `bytes`, the points' undo data (what the disk's cap counts).
    point_bytes: AtomicU64,
    /// The disk's point storage cap (0: none).
    cap: AtomicU64,
    /// Over the cap with nothing more the cap may retire.
    over_cap: AtomicBool,
    quota: AtomicU64,
    disk_cap: AtomicU64,
    retention: AtomicU64,
    operator: AtomicU64,
}

impl SlotSpace {
    fn counts(&self) -> RetiredCounts {
        RetiredCounts {
            quota: self.quota.load(Ordering::Relaxed),
            disk_cap: self.disk_cap.load(Ordering::Relaxed),
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

/// Records disk `d`'s store bytes, point bytes and cap in `slot` (after an applied cycle, a
/// verdict, an open, a delete, a new cap) and wakes the quota task if the store is over its
/// quota or the disk over its cap.
pub(super) fn noted(sh: &Shared, slot: &Slot, d: &Disk) {
    let space = &slot.space;
    space.bytes.store(d.store_bytes(), Ordering::Relaxed);
    let points = d.points_bytes();
    space.point_bytes.store(points, Ordering::Relaxed);
    let cap = d.point_cap().unwrap_or(0);
    space.cap.store(cap, Ordering::Relaxed);
    let over_cap = cap > 0 && points > cap;
    if !over_cap {
        space.over_cap.store(false, Ordering::Relaxed);
    }
    if over_cap || sh.quota.max.is_some_and(|max| total(sh) > max) {
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
                point_bytes: s.space.point_bytes.load(Ordering::Relaxed),
                max_point_storage_bytes: Some(s.space.cap.load(Ordering::Relaxed))
                    .filter(|c| *c > 0),
                over_point_cap: s.space.over_cap.load(Ordering::Relaxed),
            })
            .collect(),
    }
}

/// The quota's task: each time a disk reports itself over its cap or the store over the
/// quota, retire points until each fits (or nothing more may go).
pub(super) async fn run(sh: Arc<Shared>) {
    loop {
        sh.quota.wake.notified().await;
        let s = sh.clone();
        let _ = tokio::task::spawn_blocking(move || {
            enforce_caps(&s);
            if let Some(max) = s.quota.max {
                enforce(&s, max);
            }
        })
        .await;
    }
}

/// Honours every disk's own cap (`disk_cap.rs`): retires its oldest points older than the
/// server's floor while it is over. Returns how many it retired.
pub(super) fn enforce_caps(sh: &Shared) -> u64 {
    let floor = sh.retention.min_retain_ns;
    let slots = lock(&sh.slots).clone();
    let mut retired = 0;
    for (name, slot) in slots {
        let space = &slot.space;
        loop {
            let cap = space.cap.load(Ordering::Relaxed);
            let over = cap > 0 && space.point_bytes.load(Ordering::Relaxed) > cap;
            match disk_cap::step(&name, &slot.disk, over, floor, base::now_ns()) {
                Ok(CapStep::Fine) => {
                    space.over_cap.store(false, Ordering::Relaxed);
                    break;
                }
                Ok(CapStep::Stuck) => {
                    if !space.over_cap.swap(true, Ordering::Relaxed) {
                        tracing::warn!(
                            disk = %name,
                            point_bytes = space.point_bytes.load(Ordering::Relaxed),
                            cap = space.cap.load(Ordering::Relaxed),
                            "over its point storage cap; every point left is younger than --min-retain or the newest"
                        );
                    }
                    break;
                }
                Ok(CapStep::Retired { bytes, point_bytes }) => {
                    space.disk_cap.fetch_add(1, Ordering::Relaxed);
                    space.bytes.store(bytes, Ordering::Relaxed);
                    space.point_bytes.store(point_bytes, Ordering::Relaxed);
                    retired += 1;
                }
                Err(e) => {
                    tracing::error!(disk = %name, "the disk's cap could not retire a point: {e}");
                    break;
                }
            }
        }
    }
    retired
}

/// Retires the oldest retirable point across disks, one at a time, while the store is over
/// `max`. Returns how many it retired.
pub(super) fn enforce(sh: &Shared, max: u64) -> u64 {
    let mut retired = 0;
    // Disks that turned out to have nothing to retire in this pass (their snapshot was a
    // step behind, or a failover began): not chosen again until the next wake — choosing
    // from a stale snapshot must never spin.
    let mut passed = BTreeSet::new();
    while total(sh) > max {
        let Some((name, slot)) = oldest_retirable(sh, &passed) else {
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
            Ok(None) => {
                passed.insert(name);
                continue;
            }
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
    if d.state().failed_over.is_some() || super::failover::test_running(d.dir()) {
        return Ok(None);
    }
    let ids: BTreeSet<u64> = match d.points() {
        [oldest, _, ..] if !d.is_held(oldest.id) => [oldest.id].into(),
        // Fewer than two points, or the oldest is being exported: pass over the disk.
        _ => return Ok(None),
    };
    d.retire_points(&ids)?;
    tracing::info!(disk = %name, point = ?ids, "retired for the store quota");
    Ok(Some(d.store_bytes()))
}

/// The disk whose oldest point has the oldest cut time among disks with two points or more
/// and not in a failover, nor in `passed` (from the published snapshots: no disk's mutex is taken to
/// choose).
fn oldest_retirable(sh: &Shared, passed: &BTreeSet<String>) -> Option<(String, Arc<Slot>)> {
    let slots = lock(&sh.slots).clone();
    slots
        .into_iter()
        .filter(|(name, _)| !passed.contains(name))
        .filter_map(|(name, slot)| {
            let snap = slot.disk.snapshot()?;
            if disk_cap::in_failover(&snap) {
                return None;
            }
            let cut = match &*snap.points {
                [oldest, _, ..] => oldest.cut_time_ns,
                _ => return None,
            };
            Some((cut, name, slot))
        })
        .min_by_key(|(cut, name, _)| (*cut, name.clone()))
        .map(|(_, name, slot)| (name, slot))
}
