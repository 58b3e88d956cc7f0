//! `sitrep points delete NAME ID|--all [--yes]` (server): this site's operator deletes
//! recovery points of a disk or of a retired copy (`NAME@NS`). Without `--yes` it deletes
//! nothing and says what it would delete and how many bytes that frees.

use std::path::PathBuf;
use std::time::Duration;

use base::control::{Request, SERVER_SOCKET, ask};
use base::store_space::DeletePointsReport;
use clap::Args;

use crate::{Outcome, human};

/// Arguments of `sitrep points delete`.
#[derive(Args)]
#[command(group(clap::ArgGroup::new("which").required(true).args(["point", "all"])))]
pub(crate) struct DeleteArgs {
    /// The disk, or a retired copy's id `NAME@NS` (`sitrep retired`).
    name: String,
    /// The point's id (from `sitrep points NAME`).
    point: Option<u64>,
    /// Every point of the disk.
    #[arg(long)]
    all: bool,
    /// Really delete (without it: say what would be deleted, change nothing). A deleted
    /// point cannot be exported or failed over to again.
    #[arg(long)]
    yes: bool,
    /// This site's server control socket.
    #[arg(long, default_value = SERVER_SOCKET)]
    socket: PathBuf,
    /// Machine-readable output.
    #[arg(long)]
    json: bool,
}

pub(crate) fn delete(a: &DeleteArgs) -> anyhow::Result<Outcome> {
    let data: serde_json::Value = ask(
        &a.socket,
        &Request::DeletePoints {
            name: a.name.clone(),
            point: a.point,
            all: a.all,
            yes: a.yes,
        },
        Duration::from_secs(300),
    )?;
    if a.json {
        crate::outln!("{}", serde_json::to_string_pretty(&data)?);
        return Ok(Outcome::Ok);
    }
    let r: DeletePointsReport = serde_json::from_value(data)?;
    let ids: Vec<String> = r.points.iter().map(|p| p.id.to_string()).collect();
    let ids = if ids.is_empty() {
        "none".to_string()
    } else {
        ids.join(", ")
    };
    if r.deleted {
        crate::outln!(
            "disk {}: deleted {} recovery point(s) ({ids}), {} of undo data freed; {} point(s) left",
            r.disk,
            r.points.len(),
            human::bytes(r.freed_bytes),
            r.remaining
        );
    } else {
        crate::outln!(
            "disk {}: would delete {} recovery point(s) ({ids}), freeing {} of undo data; {} point(s) would be left. Nothing was deleted: add --yes",
            r.disk,
            r.points.len(),
            human::bytes(r.freed_bytes),
            r.remaining
        );
    }
    Ok(Outcome::Ok)
}
