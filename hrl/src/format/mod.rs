//! The HRL byte layout: pure encode/decode, no IO.
//!
//! A log file is a 4096-byte [header] followed by [records](record), each starting
//! at an 8-byte aligned offset. All integers are little-endian. docs/hrl-format.md is the
//! human-readable copy of the layouts documented on each type here; golden-byte tests in
//! `hrl/tests/golden.rs` fail if the encoding drifts from it.
//!
//! Why not serde/postcard for the log: the layout is a contract read by other tools (and,
//! one day, by other languages); an explicit little-endian layout with fixed offsets can be
//! documented, hexdumped and validated field by field, and cannot change because a library
//! upgraded.
//!
//! # Version policy
//! [`FORMAT_VERSION`] is a single number. Any change that an older reader could misread —
//! a new record kind, a new field, a new flag with meaning — bumps it, and readers reject
//! versions they do not know ([`Error::VersionMismatch`](crate::Error::VersionMismatch)).
//! There are deliberately no "ignorable" extensions: a reader that skipped an unknown change
//! record could lose a write silently, which is the one thing sitrep must never do.
//! Reserved bytes are written as zero and checked as zero so they can be given meaning by a
//! later version.
//!
//! Version history (the changelog):
//! - **1** (sitrep 0.1): first version.

pub mod header;
mod le;
pub mod record;

/// The format version this build writes and reads.
pub const FORMAT_VERSION: u16 = 1;

/// Size of the file header; records start at this offset.
pub const HEADER_SIZE: usize = 4096;

/// Records start at multiples of this.
pub const RECORD_ALIGN: usize = 8;

/// Largest record payload accepted (checked before allocating on read).
/// 16 MiB holds a 1 MiB journalled write with room to spare, or ~1M extents.
pub const MAX_PAYLOAD: usize = 16 << 20;

/// Rounds `n` up to the record alignment.
#[must_use]
pub const fn align_up(n: u64) -> u64 {
    // RECORD_ALIGN is a power of two; the caller guarantees n is far from u64::MAX
    // (it is a file offset bounded by MAX_PAYLOAD steps).
    (n + (RECORD_ALIGN as u64 - 1)) & !(RECORD_ALIGN as u64 - 1)
}

/// CRC-32 (IEEE, as computed by `crc32fast`) of the concatenation of `parts`.
#[must_use]
pub(crate) fn crc32(parts: &[&[u8]]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    for p in parts {
        h.update(p);
    }
    h.finalize()
}
