//! How much of the store a disk entry takes, and what retiring points would free — what the
//! server's quota and `sitrep points delete` read (definitions in `base::store_space`).
//!
//! Both are cheap: one `fstat` of the replica, the undo index already in memory, and the
//! staging directory (at most a staged cycle and one being received). The quota calls
//! [`Disk::store_bytes`] after each applied cycle and verdict instead of walking the store.

use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt;

use super::Disk;

impl Disk {
    /// Store bytes of this entry: the replica's allocated blocks (0 for a device-backed
    /// replica, not the store's), its undo files, its staged cycle files.
    #[must_use]
    pub fn store_bytes(&self) -> u64 {
        let replica = if self.state.replica_device.is_some() {
            0
        } else {
            self.replica
                .metadata()
                .map_or(0, |m| m.blocks().saturating_mul(512))
        };
        let staging = std::fs::read_dir(self.staging_dir()).map_or(0, |rd| {
            rd.filter_map(Result::ok)
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.blocks().saturating_mul(512))
                .sum()
        });
        replica
            .saturating_add(self.points_bytes())
            .saturating_add(staging)
    }

    /// Undo bytes [`Disk::retire_points`] would delete if asked to retire `ids`: the undo of
    /// cycle `m` serves only points older than `m`, so what goes is the undo up to the oldest
    /// point that remains (must follow `retire_points`' rule).
    #[must_use]
    pub fn undo_freed_by(&self, ids: &BTreeSet<u64>) -> u64 {
        let floor = match self.points.points.iter().find(|p| !ids.contains(&p.id)) {
            Some(p) => p.id,
            None => self.points.judged_upto.unwrap_or(0),
        };
        self.undo
            .iter()
            .filter(|u| u.seq <= floor)
            .map(|u| u.bytes)
            .sum()
    }
}
