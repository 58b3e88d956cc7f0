//! A disk's recovery-point policy as its agent asked for it (`STORE/disks/NAME/policy.json`)
//! and the retention the server enforces from it.
//!
//! ```text
//! { "version": 2, "crash_points_every_ns": 300000000000, "retain_ns": 86400000000000,
//!   "set_unix_ns": 1700000000000000000, "max_point_storage_bytes": 21474836480 }
//! ```
//!
//! | key | since | meaning |
//! |---|---|---|
//! | `version` | 1 | 2 written; 1 and 2 read |
//! | `crash_points_every_ns`, `retain_ns` | 1 | `PointPolicy` (protocol 3), clamped to the absolute caps |
//! | `set_unix_ns` | 1 | when the server last recorded a change |
//! | `max_point_storage_bytes` | 2 | `PointStorage` (protocol 4); absent or null: no cap |
//!
//! Unknown keys are refused (a file this build does not understand is reported, and the
//! server's defaults hold meanwhile); a version 1 file simply has no cap.
//!
//! Written atomically (`base::files::write_atomic`) when an agent sends a `PointPolicy` or
//! `PointStorage` that differs from the file; read when the disk opens. What the file holds
//! is the peer's *request*: the server clamps it every time it is used
//! ([`Retention::for_disk`]: slot 1 s..1 h, span at least the server's `--min-retain`; the
//! cap retires only points older than `--min-retain`, see `server/quota.rs`), so lowering
//! the floor later never needs the peer to ask again, and raising it protects history at
//! once. A disk without the file (its agent speaks protocol 2, or never sent one) gets the
//! server's defaults and no cap. A cap that arrives before any `PointPolicy` (only a
//! hand-made peer does that) is recorded with the retention in force.
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

/// The format version this build writes (it reads 1 and 2).
pub const POLICY_VERSION: u32 = 2;

/// `policy.json` (format version 2; see the module docs for the layout).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AskedPolicy {
    /// Format version (1 or 2).
    pub version: u32,
    /// Slot width the agent asked for, ns (already within 1 s..1 h).
    pub crash_points_every_ns: u64,
    /// Retention span the agent asked for, ns (already at most 366 d).
    pub retain_ns: u64,
    /// When the server recorded it.
    pub set_unix_ns: u64,
    /// The point storage cap the agent asked for, bytes (version 2; None: no cap).
    #[serde(default)]
    pub max_point_storage_bytes: Option<u64>,
}

impl AskedPolicy {
    /// What a peer sent, within the absolute caps (the server's floor is applied on use);
    /// no cap (a `PointStorage` sets one).
    #[must_use]
    pub fn from_peer(crash_points_every_ns: u64, retain_ns: u64, now_ns: u64) -> Self {
        Self {
            version: POLICY_VERSION,
            crash_points_every_ns: crash_points_every_ns
                .clamp(MIN_CRASH_POINTS_EVERY_NS, MAX_CRASH_POINTS_EVERY_NS),
            retain_ns: retain_ns.min(MAX_RETAIN_NS),
            set_unix_ns: now_ns,
            max_point_storage_bytes: None,
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
            Ok(p) if (1..=POLICY_VERSION).contains(&p.version) => Ok(Some(p)),
            Ok(p) => Err(self.corrupt(format!(
                "version {} (this build reads 1 and {POLICY_VERSION})",
                p.version
            ))),
            Err(e) => Err(self.corrupt(e.to_string())),
        }
    }

    /// Records what the agent asked for (only when it changed; a cap already recorded is
    /// kept) and applies `effective` from the next point.
    ///
    /// # Errors
    /// `policy.json` could not be written (the retention in force is unchanged).
    pub fn set_asked_policy(&mut self, asked: AskedPolicy, effective: Retention) -> Result<()> {
        let prev = self.asked_policy().ok().flatten();
        if prev.is_none_or(|p| p.pair() != asked.pair() || p.version != POLICY_VERSION) {
            let asked = AskedPolicy {
                max_point_storage_bytes: prev.and_then(|p| p.max_point_storage_bytes),
                ..asked
            };
            self.write_policy(&asked)?;
        }
        self.set_retention(effective);
        Ok(())
    }

    /// Records the point storage cap the agent asked for (`max_bytes` 0: none; only when it
    /// changed) and applies it at once.
    ///
    /// # Errors
    /// `policy.json` could not be written (the cap in force is unchanged).
    pub fn set_asked_point_cap(&mut self, max_bytes: u64, now_ns: u64) -> Result<()> {
        let cap = (max_bytes > 0).then_some(max_bytes);
        let prev = self.asked_policy().ok().flatten();
        if prev.is_none_or(|p| p.max_point_storage_bytes != cap) {
            let r = &self.retention;
            let base =
                prev.unwrap_or_else(|| AskedPolicy::from_peer(r.every_ns, r.retain_ns, now_ns));
            let asked = AskedPolicy {
                version: POLICY_VERSION,
                set_unix_ns: now_ns,
                max_point_storage_bytes: cap,
                ..base
            };
            self.write_policy(&asked)?;
        }
        self.point_cap = cap;
        Ok(())
    }

    /// Applies the cap recorded in `policy.json` (when the disk opens or attaches).
    pub fn set_point_cap(&mut self, cap: Option<u64>) {
        self.point_cap = cap;
    }

    /// The point storage cap in force (None: none): the most bytes [`Disk::points_bytes`]
    /// should take; honoured by the server's quota task within its floor.
    #[must_use]
    pub fn point_cap(&self) -> Option<u64> {
        self.point_cap
    }

    /// The retention in force (what `sitrep points` shows).
    #[must_use]
    pub fn retention(&self) -> &Retention {
        &self.retention
    }

    fn write_policy(&self, asked: &AskedPolicy) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(asked).map_err(|e| StoreError::Io {
            disk: self.name().to_string(),
            what: "encoding policy.json".into(),
            source: std::io::Error::other(e),
        })?;
        write_atomic(&self.dir.join(POLICY_FILE), &bytes)
            .map_err(io_err(self.name(), "writing policy.json"))
    }

    fn corrupt(&self, why: String) -> StoreError {
        StoreError::Corrupt {
            disk: self.name().to_string(),
            path: self.dir.join(POLICY_FILE),
            why,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn version_1_files_read_with_no_cap_and_unknown_keys_are_refused() {
        let v1 =
            r#"{"version":1,"crash_points_every_ns":1000000000,"retain_ns":5,"set_unix_ns":7}"#;
        let p: AskedPolicy = serde_json::from_str(v1).unwrap();
        assert_eq!((p.version, p.max_point_storage_bytes), (1, None));
        let v2 = r#"{"version":2,"crash_points_every_ns":1000000000,"retain_ns":5,"set_unix_ns":7,"max_point_storage_bytes":4096}"#;
        let p: AskedPolicy = serde_json::from_str(v2).unwrap();
        assert_eq!(p.max_point_storage_bytes, Some(4096));
        let out = serde_json::to_value(p).unwrap();
        assert_eq!(out["max_point_storage_bytes"], 4096);
        let typo = r#"{"version":2,"crash_points_every_ns":1,"retain_ns":5,"set_unix_ns":7,"max_store":1}"#;
        assert!(serde_json::from_str::<AskedPolicy>(typo).is_err());
    }
}
