//! Reverse replication into this site's own disk (docs/architecture.md, *Reverse
//! replication*): after a failover, the other site's agent replicates the now active disk
//! back here, into the device this site's agent protected before (`sitrep server
//! --adopt-from AGENT_STATE`).
//!
//! Adoption is refused — nothing is written — unless this site's agent has the disk failed
//! over (it stopped replicating it), the device is not mounted here, and this site provably
//! did not write the disk after the point the other site activated (`fork_seq`): its agent's
//! remaining logs must start right after that point and record no change and no tracking
//! gap. Otherwise both sites wrote since their common state — a **split brain**, reported
//! with what this site wrote, resolved only by the operator's explicit choice
//! (`discard_target_changes`: the other site's disk wins; its agent then compares the whole
//! disk by digests and overwrites what differs).

use std::path::Path;

use hrl::{GapScope, LogReader, RecordBody, RecoveryMode};

use super::Shared;
use crate::primary::state::{self, Protection};
use crate::store::{self, AttachRequest, Disk, StoreError};

/// What `AttachReverse` asked.
#[derive(Debug, Clone, Copy)]
pub(super) struct ReverseReq {
    pub(super) fork_seq: u64,
    pub(super) from_seq: u64,
    pub(super) discard_target_changes: bool,
}

fn bad(disk: &str, why: String) -> StoreError {
    StoreError::BadRequest {
        disk: disk.into(),
        why,
    }
}

/// Opens disk `req.name` for reverse replication: the entry adopted earlier for this
/// relationship, or a new adoption of the local agent's device.
///
/// # Errors
/// Not adoptable (see the module doc), a split brain, or a file error.
pub(super) fn open(
    sh: &Shared,
    req: &AttachRequest<'_>,
    r: ReverseReq,
) -> Result<Disk, StoreError> {
    let name = req.name;
    if store::disk_dir(&sh.store, name).join("state.json").exists() {
        let d = Disk::open(&sh.store, name)?;
        if d.state().replica_device.is_some() && d.state().disk_id == req.disk_id {
            d.check_attach(req)?;
            return Ok(d);
        }
    }
    let Some(agent_state) = &sh.adopt_from else {
        return Err(bad(
            name,
            "this server takes no reverse replication: start it with --adopt-from AGENT_STATE (the local agent's --state)".into(),
        ));
    };
    let prot = load(agent_state, name)?;
    let Some(fo) = &prot.failed_over else {
        return Err(bad(
            name,
            format!(
                "disk {name} is still replicated from this site ({}): fail it over first, or unprotect it here",
                prot.device.display()
            ),
        ));
    };
    match crate::primary::freeze::mount_point(&prot.device) {
        Ok(Some(m)) => {
            return Err(bad(
                name,
                format!(
                    "{} is mounted at {} on this site: stop the application, thaw it (fsfreeze -u) and unmount it first",
                    prot.device.display(),
                    m.display()
                ),
            ));
        }
        Ok(None) => {}
        Err(e) => return Err(bad(name, format!("reading the mounts: {e}"))),
    }
    let written = written_since(agent_state, name, r.fork_seq);
    match (written, r.discard_target_changes) {
        (Some(what), false) => {
            return Err(StoreError::SplitBrain {
                disk: name.into(),
                why: format!(
                    "this site wrote the disk after point {} that the other site activated ({what}), and the other site's disk is active since ({} failover)",
                    r.fork_seq, fo.kind
                ),
            });
        }
        (Some(what), true) => tracing::warn!(
            disk = name,
            "split brain resolved by the operator: this site's changes are discarded ({what})"
        ),
        (None, _) => {}
    }
    tracing::info!(disk = name, device = %prot.device.display(), client = req.client, "adopted for reverse replication");
    Disk::adopt(&sh.store, req, &prot.device, r.from_seq)
}

fn load(agent_state: &Path, name: &str) -> Result<Protection, StoreError> {
    let path = state::disk_dir(agent_state, name).join("protection.json");
    let text = match std::fs::read(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(bad(
                name,
                format!(
                    "no disk {name} was protected from this site (no {})",
                    path.display()
                ),
            ));
        }
        Err(e) => {
            return Err(StoreError::Io {
                disk: name.into(),
                what: format!("reading {}", path.display()),
                source: e,
            });
        }
    };
    serde_json::from_slice(&text).map_err(|e| StoreError::Corrupt {
        disk: name.into(),
        path,
        why: e.to_string(),
    })
}

/// What this site wrote after cycle `fork`, from its agent's remaining logs; `None` only
/// when provably nothing: the logs start right after `fork` (every cycle up to it was
/// shipped and is in the activated point) and record no change and no gap.
fn written_since(agent_state: &Path, name: &str, fork: u64) -> Option<String> {
    let dir = state::log_dir(agent_state, name);
    let logs = match hrl::chain::list_logs(&dir) {
        Ok(l) => l,
        Err(e) => return Some(format!("its logs cannot be listed ({e})")),
    };
    let Some((first, _)) = logs.first() else {
        return Some("no log of the disk remains here: its history is unknown".into());
    };
    if first.0 > fork.saturating_add(1) {
        return Some(format!(
            "cycles {}..={} were shipped from here but are not in the activated point",
            fork + 1,
            first.0 - 1
        ));
    }
    let mut bytes = 0u64;
    let mut seqs: Vec<u64> = Vec::new();
    for (seq, path) in logs.iter().filter(|(s, _)| s.0 > fork) {
        match changes(path) {
            Ok((_, Some(gap))) => {
                return Some(format!(
                    "tracking was interrupted here (log {}: {gap}), so it cannot be proved unwritten",
                    seq.0
                ));
            }
            Ok((b, None)) => {
                if b > 0 {
                    seqs.push(seq.0);
                }
                bytes += b;
            }
            Err(e) => return Some(format!("log {} cannot be read ({e})", seq.0)),
        }
    }
    (bytes > 0).then(|| {
        format!(
            "{bytes} bytes recorded in log(s) {seqs:?} of {}",
            dir.display()
        )
    })
}

/// Bytes of changes a log records (overlaps counted twice: an upper bound) and its first
/// whole-disk gap. The newest log is still open (the agent keeps tracking): read up to its
/// last complete record.
fn changes(path: &Path) -> Result<(u64, Option<String>), String> {
    let mut r = LogReader::open(path, RecoveryMode::TruncateTail).map_err(|e| e.to_string())?;
    let mut bytes = 0u64;
    while let Some(rec) = r.next_record().map_err(|e| e.to_string())? {
        if let RecordBody::TrackingGap {
            reason,
            scope: GapScope::WholeDisk,
        } = &rec.body
        {
            return Ok((bytes, Some(format!("{reason:?}"))));
        }
        for e in rec.body.extents().unwrap_or_default() {
            bytes = bytes.saturating_add(e.len());
        }
    }
    Ok((bytes, None))
}
