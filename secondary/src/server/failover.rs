//! Failover on the secondary (docs/architecture.md, *Failover*): a recovery point made into
//! a block device.
//!
//! - **Test failover** (`sitrep failover NAME --test`): the point is exported to
//!   `STORE/disks/NAME/test-failover.img` and attached as a loop device; replication goes on
//!   untouched. One per disk; `--cleanup` detaches and deletes it. State:
//!   `test-failover.json`.
//! - **Unplanned failover** (`sitrep failover NAME`): the disk is marked failed over in
//!   `state.json` first — from then on its agent's sessions are refused (`FailedOver`) and a
//!   running session ends at its next frame — then the point is exported to `active.img`
//!   and attached. Until `sitrep commit NAME` another point can be chosen (the previous
//!   image is detached and replaced); commit deletes the recovery points. State:
//!   `failover.json`.
//!
//! - **Planned failover** (`sitrep failover NAME --planned`, run on the primary): the agent
//!   quiesces the source, ships its last cycle, proves the replica equal by digests and sends
//!   `PlannedFailover{seq}`; the server checks that the replica is exactly at cycle `seq` and
//!   that `seq` is a recovery point, then activates it as for an unplanned failover (kind
//!   `planned`, same `failover.json`, same commit).
//!
//! Both files are JSON, version 1, written atomically.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};

use super::export::{export, select_point};
use super::{Shared, lock};
use base::files::write_atomic;
use base::points::Point;
use base::points::PointSel;

/// A failover's record (`test-failover.json` / `failover.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FailoverRecord {
    /// Format version (1).
    pub version: u32,
    /// `test`, `unplanned` or `planned`.
    pub kind: String,
    /// The disk.
    pub disk: String,
    /// The recovery point activated.
    pub point: Point,
    /// The image holding it.
    pub image: PathBuf,
    /// The loop device it is attached to.
    pub device: String,
    /// When it was made (ns since the epoch).
    pub created_unix_ns: u64,
    /// An unplanned failover was committed (points deleted).
    pub committed: bool,
}

fn record_path(dir: &Path, test: bool) -> PathBuf {
    dir.join(if test {
        "test-failover.json"
    } else {
        "failover.json"
    })
}

fn load(path: &Path) -> anyhow::Result<Option<FailoverRecord>> {
    match std::fs::read(path) {
        Ok(b) => Ok(Some(
            serde_json::from_slice(&b).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?,
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(anyhow::anyhow!("{}: {e}", path.display())),
    }
}

fn save(path: &Path, r: &FailoverRecord) -> anyhow::Result<()> {
    write_atomic(path, &serde_json::to_vec_pretty(r)?)
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

fn losetup(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("losetup")
        .args(args)
        .output()
        .map_err(|e| anyhow::anyhow!("running losetup: {e}"))?;
    if !out.status.success() {
        anyhow::bail!(
            "losetup {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// True if a test failover of the disk in `dir` is running (its record exists): the space
/// limits leave that disk's points alone (`disk_cap.rs`).
pub(super) fn test_running(dir: &Path) -> bool {
    record_path(dir, true).exists()
}

/// Detaches `r`'s loop device (if it still shows `r.image`) and deletes the image.
fn remove(r: &FailoverRecord) {
    // An in-place activation (a device-backed replica) is the disk itself: never touched.
    if std::fs::metadata(&r.image)
        .is_ok_and(|m| std::os::unix::fs::FileTypeExt::is_block_device(&m.file_type()))
    {
        return;
    }
    let attached = losetup(&["-j", &r.image.display().to_string()]).unwrap_or_default();
    if attached.starts_with(&format!("{}:", r.device))
        && let Err(e) = losetup(&["-d", &r.device])
    {
        tracing::warn!(disk = %r.disk, "detaching {}: {e:#}", r.device);
    }
    let _ = std::fs::remove_file(&r.image);
}

fn disk_dir(sh: &Shared, name: &str) -> anyhow::Result<PathBuf> {
    let slot = lock(&sh.slots)
        .get(name)
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("disk {name} is not replicated here"))?;
    // From the published snapshot: the directory never changes, and `failover record` or
    // `commit` must not wait behind a long operation on the disk to learn it.
    let snap = slot
        .disk
        .snapshot()
        .ok_or_else(|| anyhow::anyhow!("disk {name} is not open"))?;
    Ok(snap.dir.to_path_buf())
}

/// Which failover.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    /// A copy while replication goes on.
    Test,
    /// The primary is gone: the secondary takes over at a point.
    Unplanned,
    /// The agent quiesced the source and proved the replica equal at its last cycle.
    Planned,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Self::Test => "test",
            Self::Unplanned => "unplanned",
            Self::Planned => "planned",
        }
    }
}

/// `PlannedFailover{seq}` from the disk's agent: the replica must be exactly at cycle `seq`
/// (applied, nothing staged after it, no resync or copy half done) and `seq` a recovery
/// point; then it is activated like an unplanned failover.
///
/// # Errors
/// The replica is not at `seq`, `seq` is not a point, or the activation failed.
pub(super) fn planned(sh: &Shared, name: &str, seq: u64) -> anyhow::Result<FailoverRecord> {
    {
        let slot = lock(&sh.slots)
            .get(name)
            .cloned()
            .ok_or_else(|| anyhow::anyhow!("disk {name} is not replicated here"))?;
        let g = slot.disk.lock();
        let d = g
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("disk {name} is not open"))?;
        let st = d.state();
        let applied = st.applied.map(|a| a.seq);
        if applied != Some(seq) {
            anyhow::bail!(
                "disk {name}: planned failover at cycle {seq}, but the replica's last applied cycle is {applied:?}"
            );
        }
        if st.resync.is_some() || st.copy.is_none_or(|c| !c.done) {
            anyhow::bail!(
                "disk {name}: planned failover refused: a copy or resync is not complete"
            );
        }
        let staged = d.staged().map_err(|e| anyhow::anyhow!("{e}"))?;
        if let Some((s, _)) = staged.first() {
            anyhow::bail!(
                "disk {name}: planned failover refused: cycle {s} is staged, not applied"
            );
        }
        if !d.points().iter().any(|p| p.id == seq) {
            anyhow::bail!(
                "disk {name}: planned failover refused: cycle {seq} is not a recovery point (was it judged consistent?)"
            );
        }
    }
    run(sh, name, PointSel::Id(seq), Kind::Planned, false)
}

/// `sitrep failover NAME [--test [--cleanup]] [--point P]`, and the activation of a planned
/// failover.
///
/// # Errors
/// No such disk or point, a test failover already active (or none to clean up), a
/// committed failover, or the export or the loop device failed.
pub(super) fn run(
    sh: &Shared,
    name: &str,
    sel: PointSel,
    kind: Kind,
    cleanup: bool,
) -> anyhow::Result<FailoverRecord> {
    let job_kind = match (kind, cleanup) {
        (Kind::Test, true) => "test-failover-cleanup",
        (Kind::Test, false) => "test-failover",
        (Kind::Unplanned, _) => "failover",
        (Kind::Planned, _) => "planned-failover",
    };
    let job = sh.jobs.start(job_kind, name);
    let r = activate(sh, name, sel, kind, cleanup, job);
    sh.jobs
        .finish(job, r.as_ref().map(|_| ()).map_err(|e| format!("{e:#}")));
    r
}

fn activate(
    sh: &Shared,
    name: &str,
    sel: PointSel,
    kind: Kind,
    cleanup: bool,
    job: u64,
) -> anyhow::Result<FailoverRecord> {
    let test = kind == Kind::Test;
    let dir = disk_dir(sh, name)?;
    let path = record_path(&dir, test);
    let existing = load(&path)?;
    if cleanup {
        return clean_up(name, test, existing, &path);
    }
    if test && let Some(r) = &existing {
        anyhow::bail!(
            "disk {name} already has a test failover ({} from point {}); clean it up first: sitrep failover {name} --test --cleanup",
            r.device,
            r.point.id
        );
    }
    if !test && existing.as_ref().is_some_and(|r| r.committed) {
        anyhow::bail!(
            "disk {name}: the failover was committed; its recovery points are gone and {} is the disk",
            existing.map(|r| r.device).unwrap_or_default()
        );
    }
    sh.jobs.step(job, "select-point", 5.0, 0, 0);
    let (point, in_place) = select(sh, name, sel, kind)?;
    if let Some(old) = existing {
        // Another point chosen before the commit: the previous activation goes.
        remove(&old);
    }
    let (image, device) = bring_up(sh, name, &dir, &point, in_place, test, job)?;
    let r = FailoverRecord {
        version: 1,
        kind: kind.as_str().into(),
        disk: name.into(),
        point,
        image,
        device,
        created_unix_ns: base::now_ns(),
        committed: false,
    };
    save(&path, &r)?;
    tracing::info!(disk = name, kind = %r.kind, point = r.point.id, device = %r.device, "failover");
    Ok(r)
}

/// `--test --cleanup`: the test failover of disk `name` (its record `existing`, at `path`)
/// removed.
fn clean_up(
    name: &str,
    test: bool,
    existing: Option<FailoverRecord>,
    path: &Path,
) -> anyhow::Result<FailoverRecord> {
    if !test {
        anyhow::bail!("--cleanup removes a test failover: add --test");
    }
    let r =
        existing.ok_or_else(|| anyhow::anyhow!("disk {name} has no test failover to clean up"))?;
    remove(&r);
    std::fs::remove_file(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    tracing::info!(disk = name, device = %r.device, "test failover cleaned up");
    Ok(r)
}

/// The point `sel` of disk `name`, and the device to activate in place (a reverse-replicated
/// disk's replica), with the disk marked failed over unless this is a test.
fn select(
    sh: &Shared,
    name: &str,
    sel: PointSel,
    kind: Kind,
) -> anyhow::Result<(Point, Option<PathBuf>)> {
    let test = kind == Kind::Test;
    let slot = lock(&sh.slots)
        .get(name)
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("disk {name} is not replicated here"))?;
    let mut g = slot.disk.lock();
    let d = g
        .as_mut()
        .ok_or_else(|| anyhow::anyhow!("disk {name} is not open"))?;
    let p = select_point(d, name, sel)?;
    // A reverse-replicated disk's replica is this site's own device: it becomes the
    // active disk in place, at its newest applied cycle only (older points would mean
    // rewinding the disk itself; export them instead).
    let in_place = match (&d.state().replica_device, test) {
        (Some(dev), false) => {
            let applied = d.state().applied.map(|a| a.seq);
            if applied != Some(p.id) {
                anyhow::bail!(
                    "disk {name}: the replica is the device {} itself, which holds cycle {applied:?}; only that point can be activated in place (export point {} with `sitrep points export` instead)",
                    dev.display(),
                    p.id
                );
            }
            Some(dev.clone())
        }
        _ => None,
    };
    if !test {
        // Replication of this disk stops before anything else: its agent is refused
        // from now on, and a running session ends at its next frame.
        d.set_failed_over(format!(
            "{} failover to point {} (source cut at {} ns since the epoch)",
            kind.as_str(),
            p.id,
            p.cut_time_ns
        ))?;
        slot.epoch.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
    Ok((p, in_place))
}

/// The failover's disk brought up: the replica's device in place, or `point` exported to an
/// image in `dir` and attached to a loop device. Returns the image and the device.
fn bring_up(
    sh: &Shared,
    name: &str,
    dir: &Path,
    point: &Point,
    in_place: Option<PathBuf>,
    test: bool,
    job: u64,
) -> anyhow::Result<(PathBuf, String)> {
    Ok(match in_place {
        Some(dev) => {
            sh.jobs.step(job, "activate-in-place", 90.0, 0, 0);
            let d = dev.display().to_string();
            (dev, d)
        }
        None => {
            let image = dir.join(if test {
                "test-failover.img"
            } else {
                "active.img"
            });
            sh.jobs.step(job, "export-point", 10.0, 0, 0);
            export(
                sh,
                name,
                PointSel::Id(point.id),
                &image,
                true,
                &|done, total| {
                    let pct = if total > 0 {
                        10.0 + 80.0 * done as f64 / total as f64
                    } else {
                        90.0
                    };
                    sh.jobs.step(job, "export-point", pct, done, total);
                },
            )?;
            sh.jobs.step(job, "attach-device", 92.0, 0, 0);
            let device =
                losetup(&["--find", "--show", &image.display().to_string()]).map_err(|e| {
                    anyhow::anyhow!("disk {name}: attaching {}: {e:#}", image.display())
                })?;
            (image, device)
        }
    })
}

/// The failover record of disk `name` (for `sitrep reverse`: which device and point).
///
/// # Errors
/// No such disk, or it did not fail over.
pub(super) fn record(sh: &Shared, name: &str) -> anyhow::Result<FailoverRecord> {
    let dir = disk_dir(sh, name)?;
    load(&record_path(&dir, false))?.ok_or_else(|| {
        anyhow::anyhow!("disk {name} did not fail over to this site (sitrep failover {name} first)")
    })
}

/// `sitrep commit NAME`: the unplanned failover stays; the recovery points go.
///
/// # Errors
/// No uncommitted unplanned failover, or a file error.
pub(super) fn commit(sh: &Shared, name: &str) -> anyhow::Result<FailoverRecord> {
    let dir = disk_dir(sh, name)?;
    let path = record_path(&dir, false);
    let mut r = load(&path)?.ok_or_else(|| {
        anyhow::anyhow!("disk {name} has no failover to commit (sitrep failover {name} first)")
    })?;
    if r.committed {
        anyhow::bail!("disk {name}: the failover is already committed");
    }
    {
        let slot = lock(&sh.slots)
            .get(name)
            .cloned()
            .ok_or_else(|| anyhow::anyhow!("disk {name} is not replicated here"))?;
        let mut g = slot.disk.lock();
        let d = g
            .as_mut()
            .ok_or_else(|| anyhow::anyhow!("disk {name} is not open"))?;
        d.drop_points()?;
    }
    r.committed = true;
    save(&path, &r)?;
    tracing::info!(
        disk = name,
        point = r.point.id,
        "failover committed; recovery points deleted"
    );
    Ok(r)
}
