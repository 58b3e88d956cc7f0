//! Direct (O_DIRECT) block IO and self-describing test data.
//!
//! O_DIRECT bypasses the page cache, so a read after a write really comes from the device
//! (loop, partition, dm, ublk), not from memory. It needs buffers, offsets and lengths aligned
//! to the logical block size; [`AlignedBuf`] aligns to 4096, which covers every device here.
//!
//! Test data is a pattern derived from `(seed, absolute byte offset)`: a block read from the
//! wrong place (an off-by-one-sector partition start, say) differs from what was expected, and
//! [`assert_same`] reports the first differing offset.

use std::alloc::{Layout, alloc_zeroed, dealloc};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::ptr::NonNull;

/// One mebibyte, for sizes and offsets.
pub const MIB: u64 = 1024 * 1024;

/// `n` MiB as a buffer length.
pub fn mib(n: u64) -> usize {
    usize::try_from(n * MIB).expect("buffer size fits usize")
}

/// Reads a decimal number from a file such as a sysfs attribute (a partition's `start` or
/// `size` in sectors, `/sys/block/X/queue/logical_block_size`).
pub fn read_u64_file(path: &str) -> u64 {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {path}: {e}"));
    text.trim()
        .parse()
        .unwrap_or_else(|e| panic!("parse {path} ({text:?}): {e}"))
}

/// Alignment of [`AlignedBuf`]: the largest logical block size we meet.
pub const ALIGN: usize = 4096;

/// A zero-initialised heap buffer aligned to [`ALIGN`], usable for O_DIRECT IO.
pub struct AlignedBuf {
    ptr: NonNull<u8>,
    len: usize,
}

impl AlignedBuf {
    /// A zeroed buffer of `len` bytes; `len` must be a non-zero multiple of [`ALIGN`].
    pub fn new(len: usize) -> Self {
        assert!(
            len > 0 && len.is_multiple_of(ALIGN),
            "AlignedBuf length {len} is not a multiple of {ALIGN}"
        );
        let layout = Self::layout(len);
        // SAFETY: the layout has a non-zero size (checked above).
        let raw = unsafe { alloc_zeroed(layout) };
        let ptr = NonNull::new(raw).unwrap_or_else(|| std::alloc::handle_alloc_error(layout));
        Self { ptr, len }
    }

    /// A buffer filled with [`fill_pattern`]`(seed, offset)`.
    pub fn with_pattern(len: usize, seed: u64, offset: u64) -> Self {
        let mut buf = Self::new(len);
        fill_pattern(&mut buf, seed, offset);
        buf
    }

    fn layout(len: usize) -> Layout {
        Layout::from_size_align(len, ALIGN).expect("AlignedBuf layout")
    }
}

impl std::ops::Deref for AlignedBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: ptr points to len initialised (zeroed) bytes owned by self, alive until drop.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl std::ops::DerefMut for AlignedBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in deref, and &mut self guarantees exclusive access.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: ptr was allocated by alloc_zeroed with exactly this layout.
        unsafe { dealloc(self.ptr.as_ptr(), Self::layout(self.len)) }
    }
}

// SAFETY: AlignedBuf owns its allocation exclusively, like a Vec<u8>.
unsafe impl Send for AlignedBuf {}

/// Opens a block device (or file) for O_DIRECT reads and writes.
pub fn open_direct(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
}

/// Writes `buf` at `offset` with O_DIRECT and fsyncs, then reads it back with a fresh
/// O_DIRECT descriptor and asserts the bytes are identical. Returns what was read.
pub fn direct_round_trip(path: &Path, offset: u64, buf: &AlignedBuf) -> AlignedBuf {
    let dev = open_direct(path).unwrap_or_else(|e| panic!("open {} O_DIRECT: {e}", path.display()));
    dev.write_all_at(buf, offset)
        .unwrap_or_else(|e| panic!("O_DIRECT write to {} at {offset}: {e}", path.display()));
    dev.sync_all()
        .unwrap_or_else(|e| panic!("fsync {}: {e}", path.display()));
    drop(dev);
    let back = direct_read(path, offset, buf.len());
    assert_same(
        buf,
        &back,
        &format!("{} at offset {offset}", path.display()),
    );
    back
}

/// Reads `len` bytes at `offset` with O_DIRECT.
pub fn direct_read(path: &Path, offset: u64, len: usize) -> AlignedBuf {
    let dev = open_direct(path).unwrap_or_else(|e| panic!("open {} O_DIRECT: {e}", path.display()));
    let mut back = AlignedBuf::new(len);
    dev.read_exact_at(&mut back, offset)
        .unwrap_or_else(|e| panic!("O_DIRECT read of {} at {offset}: {e}", path.display()));
    back
}

/// The pattern byte for absolute byte `offset` under `seed` (splitmix64 of the 8-byte word
/// index, so every 8-byte word of a disk is distinct and position-dependent).
pub fn pattern_byte(seed: u64, offset: u64) -> u8 {
    let word = splitmix64(seed ^ (offset / 8).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    word.to_le_bytes()[usize::try_from(offset % 8).expect("offset % 8 fits usize")]
}

/// Fills `buf` with the pattern of the bytes starting at absolute `offset`.
pub fn fill_pattern(buf: &mut [u8], seed: u64, offset: u64) {
    for (i, b) in (offset..).zip(buf.iter_mut()) {
        *b = pattern_byte(seed, i);
    }
}

fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Index of the first differing byte, or `None` if equal (a length difference counts as a
/// difference at the shorter length).
pub fn first_mismatch(a: &[u8], b: &[u8]) -> Option<usize> {
    a.iter()
        .zip(b)
        .position(|(x, y)| x != y)
        .or_else(|| (a.len() != b.len()).then(|| a.len().min(b.len())))
}

/// Asserts `expected == actual` byte for byte, naming `what` and the first differing offset.
pub fn assert_same(expected: &[u8], actual: &[u8], what: &str) {
    if let Some(i) = first_mismatch(expected, actual) {
        panic!(
            "{what}: data differs at byte {i} of {} (expected {:?}, got {:?}; lengths {} vs {})",
            expected.len(),
            expected.get(i),
            actual.get(i),
            expected.len(),
            actual.len()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_buf_is_aligned_and_zeroed() {
        let buf = AlignedBuf::new(2 * ALIGN);
        assert_eq!(buf.as_ptr() as usize % ALIGN, 0);
        assert!(buf.iter().all(|&b| b == 0));
    }

    #[test]
    #[should_panic(expected = "not a multiple")]
    fn aligned_buf_rejects_unaligned_len() {
        let _ = AlignedBuf::new(100);
    }

    #[test]
    fn pattern_is_position_dependent_and_reproducible() {
        let a = AlignedBuf::with_pattern(ALIGN, 7, 0);
        let b = AlignedBuf::with_pattern(ALIGN, 7, 0);
        assert_same(&a, &b, "same seed and offset");
        let shifted = AlignedBuf::with_pattern(ALIGN, 7, 512);
        assert!(
            first_mismatch(&a, &shifted).is_some(),
            "a sector shift must be visible"
        );
        let other_seed = AlignedBuf::with_pattern(ALIGN, 8, 0);
        assert!(first_mismatch(&a, &other_seed).is_some());
        // A sub-slice of the pattern equals the pattern generated at that offset.
        let mut tail = vec![0; 100];
        fill_pattern(&mut tail, 7, 1000);
        assert_eq!(&a[1000..1100], &tail[..]);
    }

    #[test]
    fn first_mismatch_finds_offsets_and_lengths() {
        assert_eq!(first_mismatch(b"abc", b"abc"), None);
        assert_eq!(first_mismatch(b"abc", b"abd"), Some(2));
        assert_eq!(first_mismatch(b"ab", b"abc"), Some(2));
    }

    #[test]
    #[should_panic(expected = "disk: data differs at byte 1 of 3")]
    fn assert_same_names_the_offset() {
        assert_same(b"abc", b"axc", "disk");
    }

    #[test]
    fn direct_round_trip_on_a_file() {
        // O_DIRECT on a regular file works on most filesystems (not all: tmpfs before 6.6).
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, vec![0u8; 4 * ALIGN]).unwrap();
        if open_direct(&path).is_err() {
            return; // filesystem without O_DIRECT: nothing to test here
        }
        let buf = AlignedBuf::with_pattern(ALIGN, 1, ALIGN as u64);
        direct_round_trip(&path, ALIGN as u64, &buf);
    }
}
