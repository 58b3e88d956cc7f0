//! A shared, writable memory mapping of an open log's allocated space
//! ([`crate::WriterConfig::map`]): appending a batch is then a copy into the page cache,
//! with no system call. What a `pwrite` guarantees, the copy guarantees too: once it
//! returns, the records are in the file's page cache and survive the writer's process
//! (not the host: that is what the sync at a flush is for, and an `fdatasync` of the file
//! writes back pages dirtied through the mapping as well).

use std::fs::File;
use std::os::fd::AsRawFd;
use std::ptr::NonNull;

/// The mapping of `[0, len)` of a log file whose blocks are allocated (`fallocate`), so a
/// write fault never needs space the filesystem does not have.
#[derive(Debug)]
pub(crate) struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain shared memory owned by this value; moving it to another
// thread (a commit written off the writer's lock) moves the only handle to it.
unsafe impl Send for Mapping {}

impl Mapping {
    /// Allocates `len` bytes for `file` (extending it; the allocated blocks read as zeros,
    /// which a reader takes as "no more records") and maps them. `None` if the filesystem
    /// cannot (no `fallocate`, no space, no `mmap`): the caller then writes with `pwrite`.
    pub(crate) fn new(file: &File, len: u64) -> Option<Self> {
        let flen = libc::off_t::try_from(len).ok()?;
        let mlen = usize::try_from(len).ok()?;
        // SAFETY: fallocate on a descriptor we own; no pointers.
        if unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, flen) } != 0 {
            return None;
        }
        // SAFETY: a fresh shared mapping of `mlen` bytes of a file at least that long; the
        // result is checked before use and unmapped exactly once, in Drop.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                mlen,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return None;
        }
        Some(Self {
            ptr: NonNull::new(p.cast())?,
            len: mlen,
        })
    }

    /// Copies `data` to `offset`; false (nothing written) if it does not fit.
    pub(crate) fn write_at(&mut self, data: &[u8], offset: u64) -> bool {
        let Ok(off) = usize::try_from(offset) else {
            return false;
        };
        if off.checked_add(data.len()).is_none_or(|end| end > self.len) {
            return false;
        }
        // SAFETY: `[off, off + data.len())` is inside the mapping (checked above), which is
        // valid for writes while `self` lives; `data` is a separate buffer.
        unsafe {
            std::ptr::copy_nonoverlapping(data.as_ptr(), self.ptr.as_ptr().add(off), data.len());
        }
        true
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: the mapping created in `new`, unmapped once.
        unsafe {
            libc::munmap(self.ptr.as_ptr().cast(), self.len);
        }
    }
}
