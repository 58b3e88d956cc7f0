//! `sitrep points delete NAME ID|--all [--yes]`: this site's operator retires recovery points
//! of a disk, or of a retired copy `NAME@NS` — a local control request, never a peer's.
//! Without `yes` nothing changes and the answer says what would go and what it would free.
//!
//! Points leave only through [`Disk::retire_points`]: `points.json` is saved without them,
//! then the undo data no remaining point needs is deleted (so deleting a middle point frees
//! nothing until the older ones go too). A deleted point cannot be exported again.

use std::collections::BTreeSet;
use std::sync::Mutex;

use super::{Shared, lock, quota, retired};
use crate::store::Disk;
use base::store_space::DeletePointsReport;

/// Deletes on retired copies are serialized: each opens its own [`Disk`] on the copy's
/// directory, and two saving `points.json` at once would each undo the other's delete.
static RETIRED_COPIES: Mutex<()> = Mutex::new(());

/// Which points: one id, or every point.
#[derive(Debug, Clone, Copy)]
pub(super) enum Which {
    /// The point with this id.
    One(u64),
    /// Every point.
    All,
}

/// Answers `sitrep points delete` for disk or retired copy `name`.
///
/// # Errors
/// No such disk or copy or point, or `points.json` could not be written (then nothing was
/// deleted).
pub(super) fn run(
    sh: &Shared,
    name: &str,
    which: Which,
    yes: bool,
) -> anyhow::Result<DeletePointsReport> {
    if name.contains('@') {
        let _one = lock(&RETIRED_COPIES);
        let slot = retired::slot(sh, name)?
            .ok_or_else(|| anyhow::anyhow!("'{name}' is not a retired copy id"))?;
        let mut g = slot.disk.lock();
        let d = g
            .as_mut()
            .ok_or_else(|| anyhow::anyhow!("retired copy {name} is not open"))?;
        return delete(d, name, which, yes);
    }
    let slot = lock(&sh.slots).get(name).cloned().ok_or_else(|| {
        anyhow::anyhow!("disk {name} is not replicated here (see `sitrep status`)")
    })?;
    let mut g = slot.disk.lock();
    let d = g
        .as_mut()
        .ok_or_else(|| anyhow::anyhow!("disk {name} is not open (see `sitrep status`)"))?;
    let r = delete(d, name, which, yes)?;
    if r.deleted {
        slot.space.retired_by_operator(r.points.len() as u64);
        quota::noted(sh, &slot, d);
    }
    Ok(r)
}

/// Picks the points `which` names on `d` and, with `yes`, retires them.
fn delete(d: &mut Disk, name: &str, which: Which, yes: bool) -> anyhow::Result<DeletePointsReport> {
    let ids: BTreeSet<u64> = match which {
        Which::All => d.points().iter().map(|p| p.id).collect(),
        Which::One(id) if d.points().iter().any(|p| p.id == id) => [id].into(),
        Which::One(id) => {
            anyhow::bail!("disk {name} has no recovery point {id} (see `sitrep points {name}`)")
        }
    };
    if let Some(id) = ids.iter().find(|id| d.is_held(**id)) {
        anyhow::bail!(
            "disk {name}: recovery point {id} is being exported (an export or a failover is reading it); no point was deleted — try again when it finishes"
        );
    }
    let points: Vec<_> = d
        .points()
        .iter()
        .filter(|p| ids.contains(&p.id))
        .cloned()
        .collect();
    let freed_bytes = if yes {
        let before = d.points_bytes();
        d.retire_points(&ids)
            .map_err(|e| anyhow::anyhow!("{e}; no point was deleted"))?;
        tracing::info!(disk = %name, points = ?ids, "recovery points deleted by the operator");
        before.saturating_sub(d.points_bytes())
    } else {
        d.undo_freed_by(&ids)
    };
    Ok(DeletePointsReport {
        disk: name.to_string(),
        deleted: yes,
        remaining: (d.points().len() - if yes { 0 } else { points.len() }) as u64,
        points,
        freed_bytes,
    })
}
