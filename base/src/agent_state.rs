//! What the agent persists per protected disk: `STATE/disks/NAME/protection.json` (version 1,
//! written atomically) beside the disk's HRL logs in `STATE/disks/NAME/logs/`.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::Frequency;

/// Where the initial copy (or a full re-copy) stands, from the agent's side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CopyPlan {
    /// The first log whose cycles follow the copy: the log that became current when the copy
    /// started (every change completed before then is in the data the copy reads).
    pub from_seq: u64,
    /// The server confirmed the copy complete.
    pub done: bool,
    /// The server must discard any cursor it has (a re-copy after a tracking gap).
    pub restart: bool,
}

/// `protection.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Protection {
    /// Format version (1).
    pub version: u32,
    /// Disk name (the same on both sites).
    pub name: String,
    /// The protected block device.
    pub device: PathBuf,
    /// `HOST:PORT` of the server.
    pub to: String,
    /// Cycle frequency.
    pub frequency: Frequency,
    /// Replication relationship id (random, 32 hex digits).
    pub disk_id: String,
    /// When protection was enabled.
    pub created_unix_ns: u64,
    /// The copy.
    pub copy: CopyPlan,
    /// Why a re-copy is running, if it is one.
    pub resync_reason: Option<String>,
    /// Make an app-consistent point this often (seconds; 1–12 h by policy), if set.
    #[serde(default)]
    pub app_consistent_every_secs: Option<u64>,
    /// The recovery-point policy (slot width, retention span).
    #[serde(default)]
    pub points: crate::points::PointPolicy,
    /// Quiesces the application for an app-consistent point (`sh -c`), instead of freezing
    /// the filesystem.
    #[serde(default)]
    pub pre_hook: Option<String>,
    /// Releases it afterwards (always run once the pre-hook succeeded).
    #[serde(default)]
    pub post_hook: Option<String>,
    /// A checksum resync that is required or running.
    #[serde(default)]
    pub resync: Option<ResyncPlan>,
    /// Cycles below this sequence are never offered as recovery points (the replica is not
    /// a state of the source until the cycles cut after a resync's confirmation are applied).
    #[serde(default)]
    pub points_from_seq: u64,
    /// Set by a planned failover: the disk is active on the secondary now; this site no
    /// longer replicates it (tracking goes on).
    #[serde(default)]
    pub failed_over: Option<FailedOverInfo>,
    /// Reverse replication: this disk is the activated replica of a failover, replicated
    /// back into the other site's own disk (`AttachReverse` instead of `Attach`).
    #[serde(default)]
    pub reverse: Option<ReverseInfo>,
    /// The certificate name of the server this disk was last attached to (from the TLS
    /// session, at every successful attach): after a failover, the client this site's
    /// server lets adopt the disk for reverse replication without a local grant.
    #[serde(default)]
    pub server_name: Option<String>,
    /// The consistency group the disk belongs to (`sitrep protect --group`, `sitrep group
    /// add`): its cycles are cut at one instant with the group's other disks, and the server
    /// keeps group points over all of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
}

/// A reverse replication's terms, as the agent persists them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReverseInfo {
    /// The recovery point this site activated (the last cycle of the old direction).
    pub fork_seq: u64,
    /// Kept for compatibility of `protection.json`; always false now and ignored by the
    /// server: the other site's operator decides what that site discards
    /// (`sitrep reverse-accept NAME --discard-local-changes` there).
    pub discard_target_changes: bool,
}

/// Where a disk failed over to, as the primary records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FailedOverInfo {
    /// `planned`, or `unplanned` (learned from the server's refusal).
    pub kind: FailoverKind,
    /// When (ns since the epoch).
    pub unix_ns: u64,
    /// The recovery point activated on the secondary.
    pub point: u64,
    /// Its source-side cut time (ns since the epoch).
    pub cut_time_unix_ns: u64,
    /// The block device on the secondary.
    pub device: String,
    /// The image behind it on the secondary.
    pub image: String,
    /// How the source was quiesced (`planned failover: fsfreeze /mnt`); a frozen
    /// filesystem stays frozen.
    pub quiesced: String,
}

/// How a disk failed over (`kind` of [`FailedOverInfo`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FailoverKind {
    /// `sitrep failover NAME --planned` from this site.
    Planned,
    /// The other site failed over on its own; the server refused this site with `FailedOver`.
    Unplanned,
}

impl FailoverKind {
    /// The string of `protection.json`.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Planned => "planned",
            Self::Unplanned => "unplanned",
        }
    }
}

impl std::fmt::Display for FailoverKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// A checksum resync, as the agent persists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResyncPlan {
    /// Random id (the server keeps the cursor of this id; a new id starts over).
    pub id: u64,
    /// Why it is needed.
    pub reason: String,
    /// Suspect regions `(offset, len)` known so far; `None` = the whole disk.
    pub scope: Option<Vec<(u64, u64)>>,
    /// Set when it starts: the log cut then is `from_seq - 1`; every change recorded in logs
    /// before `from_seq` is inside `scope`, later ones ship as cycles after the resync.
    pub from_seq: Option<u64>,
}

/// `STATE/disks/NAME`.
#[must_use]
pub fn disk_dir(state: &Path, name: &str) -> PathBuf {
    state.join("disks").join(name)
}

/// `STATE/disks/NAME/logs`.
#[must_use]
pub fn log_dir(state: &Path, name: &str) -> PathBuf {
    disk_dir(state, name).join("logs")
}

impl Protection {
    /// Saves atomically.
    ///
    /// # Errors
    /// The file cannot be written.
    pub fn save(&self, state: &Path) -> std::io::Result<()> {
        let bytes = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        crate::files::write_atomic(&disk_dir(state, &self.name).join("protection.json"), &bytes)
    }

    /// Loads every protection in `state`.
    ///
    /// # Errors
    /// A protection file is unreadable or invalid (the message names it).
    pub fn load_all(state: &Path) -> anyhow::Result<Vec<Self>> {
        let mut out = Vec::new();
        let dir = state.join("disks");
        let rd = match std::fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => anyhow::bail!("{}: {e}", dir.display()),
        };
        for e in rd {
            let p = e?.path().join("protection.json");
            if !p.exists() {
                continue;
            }
            let text = std::fs::read(&p).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?;
            let prot: Self = serde_json::from_slice(&text)
                .map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?;
            if prot.version != 1 {
                anyhow::bail!("{}: unsupported version {}", p.display(), prot.version);
            }
            out.push(prot);
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// The relationship id as bytes.
    #[must_use]
    pub fn disk_id_bytes(&self) -> [u8; 16] {
        hrl::DiskId::parse_hex(&self.disk_id).map_or([0; 16], |d| d.0)
    }
}
