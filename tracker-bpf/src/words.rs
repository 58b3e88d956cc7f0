//! The bitmaps the BPF program shares with the poller (`BPF_F_MMAPABLE` array maps of u64):
//! mapping them, and draining their set bits into byte extents with atomic swaps.

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};

use hrl::Extent;
use libbpf_rs::MapCore;

use crate::error::{Error, Result};
use crate::fine;

/// Fallback bitmap words per device (`TRK_BITMAP_WORDS`).
pub(crate) const BITMAP_WORDS: usize = 2048;

/// A shared, writable mapping of an `BPF_F_MMAPABLE` array map of u64.
pub(crate) struct MappedWords {
    ptr: *mut AtomicU64,
    len: usize,
    map_len: usize,
}

// SAFETY: the mapping is shared memory that outlives every reference handed out (until
// drop unmaps it) and is only accessed through `AtomicU64`s, so moving or sharing the handle
// between threads is as safe as sharing the atomics themselves.
unsafe impl Send for MappedWords {}
// SAFETY: as above.
unsafe impl Sync for MappedWords {}

impl MappedWords {
    pub(crate) fn new(map: &dyn MapCore, words: usize) -> Result<Self> {
        // SAFETY: sysconf has no memory-safety preconditions.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
        let map_len = (words * 8).next_multiple_of(page);
        // SAFETY: mapping a BPF_F_MMAPABLE array map's fd, shared and read/write, at offset
        // 0 for at most its size rounded to a page (the kernel's own rule for these maps).
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                map.as_fd().as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(Error::Bpf(format!(
                "mmap of the fallback bitmap: {}",
                std::io::Error::last_os_error()
            )));
        }
        Ok(Self {
            ptr: p.cast(),
            len: words,
            map_len,
        })
    }

    pub(crate) fn words(&self) -> &[AtomicU64] {
        // The mapping holds `len` naturally aligned u64s (page-aligned start) and lives as
        // long as `self`; the BPF program updates them only with atomic ops, so viewing
        // them as AtomicU64 matches how they are shared.
        // SAFETY: as above — valid, aligned, shared only through atomics.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

impl Drop for MappedWords {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly the region mmap returned; no references outlive self.
        unsafe { libc::munmap(self.ptr.cast(), self.map_len) };
    }
}

/// Atomically takes the set bits of one device's bitmap and turns them into byte extents
/// (granule-aligned, clamped to the device, adjacent granules merged).
pub(crate) fn drain_words(words: &[AtomicU64], granule_shift: u32, nr_sects: u64) -> Vec<Extent> {
    let disk_end = nr_sects.saturating_mul(hrl::SECTOR_SIZE);
    let granule = hrl::SECTOR_SIZE << granule_shift;
    let mut runs = fine::Runs::default();
    for (wi, w) in words.iter().enumerate() {
        if w.load(Ordering::Relaxed) == 0 {
            continue;
        }
        let mut bits = w.swap(0, Ordering::AcqRel);
        while bits != 0 {
            let b = u64::from(bits.trailing_zeros());
            bits &= bits - 1;
            let g = wi as u64 * 64 + b;
            runs.push(g * granule, ((g + 1) * granule).min(disk_end));
        }
    }
    runs.finish()
}

/// The smallest granule (as log2 sectors, at least 4 KiB) whose bitmap covers the device.
#[must_use]
pub(crate) fn granule_shift_for(nr_sects: u64) -> u32 {
    let bits = (BITMAP_WORDS * 64) as u64;
    let mut shift = 3;
    while shift < 63 && (nr_sects.div_ceil(1 << shift)) > bits {
        shift += 1;
    }
    shift
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn granule_fits_the_bitmap() {
        assert_eq!(granule_shift_for(1 << 17), 3); // 64 MiB: 4 KiB granules
        let tib = 1u64 << 31; // 1 TiB in sectors
        let s = granule_shift_for(tib);
        assert!(tib.div_ceil(1 << s) <= (BITMAP_WORDS * 64) as u64);
        assert!(tib.div_ceil(1 << (s - 1)) > (BITMAP_WORDS * 64) as u64);
    }

    #[test]
    fn bitmap_words_become_merged_extents_and_are_cleared() {
        let words: Vec<AtomicU64> = (0..4).map(|_| AtomicU64::new(0)).collect();
        words[0].store(0b1110 | (1 << 63), Ordering::Relaxed);
        words[1].store(1, Ordering::Relaxed); // continues bit 63 of word 0
        words[3].store(1 << 5, Ordering::Relaxed); // past the disk end: clamped away
        // granule 4 KiB (shift 3), disk of 66 granules + 1 sector
        let nr_sects = 66 * 8 + 1;
        let got = drain_words(&words, 3, nr_sects);
        assert_eq!(
            got,
            vec![
                Extent::new(4096, 3 * 4096).unwrap(),
                Extent::new(63 * 4096, 2 * 4096).unwrap(),
            ]
        );
        assert!(words.iter().all(|w| w.load(Ordering::Relaxed) == 0));
    }

    #[test]
    fn last_partial_granule_is_clamped_to_the_disk() {
        let words: Vec<AtomicU64> = (0..1).map(|_| AtomicU64::new(1 << 2)).collect();
        let got = drain_words(&words, 3, 2 * 8 + 3);
        assert_eq!(got, vec![Extent::new(2 * 4096, 3 * 512).unwrap()]);
    }
}
