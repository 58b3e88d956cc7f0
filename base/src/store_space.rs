//! What the server reports about the room its store takes and the points that left it:
//! the store's bytes against its quota (`sitrep server --max-store-bytes`), the points each
//! disk retired and why, and the answer to `sitrep points delete`.
//!
//! **Store bytes**, as counted for the quota: for every open disk entry, the blocks its
//! `replica.img` has allocated (`st_blocks`, so holes cost nothing; 0 for a device-backed
//! replica, which is not the store's), plus its undo files, plus its staged cycle files.
//! Not counted: `state.json`/`points.json` (a few KiB), and retired copies
//! (`STORE/retired/`, capped per disk and removed only by `sitrep retired purge`).

use serde::{Deserialize, Serialize};

/// Why points left a disk (the `reason` label of `sitrep_points_retired_total`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetiredCounts {
    /// Retired by the store quota (oldest first, never a disk's newest point).
    pub quota: u64,
    /// Retired by the disk's own point storage cap (`--max-point-storage`, its agent's
    /// policy): oldest first, only points older than the server's `--min-retain`, never the
    /// newest.
    #[serde(default)]
    pub disk_cap: u64,
    /// Retired by the retention policy as newer points were made.
    pub retention: u64,
    /// Deleted by this site's operator (`sitrep points delete`).
    pub operator: u64,
}

/// One disk's share of the store (`store.disks` in the server's status).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskSpace {
    /// The disk.
    pub name: String,
    /// Store bytes its entry takes (see the module docs), as of its last cycle or verdict.
    pub bytes: u64,
    /// Points retired since the server started, by reason.
    pub points_retired: RetiredCounts,
    /// Of `bytes`, what its points' undo data takes (what the disk's cap counts).
    #[serde(default)]
    pub point_bytes: u64,
    /// The disk's point storage cap as its agent asked (`--max-point-storage`; None: none).
    #[serde(default)]
    pub max_point_storage_bytes: Option<u64>,
    /// Over that cap with nothing more it may retire: every point left is younger than the
    /// server's `--min-retain`, or the newest.
    #[serde(default)]
    pub over_point_cap: bool,
}

/// The server's store against its quota (`store` in the server's status).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreSpace {
    /// Store bytes of every open disk (see the module docs).
    pub bytes: u64,
    /// `--max-store-bytes` (None: no quota).
    pub quota_bytes: Option<u64>,
    /// Per disk.
    pub disks: Vec<DiskSpace>,
}

/// `sitrep points delete NAME ID|--all [--yes] --json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeletePointsReport {
    /// The disk (or retired copy id `NAME@NS`).
    pub disk: String,
    /// Whether the points were deleted (false: `--yes` was not given, nothing changed).
    pub deleted: bool,
    /// The points deleted (or that would be), oldest first.
    pub points: Vec<crate::points::Point>,
    /// Undo bytes freed (or that would be): undo data no remaining point needs.
    pub freed_bytes: u64,
    /// Points left on the disk.
    pub remaining: u64,
}
