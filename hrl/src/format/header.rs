//! The 4096-byte log file header: identity block and seal block.
//!
//! ```text
//! Identity block, written once when the log is created (all integers little-endian):
//! off  size  field
//!   0     8  magic               "SITRPHRL"
//!   8     2  format_version      1
//!  10     2  flags               bit 0 JOURNAL: the log carries written data; others zero
//!  12     4  header_size         4096
//!  16    16  disk_id             the protected disk, for its whole life
//!  32     8  disk_size           bytes; a multiple of logical_block_size
//!  40     4  logical_block_size  512..=65536, power of two
//!  44     4  reserved            zero
//!  48     8  generation          replica lineage; never decreases along a chain
//!  56     8  log_seq             0 for a disk's first log, +1 per log
//!  64    16  log_id              random, non-nil; salts every record crc of this file
//!  80    16  prev_log_id         log_id of the predecessor; nil for log_seq 0 or a new chain
//!  96     8  created_unix_ns     wall clock at creation
//! 104     8  first_seq           sequence number of this log's first record
//! 112   140  reserved            zero
//! 252     4  header_crc          crc32 of bytes 0..252
//!
//! Seal block: all zero while the log is open; written (then fdatasync) on a clean close.
//! Absent (zero) on reopen ⇒ the writer died: the log's tail is suspect.
//! 512     8  seal_magic          "SEALED\0\0"
//! 520     8  end_offset          one past the last record (records fill 4096..end_offset)
//! 528     8  record_count
//! 536     8  next_seq            first_seq + record_count: the successor's first_seq
//! 544     8  sealed_unix_ns
//! 552     4  seal_flags          bit 0 RECOVERED: sealed by crash recovery, not by the
//!                                writer that appended the records; others zero
//! 556     4  seal_crc            crc32 of bytes 512..556
//!
//! All other bytes up to 4096 are reserved and zero.
//! ```
//!
//! Compared with MS-HRL: the same 4 KiB header, magic + version, an end-of-log location that
//! is zero while open and written on clean close, and Unique/Previous id chaining. Improved:
//! a CRC-32 instead of a byte sum, a disk identity and generation so a log can never be
//! applied to the wrong disk or lineage, and the seal lives in its own 512-byte sector so
//! writing it cannot tear the identity block.

use super::le::{Cursor, Short, put};
use super::{FORMAT_VERSION, HEADER_SIZE, crc32};
use crate::error::Corrupt;
use crate::units::{DiskId, Generation, LogId, LogSeq, SeqNo};

/// The file magic.
pub const MAGIC: [u8; 8] = *b"SITRPHRL";
/// The seal block's magic.
pub const SEAL_MAGIC: [u8; 8] = *b"SEALED\0\0";
/// Offset of the seal block inside the header.
pub const SEAL_OFFSET: usize = 512;
/// Size of the seal block.
pub const SEAL_SIZE: usize = 48;

const IDENTITY_CRC_AT: usize = 252;
const HEADER_SIZE_U32: u32 = 4096;
const _: () = assert!(HEADER_SIZE_U32 as usize == HEADER_SIZE);
const FLAG_JOURNAL: u16 = 1;
const SEAL_FLAG_RECOVERED: u32 = 1;

/// What a log is about: the disk whose changes it records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct DiskIdentity {
    /// The disk's id.
    pub id: DiskId,
    /// The disk's size in bytes.
    pub size: u64,
    /// The disk's logical block size in bytes.
    pub logical_block_size: u32,
}

impl DiskIdentity {
    /// Checks the invariants the header layout documents.
    ///
    /// # Errors
    /// The name and value of the first field that is out of range.
    pub fn validate(&self) -> Result<(), Corrupt> {
        let lbs = self.logical_block_size;
        if !(512..=65536).contains(&lbs) || !lbs.is_power_of_two() {
            return Err(Corrupt::HeaderField {
                field: "logical_block_size",
                value: u64::from(lbs),
            });
        }
        if self.size == 0 || !self.size.is_multiple_of(u64::from(lbs)) {
            return Err(Corrupt::HeaderField {
                field: "disk_size",
                value: self.size,
            });
        }
        if self.id.is_nil() {
            return Err(Corrupt::HeaderField {
                field: "disk_id",
                value: 0,
            });
        }
        Ok(())
    }
}

/// The identity block of a log file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct LogHeader {
    /// The disk this log describes.
    pub disk: DiskIdentity,
    /// Whether write records carry their data (journal mode).
    pub journal: bool,
    /// Replica lineage.
    pub generation: Generation,
    /// Position of this log in the disk's chain.
    pub log_seq: LogSeq,
    /// This log's id.
    pub log_id: LogId,
    /// The predecessor's id (nil if none).
    pub prev_log_id: LogId,
    /// Creation time, nanoseconds since the Unix epoch.
    pub created_unix_ns: u64,
    /// Sequence number of the first record.
    pub first_seq: SeqNo,
}

/// The seal block: present only on a cleanly closed (or recovered) log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Seal {
    /// One past the last record.
    pub end_offset: u64,
    /// Number of records in the log.
    pub record_count: u64,
    /// The successor log's first sequence number.
    pub next_seq: SeqNo,
    /// When the seal was written, nanoseconds since the Unix epoch.
    pub sealed_unix_ns: u64,
    /// Sealed by crash recovery rather than by a clean close.
    pub recovered: bool,
}

/// Why a header did not decode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderError {
    /// Wrong magic.
    NotALog([u8; 8]),
    /// Unknown format version.
    Version(u16),
    /// Anything else.
    Corrupt(Corrupt),
}

impl From<Corrupt> for HeaderError {
    fn from(c: Corrupt) -> Self {
        HeaderError::Corrupt(c)
    }
}

impl From<Short> for HeaderError {
    fn from(_: Short) -> Self {
        HeaderError::Corrupt(Corrupt::TruncatedHeader { len: 0 })
    }
}

/// Encodes a header with an empty (zero) seal block.
#[must_use]
pub fn encode_header(h: &LogHeader) -> [u8; HEADER_SIZE] {
    let mut b = [0u8; HEADER_SIZE];
    put(&mut b, 0, &MAGIC);
    put(&mut b, 8, &FORMAT_VERSION.to_le_bytes());
    let flags = if h.journal { FLAG_JOURNAL } else { 0 };
    put(&mut b, 10, &flags.to_le_bytes());
    put(&mut b, 12, &HEADER_SIZE_U32.to_le_bytes());
    put(&mut b, 16, &h.disk.id.0);
    put(&mut b, 32, &h.disk.size.to_le_bytes());
    put(&mut b, 40, &h.disk.logical_block_size.to_le_bytes());
    put(&mut b, 48, &h.generation.0.to_le_bytes());
    put(&mut b, 56, &h.log_seq.0.to_le_bytes());
    put(&mut b, 64, &h.log_id.0);
    put(&mut b, 80, &h.prev_log_id.0);
    put(&mut b, 96, &h.created_unix_ns.to_le_bytes());
    put(&mut b, 104, &h.first_seq.0.to_le_bytes());
    let crc = crc32(&[&b[..IDENTITY_CRC_AT]]);
    put(&mut b, IDENTITY_CRC_AT, &crc.to_le_bytes());
    b
}

/// Encodes the seal block (written at [`SEAL_OFFSET`]).
#[must_use]
pub fn encode_seal(s: &Seal) -> [u8; SEAL_SIZE] {
    let mut b = [0u8; SEAL_SIZE];
    put(&mut b, 0, &SEAL_MAGIC);
    put(&mut b, 8, &s.end_offset.to_le_bytes());
    put(&mut b, 16, &s.record_count.to_le_bytes());
    put(&mut b, 24, &s.next_seq.0.to_le_bytes());
    put(&mut b, 32, &s.sealed_unix_ns.to_le_bytes());
    let flags = if s.recovered { SEAL_FLAG_RECOVERED } else { 0 };
    put(&mut b, 40, &flags.to_le_bytes());
    let crc = crc32(&[&b[..SEAL_SIZE - 4]]);
    put(&mut b, SEAL_SIZE - 4, &crc.to_le_bytes());
    b
}

/// Decodes and validates a header; returns the seal if the log was closed.
///
/// # Errors
/// Wrong magic, unknown version, or the first failed validation.
pub fn decode_header(b: &[u8]) -> Result<(LogHeader, Option<Seal>), HeaderError> {
    if b.len() < HEADER_SIZE {
        if b.len() >= 8 && b[..8] != MAGIC {
            return Err(HeaderError::NotALog(array8(b)));
        }
        return Err(Corrupt::TruncatedHeader {
            len: b.len() as u64,
        }
        .into());
    }
    let mut c = Cursor::new(b);
    let magic: [u8; 8] = c.array()?;
    if magic != MAGIC {
        return Err(HeaderError::NotALog(magic));
    }
    // Version before crc: a later version may lay the identity block out differently.
    let version = c.u16()?;
    if version != FORMAT_VERSION {
        return Err(HeaderError::Version(version));
    }
    let stored = u32::from_le_bytes(array4(&b[IDENTITY_CRC_AT..]));
    let computed = crc32(&[&b[..IDENTITY_CRC_AT]]);
    if stored != computed {
        return Err(Corrupt::HeaderCrc { stored, computed }.into());
    }
    let flags = c.u16()?;
    check_field("flags", u64::from(flags & !FLAG_JOURNAL), 0)?;
    check_field("header_size", u64::from(c.u32()?), HEADER_SIZE as u64)?;
    let disk = DiskIdentity {
        id: DiskId(c.array()?),
        size: c.u64()?,
        logical_block_size: c.u32()?,
    };
    disk.validate()?;
    check_field("reserved@44", u64::from(c.u32()?), 0)?;
    let h = LogHeader {
        disk,
        journal: flags & FLAG_JOURNAL != 0,
        generation: Generation(c.u64()?),
        log_seq: LogSeq(c.u64()?),
        log_id: LogId(c.array()?),
        prev_log_id: LogId(c.array()?),
        created_unix_ns: c.u64()?,
        first_seq: SeqNo(c.u64()?),
    };
    if h.log_id.is_nil() {
        return Err(Corrupt::HeaderField {
            field: "log_id",
            value: 0,
        }
        .into());
    }
    let reserved_ok = b[112..IDENTITY_CRC_AT].iter().all(|&x| x == 0)
        && b[256..SEAL_OFFSET].iter().all(|&x| x == 0)
        && b[SEAL_OFFSET + SEAL_SIZE..HEADER_SIZE]
            .iter()
            .all(|&x| x == 0);
    if !reserved_ok {
        return Err(Corrupt::NonZeroReserved.into());
    }
    let seal = decode_seal(&b[SEAL_OFFSET..SEAL_OFFSET + SEAL_SIZE])?;
    Ok((h, seal))
}

/// Decodes a seal block: `None` if it is all zero (the log is open or was never closed).
///
/// # Errors
/// [`Corrupt::BadSeal`] if it is non-zero but invalid.
pub fn decode_seal(b: &[u8]) -> Result<Option<Seal>, Corrupt> {
    if b.iter().all(|&x| x == 0) {
        return Ok(None);
    }
    let bad = |_| Corrupt::BadSeal;
    let mut c = Cursor::new(b);
    let magic: [u8; 8] = c.array().map_err(bad)?;
    let body = b.get(..SEAL_SIZE - 4).ok_or(Corrupt::BadSeal)?;
    let stored = b.get(SEAL_SIZE - 4..SEAL_SIZE).map(array4);
    if magic != SEAL_MAGIC || stored != Some(crc32(&[body]).to_le_bytes()) {
        return Err(Corrupt::BadSeal);
    }
    let s = Seal {
        end_offset: c.u64().map_err(bad)?,
        record_count: c.u64().map_err(bad)?,
        next_seq: SeqNo(c.u64().map_err(bad)?),
        sealed_unix_ns: c.u64().map_err(bad)?,
        recovered: {
            let f = c.u32().map_err(bad)?;
            if f & !SEAL_FLAG_RECOVERED != 0 {
                return Err(Corrupt::BadSeal);
            }
            f & SEAL_FLAG_RECOVERED != 0
        },
    };
    if s.end_offset < HEADER_SIZE as u64 || !s.end_offset.is_multiple_of(super::RECORD_ALIGN as u64)
    {
        return Err(Corrupt::BadSeal);
    }
    Ok(Some(s))
}

fn check_field(field: &'static str, value: u64, want: u64) -> Result<(), Corrupt> {
    if value == want {
        Ok(())
    } else {
        Err(Corrupt::HeaderField { field, value })
    }
}

fn array4(b: &[u8]) -> [u8; 4] {
    let mut a = [0u8; 4];
    if let Some(s) = b.get(..4) {
        a.copy_from_slice(s);
    }
    a
}

fn array8(b: &[u8]) -> [u8; 8] {
    let mut a = [0u8; 8];
    if let Some(s) = b.get(..8) {
        a.copy_from_slice(s);
    }
    a
}
