//! `sitrep points export`: a recovery point materialized as an image file.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use super::{Shared, lock};
use crate::store::Disk;
use base::points::PointSel;
use base::status;

/// Chunk size of an export: the disk's lock is held for one chunk at a time, so replication
/// goes on between chunks, and each chunk is consistent with the undo data of that moment.
const EXPORT_CHUNK: usize = 4 << 20;

/// The point `sel` names on disk `name`.
pub(super) fn select_point(
    d: &Disk,
    name: &str,
    sel: PointSel,
) -> anyhow::Result<base::points::Point> {
    sel.pick(d.points()).cloned().ok_or_else(|| {
        anyhow::anyhow!("disk {name} has no recovery point '{sel}' (see `sitrep points {name}`)")
    })
}

pub(super) fn export(
    sh: &Shared,
    name: &str,
    point: PointSel,
    out: &Path,
    force: bool,
    progress: &dyn Fn(u64, u64),
) -> anyhow::Result<status::ExportReport> {
    use std::os::unix::fs::FileExt;
    // `NAME@NS`: a retired copy (`retired.rs`), read-only.
    let slot = match super::retired::slot(sh, name)? {
        Some(s) => s,
        None => lock(&sh.slots)
            .get(name)
            .cloned()
            .ok_or_else(|| anyhow::anyhow!("disk {name} is not replicated here"))?,
    };
    let (id, size, p) = {
        let mut g = slot.disk.lock();
        let d = g
            .as_mut()
            .ok_or_else(|| anyhow::anyhow!("disk {name} is not open"))?;
        let p = select_point(d, name, point)?;
        // Held until the last chunk is read: new cycles keep arriving meanwhile, and
        // retention must not retire the point being exported under the export.
        d.hold(p.id);
        (p.id, d.state().size, p)
    };
    let _hold = Hold { slot: &slot, id };
    if out.exists() && !force {
        anyhow::bail!("{} exists (use --force to overwrite it)", out.display());
    }
    let (tmp, f) = create_partial(out)?;
    let mut cleanup = RemoveOnDrop(Some(tmp.clone()));
    f.set_len(size)?;
    let mut buf = vec![0u8; EXPORT_CHUNK];
    let mut at = 0u64;
    let mut written = 0u64;
    while at < size {
        let n = usize::try_from((size - at).min(EXPORT_CHUNK as u64)).unwrap_or(EXPORT_CHUNK);
        {
            let g = slot.disk.lock();
            let d = g
                .as_ref()
                .ok_or_else(|| anyhow::anyhow!("disk {name} closed during the export"))?;
            d.export_chunk(id, at, &mut buf[..n])?;
        }
        if !base::devread::is_zero(&buf[..n]) {
            f.write_all_at(&buf[..n], at)?;
            written += n as u64;
        }
        at += n as u64;
        progress(at, size);
    }
    f.sync_all()?;
    std::fs::rename(&tmp, out)
        .map_err(|e| anyhow::anyhow!("renaming {} to {}: {e}", tmp.display(), out.display()))?;
    cleanup.0 = None;
    sync_parent(out)?;
    Ok(status::ExportReport {
        disk: name.to_string(),
        point: p,
        out: out.display().to_string(),
        size,
        bytes_written: written,
    })
}

/// Creates the export's temporary file beside `out`: a name no one can predict
/// (`OUT.partial.<random>`), created exclusively (`O_EXCL`), never through a symbolic link
/// (`O_NOFOLLOW`), mode 0600. The server runs as root; a predictable name would let a local
/// user plant a symlink there and have root overwrite any file.
fn create_partial(out: &Path) -> anyhow::Result<(PathBuf, File)> {
    let mut name = out
        .file_name()
        .map(|n| n.to_os_string())
        .ok_or_else(|| anyhow::anyhow!("{}: not a file name to export to", out.display()))?;
    let mut rnd = [0u8; 8];
    getrandom::fill(&mut rnd).map_err(|e| anyhow::anyhow!("random name: {e}"))?;
    name.push(format!(".partial.{}", u64::from_le_bytes(rnd)));
    let tmp = out.with_file_name(name);
    let f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&tmp)
        .map_err(|e| anyhow::anyhow!("creating {}: {e}", tmp.display()))?;
    Ok((tmp, f))
}

/// Releases an export's hold on its point ([`crate::store::Disk::hold`]), however it ends.
struct Hold<'a> {
    slot: &'a super::Slot,
    id: u64,
}

impl Drop for Hold<'_> {
    fn drop(&mut self) {
        if let Some(d) = self.slot.disk.lock().as_mut() {
            d.release(self.id);
        }
    }
}

/// Removes a half-written export when the export fails.
struct RemoveOnDrop(Option<PathBuf>);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Makes the rename of `path` durable: fsync of its directory.
fn sync_parent(path: &Path) -> anyhow::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| anyhow::anyhow!("syncing {}: {e}", dir.display()))
}
