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

    /// Undo bytes [`Disk::retire_points`] would free if asked to retire `ids` (see
    /// `compact.rs`: files no remaining point needs, and what merged intervals trim).
    #[must_use]
    pub fn undo_freed_by(&self, ids: &BTreeSet<u64>) -> u64 {
        self.undo_freed_estimate(ids)
    }
}
