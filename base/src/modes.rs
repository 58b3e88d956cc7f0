//! Data at rest is readable by root only: 0700 directories, 0600 files.
//!
//! Both daemons hold disk contents — the replica, undo data, staged cycles, exported
//! images on the secondary; change logs and copy progress on the primary — and the private
//! keys. Rather than passing a mode at each of the dozens of places that create a file, the
//! daemons run with the umask `077` ([`restrict_umask`]): every file and directory they or
//! their threads create is then at most 0600 / 0700, including the ones a future change
//! adds. A store or state directory made by an older version (0755 / 0644) is brought to the
//! same modes once at start ([`secure_tree`]). The alternative — an explicit mode on every
//! `create` — was rejected: one forgotten call site leaks a replica, and nothing would
//! catch it.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// The umask the daemons run with: no bits for group and others.
pub const UMASK: u32 = 0o077;

/// Sets the process umask to [`UMASK`] (process-wide: every thread's later creations).
pub fn restrict_umask() {
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(UMASK));
}

/// Removes the group and other permission bits from `root` and everything below it (not
/// following symbolic links; a block device named by a symlink keeps its own modes). Returns
/// how many entries were changed.
///
/// # Errors
/// `root` cannot be read or changed. Entries that vanish meanwhile are skipped.
pub fn secure_tree(root: &Path) -> std::io::Result<u64> {
    let mut changed = 0u64;
    let mut todo = vec![root.to_path_buf()];
    while let Some(path) = todo.pop() {
        let meta = match std::fs::symlink_metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && path != root => continue,
            Err(e) => return Err(e),
        };
        let ft = meta.file_type();
        if !(ft.is_dir() || ft.is_file()) {
            // Sockets (the control socket is 0600 already), symlinks, devices: left alone.
            continue;
        }
        let mode = meta.permissions().mode();
        if mode & 0o077 != 0 {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode & 0o7700))?;
            changed += 1;
        }
        if ft.is_dir() {
            for e in std::fs::read_dir(&path)?.flatten() {
                todo.push(e.path());
            }
        }
    }
    Ok(changed)
}

/// Creates `dir` (and its parents) if missing, then [`secure_tree`] on it; logs what an older
/// version left readable.
///
/// # Errors
/// The directory cannot be created or its modes changed.
pub fn private_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let n = secure_tree(dir)?;
    if n > 0 {
        tracing::warn!(
            dir = %dir.display(),
            entries = n,
            "made readable by root only (0700 directories, 0600 files)"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn mode(p: &Path) -> u32 {
        std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn secure_tree_strips_group_and_other_bits_below_the_root() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("store");
        std::fs::create_dir_all(root.join("disks/d/undo")).unwrap();
        std::fs::write(root.join("disks/d/replica.img"), b"x").unwrap();
        std::fs::write(root.join("disks/d/undo/1.undo"), b"x").unwrap();
        for p in ["", "disks", "disks/d", "disks/d/undo"] {
            std::fs::set_permissions(root.join(p), std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        for p in ["disks/d/replica.img", "disks/d/undo/1.undo"] {
            std::fs::set_permissions(root.join(p), std::fs::Permissions::from_mode(0o644)).unwrap();
        }
        std::os::unix::fs::symlink("/dev/null", root.join("disks/d/dev")).unwrap();
        assert_eq!(secure_tree(&root).unwrap(), 6);
        for p in ["", "disks", "disks/d", "disks/d/undo"] {
            assert_eq!(mode(&root.join(p)), 0o700, "{p}");
        }
        for p in ["disks/d/replica.img", "disks/d/undo/1.undo"] {
            assert_eq!(mode(&root.join(p)), 0o600, "{p}");
        }
        // Not followed: /dev/null keeps its modes.
        assert_eq!(mode(Path::new("/dev/null")) & 0o666, 0o666);
        assert_eq!(secure_tree(&root).unwrap(), 0, "idempotent");
    }
}
