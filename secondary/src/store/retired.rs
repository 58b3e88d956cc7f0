//! Retired copies: a disk's store entry set aside, whole, instead of being deleted — when a
//! full re-copy starts over a replica that holds recovery points ([`Disk::copy_begin`]), and
//! when reverse replication adopts this site's own device under a name that has an entry
//! ([`Disk::adopt`]).
//!
//! The guarantee they carry: *the protected host cannot destroy its history on the
//! secondary.* No request from a peer deletes a retained point; a retired copy keeps its
//! replica, undo data and points until this site's operator removes it
//! (`sitrep retired purge ID`). It can be listed (`sitrep retired`), its points listed
//! (`sitrep points NAME@NS`) and exported (`sitrep points export NAME@NS POINT --out F`).
//!
//! ```text
//! STORE/retired/NAME-<ns>/            the old entry, moved whole (id NAME@<ns>)
//! STORE/retired/NAME-<ns>/retired.json  why and when (RetiredInfo)
//! STORE/retired/NAME-<ns>/replica.img   its replica: the file itself, or for a device-backed
//!                                       entry (reverse replication) a copy of the device
//! STORE/disks/.swap-NAME-<ns>/        transient: the entry being installed or retired
//! ```
//!
//! **Crash safety.** The new entry is built complete in `disks/.swap-NAME-<ns>` (invisible:
//! disk names never start with a dot), then atomically exchanged with the live one
//! (`renameat2(RENAME_EXCHANGE)`), then the old one is renamed into `retired/`; every step is
//! followed by a directory fsync. So `disks/NAME` always holds a whole entry with its owner —
//! there is no moment where the name is unclaimed. The old entry gets its `retired.json`
//! before the exchange: a `.swap` directory left by a crash with that file is an old entry
//! (moved into `retired/` by the next [`sweep`]), one without it a new entry that never went
//! live (removed). A device-backed entry with points has its device copied into its own
//! `replica.img` before the exchange, since the device is about to be rewritten; a retired
//! entry is always read from its `replica.img`, never from a device.
//!
//! **Cap.** At most [`MAX_RETIRED_PER_DISK`] retired copies per disk name: past it, the
//! request that would retire another is refused ([`StoreError::HistoryFull`], which the
//! agent retries) until the operator purges one — a peer cannot grow the store without
//! bound by restarting copies, and cannot make room by deleting history either.

use std::fs::{self, File};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{
    CopyProgress, Disk, DiskState, Result, StoreError, disk_dir, io_err, sync_dir, write_atomic,
};
use base::points::{Point, PointsFile};

/// Most retired copies kept per disk name before a request that would retire another is
/// refused (see the module doc).
pub const MAX_RETIRED_PER_DISK: usize = 4;

/// Chunk of the device copy made when a device-backed entry with points is retired.
const SNAPSHOT_CHUNK: usize = 1 << 20;

/// `retired.json` (version 1): why and when an entry was retired.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetiredInfo {
    /// Format version (1).
    pub version: u32,
    /// The disk name.
    pub disk: String,
    /// What retired it (which request, from which client).
    pub why: String,
    /// When (ns since the epoch; also the `<ns>` of its directory and id).
    pub retired_unix_ns: u64,
}

/// One retired copy, as `sitrep retired` lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RetiredCopy {
    /// Its id, `NAME@<ns>` (for `sitrep points`, `points export`, `retired purge`).
    pub id: String,
    /// The disk name.
    pub disk: String,
    /// What retired it.
    pub why: String,
    /// When (ns since the epoch).
    pub retired_unix_ns: u64,
    /// Who owned the entry (certificate name).
    pub owner: String,
    /// The disk's size.
    pub size: u64,
    /// Its recovery points, oldest first.
    pub points: Vec<Point>,
    /// Bytes its files take on the store's file system (replica allocated blocks, undo).
    pub storage_bytes: u64,
    /// Its replica is kept (points can be exported).
    pub replica_kept: bool,
}

/// `STORE/retired`.
#[must_use]
pub fn retired_root(store: &Path) -> PathBuf {
    store.join("retired")
}

/// The directory of retired copy `id` (`NAME@<ns>`), if the id is well formed.
#[must_use]
pub fn retired_dir(store: &Path, id: &str) -> Option<PathBuf> {
    let (name, ns) = id.split_once('@')?;
    (base::valid_disk_name(name) && !ns.is_empty() && ns.bytes().all(|b| b.is_ascii_digit()))
        .then(|| retired_root(store).join(format!("{name}-{ns}")))
}

/// `NAME-<ns>` (a directory name) → (`NAME`, `<ns>`).
fn split_dir_name(n: &str) -> Option<(&str, u64)> {
    let (name, ns) = n.rsplit_once('-')?;
    let ns = ns.parse().ok()?;
    base::valid_disk_name(name).then_some((name, ns))
}

/// Every retired copy in `store`, oldest first. Read only: a `disks/.swap-*` directory may be
/// a retirement in progress right now (a session installing a full copy), so crash
/// leftovers are finished by [`sweep`] when the server opens the store, never here.
///
/// # Errors
/// The store cannot be read.
pub fn list(store: &Path) -> std::io::Result<Vec<RetiredCopy>> {
    let mut out = Vec::new();
    let rd = match fs::read_dir(retired_root(store)) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e),
    };
    for e in rd {
        let e = e?;
        let n = e.file_name();
        let Some((name, ns)) = n.to_str().and_then(split_dir_name) else {
            continue;
        };
        out.push(describe(&e.path(), name, ns));
    }
    out.sort_by_key(|c| (c.retired_unix_ns, c.disk.clone()));
    Ok(out)
}

fn describe(dir: &Path, name: &str, ns: u64) -> RetiredCopy {
    let info: Option<RetiredInfo> = fs::read(dir.join("retired.json"))
        .ok()
        .and_then(|t| serde_json::from_slice(&t).ok());
    let state: Option<DiskState> = fs::read(dir.join("state.json"))
        .ok()
        .and_then(|t| serde_json::from_slice(&t).ok());
    let points: Option<PointsFile> = fs::read(dir.join("points.json"))
        .ok()
        .and_then(|t| serde_json::from_slice(&t).ok());
    let replica = fs::metadata(dir.join("replica.img")).ok();
    let allocated = |m: &fs::Metadata| std::os::unix::fs::MetadataExt::blocks(m) * 512;
    let undo: u64 = fs::read_dir(dir.join("undo"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.metadata().ok())
        .map(|m| allocated(&m))
        .sum();
    RetiredCopy {
        id: format!("{name}@{ns}"),
        disk: name.to_string(),
        why: info.map_or_else(|| "retired (no record of why)".into(), |i| i.why),
        retired_unix_ns: ns,
        owner: state.as_ref().map(|s| s.owner.clone()).unwrap_or_default(),
        size: state.as_ref().map_or(0, |s| s.size),
        points: points.map(|p| p.points).unwrap_or_default(),
        storage_bytes: replica.as_ref().map_or(0, allocated) + undo,
        replica_kept: replica.is_some(),
    }
}

/// Deletes retired copy `id` — only ever on this site's operator's command
/// (`sitrep retired purge ID`). Refused while an image in it backs a loop device (an
/// activated disk, e.g. the device reverse replication adopted).
///
/// # Errors
/// No such copy, an image in use, or a file error.
pub fn purge(store: &Path, id: &str) -> anyhow::Result<RetiredCopy> {
    let dir = retired_dir(store, id).ok_or_else(|| {
        anyhow::anyhow!("'{id}' is not a retired copy id (NAME@NS, see `sitrep retired`)")
    })?;
    if !dir.is_dir() {
        anyhow::bail!("no retired copy {id} (see `sitrep retired`)");
    }
    for e in fs::read_dir(&dir)?.flatten() {
        let p = e.path();
        if p.extension().is_some_and(|x| x == "img") && loop_backed(&p) {
            anyhow::bail!(
                "retired copy {id}: {} backs a loop device (an activated disk): detach it first (losetup -j {})",
                p.display(),
                p.display()
            );
        }
    }
    let (name, ns) = id.split_once('@').unwrap_or((id, "0"));
    let copy = describe(&dir, name, ns.parse().unwrap_or(0));
    fs::remove_dir_all(&dir).map_err(|e| anyhow::anyhow!("removing {}: {e}", dir.display()))?;
    sync_dir(&retired_root(store))?;
    tracing::warn!(copy = %id, points = copy.points.len(), "retired copy purged by the operator");
    Ok(copy)
}

/// Whether `image` is the backing file of a loop device (`losetup -j`); unknown counts
/// as yes (refusing a purge is the safe side).
fn loop_backed(image: &Path) -> bool {
    match std::process::Command::new("losetup")
        .arg("-j")
        .arg(image)
        .output()
    {
        Ok(o) if o.status.success() => !o.stdout.is_empty(),
        Ok(_) => true,
        Err(e) => e.kind() != std::io::ErrorKind::NotFound,
    }
}

/// Finishes what a crash left in `disks/.swap-*` (of disk `only`, or of every disk): an old
/// entry (it has `retired.json`) moves into `retired/`, a new one that never went live is
/// removed (see the module doc). Only where nothing can be installing the disk meanwhile:
/// at the server's start (every disk), or by the disk's own install (that disk).
///
/// # Errors
/// A file error.
pub fn sweep(store: &Path, only: Option<&str>) -> std::io::Result<()> {
    let disks = store.join("disks");
    let rd = match fs::read_dir(&disks) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for e in rd.flatten() {
        let n = e.file_name();
        let Some((name, ns)) = n
            .to_str()
            .and_then(|n| n.strip_prefix(".swap-"))
            .and_then(split_dir_name)
        else {
            continue;
        };
        if only.is_some_and(|o| o != name) {
            continue;
        }
        if e.path().join("retired.json").exists() {
            fs::create_dir_all(retired_root(store))?;
            let to = retired_root(store).join(format!("{name}-{ns}"));
            fs::rename(e.path(), &to)?;
            sync_dir(&retired_root(store))?;
            tracing::warn!(disk = name, to = %to.display(), "retirement interrupted by a crash: finished");
        } else {
            fs::remove_dir_all(e.path())?;
            tracing::warn!(
                disk = name,
                "an entry half-installed before a crash: removed"
            );
        }
        sync_dir(&disks)?;
    }
    Ok(())
}

/// How many retired copies disk `name` has.
fn count(store: &Path, name: &str) -> usize {
    fs::read_dir(retired_root(store))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_str()
                .and_then(split_dir_name)
                .is_some_and(|(n, _)| n == name)
        })
        .count()
}

/// Installs a new entry for disk `name`, built by `fill` in a fresh directory (it writes
/// `state.json`, `staging/`, `undo/` and the replica). An entry already there is retired
/// (`why` says why), not deleted — except a device-backed one without points, whose
/// history is the device itself. Returns where the old entry went.
///
/// # Errors
/// [`StoreError::HistoryFull`] (too many retired copies of `name`), or a file error; the
/// live entry is then unchanged.
pub(super) fn install(
    store: &Path,
    name: &str,
    why: &str,
    fill: impl FnOnce(&Path) -> Result<()>,
) -> Result<Option<PathBuf>> {
    let disks = store.join("disks");
    let live = disk_dir(store, name);
    let e = |what: String| io_err(name, what);
    sweep(store, Some(name)).map_err(e("finishing an interrupted retirement".into()))?;
    let old = super::read_state_file(&live, name)?;
    let points: Vec<Point> = fs::read(live.join("points.json"))
        .ok()
        .and_then(|t| serde_json::from_slice::<PointsFile>(&t).ok())
        .map(|p| p.points)
        .unwrap_or_default();
    let keep = old
        .as_ref()
        .is_some_and(|s| s.replica_device.is_none() || !points.is_empty());
    let ns = base::now_ns();
    if keep {
        let n = count(store, name);
        if n >= MAX_RETIRED_PER_DISK {
            return Err(StoreError::HistoryFull {
                disk: name.into(),
                why: format!(
                    "{n} retired copies of it are kept here already and this ({why}) would retire another with {} recovery point(s): on this server, list them with `sitrep retired` and remove one with `sitrep retired purge ID`",
                    points.len()
                ),
            });
        }
        if let Some(dev) = old.as_ref().and_then(|s| s.replica_device.clone()) {
            snapshot(name, &dev, &live.join("replica.img"))?;
        }
        let info = RetiredInfo {
            version: 1,
            disk: name.into(),
            why: why.into(),
            retired_unix_ns: ns,
        };
        let bytes = serde_json::to_vec_pretty(&info).map_err(|x| StoreError::Io {
            disk: name.into(),
            what: "encoding retired.json".into(),
            source: std::io::Error::other(x),
        })?;
        write_atomic(&live.join("retired.json"), &bytes)
            .map_err(e("writing retired.json".into()))?;
    }
    let swap = disks.join(format!(".swap-{name}-{ns}"));
    fs::create_dir(&swap).map_err(e(format!("creating {}", swap.display())))?;
    let built = fill(&swap).and_then(|()| {
        sync_dir(&swap).map_err(e(format!("syncing {}", swap.display())))?;
        sync_dir(&disks).map_err(e("syncing disks/".into()))
    });
    if let Err(x) = built {
        let _ = fs::remove_dir_all(&swap);
        return Err(x);
    }
    if old.is_none() && !live.exists() {
        fs::rename(&swap, &live).map_err(e(format!("installing {}", live.display())))?;
        sync_dir(&disks).map_err(e("syncing disks/".into()))?;
        return Ok(None);
    }
    exchange(&swap, &live).map_err(e(format!(
        "exchanging {} with the new entry",
        live.display()
    )))?;
    sync_dir(&disks).map_err(e("syncing disks/".into()))?;
    if !keep {
        // A device-backed entry without points (or a directory without state): nothing in
        // it is history — the new entry takes the device over.
        fs::remove_dir_all(&swap).map_err(e(format!("removing {}", swap.display())))?;
        sync_dir(&disks).map_err(e("syncing disks/".into()))?;
        return Ok(None);
    }
    let root = retired_root(store);
    fs::create_dir_all(&root).map_err(e("creating retired/".into()))?;
    sync_dir(store).map_err(e("syncing the store".into()))?;
    let to = root.join(format!("{name}-{ns}"));
    fs::rename(&swap, &to).map_err(e(format!("retiring the entry to {}", to.display())))?;
    sync_dir(&root).map_err(e("syncing retired/".into()))?;
    sync_dir(&disks).map_err(e("syncing disks/".into()))?;
    tracing::warn!(disk = name, to = %to.display(), points = points.len(), "{why}: the previous entry is retired, not deleted");
    Ok(Some(to))
}

impl Disk {
    /// Retires this entry whole and reopens a fresh one for the copy `copy` (same owner,
    /// id, size and replica device; a new sparse `replica.img` otherwise).
    pub(super) fn retire_for_copy(&mut self, copy: CopyProgress) -> Result<()> {
        let name = self.name().to_string();
        let store = self
            .dir
            .parent()
            .and_then(Path::parent)
            .map(Path::to_path_buf)
            .ok_or_else(|| StoreError::BadRequest {
                disk: name.clone(),
                why: format!("{} is not inside a store", self.dir.display()),
            })?;
        let state = DiskState {
            created_unix_ns: base::now_ns(),
            copy: Some(copy),
            applied: None,
            broken: None,
            resync: None,
            base_seq: None,
            failed_over: None,
            ..self.state.clone()
        };
        let why = format!(
            "a full copy from cycle {} requested by its owner '{}' (it rewrites the replica)",
            copy.from_seq, self.state.owner
        );
        install(&store, &name, &why, |dir| {
            fs::create_dir(dir.join("staging")).map_err(io_err(&name, "creating staging/"))?;
            fs::create_dir(dir.join("undo")).map_err(io_err(&name, "creating undo/"))?;
            if state.replica_device.is_none() {
                let f = File::create(dir.join("replica.img"))
                    .map_err(io_err(&name, "creating replica.img"))?;
                f.set_len(state.size)
                    .map_err(io_err(&name, "sizing replica.img"))?;
                f.sync_all().map_err(io_err(&name, "syncing replica.img"))?;
            }
            let bytes = serde_json::to_vec_pretty(&state).map_err(|e| StoreError::Io {
                disk: name.clone(),
                what: "encoding state.json".into(),
                source: std::io::Error::other(e),
            })?;
            write_atomic(&dir.join("state.json"), &bytes)
                .map_err(io_err(&name, "writing state.json"))
        })?;
        let mut fresh = Self::open(&store, &name)?;
        fresh.retention = std::mem::take(&mut self.retention);
        fresh.counters = self.counters;
        *self = fresh;
        Ok(())
    }
}

/// Swaps two directories atomically.
fn exchange(a: &Path, b: &Path) -> std::io::Result<()> {
    use nix::fcntl::{AT_FDCWD, RenameFlags, renameat2};
    renameat2(AT_FDCWD, a, AT_FDCWD, b, RenameFlags::RENAME_EXCHANGE).map_err(std::io::Error::from)
}

/// Copies `device` into the sparse file `to` (zero chunks are holes), durably.
fn snapshot(name: &str, device: &Path, to: &Path) -> Result<()> {
    let e = |what: String| io_err(name, what);
    let src = File::open(device).map_err(e(format!("opening {}", device.display())))?;
    let size = {
        use std::io::{Seek, SeekFrom};
        (&src)
            .seek(SeekFrom::End(0))
            .map_err(e(format!("sizing {}", device.display())))?
    };
    let tmp = to.with_extension("tmp");
    let dst = File::create(&tmp).map_err(e(format!("creating {}", tmp.display())))?;
    dst.set_len(size)
        .map_err(e(format!("sizing {}", tmp.display())))?;
    let mut buf = vec![0u8; SNAPSHOT_CHUNK];
    let mut at = 0u64;
    while at < size {
        let n = usize::try_from((size - at).min(SNAPSHOT_CHUNK as u64)).unwrap_or(SNAPSHOT_CHUNK);
        src.read_exact_at(&mut buf[..n], at)
            .map_err(e(format!("reading {} at {at}", device.display())))?;
        if !base::devread::is_zero(&buf[..n]) {
            dst.write_all_at(&buf[..n], at)
                .map_err(e(format!("writing {} at {at}", tmp.display())))?;
        }
        at += n as u64;
    }
    dst.sync_all()
        .map_err(e(format!("syncing {}", tmp.display())))?;
    fs::rename(&tmp, to).map_err(e(format!("renaming {}", tmp.display())))?;
    if let Some(d) = to.parent() {
        sync_dir(d).map_err(e(format!("syncing {}", d.display())))?;
    }
    tracing::info!(disk = name, device = %device.display(), "device copied for its retired entry");
    Ok(())
}

/// What `sitrep retired --json` prints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RetiredReport {
    /// The retired copies listed (or the one purged).
    pub retired: Vec<RetiredCopy>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A listing (`sitrep retired`) while a session retires an entry must not touch the
    /// retirement in progress; the server's start finishes one a crash left.
    #[test]
    fn listing_leaves_a_retirement_in_progress_alone() {
        let store = tempfile::tempdir().unwrap();
        let swap = store.path().join("disks").join(".swap-k-5");
        fs::create_dir_all(&swap).unwrap();
        fs::write(swap.join("retired.json"), br#"{"why":"test"}"#).unwrap();
        fs::write(swap.join("replica.img"), b"x").unwrap();
        assert!(list(store.path()).unwrap().is_empty());
        assert!(
            swap.join("replica.img").exists(),
            "the listing moved the entry"
        );
        sweep(store.path(), None).unwrap();
        assert!(!swap.exists());
        let copies = list(store.path()).unwrap();
        assert_eq!(copies.len(), 1, "{copies:?}");
        assert_eq!(copies[0].disk, "k");
    }
}
