//! `sitrep failover` and `sitrep commit`: make a recovery point a block device on the
//! secondary (test and unplanned failover, commit: the server's socket), or move the disk
//! there with zero data loss (planned failover: the agent's socket, on the primary).
//! docs/architecture.md, *Failover*.

use std::time::Duration;

use base::control::Request;
use base::status::PlannedReport;
use clap::Args;
use secondary::server::failover::FailoverRecord;

use super::repl::SocketArg;
use crate::Outcome;

/// Arguments of `sitrep failover`.
#[derive(Args)]
pub(crate) struct FailoverArgs {
    /// The disk name.
    #[arg(required_unless_present = "group")]
    name: Option<String>,
    /// Fail over every member disk of this consistency group at one group point (`sitrep
    /// points --group G`): test or unplanned; with --test --cleanup, end the group's test.
    /// With --planned (on the PRIMARY): every member of the group, one after the other.
    #[arg(long, conflicts_with = "name")]
    group: Option<String>,
    /// Which recovery point: latest, latest-processed, latest-app-consistent, or an id
    /// (`sitrep points NAME`).
    #[arg(long, default_value = "latest")]
    point: base::points::PointSel,
    /// A test failover: an isolated, writable copy of the point as a loop device, while
    /// replication goes on. One per disk.
    #[arg(long)]
    test: bool,
    /// With --test: detach and delete the test copy.
    #[arg(long, requires = "test")]
    cleanup: bool,
    /// A planned failover, run on the PRIMARY (the agent's socket): freeze the filesystem
    /// mounted from the disk (or, with none mounted, require that nobody writes it), ship
    /// everything, compare the whole replica with the source by digests, then activate the
    /// replica on the secondary. Zero data loss, or nothing changes. The source's filesystem
    /// stays frozen afterwards so it cannot diverge.
    #[arg(long, conflicts_with_all = ["test", "cleanup", "point"])]
    planned: bool,
    #[command(flatten)]
    socket: SocketArg,
    /// Machine-readable output: the device, the image and the point used.
    #[arg(long)]
    json: bool,
}

/// Arguments of `sitrep commit`.
#[derive(Args)]
pub(crate) struct CommitArgs {
    /// The disk name.
    #[arg(required_unless_present = "group")]
    name: Option<String>,
    /// Commit the failover of every member of this consistency group (`failover --group`).
    #[arg(long, conflicts_with = "name")]
    group: Option<String>,
    #[command(flatten)]
    socket: SocketArg,
    /// Machine-readable output.
    #[arg(long)]
    json: bool,
}

fn ask(a: &SocketArg, req: &Request) -> anyhow::Result<FailoverRecord> {
    base::control::ask(&a.path(), req, Duration::from_secs(24 * 3600))
}

fn print(r: &FailoverRecord, what: &str) {
    crate::outln!(
        "{what}: disk {} point {} ({:?}, source cut at {} ns since the epoch)",
        r.disk,
        r.point.id,
        r.point.kind,
        r.point.cut_time_ns
    );
    crate::outln!("device {}   image {}", r.device, r.image.display());
}

/// `sitrep failover --group G --planned` (agent): each member's planned failover in turn
/// (docs/architecture.md, *Consistency groups*).
fn planned_group(a: &FailoverArgs, group: &str) -> anyhow::Result<Outcome> {
    let sock = a.socket.path();
    let members = super::group_moves::agent_members(&sock, group)?;
    let done =
        super::group_moves::planned_in_turn(&sock, group, &members, "planned failover", a.json)?;
    super::group_moves::print_moved(&done, a.json)?;
    if !a.json {
        crate::outln!(
            "group {group} failed over (planned); finalize on the secondary with: sitrep commit --group {group}"
        );
    }
    Ok(Outcome::Ok)
}

fn planned(a: &FailoverArgs, name: &str) -> anyhow::Result<Outcome> {
    if !a.json {
        eprintln!(
            "planned failover of disk {name}: quiescing the source, shipping, comparing, then activating it on the secondary …"
        );
    }
    let r: PlannedReport = base::control::ask(
        &a.socket.path(),
        &Request::PlannedFailover {
            name: name.to_string(),
        },
        Duration::from_secs(24 * 3600),
    )?;
    if a.json {
        crate::outln!("{}", serde_json::to_string_pretty(&r)?);
        return Ok(Outcome::Ok);
    }
    crate::outln!(
        "failed over (planned): disk {} is active on the secondary at point {} ({}, source cut at {} ns since the epoch)",
        r.disk,
        r.point,
        r.point_kind,
        r.cut_time_unix_ns
    );
    crate::outln!("device {} (on the secondary)   image {}", r.device, r.image);
    crate::outln!(
        "{} bytes compared equal by digests before the activation; {:.1} s",
        r.compared_bytes,
        r.seconds
    );
    if r.frozen {
        crate::outln!(
            "the source stays quiesced ({}): stop the application here, then thaw (fsfreeze -u) and unmount",
            r.quiesced
        );
    }
    crate::outln!(
        "replication of {} from this site has stopped; finalize on the secondary with: sitrep commit {}",
        r.disk,
        r.disk
    );
    Ok(Outcome::Ok)
}

pub(crate) fn failover(a: &FailoverArgs) -> anyhow::Result<Outcome> {
    if let (Some(g), true) = (&a.group, a.planned) {
        return planned_group(a, g);
    }
    if let Some(g) = &a.group {
        return super::group_views::failover(
            &a.socket.path(),
            g,
            a.point,
            a.test,
            a.cleanup,
            a.json,
        );
    }
    let name = a.name.clone().unwrap_or_default();
    if a.planned {
        return planned(a, &name);
    }
    if !a.test && !a.json {
        eprintln!(
            "unplanned failover of disk {name}: replication of this disk stops now; the agent's sessions will be refused"
        );
    }
    let r = ask(
        &a.socket,
        &Request::Failover {
            name: name.clone(),
            point: a.point,
            test: a.test,
            cleanup: a.cleanup,
        },
    )?;
    if a.json {
        crate::outln!("{}", serde_json::to_string_pretty(&r)?);
    } else if a.cleanup {
        crate::outln!(
            "test failover of disk {} removed ({} detached, {} deleted)",
            r.disk,
            r.device,
            r.image.display()
        );
    } else if a.test {
        print(&r, "test failover");
        crate::outln!(
            "replication continues; remove it with: sitrep failover {} --test --cleanup",
            r.disk
        );
    } else {
        print(&r, "failed over");
        crate::outln!(
            "another point can still be chosen; finalize with: sitrep commit {} (deletes the recovery points)",
            r.disk
        );
    }
    Ok(Outcome::Ok)
}

pub(crate) fn commit(a: &CommitArgs) -> anyhow::Result<Outcome> {
    if let Some(g) = &a.group {
        let r: serde_json::Value = base::control::ask(
            &a.socket.path(),
            &Request::GroupCommit { group: g.clone() },
            Duration::from_secs(24 * 3600),
        )?;
        if a.json {
            crate::outln!("{}", serde_json::to_string_pretty(&r)?);
        } else {
            let n = r["committed"].as_array().map_or(0, Vec::len);
            crate::outln!(
                "committed the failover of group {g} ({n} disks); their recovery points are deleted"
            );
        }
        return Ok(Outcome::Ok);
    }
    let r = ask(
        &a.socket,
        &Request::Commit {
            name: a.name.clone().unwrap_or_default(),
        },
    )?;
    if a.json {
        crate::outln!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        print(&r, "committed");
        crate::outln!("the recovery points of disk {} are deleted", r.disk);
    }
    Ok(Outcome::Ok)
}
