//! The server's side of retired copies (`store/retired.rs`): `sitrep retired [purge ID]`,
//! and `sitrep points NAME@NS` / `points export NAME@NS POINT` reading one read-only.

use std::sync::Arc;

use super::{Shared, Slot};
use crate::store::{Disk, retired};
use base::control::Response;
use base::status;

/// `sitrep retired`: every retired copy, or `purge`: remove one.
pub(super) fn request(sh: &Shared, purge: Option<&str>) -> Response {
    let r = match purge {
        Some(id) => retired::purge(&sh.store, id).map(|c| vec![c]),
        None => retired::list(&sh.store).map_err(|e| {
            anyhow::anyhow!(
                "reading {}: {e}",
                retired::retired_root(&sh.store).display()
            )
        }),
    };
    Response::answer(r.map(|copies| retired::RetiredReport { retired: copies }))
}

/// Retired copy `id` (`NAME@NS`) opened read-only, in a slot of its own; `None` if `id` is
/// a disk name.
///
/// # Errors
/// No such copy, or it cannot be opened (no replica kept, corrupt files).
pub(super) fn slot(sh: &Shared, id: &str) -> anyhow::Result<Option<Arc<Slot>>> {
    if !id.contains('@') {
        return Ok(None);
    }
    let dir = retired::retired_dir(&sh.store, id).ok_or_else(|| {
        anyhow::anyhow!("'{id}' is not a retired copy id (NAME@NS, see `sitrep retired`)")
    })?;
    if !dir.is_dir() {
        anyhow::bail!("no retired copy {id} (see `sitrep retired`)");
    }
    let d = Disk::open_retired(dir, id).map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(Some(Arc::new(Slot {
        disk: super::snapshot::PublishedDisk::open(d),
        ..Slot::default()
    })))
}

/// `sitrep points NAME@NS`: the points of a retired copy.
pub(super) fn points_report(sh: &Shared, id: &str) -> Response {
    Response::answer(retired_points(sh, id))
}

fn retired_points(sh: &Shared, id: &str) -> anyhow::Result<status::PointsReport> {
    let slot = slot(sh, id)?.ok_or_else(|| anyhow::anyhow!("'{id}' is not a retired copy id"))?;
    let g = slot.disk.lock();
    let d = g
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("retired copy {id} is not open"))?;
    Ok(status::PointsReport {
        schema: status::SCHEMA,
        disk: id.to_string(),
        size: d.state().size,
        storage_bytes: d.points_bytes(),
        points: d.points().to_vec(),
        policy: None,
    })
}
