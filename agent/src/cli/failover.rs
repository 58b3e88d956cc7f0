//! `sitrep failover` and `sitrep commit`, on the secondary: make a recovery point a block
//! device (docs/architecture.md, *Failover*).

use std::time::Duration;

use clap::Args;
use repl::control::{Request, call};
use repl::server::failover::FailoverRecord;

use super::repl::SocketArg;
use crate::Outcome;

/// Arguments of `sitrep failover`.
#[derive(Args)]
pub(crate) struct FailoverArgs {
    /// The disk name.
    name: String,
    /// Which recovery point: latest, latest-processed, latest-app-consistent, or an id
    /// (`sitrep points NAME`).
    #[arg(long, default_value = "latest")]
    point: String,
    /// A test failover: an isolated, writable copy of the point as a loop device, while
    /// replication goes on. One per disk.
    #[arg(long)]
    test: bool,
    /// With --test: detach and delete the test copy.
    #[arg(long, requires = "test")]
    cleanup: bool,
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
    name: String,
    #[command(flatten)]
    socket: SocketArg,
    /// Machine-readable output.
    #[arg(long)]
    json: bool,
}

fn ask(a: &SocketArg, req: &Request) -> anyhow::Result<FailoverRecord> {
    let resp = call(&a.path(), req, Duration::from_secs(24 * 3600))?;
    if !resp.ok {
        anyhow::bail!("{}", resp.error.unwrap_or_else(|| "failed".into()));
    }
    Ok(serde_json::from_value(resp.data)?)
}

fn print(r: &FailoverRecord, what: &str) {
    println!(
        "{what}: disk {} point {} ({:?}, source cut at {} ns since the epoch)",
        r.disk, r.point.id, r.point.kind, r.point.cut_time_ns
    );
    println!("device {}   image {}", r.device, r.image.display());
}

pub(crate) fn failover(a: &FailoverArgs) -> anyhow::Result<Outcome> {
    if !a.test && !a.json {
        eprintln!(
            "unplanned failover of disk {}: replication of this disk stops now; the agent's sessions will be refused",
            a.name
        );
    }
    let r = ask(
        &a.socket,
        &Request::Failover {
            name: a.name.clone(),
            point: a.point.clone(),
            test: a.test,
            cleanup: a.cleanup,
        },
    )?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else if a.cleanup {
        println!(
            "test failover of disk {} removed ({} detached, {} deleted)",
            r.disk,
            r.device,
            r.image.display()
        );
    } else if a.test {
        print(&r, "test failover");
        println!(
            "replication continues; remove it with: sitrep failover {} --test --cleanup",
            r.disk
        );
    } else {
        print(&r, "failed over");
        println!(
            "another point can still be chosen; finalize with: sitrep commit {} (deletes the recovery points)",
            r.disk
        );
    }
    Ok(Outcome::Ok)
}

pub(crate) fn commit(a: &CommitArgs) -> anyhow::Result<Outcome> {
    let r = ask(
        &a.socket,
        &Request::Commit {
            name: a.name.clone(),
        },
    )?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        print(&r, "committed");
        println!("the recovery points of disk {} are deleted", r.disk);
    }
    Ok(Outcome::Ok)
}
