//! Local grants for reverse replication: decisions only the operator of the site whose disk
//! would be overwritten makes, on that site (`sitrep reverse-accept NAME [--from CN]
//! [--discard-local-changes]` → [`Request::AcceptReverse`](base::control::Request) on this
//! server's control socket) — never a peer.
//!
//! A grant allows the next adoption of disk NAME (`reverse.rs`): `from` names the client
//! that may adopt it (when the store has no entry for it and the local agent recorded
//! another server, or none; or to replace an entry another client owns), and
//! `discard_local_changes` lets it overwrite what this site wrote since the failover (a
//! split brain). It is consumed by the adoption it allowed.
//!
//! `STORE/grants/NAME.json` (version 1, mode 0600 in a 0700 directory, written atomically):
//! [`Grant`].

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{Shared, reverse};
use crate::store::{self, StoreError};
use base::agent_state::Protection;

/// `grants/NAME.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grant {
    /// Format version (1).
    pub version: u32,
    /// The disk.
    pub disk: String,
    /// The client (certificate name) allowed to adopt it; `None`: whoever the usual rule
    /// allows (the entry's owner, or the server the local agent replicated to).
    pub from: Option<String>,
    /// Overwrite what this site wrote since the failover.
    pub discard_local_changes: bool,
    /// When the operator granted it (ns since the epoch).
    pub created_unix_ns: u64,
}

/// What `sitrep reverse-accept` reports back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AcceptReport {
    /// The disk.
    pub disk: String,
    /// The grant now in force (`None` after `--revoke`).
    pub grant: Option<Grant>,
    /// Where it is kept.
    pub path: String,
    /// The local device a reverse replication would overwrite.
    pub device: String,
    /// The local agent has the disk failed over (adoption needs it).
    pub failed_over: bool,
    /// The server the local agent replicated the disk to, as recorded.
    pub recorded_server: Option<String>,
    /// The owner of this store's entry of the disk, if it has one.
    pub entry_owner: Option<String>,
    /// What this site wrote since the failover, as its logs tell now (`None`: nothing
    /// recorded). The adoption checks again against the point the other site activated.
    pub local_changes: Option<String>,
}

fn path(store: &Path, name: &str) -> PathBuf {
    store.join("grants").join(format!("{name}.json"))
}

/// The grant for disk `name`, if any.
///
/// # Errors
/// The file is unreadable or invalid.
pub(super) fn load(store: &Path, name: &str) -> Result<Option<Grant>, StoreError> {
    let p = path(store, name);
    let text = match fs::read(&p) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(StoreError::Io {
                disk: name.into(),
                what: format!("reading {}", p.display()),
                source: e,
            });
        }
    };
    let g: Grant = serde_json::from_slice(&text).map_err(|e| StoreError::Corrupt {
        disk: name.into(),
        path: p.clone(),
        why: e.to_string(),
    })?;
    Ok((g.version == 1 && g.disk == name).then_some(g))
}

/// Removes the grant of `name` (the adoption it allowed happened).
pub(super) fn consume(store: &Path, name: &str) {
    let p = path(store, name);
    match fs::remove_file(&p) {
        Ok(()) => {
            let _ = store::sync_dir(&store.join("grants"));
            tracing::info!(disk = name, "reverse-accept grant used and removed");
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => tracing::error!(disk = name, "removing {}: {e}", p.display()),
    }
}

fn save(store: &Path, g: &Grant) -> std::io::Result<PathBuf> {
    let dir = store.join("grants");
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)?;
    let p = path(store, &g.disk);
    let tmp = p.with_extension("tmp");
    let _ = fs::remove_file(&tmp);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&tmp)?;
    f.write_all(&serde_json::to_vec_pretty(g).map_err(std::io::Error::other)?)?;
    f.sync_all()?;
    fs::rename(&tmp, &p)?;
    store::sync_dir(&dir)?;
    Ok(p)
}

/// `sitrep reverse-accept NAME [--from CN] [--discard-local-changes] [--revoke]`.
///
/// # Errors
/// No reverse replication here (`--adopt-from`), no such protection, nothing to grant, or a
/// file error.
pub(super) fn accept(
    sh: &Shared,
    name: &str,
    from: Option<String>,
    discard_local_changes: bool,
    revoke: bool,
) -> anyhow::Result<AcceptReport> {
    if !base::valid_disk_name(name) {
        anyhow::bail!("'{name}' is not a valid disk name");
    }
    let Some(agent_state) = &sh.adopt_from else {
        anyhow::bail!(
            "this server takes no reverse replication: start it with --adopt-from AGENT_STATE (the local agent's --state)"
        );
    };
    let prot = reverse::load(agent_state, name).map_err(|e| anyhow::anyhow!("{e}"))?;
    if let Some(f) = &from
        && (f.is_empty() || f.len() > 256 || f.chars().any(char::is_control))
    {
        anyhow::bail!("--from '{}': not a certificate name", f.escape_debug());
    }
    let grant = if revoke {
        match fs::remove_file(path(&sh.store, name)) {
            Ok(()) => store::sync_dir(&sh.store.join("grants"))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
        tracing::info!(disk = name, "reverse-accept grant revoked by the operator");
        None
    } else {
        if from.is_none() && !discard_local_changes {
            anyhow::bail!(
                "nothing to allow: name the client with --from CN, and/or --discard-local-changes"
            );
        }
        let g = Grant {
            version: 1,
            disk: name.into(),
            from,
            discard_local_changes,
            created_unix_ns: base::now_ns(),
        };
        save(&sh.store, &g)?;
        tracing::warn!(disk = name, from = ?g.from, discard_local_changes, "reverse-accept granted by the operator");
        Some(g)
    };
    let entry_owner = store::read_state(&sh.store, name)
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .map(|s| s.owner);
    Ok(AcceptReport {
        disk: name.into(),
        grant,
        path: path(&sh.store, name).display().to_string(),
        device: prot.device.display().to_string(),
        failed_over: prot.failed_over.is_some(),
        recorded_server: prot.server_name.clone(),
        entry_owner,
        local_changes: local_changes(agent_state, name, &prot),
    })
}

/// What this site wrote since the failover: since the activated point when the agent knows
/// it (a planned failover), else everything its remaining logs record.
fn local_changes(agent_state: &Path, name: &str, prot: &Protection) -> Option<String> {
    let fork = match prot.failed_over.as_ref().map(|f| f.point) {
        Some(p) if p > 0 => p,
        _ => hrl::chain::list_logs(&base::agent_state::log_dir(agent_state, name))
            .ok()
            .and_then(|l| l.first().map(|(s, _)| s.0.saturating_sub(1)))
            .unwrap_or(0),
    };
    reverse::written_since(agent_state, name, fork)
}
