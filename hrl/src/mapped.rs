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
    /// `[0, populated)` has been handed out for pre-faulting ([`Mapping::prefault`]).
    populated: usize,
}

/// A stretch of an open log's mapping to populate ahead of the appends, off the appending
/// thread ([`crate::LogWriter::prefault`]): a write to a mapped page the first time costs a
/// page fault (page allocation, the filesystem's `page_mkwrite`) — done here instead, the
/// append is a plain copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Prefault {
    addr: usize,
    len: usize,
}

impl Prefault {
    /// Populates the stretch (`madvise(MADV_POPULATE_WRITE)`, Linux 5.14+), page-table
    /// entries writable, as a write would, without writing. Blocks for the page work, so
    /// call it without the writer's lock.
    ///
    /// Safe to call after the log it came from was sealed, rotated or closed: populating
    /// never changes memory contents, so if the range is no longer mapped this fails
    /// (`ENOMEM`), and if another mapping took its place it only pre-faults that.
    ///
    /// # Errors
    /// The `madvise` error (`EINVAL` on kernels without `MADV_POPULATE_WRITE`); the appends
    /// then simply take their page faults.
    pub fn run(self) -> std::io::Result<()> {
        // MADV_POPULATE_WRITE only installs page-table entries (contents unchanged); on an
        // unmapped or foreign range it fails or pre-faults, never corrupting memory.
        // SAFETY: an address range, no Rust reference; populating changes no memory (above).
        let r = unsafe {
            libc::madvise(
                self.addr as *mut libc::c_void,
                self.len,
                libc::MADV_POPULATE_WRITE,
            )
        };
        if r == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    }

    /// Bytes in the stretch.
    #[must_use]
    pub fn len(&self) -> usize {
        self.len
    }

    /// Never true (a prefault is only handed out for a non-empty stretch).
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// Pre-faulting works in whole pages (4 KiB is a multiple of the page size we run on, and
/// the mapping starts page-aligned).
const PAGE: usize = 4096;

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
            populated: 0,
        })
    }

    /// Whether fewer than `low` bytes past `pos` (the append position) are populated, and
    /// there is mapping left to populate.
    pub(crate) fn prefault_due(&self, pos: u64, low: usize) -> bool {
        let pos = usize::try_from(pos).unwrap_or(usize::MAX);
        self.populated < self.len && self.populated < pos.saturating_add(low)
    }

    /// The next stretch to populate so that `ahead` bytes past `pos` are (the mapping's end
    /// at most); marks it handed out. `None` if it already is.
    pub(crate) fn prefault(&mut self, pos: u64, ahead: usize) -> Option<Prefault> {
        let pos = usize::try_from(pos).unwrap_or(usize::MAX);
        // Pages already written through are faulted in: start at the append position.
        let start = self.populated.max(pos / PAGE * PAGE);
        let end = pos
            .saturating_add(ahead)
            .div_ceil(PAGE)
            .saturating_mul(PAGE)
            .min(self.len);
        if start >= end {
            return None;
        }
        self.populated = end;
        Some(Prefault {
            addr: self.ptr.as_ptr() as usize + start,
            len: end - start,
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// Which pages of `[addr, addr + len)` have a page-table entry (`/proc/self/pagemap`,
    /// bit 63 "present"): populated, as opposed to merely in the page cache.
    fn present(addr: usize, len: usize) -> Vec<bool> {
        let f = File::open("/proc/self/pagemap").unwrap();
        (0..len / PAGE)
            .map(|i| {
                let mut e = [0u8; 8];
                let at = ((addr / PAGE + i) * 8) as u64;
                std::os::unix::fs::FileExt::read_exact_at(&f, &mut e, at).unwrap();
                u64::from_le_bytes(e) >> 63 == 1
            })
            .collect()
    }

    #[test]
    fn a_prefault_makes_its_stretch_resident_and_nothing_else() {
        let f = tempfile::tempfile().unwrap();
        let mut m = Mapping::new(&f, 64 * PAGE as u64).unwrap();
        let base = m.ptr.as_ptr() as usize;
        assert!(present(base, 64 * PAGE).iter().all(|r| !r));
        assert!(m.prefault_due(100, 8 * PAGE));
        // From the append position's page to 8 pages past it (rounded up to a page).
        let p = m.prefault(100, 8 * PAGE).unwrap();
        assert_eq!((p.addr, p.len), (base, 9 * PAGE));
        p.run().unwrap();
        let r = present(base, 64 * PAGE);
        assert!(
            r[..9].iter().all(|r| *r) && r[9..].iter().all(|r| !r),
            "{r:?}"
        );
        assert!(!m.prefault_due(PAGE as u64, 8 * PAGE));
        // The next one starts where the last ended and stops at the mapping's end.
        let p = m.prefault(5 * PAGE as u64, 100 * PAGE).unwrap();
        assert_eq!((p.addr, p.len), (base + 9 * PAGE, 55 * PAGE));
        assert!(
            !m.prefault_due(64 * PAGE as u64, 8 * PAGE),
            "nothing left to populate"
        );
        assert_eq!(m.prefault(64 * PAGE as u64, 8 * PAGE), None);
        // Populating writes nothing: the file still reads as zeros.
        p.run().unwrap();
        let mut buf = vec![1u8; 64 * PAGE];
        std::os::unix::fs::FileExt::read_exact_at(&f, &mut buf, 0).unwrap();
        assert!(buf.iter().all(|b| *b == 0));
    }
}
