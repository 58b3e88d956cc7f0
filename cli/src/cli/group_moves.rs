//! Moving a whole consistency group between sites, on the site where it is active: planned
//! failover (`sitrep failover --group G --planned`) and failback (`sitrep failback --group
//! G`) run each member's planned failover in turn; `sitrep reverse --group G` protects every
//! member that failed over to this site back to the other site, in group G, so the reverse
//! direction has group points too (docs/architecture.md, *Consistency groups*).

use std::path::Path;
use std::time::Duration;

use base::control::{GroupAction, Request};
use base::status::{DiskStatus, PlannedReport, ReplState, StatusReport};
use secondary::server::failover::FailoverRecord;

use super::reverse::{FailbackArgs, FailbackMode, ReverseArgs, ask, follow, full_copy, start};
use crate::Outcome;

/// The members of `group` on the agent at `sock` (`sitrep group list`).
///
/// # Errors
/// The agent did not answer, or the group has no disks on it.
pub(super) fn agent_members(sock: &Path, group: &str) -> anyhow::Result<Vec<String>> {
    let list: serde_json::Value = base::control::ask(
        sock,
        &Request::Group {
            action: GroupAction::List,
            group: None,
            disks: vec![],
            freeze: None,
        },
        Duration::from_secs(30),
    )?;
    let members: Vec<String> = list["groups"]
        .as_array()
        .and_then(|gs| gs.iter().find(|g| g["name"] == group))
        .and_then(|g| g["members"].as_array())
        .map(|m| {
            m.iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    if members.is_empty() {
        anyhow::bail!("group {group} has no disks on this agent (sitrep group list)");
    }
    Ok(members)
}

/// The agent's status of every disk it protects.
fn agent_disks(sock: &Path) -> anyhow::Result<Vec<DiskStatus>> {
    let r: StatusReport = ask(sock, &Request::Status)?;
    Ok(r.disks)
}

/// Each member's planned failover in turn (`what`: "planned failover" or "failback"). Each
/// member stays quiesced once it has failed over, so no member's final state can hold a
/// write that depends on a later write to a member failed over before it: the set is
/// consistent. Members that failed over already (an earlier, interrupted run) are skipped;
/// a failure stops there and names the members already moved.
pub(super) fn planned_in_turn(
    sock: &Path,
    group: &str,
    members: &[String],
    what: &str,
    quiet: bool,
) -> anyhow::Result<Vec<PlannedReport>> {
    let moved: Vec<String> = agent_disks(sock)?
        .into_iter()
        .filter(|d| members.contains(&d.name) && d.state == ReplState::FailedOverToPeer)
        .map(|d| d.name)
        .collect();
    let mut done: Vec<PlannedReport> = Vec::new();
    for m in members {
        if moved.contains(m) {
            if !quiet {
                eprintln!("{what} of group {group}: disk {m} has failed over already");
            }
            continue;
        }
        if !quiet {
            eprintln!("{what} of group {group}: disk {m} …");
        }
        let r: PlannedReport = ask(sock, &Request::PlannedFailover { name: m.clone() })
            .map_err(|e| {
                let before: Vec<&str> = moved
                    .iter()
                    .map(String::as_str)
                    .chain(done.iter().map(|r| r.disk.as_str()))
                    .collect();
                anyhow::anyhow!(
                    "group {group}: disk {m}: {e:#} (failed over before it: {}); run the command again for the rest",
                    if before.is_empty() { "none".to_string() } else { before.join(", ") }
                )
            })?;
        done.push(r);
    }
    Ok(done)
}

/// Prints what [`planned_in_turn`] moved.
pub(super) fn print_moved(done: &[PlannedReport], json: bool) -> anyhow::Result<()> {
    if json {
        crate::outln!("{}", serde_json::to_string_pretty(done)?);
        return Ok(());
    }
    for r in done {
        crate::outln!(
            "disk {}: active on the other site at point {} (device {})",
            r.disk,
            r.point,
            r.device
        );
    }
    Ok(())
}

/// `sitrep failback --group G`: the members' planned failovers back, in turn (after a full
/// copy of each with `--mode full-download`).
pub(crate) fn failback(a: &FailbackArgs, group: &str) -> anyhow::Result<Outcome> {
    let members = agent_members(&a.socket, group)?;
    if matches!(a.mode, FailbackMode::FullDownload) {
        for m in &members {
            full_copy(&a.socket, m, a.timeout, a.json)?;
        }
    }
    let done = planned_in_turn(&a.socket, group, &members, "failback", a.json)?;
    print_moved(&done, a.json)?;
    if !a.json {
        crate::outln!(
            "group {group} failed back; restore the original direction there with: sitrep reverse --group {group} --to HOST:PORT"
        );
    }
    Ok(Outcome::Ok)
}

/// The failover records of the group's members on this site's server.
#[derive(serde::Deserialize)]
struct Records {
    members: Vec<FailoverRecord>,
}

/// `sitrep reverse --group G --to HOST:PORT`: every member that failed over to this site is
/// protected back in group G (skipping one this agent already reverse-replicates there),
/// then followed until each has compared and caught up.
pub(crate) fn reverse(a: &ReverseArgs, group: &str) -> anyhow::Result<Outcome> {
    let recs: Records = ask(
        &a.server_socket,
        &Request::GroupFailoverRecords {
            group: group.to_string(),
        },
    )?;
    let disks = agent_disks(&a.socket)?;
    let in_group = agent_members(&a.socket, group).unwrap_or_default();
    for rec in &recs.members {
        let already = disks.iter().any(|d| {
            d.name == rec.disk
                && d.device.as_deref() == Some(rec.device.as_str())
                && d.peer == a.to
                && d.state != ReplState::FailedOverToPeer
                && in_group.contains(&d.name)
        });
        if already {
            if !a.json {
                eprintln!(
                    "group {group}: disk {} replicates to {} already",
                    rec.disk, a.to
                );
            }
            continue;
        }
        if !a.json {
            eprintln!(
                "reverse replication of group {group}: disk {}: {} (activated point {}) → {}",
                rec.disk, rec.device, rec.point.id, a.to
            );
        }
        start(a, &rec.disk, rec).map_err(|e| {
            anyhow::anyhow!(
                "group {group}: disk {}: {e:#} (run the command again once it is fixed: members already reversed are kept)",
                rec.disk
            )
        })?;
    }
    if a.no_wait {
        crate::outln!(
            "{}",
            if a.json {
                serde_json::json!({ "group": group, "started": recs.members.len() }).to_string()
            } else {
                format!(
                    "reverse replication of group {group} started; follow it with: sitrep status"
                )
            }
        );
        return Ok(Outcome::Ok);
    }
    let mut done = Vec::new();
    for rec in &recs.members {
        done.push(
            follow(&a.socket, &rec.disk, a.json, a.timeout)
                .map_err(|e| anyhow::anyhow!("group {group}: {e:#}"))?,
        );
    }
    if a.json {
        crate::outln!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({ "group": group, "members": done }))?
        );
        return Ok(Outcome::Ok);
    }
    for d in &done {
        crate::outln!(
            "disk {} replicates to {} again; the comparison sent {} bytes on the wire",
            d.name,
            d.peer,
            d.wire_bytes
        );
    }
    crate::outln!("move the group back there with: sitrep failback --group {group}");
    Ok(Outcome::Ok)
}
