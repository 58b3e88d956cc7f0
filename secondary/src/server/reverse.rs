//! Reverse replication into this site's own disk (docs/architecture.md, *Reverse
//! replication*): after a failover, the other site's agent replicates the now active disk
//! back here, into the device this site's agent protected before (`sitrep server
//! --adopt-from AGENT_STATE`).
//!
//! **Who may.** The owner binding holds on this path as on every other: authorization is
//! decided first, from `state.json` and the local agent's protection, before anything is
//! opened or written. If the store has an entry for the name, only its `owner` (the
//! certificate name that created it) may reverse into it — whatever disk id it sends. If
//! it has none (the first reverse into this site), only the server this site's agent
//! replicated the disk to (`server_name` of its protection, recorded from the TLS peer at
//! every attach). This site's operator can name another client with a local grant
//! (`sitrep reverse-accept NAME --from CN`, see `grants.rs`).
//!
//! **When.** Adoption is refused — nothing is written — unless this site's agent has the
//! disk failed over (it stopped replicating it), the device is not mounted here, and this
//! site provably did not write the disk after the point the other site activated
//! (`fork_seq`): its agent's remaining logs must start right after that point and record no
//! change and no tracking gap. Otherwise both sites wrote since their common state — a
//! **split brain**, reported with what this site wrote. Only this site's operator, whose
//! changes would be lost, resolves it (`sitrep reverse-accept NAME
//! --discard-local-changes`); the peer's `discard_target_changes` flag is ignored.

use std::path::Path;

use hrl::{GapScope, LogReader, RecordBody, RecoveryMode};

use super::{Shared, grants};
use crate::store::{self, AttachRequest, Disk, StoreError};
use base::agent_state::{self, Protection};

/// What `AttachReverse` asked (its `discard_target_changes` is not here: a peer does not
/// decide what this site discards).
#[derive(Debug, Clone, Copy)]
pub(super) struct ReverseReq {
    pub(super) fork_seq: u64,
    pub(super) from_seq: u64,
}

fn bad(disk: &str, why: String) -> StoreError {
    StoreError::BadRequest {
        disk: disk.into(),
        why,
    }
}

/// Opens disk `req.name` for reverse replication: the entry adopted earlier for this
/// relationship (`Ok(None)` when `current`, the slot's open disk, is it), or a new
/// adoption of the local agent's device.
///
/// # Errors
/// Not allowed ([`StoreError::Unauthorized`], [`StoreError::NotAllowed`]), not adoptable
/// (see the module doc), a split brain, or a file error.
pub(super) fn open(
    sh: &Shared,
    current: Option<&Disk>,
    req: &AttachRequest<'_>,
    r: ReverseReq,
) -> Result<Option<Disk>, StoreError> {
    let name = req.name;
    let existing = match current {
        Some(d) => Some(d.state().clone()),
        None => store::read_state(&sh.store, name)?,
    };
    let grant = grants::load(&sh.store, name)?;
    let granted = grant.as_ref().and_then(|g| g.from.as_deref()) == Some(req.client);
    if let Some(st) = &existing {
        if st.owner != req.client && !granted {
            return Err(StoreError::Unauthorized {
                disk: name.into(),
                owner: st.owner.clone(),
                client: req.client.into(),
            });
        }
        if st.replica_device.is_some() && st.disk_id == req.disk_id {
            // This relationship, resumed: a plain attach.
            store::check_attach_state(st, req)?;
            return match current {
                Some(_) => Ok(None),
                None => Disk::open(&sh.store, name).map(Some),
            };
        }
    }
    let Some(agent_state) = &sh.adopt_from else {
        return Err(bad(
            name,
            "this server takes no reverse replication: start it with --adopt-from AGENT_STATE (the local agent's --state)".into(),
        ));
    };
    let prot = load(agent_state, name)?;
    if existing.is_none() && !granted && prot.server_name.as_deref() != Some(req.client) {
        return Err(StoreError::NotAllowed {
            disk: name.into(),
            why: format!(
                "no replica of it is kept here, and this site's agent replicated it to {}, not to '{}': if '{}' is the other site, allow it on this site with `sitrep reverse-accept {name} --from {}`",
                prot.server_name
                    .as_deref()
                    .map_or_else(|| "a server it did not record".into(), |s| format!("'{s}'")),
                req.client,
                req.client,
                req.client
            ),
        });
    }
    adoptable(name, &prot)?;
    let discard = grant.as_ref().is_some_and(|g| g.discard_local_changes);
    match (written_since(agent_state, name, r.fork_seq), discard) {
        (Some(what), false) => {
            return Err(StoreError::SplitBrain {
                disk: name.into(),
                why: format!(
                    "this site wrote the disk after point {} that the other site activated ({what}), and the other site's disk is active since ({} failover); only the operator of this server's site, whose changes would be lost, can choose the other site's disk: `sitrep reverse-accept {name} --discard-local-changes` on this server's host",
                    r.fork_seq,
                    prot.failed_over.as_ref().map_or("", |f| f.kind.as_str())
                ),
            });
        }
        (Some(what), true) => tracing::warn!(
            disk = name,
            "split brain resolved by this site's operator (reverse-accept): this site's changes are discarded ({what})"
        ),
        (None, _) => {}
    }
    tracing::info!(disk = name, device = %prot.device.display(), client = req.client, "adopted for reverse replication");
    let d = Disk::adopt(&sh.store, req, &prot.device, r.from_seq)?;
    if grant.is_some() {
        grants::consume(&sh.store, name);
    }
    Ok(Some(d))
}

/// The local agent stopped replicating the disk (it failed over) and its device is not
/// mounted here.
fn adoptable(name: &str, prot: &Protection) -> Result<(), StoreError> {
    if prot.failed_over.is_none() {
        return Err(bad(
            name,
            format!(
                "disk {name} is still replicated from this site ({}): fail it over first, or unprotect it here",
                prot.device.display()
            ),
        ));
    }
    match base::mounts::mount_point(&prot.device) {
        Ok(Some(m)) => Err(bad(
            name,
            format!(
                "{} is mounted at {} on this site: stop the application, thaw it (fsfreeze -u) and unmount it first",
                prot.device.display(),
                m.display()
            ),
        )),
        Ok(None) => Ok(()),
        Err(e) => Err(bad(name, format!("reading the mounts: {e}"))),
    }
}

pub(super) fn load(agent_state: &Path, name: &str) -> Result<Protection, StoreError> {
    let path = agent_state::disk_dir(agent_state, name).join("protection.json");
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
pub(super) fn written_since(agent_state: &Path, name: &str, fork: u64) -> Option<String> {
    let dir = agent_state::log_dir(agent_state, name);
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
