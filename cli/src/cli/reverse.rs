//! `sitrep reverse` and `sitrep failback`: after a failover, replicate the active disk back
//! to the other site, then move it back there (docs/architecture.md, *Reverse replication
//! and failback*). Both talk to the local agent; `reverse` also asks the local server which
//! device and point the failover activated.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use base::control::{AGENT_SOCKET, Request, SERVER_SOCKET};
use base::status::{DiskStatus, Health, Job, ReplState, StatusReport};
use clap::{Args, ValueEnum};
use secondary::server::AcceptReport;
use secondary::server::failover::FailoverRecord;

use crate::Outcome;

/// Arguments of `sitrep reverse`.
#[derive(Args)]
pub(crate) struct ReverseArgs {
    /// The disk name (the same on both sites).
    #[arg(required_unless_present = "group")]
    pub(super) name: Option<String>,
    /// Reverse every member of this consistency group that failed over to this site (`sitrep
    /// failover --group G`): each is protected back in group G, so the reverse direction
    /// has group points too. With NAME: that disk only, joining group G.
    #[arg(long)]
    pub(super) group: Option<String>,
    /// `HOST:PORT` of the other site's server (started with --adopt-from its agent's state).
    #[arg(long)]
    pub(super) to: String,
    /// No longer honoured (fails with what to do instead): what the other site wrote is
    /// discarded only by that site's operator, with `sitrep reverse-accept NAME
    /// --discard-local-changes` on that site.
    #[arg(long, hide = true)]
    discard_target_changes: bool,
    /// Cycle frequency of the reverse replication: continuous, 30s, 5m or 15m.
    #[arg(long, default_value = "30s")]
    pub(super) frequency: String,
    /// This site's agent control socket.
    #[arg(long, default_value = AGENT_SOCKET)]
    pub(super) socket: PathBuf,
    /// This site's server control socket (it holds the failover record).
    #[arg(long, default_value = SERVER_SOCKET)]
    pub(super) server_socket: PathBuf,
    /// Return once the reverse replication is set up, without waiting for the comparison.
    #[arg(long)]
    pub(super) no_wait: bool,
    /// Give up waiting after this many seconds (exit 1; the replication goes on).
    #[arg(long, default_value_t = 86_400)]
    pub(super) timeout: u64,
    /// Machine-readable output: the disk's status at the end (with --group: each member's).
    #[arg(long)]
    pub(super) json: bool,
}

impl ReverseArgs {
    /// `--group G` without a disk name: the whole group (`group_moves.rs`).
    pub(crate) fn whole_group(&self) -> Option<&str> {
        self.name
            .is_none()
            .then_some(self.group.as_deref())
            .flatten()
    }
}

/// Arguments of `sitrep reverse-accept`.
#[derive(Args)]
pub(crate) struct AcceptArgs {
    /// The disk name.
    name: String,
    /// The client (its certificate name) allowed to reverse-replicate into this site's
    /// disk, when it is not the server this site's agent replicated the disk to, or when
    /// this store's entry of the disk is owned by another client.
    #[arg(long, value_name = "CN")]
    from: Option<String>,
    /// Split brain: overwrite what this site wrote to the disk since the failover (the
    /// other site's disk wins; only blocks that differ are rewritten).
    #[arg(long)]
    discard_local_changes: bool,
    /// Remove the grant instead.
    #[arg(long, conflicts_with_all = ["from", "discard_local_changes"])]
    revoke: bool,
    /// This site's server control socket.
    #[arg(long, default_value = SERVER_SOCKET)]
    socket: PathBuf,
    /// Machine-readable output.
    #[arg(long)]
    json: bool,
}

/// How `sitrep failback` gets the disk to the other site.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub(crate) enum FailbackMode {
    /// The running reverse replication has shipped the changes while this site kept
    /// running; now quiesce, ship the rest, compare, activate (the least downtime).
    SyncFirst,
    /// Copy the whole disk again first (after a long time here, or a replaced disk on the
    /// other site), then as sync-first.
    FullDownload,
}

/// Arguments of `sitrep failback`.
#[derive(Args)]
pub(crate) struct FailbackArgs {
    /// The disk name.
    #[arg(required_unless_present = "group")]
    pub(super) name: Option<String>,
    /// Fail back every member of this consistency group on this agent, one after the other
    /// (each stays quiesced once moved, so the set on the other site is consistent).
    #[arg(long, conflicts_with = "name")]
    pub(super) group: Option<String>,
    /// sync-first (default) or full-download.
    #[arg(long, value_enum, default_value = "sync-first")]
    pub(super) mode: FailbackMode,
    /// This site's agent control socket.
    #[arg(long, default_value = AGENT_SOCKET)]
    pub(super) socket: PathBuf,
    /// Give up waiting for the full copy after this many seconds (exit 1; it goes on).
    #[arg(long, default_value_t = 86_400)]
    pub(super) timeout: u64,
    /// Machine-readable output.
    #[arg(long)]
    pub(super) json: bool,
}

impl FailbackArgs {
    /// `--group G`: every member on this agent (`group_moves.rs`).
    pub(crate) fn whole_group(&self) -> Option<&str> {
        self.group.as_deref()
    }
}

pub(super) fn ask<T: serde::de::DeserializeOwned>(sock: &Path, req: &Request) -> anyhow::Result<T> {
    base::control::ask(sock, req, Duration::from_secs(24 * 3600))
}

pub(super) fn disk(sock: &Path, name: &str) -> anyhow::Result<DiskStatus> {
    let r: StatusReport = ask(sock, &Request::Status)?;
    r.disks
        .into_iter()
        .find(|d| d.name == name)
        .ok_or_else(|| anyhow::anyhow!("disk {name} is not protected by this agent"))
}

/// Waits until disk `name` is protected and caught up after its comparison (or critical).
pub(super) fn follow(
    sock: &Path,
    name: &str,
    quiet: bool,
    timeout: u64,
) -> anyhow::Result<DiskStatus> {
    let mut last = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(timeout);
    loop {
        if Instant::now() > deadline {
            anyhow::bail!(
                "disk {name}: not caught up after {timeout} s (it goes on; see `sitrep status`)"
            );
        }
        let d = disk(sock, name)?;
        if d.health == Health::Critical {
            anyhow::bail!(
                "disk {name}: {}{}",
                d.error.clone().unwrap_or_else(|| "critical".into()),
                d.action
                    .as_ref()
                    .map(|a| format!("\nto fix: {a}"))
                    .unwrap_or_default()
            );
        }
        if d.state == ReplState::Protected && d.resyncs_completed > 0 {
            return Ok(d);
        }
        if !quiet && last.elapsed() > Duration::from_secs(2) {
            last = Instant::now();
            match &d.resync {
                Some(r) => eprintln!(
                    "comparing: {} of {} bytes, {} differing bytes sent",
                    r.compared_bytes, r.scope_bytes, r.data_bytes_sent
                ),
                None => eprintln!("{:?}…", d.state),
            }
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

pub(crate) fn reverse(a: &ReverseArgs) -> anyhow::Result<Outcome> {
    let Some(name) = a.name.as_deref() else {
        anyhow::bail!("name the disk (or --group)");
    };
    if a.discard_target_changes {
        anyhow::bail!(
            "disk {}: --discard-target-changes is no longer honoured: what the other site wrote is discarded only by that site's operator — run `sitrep reverse-accept {} --discard-local-changes` on the other site (against its server), then this command again without the flag",
            name,
            name
        );
    }
    let rec: FailoverRecord = ask(
        &a.server_socket,
        &Request::FailoverRecord {
            name: name.to_string(),
        },
    )?;
    if !a.json {
        eprintln!(
            "reverse replication of disk {}: {} (activated point {}) → {}; only blocks that differ are sent",
            name, rec.device, rec.point.id, a.to
        );
    }
    let job = start(a, name, &rec)?;
    if a.no_wait {
        if a.json {
            crate::outln!("{}", serde_json::to_string_pretty(&job)?);
        } else {
            crate::outln!(
                "reverse replication started (job {}); follow it with: sitrep status",
                job.id
            );
        }
        return Ok(Outcome::Ok);
    }
    let d = follow(&a.socket, name, a.json, a.timeout)?;
    if a.json {
        crate::outln!("{}", serde_json::to_string_pretty(&d)?);
    } else {
        crate::outln!(
            "disk {} replicates to {} again; the comparison sent {} bytes on the wire",
            d.name,
            d.peer,
            d.wire_bytes
        );
        crate::outln!("move it back there with: sitrep failback {}", d.name);
    }
    Ok(Outcome::Ok)
}

/// Asks this site's agent to protect the disk `rec` activated back to `a.to` (in `a.group`).
pub(super) fn start(a: &ReverseArgs, name: &str, rec: &FailoverRecord) -> anyhow::Result<Job> {
    ask(
        &a.socket,
        &Request::Reverse {
            name: name.to_string(),
            device: rec.device.clone(),
            to: a.to.clone(),
            fork_seq: rec.point.id,
            discard_target_changes: false,
            frequency: a.frequency.clone(),
            group: a.group.clone(),
        },
    )
}

/// `sitrep failback --mode full-download`: copies disk `name` whole again and waits for it.
pub(super) fn full_copy(sock: &Path, name: &str, timeout: u64, quiet: bool) -> anyhow::Result<()> {
    if !quiet {
        eprintln!("failback of disk {name}: copying the whole disk first …");
    }
    let _: DiskStatus = ask(
        sock,
        &Request::Recopy {
            name: name.to_string(),
        },
    )?;
    let deadline = Instant::now() + Duration::from_secs(timeout);
    loop {
        if Instant::now() > deadline {
            anyhow::bail!(
                "disk {name}: the full copy did not finish in {timeout} s (it goes on; see `sitrep jobs`)"
            );
        }
        let d = disk(sock, name)?;
        if d.health == Health::Critical {
            anyhow::bail!("disk {name}: {}", d.error.unwrap_or_default());
        }
        if d.copy.as_ref().is_some_and(|c| c.done) && d.state == ReplState::Protected {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

pub(crate) fn failback(a: &FailbackArgs) -> anyhow::Result<Outcome> {
    let Some(name) = a.name.as_deref() else {
        anyhow::bail!("name the disk (or --group)");
    };
    let d = disk(&a.socket, name)?;
    if d.state == ReplState::FailedOverToPeer {
        anyhow::bail!("disk {name} already failed over from this site");
    }
    if matches!(a.mode, FailbackMode::FullDownload) {
        full_copy(&a.socket, name, a.timeout, a.json)?;
    }
    if !a.json {
        eprintln!(
            "failback of disk {name}: quiescing it here, shipping the rest, comparing, then activating it on the other site …"
        );
    }
    let r: base::status::PlannedReport = ask(
        &a.socket,
        &Request::PlannedFailover {
            name: name.to_string(),
        },
    )?;
    if a.json {
        crate::outln!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        crate::outln!(
            "failed back: disk {} is active on the other site ({}) at point {}",
            r.disk,
            r.device,
            r.point
        );
        crate::outln!(
            "restore the original direction there with: sitrep reverse {} --to HOST:PORT",
            r.disk
        );
    }
    Ok(Outcome::Ok)
}

pub(crate) fn accept(a: &AcceptArgs) -> anyhow::Result<Outcome> {
    let r: AcceptReport = ask(
        &a.socket,
        &Request::AcceptReverse {
            name: a.name.clone(),
            from: a.from.clone(),
            discard_local_changes: a.discard_local_changes,
            revoke: a.revoke,
        },
    )?;
    if a.json {
        crate::outln!("{}", serde_json::to_string_pretty(&r)?);
        return Ok(Outcome::Ok);
    }
    let Some(g) = &r.grant else {
        crate::outln!(
            "disk {}: no reverse-accept grant any more ({})",
            r.disk,
            r.path
        );
        return Ok(Outcome::Ok);
    };
    let who = g
        .from
        .clone()
        .unwrap_or_else(|| match (&r.entry_owner, &r.recorded_server) {
            (Some(o), _) => format!("{o} (owner of this store's entry)"),
            (None, Some(s)) => format!("{s} (the server this site's agent replicated to)"),
            (None, None) => "nobody yet: add --from CN".into(),
        });
    crate::outln!(
        "disk {}: the next reverse replication from {who} may adopt {}",
        r.disk,
        r.device
    );
    if g.discard_local_changes {
        match &r.local_changes {
            Some(w) => crate::outln!("  and DISCARD what this site wrote since the failover: {w}"),
            None => crate::outln!("  (this site's logs record no change since the failover)"),
        }
    }
    if !r.failed_over {
        crate::outln!(
            "  note: this site's agent still replicates disk {}: fail it over (or unprotect it) first",
            r.disk
        );
    }
    crate::outln!(
        "granted in {}; used up by that adoption; undo with `sitrep reverse-accept {} --revoke`",
        r.path,
        r.disk
    );
    Ok(Outcome::Ok)
}
