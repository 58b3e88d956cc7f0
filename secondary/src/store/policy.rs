//! A disk's recovery-point policy as its agent asked for it (`STORE/disks/NAME/policy.json`)
//! and the retention the server enforces from it.
//!
//! ```text
//! { "version": 1, "crash_points_every_ns": 300000000000, "retain_ns": 86400000000000,
//!   "set_unix_ns": 1700000000000000000 }
//! ```
//!
//! Written atomically (`base::files::write_atomic`) when an agent sends a `PointPolicy`
//! that differs from the file; read when the disk opens. What the file holds is the peer's
//! *request*: the server clamps it every time it is used ([`Retention::for_disk`]: slot
//! 1 s..1 h, span at least the server's `--min-retain`), so lowering the floor later never
//! needs the peer to ask again, and raising it protects history at once. A disk without the
//! file (its agent speaks protocol 2, or never sent one) gets the server's defaults.
//!
//! Alternative rejected: a field in `state.json` — that file is rewritten by every apply,
//! and a policy the peer sets has no business in the replica's crash-safety record.

use serde::{Deserialize, Serialize};

use super::{Disk, Result, StoreError, io_err, write_atomic};
use base::points::{
    MAX_CRASH_POINTS_EVERY_NS, MAX_RETAIN_NS, MIN_CRASH_POINTS_EVERY_NS, Retention,
};

/// The file's name in the disk's directory.
pub const POLICY_FILE: &str = "policy.json";

/// `policy.json` (format version 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AskedPolicy {
    /// Format version (1).
    pub version: u32,
    /// Slot width the agent asked for, ns (already within 1 s..1 h).
    pub crash_points_every_ns: u64,
    /// Retention span the agent asked for, ns (already at most 366 d).
    pub retain_ns: u64,
    /// When the server recorded it.
    pub set_unix_ns: u64,
}

impl AskedPolicy {
    /// What a peer sent, within the absolute caps (the server's floor is applied on use).
    #[must_use]
    pub fn from_peer(crash_points_every_ns: u64, retain_ns: u64, now_ns: u64) -> Self {
        Self {
            version: 1,
            crash_points_every_ns: crash_points_every_ns
                .clamp(MIN_CRASH_POINTS_EVERY_NS, MAX_CRASH_POINTS_EVERY_NS),
            retain_ns: retain_ns.min(MAX_RETAIN_NS),
            set_unix_ns: now_ns,
        }
    }

    /// `(slot, span)` for [`Retention::for_disk`].
    #[must_use]
    pub fn pair(&self) -> (u64, u64) {
        (self.crash_points_every_ns, self.retain_ns)
    }
}

impl Disk {
    /// The policy this disk's agent asked for (None: none recorded).
    ///
    /// # Errors
    /// `policy.json` is unreadable or not this format.
    pub fn asked_policy(&self) -> Result<Option<AskedPolicy>> {
        let path = self.dir.join(POLICY_FILE);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err(self.name(), "reading policy.json")(e)),
        };
        match serde_json::from_slice::<AskedPolicy>(&bytes) {
            Ok(p) if p.version == 1 => Ok(Some(p)),
            Ok(p) => Err(self.corrupt(format!("version {} (this build reads 1)", p.version))),
            Err(e) => Err(self.corrupt(e.to_string())),
        }
    }

    /// Records what the agent asked for (only when it changed) and applies `effective`
    /// from the next point.
    ///
    /// # Errors
    /// `policy.json` could not be written (the retention in force is unchanged).
    pub fn set_asked_policy(&mut self, asked: AskedPolicy, effective: Retention) -> Result<()> {
        let same = self
            .asked_policy()
            .ok()
            .flatten()
            .is_some_and(|p| p.pair() == asked.pair());
        if !same {
            let bytes = serde_json::to_vec_pretty(&asked).map_err(|e| StoreError::Io {
                disk: self.name().to_string(),
                what: "encoding policy.json".into(),
                source: std::io::Error::other(e),
            })?;
            write_atomic(&self.dir.join(POLICY_FILE), &bytes)
                .map_err(io_err(self.name(), "writing policy.json"))?;
        }
        self.set_retention(effective);
        Ok(())
    }

    /// The retention in force (what `sitrep points` shows).
    #[must_use]
    pub fn retention(&self) -> &Retention {
        &self.retention
    }

    fn corrupt(&self, why: String) -> StoreError {
        StoreError::Corrupt {
            disk: self.name().to_string(),
            path: self.dir.join(POLICY_FILE),
            why,
        }
    }
}
