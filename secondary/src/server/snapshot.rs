//! What `status`, `points` and the metrics show of a disk, published after every operation on
//! it (issue 19, item 5).
//!
//! A disk's operations run under its mutex and some take seconds (a resync commit of 256 MiB,
//! applying a large cycle, an export chunk on a slow store). The control plane must answer
//! within 100 ms whatever a disk is doing, so it never takes that mutex: it reads the disk's
//! last [`DiskSnapshot`], an `Arc` swapped in under a second mutex held only to clone or
//! replace the `Arc`. The snapshot is published by the guard of the disk's mutex
//! ([`DiskGuard`]): when a guard that was used mutably is dropped, it publishes what the disk
//! holds then — so every path that changes a disk (sessions, failover, commit, startup)
//! publishes without having to remember to, and a path that bypasses the guard does not
//! compile (the mutex is private to this module).
//!
//! Publishing compares the state and the points list with the previous snapshot and reuses
//! them when equal, so a copy's data frame costs one small allocation, not a copy of the
//! points.

use std::ops::{Deref, DerefMut};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::store::{Disk, DiskCounters, DiskState};
use base::points::Point;

use super::lock;

/// A disk as of its last operation.
#[derive(Debug, Clone)]
pub(super) struct DiskSnapshot {
    /// `state.json` as the disk holds it.
    pub(super) state: Arc<DiskState>,
    /// Counters since open.
    pub(super) counters: DiskCounters,
    /// The recovery points, oldest first.
    pub(super) points: Arc<[Point]>,
    /// Bytes the points' undo data takes.
    pub(super) points_bytes: u64,
    /// The retention in force: slot width and span, ns (the rest is the server's).
    pub(super) retention: (u64, u64),
    /// The point storage cap its agent asked for (None: none).
    pub(super) point_cap: Option<u64>,
    /// The disk's directory in the store.
    pub(super) dir: Arc<PathBuf>,
    /// Why the last apply of a staged cycle failed, until one succeeds ([`Disk::fault`]).
    pub(super) fault: Option<String>,
}

impl DiskSnapshot {
    /// Why the last apply failed, if it did.
    pub(super) fn fault(&self) -> Option<&str> {
        self.fault.as_deref()
    }

    /// The snapshot of `d`, reusing the parts of `prev` that did not change.
    fn of(d: &Disk, prev: Option<&Self>) -> Self {
        let state = match prev {
            Some(p) if *p.state == *d.state() => p.state.clone(),
            _ => Arc::new(d.state().clone()),
        };
        let points = match prev {
            Some(p) if *p.points == *d.points() => p.points.clone(),
            _ => Arc::from(d.points()),
        };
        let dir = match prev {
            Some(p) if p.dir.as_path() == d.dir() => p.dir.clone(),
            _ => Arc::new(d.dir().to_path_buf()),
        };
        Self {
            state,
            counters: d.counters(),
            points,
            points_bytes: d.points_bytes(),
            retention: (d.retention().every_ns, d.retention().retain_ns),
            point_cap: d.point_cap(),
            dir,
            fault: d.fault().map(String::from),
        }
    }
}

/// A slot's open disk (or None) behind its mutex, and the snapshot last published of it.
#[derive(Debug, Default)]
pub(super) struct PublishedDisk {
    disk: Mutex<Option<Disk>>,
    snap: Mutex<Option<Arc<DiskSnapshot>>>,
}

impl PublishedDisk {
    /// `d` behind a new mutex, published.
    pub(super) fn open(d: Disk) -> Self {
        let p = Self::default();
        *p.lock() = Some(d);
        p
    }

    /// Locks the disk (waits while an operation runs on it); the guard publishes a new
    /// snapshot when dropped if it was used mutably.
    pub(super) fn lock(&self) -> DiskGuard<'_> {
        DiskGuard {
            owner: self,
            guard: lock(&self.disk),
            changed: false,
        }
    }

    /// The last published snapshot (None: the disk is not open). Never waits for the disk.
    pub(super) fn snapshot(&self) -> Option<Arc<DiskSnapshot>> {
        lock(&self.snap).clone()
    }
}

/// The disk's mutex guard; publishes a snapshot on drop when it was used mutably.
pub(super) struct DiskGuard<'a> {
    owner: &'a PublishedDisk,
    guard: MutexGuard<'a, Option<Disk>>,
    changed: bool,
}

impl Deref for DiskGuard<'_> {
    type Target = Option<Disk>;

    fn deref(&self) -> &Option<Disk> {
        &self.guard
    }
}

impl DerefMut for DiskGuard<'_> {
    fn deref_mut(&mut self) -> &mut Option<Disk> {
        self.changed = true;
        &mut self.guard
    }
}

impl Drop for DiskGuard<'_> {
    fn drop(&mut self) {
        if !self.changed {
            return;
        }
        // Still under the disk's mutex: snapshots are published in the order of the
        // operations. The snapshot's own mutex is held only to clone or swap the `Arc`.
        let prev = self.owner.snapshot();
        let next = self
            .guard
            .as_ref()
            .map(|d| Arc::new(DiskSnapshot::of(d, prev.as_deref())));
        *lock(&self.owner.snap) = next;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::store::AttachRequest;

    fn disk(store: &std::path::Path) -> Disk {
        Disk::attach(
            store,
            &AttachRequest {
                name: "d",
                disk_id: "01".repeat(16),
                size: 1 << 20,
                block_size: 512,
                client: "alice",
            },
        )
        .unwrap()
    }

    #[test]
    fn a_mutable_guard_publishes_when_dropped_and_a_reader_never_waits() {
        let dir = tempfile::tempdir().unwrap();
        let p = PublishedDisk::default();
        assert!(p.snapshot().is_none(), "nothing open, nothing published");
        *p.lock() = Some(disk(dir.path()));
        let first = p.snapshot().unwrap();
        assert_eq!(first.state.name, "d");
        assert_eq!(first.counters.data_bytes, 0);
        {
            let mut g = p.lock();
            let d = g.as_mut().unwrap();
            d.copy_begin(1, false).unwrap();
            d.write_data(0, &[7u8; 4096]).unwrap();
            // While the operation holds the disk, readers get the last snapshot at once.
            let during = p.snapshot().unwrap();
            assert_eq!(during.counters.data_bytes, 0);
        }
        let after = p.snapshot().unwrap();
        assert_eq!(after.counters.data_bytes, 4096);
        assert!(after.state.copy.is_some());
        assert!(
            Arc::ptr_eq(&first.points, &after.points),
            "unchanged parts reused"
        );
        {
            let g = p.lock();
            assert!(g.is_some());
        }
        assert!(
            Arc::ptr_eq(&after, &p.snapshot().unwrap()),
            "a read-only guard publishes nothing"
        );
    }
}
