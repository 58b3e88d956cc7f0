//! A consistency group's points on the secondary (`server/groups.rs` keeps them): `sitrep
//! points --group G`, `points export --group G POINT --out-dir DIR` (every member's point of
//! one group point, as `DIR/DISK.img`), and `failover --group G` (a test or unplanned
//! failover of every member at one group point; `--cleanup` ends a group's test failover).

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;

use super::export::export;
use super::failover::{self, Kind};
use super::groups::{GroupPoint, as_points};
use super::session::group::checked_points;
use super::{Shared, Slot, lock};
use base::points::PointSel;

/// The group's members on this server: those its agents declared and those of its points.
///
/// # Errors
/// No such group, or a group without members.
fn members(sh: &Shared, group: &str) -> anyhow::Result<BTreeSet<String>> {
    let (_, pts) = checked_points(sh, group)
        .ok_or_else(|| anyhow::anyhow!("no group {group} on this server"))?;
    let mut members: BTreeSet<String> = sh.groups.members(group).into_keys().collect();
    members.extend(pts.iter().flat_map(|p| p.members.keys().cloned()));
    if members.is_empty() {
        anyhow::bail!("group {group} has no members on this server");
    }
    Ok(members)
}

/// `sitrep reverse --group G`: every member's failover record, so that the site the group
/// failed over to protects each activated disk back in the same group.
///
/// # Errors
/// No such group, or a member that did not fail over to this site (named).
pub(super) fn records(sh: &Shared, group: &str) -> anyhow::Result<serde_json::Value> {
    let mut records = Vec::new();
    for m in members(sh, group)? {
        records
            .push(failover::record(sh, &m).map_err(|e| anyhow::anyhow!("group {group}: {e:#}"))?);
    }
    Ok(serde_json::json!({ "group": group, "members": records }))
}

/// `sitrep points --group G`.
///
/// # Errors
/// No such group.
pub(super) fn points(sh: &Shared, group: &str) -> anyhow::Result<serde_json::Value> {
    let (owner, pts) = checked_points(sh, group)
        .ok_or_else(|| anyhow::anyhow!("no group {group} on this server"))?;
    let members: BTreeSet<&String> = pts.iter().flat_map(|p| p.members.keys()).collect();
    Ok(serde_json::json!({
        "schema": base::status::SCHEMA,
        "group": group,
        "owner": owner,
        "members": members,
        "points": pts,
    }))
}

/// The group point `sel` names, with every member's point held ([`Holds`]) so that neither
/// retention nor the group's own thinning can retire one while it is read.
fn pick(sh: &Shared, group: &str, sel: PointSel) -> anyhow::Result<(GroupPoint, Holds)> {
    let (_, pts) = checked_points(sh, group)
        .ok_or_else(|| anyhow::anyhow!("no group {group} on this server"))?;
    let as_pts = as_points(&pts);
    let id = sel
        .pick(&as_pts)
        .map(|p| p.id)
        .ok_or_else(|| anyhow::anyhow!("group {group}: no group point {sel}"))?;
    let gp = pts
        .into_iter()
        .find(|p| p.id == id)
        .ok_or_else(|| anyhow::anyhow!("group {group}: no group point {id}"))?;
    let mut holds = Holds(Vec::new());
    for (disk, point) in &gp.members {
        let slot = lock(&sh.slots)
            .get(disk)
            .cloned()
            .ok_or_else(|| anyhow::anyhow!("group {group}: disk {disk} is not replicated here"))?;
        let held = slot.disk.lock().as_mut().is_some_and(|d| d.hold(*point));
        if !held {
            anyhow::bail!(
                "group {group}, point {id}: disk {disk} no longer has its point {point} (retired by the quota, a cap or `points delete`)"
            );
        }
        holds.0.push((slot, *point));
    }
    Ok((gp, holds))
}

/// Holds on the member points of a group point being read; released on drop.
struct Holds(Vec<(Arc<Slot>, u64)>);

impl Drop for Holds {
    fn drop(&mut self) {
        for (slot, id) in &self.0 {
            if let Some(d) = slot.disk.lock().as_mut() {
                d.release(*id);
            }
        }
    }
}

/// `sitrep points export --group G POINT --out-dir DIR`.
///
/// # Errors
/// No such group or point, `out_dir` not a directory, or a member's export failed (the
/// images made before it stay; the message names the member).
pub(super) fn export_group(
    sh: &Shared,
    group: &str,
    sel: PointSel,
    out_dir: &Path,
    force: bool,
) -> anyhow::Result<serde_json::Value> {
    if !out_dir.is_dir() {
        anyhow::bail!("{}: not a directory", out_dir.display());
    }
    let (gp, _holds) = pick(sh, group, sel)?;
    let mut images = Vec::new();
    for (disk, id) in &gp.members {
        let out = out_dir.join(format!("{disk}.img"));
        let r = export(sh, disk, PointSel::Id(*id), &out, force, &|_, _| {})
            .map_err(|e| anyhow::anyhow!("group {group}, point {}: disk {disk}: {e:#}", gp.id))?;
        images.push(serde_json::json!({ "disk": disk, "point": id, "export": r }));
    }
    Ok(serde_json::json!({
        "group": group,
        "point": gp,
        "images": images,
    }))
}

/// `sitrep failover --group G [--test [--cleanup]] [--point P]`.
///
/// # Errors
/// No such group or point, or a member's failover failed (the message names it; members
/// before it have failed over: run the command again, or choose another point).
pub(super) fn failover_group(
    sh: &Shared,
    group: &str,
    sel: PointSel,
    test: bool,
    cleanup: bool,
) -> anyhow::Result<serde_json::Value> {
    let kind = if test { Kind::Test } else { Kind::Unplanned };
    if cleanup {
        let members = members(sh, group)?;
        let mut done = Vec::new();
        for m in members {
            let r = failover::run(sh, &m, PointSel::Latest, kind, true)
                .map_err(|e| anyhow::anyhow!("group {group}: disk {m}: {e:#}"))?;
            done.push(r);
        }
        return Ok(serde_json::json!({ "group": group, "cleaned": done }));
    }
    let (gp, _holds) = pick(sh, group, sel)?;
    let mut records = Vec::new();
    for (disk, id) in &gp.members {
        let r = failover::run(sh, disk, PointSel::Id(*id), kind, false)
            .map_err(|e| anyhow::anyhow!("group {group}, point {}: disk {disk}: {e:#}", gp.id))?;
        records.push(r);
    }
    Ok(serde_json::json!({
        "group": group,
        "point": gp,
        "kind": if test { "test" } else { "unplanned" },
        "members": records,
    }))
}

/// `sitrep commit --group G`: every member's unplanned failover stays; their points go (and
/// with them the group's points).
///
/// # Errors
/// No such group, or a member without an uncommitted failover (checked for all before any
/// is committed), or a commit failed (named).
pub(super) fn commit_group(sh: &Shared, group: &str) -> anyhow::Result<serde_json::Value> {
    let members = members(sh, group)?;
    for m in &members {
        let r = failover::record(sh, m).map_err(|e| anyhow::anyhow!("group {group}: {e:#}"))?;
        if r.committed {
            anyhow::bail!("group {group}: disk {m}'s failover is committed already");
        }
    }
    let mut done = Vec::new();
    for m in &members {
        done.push(
            failover::commit(sh, m)
                .map_err(|e| anyhow::anyhow!("group {group}: disk {m}: {e:#}"))?,
        );
    }
    let _ = checked_points(sh, group);
    Ok(serde_json::json!({ "group": group, "committed": done }))
}
