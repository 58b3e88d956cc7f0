//! The undo file format: its byte layout next to its encoder (the reader is in `reader.rs`).
//!
//! **Format** (little-endian). Writers write version 3; readers accept versions 1, 2 and 3.
//!
//! | offset | size | field |
//! |-------:|-----:|-------|
//! | 0 | 8 | magic `SRUNDO01` |
//! | 8 | 4 | version: 1, 2 or 3 (anything else is refused) |
//! | 12 | 4 | flags (0; versions 2 and 3 refuse others, version 1 ignores them) |
//! | 16 | 8 | sequence: the cycle's, or for a part the resync's `from_seq` |
//! | 24 | 8 | entry count `n` (at most [`MAX_ENTRIES`]) |
//! | 32 | 4 | CRC-32 of bytes 0..32, 36..64 and the entry table |
//! | 36 | 8 | cut time (ns since the epoch): the cycle's source-side cut; for a part, as passed to [`super::write_part`] |
//! | 44 | 4 | versions 2 and 3: part number (0..`u32::MAX`), `u32::MAX` for a cycle's undo; version 1: zero, ignored (always a cycle's undo) |
//! | 48 | 16 | zero (versions 2 and 3 refuse others, version 1 ignores them) |
//! | 64 | 32·n | entries: `offset` u64, `len` u64, `data_pos` u64 (`u64::MAX`: the range was zero), `crc` u32 of the data, 4 zero bytes |
//! | … | | data, at each entry's `data_pos` |
//!
//! An entry's `len` is 1..=[`MAX_ENTRY_LEN`], except that from version 3 a *zero* entry
//! (`data_pos` `u64::MAX`) may be of any length: a hole of the replica, or a run of all-zero
//! pieces, is one entry however long. Version 3 is otherwise version 2 (a whole-device discard
//! of a 64 TiB disk needed 64 Mi one-MiB entries before, more than an undo file holds; now
//! it needs one entry per hole and per MiB of *data* it overwrites). Version 2 is version 3
//! with every entry at most [`MAX_ENTRY_LEN`]. Version 1 is version 2 without the part field:
//! its bytes 44..64 were written as zero and it is always a cycle's undo (`part` = `None`).
//!

/// File magic.
pub const MAGIC: &[u8; 8] = b"SRUNDO01";
/// The format version writers write.
pub const VERSION: u32 = 3;
/// Header size.
pub const HEADER_LEN: u64 = 64;
/// Entry size.
pub const ENTRY_LEN: u64 = 32;
/// Most entries in one file: 4 Mi. The entry table is read whole (128 MiB at most, checked
/// before allocating) and kept in memory while the file is retained (about 40 bytes an
/// entry), so this bounds the memory one undo file costs. With data entries of at most
/// [`MAX_ENTRY_LEN`] it bounds what one cycle may overwrite to about 4 TiB of *allocated*
/// replica data (holes cost one entry each, whatever their length); a cycle past it is
/// refused before it is acknowledged, and the source replaces it with a checksum resync.
pub const MAX_ENTRIES: u64 = 1 << 22;
/// Longest data entry (data is saved in pieces of at most this size, each with its own CRC,
/// which export checks whenever it reads a whole piece). From version 3 a zero entry may be
/// longer.
pub const MAX_ENTRY_LEN: u64 = 1 << 20;
pub(super) const ZERO_POS: u64 = u64::MAX;
/// The header's part field of a cycle's undo (version 2).
pub(super) const CYCLE_PART: u32 = u32::MAX;

/// One saved range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// Byte offset on the disk.
    pub offset: u64,
    /// Length (at most [`MAX_ENTRY_LEN`] for data; any length for a zero entry).
    pub len: u64,
    /// Where its data is in the file (`None`: it was all zero).
    pub data_pos: Option<u64>,
    /// CRC-32 of the data (0 for zero ranges).
    pub crc: u32,
}

impl Entry {
    /// One past the end.
    #[must_use]
    pub fn end(&self) -> u64 {
        self.offset + self.len
    }
}

pub(super) fn le64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

pub(super) fn le32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

/// The 64-byte header of a file of `n` entries, its CRC field zero.
pub(super) fn header(seq: u64, part: Option<u32>, cut_time_ns: u64, n: u64) -> [u8; 64] {
    let mut h = [0u8; 64];
    h[..8].copy_from_slice(MAGIC);
    h[8..12].copy_from_slice(&VERSION.to_le_bytes());
    h[16..24].copy_from_slice(&seq.to_le_bytes());
    h[24..32].copy_from_slice(&n.to_le_bytes());
    h[36..44].copy_from_slice(&cut_time_ns.to_le_bytes());
    h[44..48].copy_from_slice(&part.unwrap_or(CYCLE_PART).to_le_bytes());
    h
}

pub(super) fn entry_bytes(e: &Entry) -> [u8; 32] {
    let mut b = [0u8; 32];
    b[..8].copy_from_slice(&e.offset.to_le_bytes());
    b[8..16].copy_from_slice(&e.len.to_le_bytes());
    b[16..24].copy_from_slice(&e.data_pos.unwrap_or(ZERO_POS).to_le_bytes());
    b[24..28].copy_from_slice(&e.crc.to_le_bytes());
    b
}

/// Encodes a version-3 header and entry table (the data follows). `part` `None` is a cycle's
/// undo.
#[must_use]
pub fn encode_index(seq: u64, part: Option<u32>, cut_time_ns: u64, entries: &[Entry]) -> Vec<u8> {
    let mut b = Vec::with_capacity(64 + entries.len() * 32);
    b.extend_from_slice(&header(seq, part, cut_time_ns, entries.len() as u64));
    for e in entries {
        b.extend_from_slice(&entry_bytes(e));
    }
    let mut h = crc32fast::Hasher::new();
    h.update(&b[..32]);
    h.update(&b[36..]);
    let crc = h.finalize();
    b[32..36].copy_from_slice(&crc.to_le_bytes());
    b
}
