//! The backing store: a regular file (sparse is fine) or a block device, opened with
//! `O_DIRECT` and locked so that one server at a time serves it.
//!
//! A file backing is locked with `flock(LOCK_EX | LOCK_NB)` on the file itself, not a pid
//! file: the kernel drops it when the server dies (even by `kill -9`), so a restart after a
//! crash is never refused because of a stale lock. A block device is opened `O_EXCL`
//! instead (also released by the kernel on death), so a device that is mounted or held by
//! another exclusive opener is refused; it is not flocked, because udev takes shared flocks
//! on block devices while processing their events.

use std::fs::{File, OpenOptions};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// What kind of backing this is; decides how discard and write-zeroes are done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackingKind {
    /// A regular file: fallocate punch-hole / zero-range.
    File,
    /// A block device: BLKDISCARD / BLKZEROOUT.
    Device,
}

/// An open, locked backing store.
#[derive(Debug)]
pub struct Backing {
    path: PathBuf,
    file: File,
    kind: BackingKind,
    size: u64,
    direct: bool,
}

/// The block-device ioctls we use (`linux/fs.h`), kept private.
mod ioctls {
    const BLK_IOCTL_TYPE: u8 = 0x12;
    nix::ioctl_read!(blkgetsize64, BLK_IOCTL_TYPE, 114, u64);
    nix::ioctl_write_ptr_bad!(
        blkdiscard,
        nix::request_code_none!(BLK_IOCTL_TYPE, 119),
        [u64; 2]
    );
    nix::ioctl_write_ptr_bad!(
        blkzeroout,
        nix::request_code_none!(BLK_IOCTL_TYPE, 127),
        [u64; 2]
    );
}
use ioctls::{blkdiscard, blkgetsize64, blkzeroout};

impl Backing {
    /// Opens and locks `path`.
    ///
    /// # Errors
    /// [`Error::Backing`] if it is missing, of the wrong type or empty; [`Error::Busy`] if
    /// another server holds it.
    pub fn open(path: &Path) -> Result<Self> {
        let bad = |reason: String| Error::Backing {
            path: path.to_owned(),
            reason,
        };
        let meta = std::fs::metadata(path).map_err(|e| bad(e.to_string()))?;
        let kind = if meta.file_type().is_block_device() {
            BackingKind::Device
        } else if meta.is_file() {
            BackingKind::File
        } else {
            return Err(bad("not a regular file or block device".into()));
        };
        let excl = if kind == BackingKind::Device {
            libc::O_EXCL
        } else {
            0
        };
        let (file, direct) = match open_rw(path, libc::O_DIRECT | excl) {
            Ok(f) => (f, true),
            // Some filesystems refuse O_DIRECT; serve through the page cache rather than
            // not at all (the log discipline does not depend on it).
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                tracing::warn!(path = %path.display(), "O_DIRECT refused; using buffered I/O");
                (open_rw(path, excl).map_err(|e| bad(e.to_string()))?, false)
            }
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                return Err(bad(
                    "the device is in use (mounted, or opened exclusively by another holder)"
                        .into(),
                ));
            }
            Err(e) => return Err(bad(e.to_string())),
        };
        // A block device is already exclusive through O_EXCL; an flock on it would also
        // collide with udev, which takes shared flocks on block devices while it processes
        // their events (systemd's "locking block device access"): a server started right
        // after the device appeared was refused as "already served".
        if kind == BackingKind::File {
            lock(&file, path)?;
        }
        let size = match kind {
            BackingKind::File => meta.len(),
            BackingKind::Device => {
                let mut n = 0u64;
                // SAFETY: BLKGETSIZE64 writes one u64 through the pointer, which points at a
                // live, writable u64; the fd is open for the duration of the call.
                unsafe { blkgetsize64(file.as_raw_fd(), &raw mut n) }
                    .map_err(|e| bad(format!("BLKGETSIZE64: {e}")))?;
                n
            }
        };
        Ok(Self {
            path: path.to_owned(),
            file,
            kind,
            size,
            direct,
        })
    }

    /// The backing's size in bytes.
    #[must_use]
    pub fn size(&self) -> u64 {
        self.size
    }

    /// File or device.
    #[must_use]
    pub fn kind(&self) -> BackingKind {
        self.kind
    }

    /// Whether the data path bypasses the page cache.
    #[must_use]
    pub fn direct(&self) -> bool {
        self.direct
    }

    /// The path it was opened by.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The raw descriptor, registered with each queue's io_uring.
    #[must_use]
    pub fn raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    /// Discards (device) a range. Files use io_uring fallocate instead.
    ///
    /// # Errors
    /// The ioctl's errno.
    pub(crate) fn device_discard(&self, offset: u64, len: u64) -> std::io::Result<()> {
        let range = [offset, len];
        // SAFETY: BLKDISCARD reads two u64s through the pointer, which points at a live
        // array of two u64s; the fd stays open for the call.
        unsafe { blkdiscard(self.file.as_raw_fd(), &raw const range) }
            .map(drop)
            .map_err(std::io::Error::from)
    }

    /// Zeroes (device) a range. Files use io_uring fallocate instead.
    ///
    /// # Errors
    /// The ioctl's errno.
    pub(crate) fn device_zeroout(&self, offset: u64, len: u64) -> std::io::Result<()> {
        let range = [offset, len];
        // SAFETY: as for BLKDISCARD: the pointer is to a live array of two u64s.
        unsafe { blkzeroout(self.file.as_raw_fd(), &raw const range) }
            .map(drop)
            .map_err(std::io::Error::from)
    }
}

fn open_rw(path: &Path, flags: libc::c_int) -> std::io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(flags)
        .open(path)
}

fn lock(file: &File, path: &Path) -> Result<()> {
    // SAFETY: flock takes a descriptor we own (alive for the call) and plain flags.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc == 0 {
        return Ok(());
    }
    let e = std::io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Err(Error::Busy {
            path: path.to_owned(),
        })
    } else {
        Err(Error::io(path, "flock", e))
    }
}
