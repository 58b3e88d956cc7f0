//! `sitrep retired [purge ID]`: the retired copies on this server — whole store entries set
//! aside (with their replica, undo data and recovery points) when a full re-copy or a
//! reverse adoption replaced them. A peer never deletes them; this command does.

use std::path::PathBuf;
use std::time::Duration;

use base::control::{Request, SERVER_SOCKET, ask};
use clap::{Args, Subcommand};
use secondary::store::retired::RetiredReport;

use crate::{Outcome, human};

/// Arguments of `sitrep retired`.
#[derive(Args)]
pub(crate) struct RetiredArgs {
    #[command(subcommand)]
    cmd: Option<RetiredCommand>,
    /// This site's server control socket.
    #[arg(long, default_value = SERVER_SOCKET, global = true)]
    socket: PathBuf,
    /// Machine-readable output.
    #[arg(long, global = true)]
    json: bool,
}

/// `sitrep retired purge`.
#[derive(Subcommand)]
pub(crate) enum RetiredCommand {
    /// Delete a retired copy and its recovery points for good (its id from `sitrep retired`).
    Purge {
        /// `NAME@NS`.
        id: String,
    },
}

pub(crate) fn run(a: &RetiredArgs) -> anyhow::Result<Outcome> {
    let purge = a
        .cmd
        .as_ref()
        .map(|RetiredCommand::Purge { id }| id.clone());
    let data: serde_json::Value = ask(
        &a.socket,
        &Request::Retired {
            purge: purge.clone(),
        },
        Duration::from_secs(60),
    )?;
    if a.json {
        crate::outln!("{}", serde_json::to_string_pretty(&data)?);
        return Ok(Outcome::Ok);
    }
    let r: RetiredReport = serde_json::from_value(data)?;
    if purge.is_some() {
        for c in &r.retired {
            crate::outln!(
                "purged retired copy {} ({} recovery point(s), {} freed)",
                c.id,
                c.points.len(),
                human::bytes(c.storage_bytes)
            );
        }
        return Ok(Outcome::Ok);
    }
    if r.retired.is_empty() {
        crate::outln!("no retired copies");
    }
    for c in &r.retired {
        crate::outln!(
            "{:<32} retired {}  {} point(s), {}{}  owner {}",
            c.id,
            human::timestamp(c.retired_unix_ns),
            c.points.len(),
            human::bytes(c.storage_bytes),
            if c.replica_kept { "" } else { " (no replica)" },
            c.owner
        );
        crate::outln!("{:<32} {}", "", c.why);
    }
    if !r.retired.is_empty() {
        crate::outln!(
            "points: `sitrep points ID`; export: `sitrep points export ID POINT --out F`; remove: `sitrep retired purge ID`"
        );
    }
    Ok(Outcome::Ok)
}
