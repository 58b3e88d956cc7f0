//! The history file's byte layouts, versions 1 and 2, apart from the IO that reads and
//! writes them ([`super::writer`], [`super::read_history`]).
//!
//! All integers little-endian. A header, then fixed-size records appended as writes
//! complete. Version 1 is written by single-device runs (byte for byte what builds before
//! multi-device runs wrote); version 2 by runs over several devices. The version is decided
//! by the number of devices ([`HistoryHeader::version`]), so a single-device history stays
//! readable by older checkers.
//!
//! # Header, version 1 (64 bytes)
//!
//! | offset | size | field | meaning |
//! |-------:|-----:|-------|---------|
//! | 0 | 8 | magic | `b"SITRWHIS"` |
//! | 8 | 2 | version | 1 |
//! | 10 | 2 | header_len | 64 |
//! | 12 | 4 | block_size | bytes per block (as in every block) |
//! | 16 | 16 | run_id | the run (as in every block) |
//! | 32 | 8 | block_count | blocks written: `device_size / block_size` (rounded down) |
//! | 40 | 8 | device_size | the device's size in bytes when the run started |
//! | 48 | 8 | start_ns | when the run started (CLOCK_REALTIME ns since the epoch) |
//! | 56 | 4 | crc | CRC-32 of bytes `0..56` |
//! | 60 | 4 | reserved | 0 |
//!
//! # Header, version 2 (64 + 16 × device_count bytes)
//!
//! | offset | size | field | meaning |
//! |-------:|-----:|-------|---------|
//! | 0 | 8 | magic | `b"SITRWHIS"` |
//! | 8 | 2 | version | 2 |
//! | 10 | 2 | header_len | `64 + 16 × device_count` (at most 1088) |
//! | 12 | 4 | block_size | bytes per block, the same on every device |
//! | 16 | 16 | run_id | the run (as in every block) |
//! | 32 | 4 | device_count | 1 ..= [`MAX_DEVICES`] |
//! | 36 | 12 | reserved | 0 |
//! | 48 | 8 | start_ns | when the run started |
//! | 56 | 4 | crc | CRC-32 of bytes `0..56` then `64..header_len` (the device table) |
//! | 60 | 4 | reserved | 0 |
//! | 64 + 16 i | 8 | block_count | device i's blocks (`device_size / block_size`, ≥ 1) |
//! | 72 + 16 i | 8 | device_size | device i's size in bytes when the run started |
//!
//! The device count is read before the checksum is verified, but only to bound how many
//! bytes to read: it is capped at [`MAX_DEVICES`] first, so a hostile count costs at most a
//! 1088-byte read. The sum of the block counts is capped at [`MAX_BLOCKS`].
//!
//! # Record, version 1 (40 bytes)
//!
//! | offset | size | field | write record (kind 1) | end record (kind 2) |
//! |-------:|-----:|-------|-----------------------|---------------------|
//! | 0 | 8 | seq | the write's sequence number | number of write records before it |
//! | 8 | 8 | block | block index | 0 |
//! | 16 | 8 | issue_ns | taken just before `pwrite` | 0 |
//! | 24 | 8 | complete_ns | taken just after `pwrite` returned | when the run ended |
//! | 32 | 4 | kind | 1 | 2 |
//! | 36 | 4 | crc | CRC-32 of `run_id` then bytes `0..36` | same |
//!
//! # Record, version 2 (48 bytes)
//!
//! | offset | size | field | write record (kind 1) | end record (kind 2) |
//! |-------:|-----:|-------|-----------------------|---------------------|
//! | 0 | 8 | seq | the write's sequence number | number of write records before it |
//! | 8 | 8 | block | block index on its device | 0 |
//! | 16 | 8 | issue_ns | taken just before `pwrite` | 0 |
//! | 24 | 8 | complete_ns | taken just after `pwrite` returned | when the run ended |
//! | 32 | 8 | depends_on | seq of the write it depends on; [`NO_DEPENDENCY`] (`u64::MAX`): none | 0 |
//! | 40 | 2 | device | device index (< device_count) | 0 |
//! | 42 | 2 | kind | 1 | 2 |
//! | 44 | 4 | crc | CRC-32 of `run_id` then bytes `0..44` | same |
//!
//! `depends_on` is the most recently completed write on *another* device when this write was
//! issued: it completed before this one was issued (a happens-before the multi-device check
//! relies on). `u64::MAX` rather than 0 for "none", because seq 0 is a real write. 48 bytes
//! rather than 42: records stay 8-byte aligned and the CRC at the end, as in version 1.
//!
//! The record CRC is salted with the run id (both versions), so records of an older run left
//! in a reused file never validate.

use std::path::Path;

use crate::block::{BlockSize, le_u64};
use crate::units::{RunId, UnixNs};
use crate::{Error, Result};

/// `b"SITRWHIS"`: the first bytes of a history file.
pub const HISTORY_MAGIC: [u8; 8] = *b"SITRWHIS";
/// The newest history format version; this build writes and reads 1 and 2.
///
/// - 1: one device; 64-byte header, 40-byte records.
/// - 2: 1 to [`MAX_DEVICES`] devices; a device table in the header, 48-byte records with the
///   device index and the dependency.
pub const HISTORY_FORMAT_VERSION: u16 = 2;
/// Bytes of the fixed part of the header (all of a version-1 header).
pub const HEADER_LEN: usize = 64;
/// Bytes per device in a version-2 header's device table.
const DEVICE_ENTRY_LEN: usize = 16;
/// Most bytes a header may have (version 2 with [`MAX_DEVICES`] devices).
pub const MAX_HEADER_LEN: usize = HEADER_LEN + DEVICE_ENTRY_LEN * MAX_DEVICES;
/// Bytes per record, version 1.
pub const RECORD_LEN_V1: usize = 40;
/// Bytes per record, version 2.
pub const RECORD_LEN_V2: usize = 48;
/// The largest record length of any version (a buffer for either).
pub(crate) const MAX_RECORD_LEN: usize = RECORD_LEN_V2;
/// Most devices one run may write.
pub const MAX_DEVICES: usize = 64;
/// Most records a history may hold (6 GiB of file, ~7 GiB in memory); refused above.
pub const MAX_RECORDS: u64 = 1 << 27;
/// Most blocks a run may have over all its devices (a 64 TiB device at 4 KiB; the workload's
/// in-flight bitmap is `block_count / 8` bytes).
pub const MAX_BLOCKS: u64 = 1 << 34;
/// `depends_on` of a version-2 write record that depends on nothing.
pub const NO_DEPENDENCY: u64 = u64::MAX;

pub(crate) const KIND_WRITE: u32 = 1;
pub(crate) const KIND_END: u32 = 2;

/// One device of a run: how many blocks were written to it, and its size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceGeometry {
    /// Number of blocks (`device_size / block_size`, rounded down; at least 1).
    pub block_count: u64,
    /// Device size in bytes (≥ `block_count * block_size`).
    pub device_size: u64,
}

/// The history header: which run, which devices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryHeader {
    /// The run.
    pub run_id: RunId,
    /// Bytes per block, on every device.
    pub block_size: BlockSize,
    /// The devices, in the order of their indices (one for a version-1 history).
    pub devices: Vec<DeviceGeometry>,
    /// When the run started.
    pub start_ns: UnixNs,
}

/// A record as parsed (CRC and kind checked, fields not yet checked against the header).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RawRecord {
    /// A write (its fields not yet checked against the header).
    Write(crate::history::HistoryRecord),
    /// The end record: the run ended cleanly then.
    End(UnixNs),
}

impl HistoryHeader {
    /// The format version this header is written in: 1 for one device, 2 for more.
    #[must_use]
    pub fn version(&self) -> u16 {
        if self.devices.len() == 1 { 1 } else { 2 }
    }

    /// Bytes of the encoded header.
    #[must_use]
    pub fn header_len(&self) -> usize {
        match self.version() {
            1 => HEADER_LEN,
            _ => HEADER_LEN + DEVICE_ENTRY_LEN * self.devices.len(),
        }
    }

    /// Bytes per record in this history.
    #[must_use]
    pub fn record_len(&self) -> usize {
        record_len(self.version())
    }

    /// Blocks over all devices.
    #[must_use]
    pub fn total_blocks(&self) -> u64 {
        self.devices.iter().map(|d| d.block_count).sum()
    }

    /// The encoded header: version 1 for one device, version 2 otherwise.
    #[must_use]
    pub fn encode(&self) -> Vec<u8> {
        let version = self.version();
        let len = self.header_len();
        let mut b = vec![0u8; len];
        b[..8].copy_from_slice(&HISTORY_MAGIC);
        b[8..10].copy_from_slice(&version.to_le_bytes());
        b[10..12].copy_from_slice(&u16::try_from(len).unwrap_or(u16::MAX).to_le_bytes());
        b[12..16].copy_from_slice(&self.block_size.bytes().to_le_bytes());
        b[16..32].copy_from_slice(&self.run_id.0);
        if version == 1 {
            let d = self.devices.first().copied().unwrap_or(DeviceGeometry {
                block_count: 0,
                device_size: 0,
            });
            b[32..40].copy_from_slice(&d.block_count.to_le_bytes());
            b[40..48].copy_from_slice(&d.device_size.to_le_bytes());
        } else {
            let n = u32::try_from(self.devices.len()).unwrap_or(u32::MAX);
            b[32..36].copy_from_slice(&n.to_le_bytes());
            for (i, d) in self.devices.iter().enumerate() {
                let at = HEADER_LEN + DEVICE_ENTRY_LEN * i;
                b[at..at + 8].copy_from_slice(&d.block_count.to_le_bytes());
                b[at + 8..at + 16].copy_from_slice(&d.device_size.to_le_bytes());
            }
        }
        b[48..56].copy_from_slice(&self.start_ns.0.to_le_bytes());
        let crc = header_crc(&b);
        b[56..60].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// From the first [`HEADER_LEN`] bytes of the history `path`: the whole header's length
    /// (magic, version and length checked; the device count capped), so the caller knows how
    /// much more to read before [`Self::decode`]. At most [`MAX_HEADER_LEN`].
    ///
    /// # Errors
    /// [`Error::CorruptHistory`] naming the field; [`Error::TooLarge`] for too many devices.
    pub fn header_len_of(b: &[u8; HEADER_LEN], path: &Path) -> Result<usize> {
        if b[..8] != HISTORY_MAGIC {
            return Err(corrupt(
                path,
                0,
                format!("not a workload history (magic {:02x?})", &b[..8]),
            ));
        }
        let version = u16::from_le_bytes([b[8], b[9]]);
        let len = usize::from(u16::from_le_bytes([b[10], b[11]]));
        match version {
            1 if len == HEADER_LEN => Ok(HEADER_LEN),
            1 => Err(corrupt(path, 10, "header length is not 64".into())),
            2 => {
                let n = u32::from_le_bytes([b[32], b[33], b[34], b[35]]);
                if n as usize > MAX_DEVICES {
                    return Err(Error::TooLarge {
                        path: path.to_path_buf(),
                        what: "the history's device count",
                        found: u64::from(n),
                        limit: MAX_DEVICES as u64,
                    });
                }
                let want = HEADER_LEN + DEVICE_ENTRY_LEN * n as usize;
                if n == 0 || len != want {
                    return Err(corrupt(
                        path,
                        10,
                        format!("header length {len} does not fit {n} devices (want {want})"),
                    ));
                }
                Ok(len)
            }
            v => Err(corrupt(
                path,
                8,
                format!("history format version {v} (this build reads 1 and 2)"),
            )),
        }
    }

    /// Parses and checks the whole header `b` (its length from [`Self::header_len_of`]) of
    /// the history `path`.
    ///
    /// # Errors
    /// [`Error::CorruptHistory`] naming the field; [`Error::TooLarge`] for too many devices
    /// or blocks.
    pub fn decode(b: &[u8], path: &Path) -> Result<Self> {
        let Some(first) = b.first_chunk::<HEADER_LEN>() else {
            return Err(corrupt(path, 0, "shorter than the 64-byte header".into()));
        };
        let len = Self::header_len_of(first, path)?;
        if b.len() != len {
            return Err(corrupt(
                path,
                10,
                format!("{} header bytes given, the header says {len}", b.len()),
            ));
        }
        let stored = u32::from_le_bytes([b[56], b[57], b[58], b[59]]);
        if stored != header_crc(b) {
            return Err(corrupt(path, 56, "header checksum mismatch".into()));
        }
        let block_size =
            BlockSize::new(u64::from(u32::from_le_bytes([b[12], b[13], b[14], b[15]])))
                .map_err(|e| corrupt(path, 12, e.to_string()))?;
        let mut run = [0u8; 16];
        run.copy_from_slice(&b[16..32]);
        let devices: Vec<DeviceGeometry> = if len == HEADER_LEN {
            vec![geometry(b, 32)]
        } else {
            b[HEADER_LEN..]
                .chunks_exact(DEVICE_ENTRY_LEN)
                .map(|e| geometry(e, 0))
                .collect()
        };
        check_geometry(&devices, block_size, path)?;
        Ok(Self {
            run_id: RunId(run),
            block_size,
            devices,
            start_ns: UnixNs(le_u64(b, 48)),
        })
    }
}

fn geometry(b: &[u8], at: usize) -> DeviceGeometry {
    DeviceGeometry {
        block_count: le_u64(b, at),
        device_size: le_u64(b, at + 8),
    }
}

/// Every device has blocks that fit it; all of them together at most [`MAX_BLOCKS`].
fn check_geometry(devices: &[DeviceGeometry], bs: BlockSize, path: &Path) -> Result<()> {
    let mut total = 0u64;
    for (i, d) in devices.iter().enumerate() {
        total = total.saturating_add(d.block_count);
        if total > MAX_BLOCKS {
            return Err(Error::TooLarge {
                path: path.to_path_buf(),
                what: "the history's block count",
                found: total,
                limit: MAX_BLOCKS,
            });
        }
        if d.block_count == 0 || d.block_count.checked_mul(bs.as_u64()) > Some(d.device_size) {
            let (offset, dev) = if devices.len() == 1 {
                (32, String::new())
            } else {
                (HEADER_LEN + DEVICE_ENTRY_LEN * i, format!("device {i}: "))
            };
            return Err(corrupt(
                path,
                offset as u64,
                format!(
                    "{dev}{} blocks of {} bytes do not fit a device of {} bytes",
                    d.block_count,
                    bs.bytes(),
                    d.device_size
                ),
            ));
        }
    }
    Ok(())
}

fn header_crc(b: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&b[..56]);
    h.update(&b[HEADER_LEN.min(b.len())..]);
    h.finalize()
}

/// Bytes per record of format `version` (1 or 2).
pub(crate) fn record_len(version: u16) -> usize {
    if version == 1 {
        RECORD_LEN_V1
    } else {
        RECORD_LEN_V2
    }
}

/// Appends `rec` as a record of `kind` ([`KIND_WRITE`], or [`KIND_END`] with the number of
/// write records as its seq and the end time as its completion) in format `version` to
/// `out`.
pub(crate) fn encode_record(
    version: u16,
    run: RunId,
    rec: &crate::history::HistoryRecord,
    kind: u32,
    out: &mut Vec<u8>,
) {
    let start = out.len();
    out.extend_from_slice(&rec.seq.to_le_bytes());
    out.extend_from_slice(&rec.block.to_le_bytes());
    out.extend_from_slice(&rec.issue_ns.0.to_le_bytes());
    out.extend_from_slice(&rec.complete_ns.0.to_le_bytes());
    if version == 1 {
        out.extend_from_slice(&kind.to_le_bytes());
    } else {
        let dep = match (kind, rec.depends_on) {
            (KIND_END, _) => 0,
            (_, d) => d.unwrap_or(NO_DEPENDENCY),
        };
        out.extend_from_slice(&dep.to_le_bytes());
        out.extend_from_slice(&rec.device.to_le_bytes());
        let kind16 = u16::try_from(kind).unwrap_or(u16::MAX);
        out.extend_from_slice(&kind16.to_le_bytes());
    }
    let crc = record_crc(run, &out[start..]);
    out.extend_from_slice(&crc.to_le_bytes());
}

fn record_crc(run: RunId, body: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&run.0);
    h.update(body);
    h.finalize()
}

/// A record of format `version` (`b.len()` is its record length), or `None` if its CRC or
/// kind is wrong.
pub(crate) fn parse_record(version: u16, run: RunId, b: &[u8]) -> Option<RawRecord> {
    let n = b.len();
    let stored = u32::from_le_bytes([b[n - 4], b[n - 3], b[n - 2], b[n - 1]]);
    if stored != record_crc(run, &b[..n - 4]) {
        return None;
    }
    let (kind, device, depends_on) = if version == 1 {
        (u32::from_le_bytes([b[32], b[33], b[34], b[35]]), 0, None)
    } else {
        let dep = le_u64(b, 32);
        (
            u32::from(u16::from_le_bytes([b[42], b[43]])),
            u16::from_le_bytes([b[40], b[41]]),
            (dep != NO_DEPENDENCY).then_some(dep),
        )
    };
    let rec = crate::history::HistoryRecord {
        seq: le_u64(b, 0),
        device,
        block: le_u64(b, 8),
        issue_ns: UnixNs(le_u64(b, 16)),
        complete_ns: UnixNs(le_u64(b, 24)),
        depends_on,
    };
    match kind {
        KIND_WRITE => Some(RawRecord::Write(rec)),
        KIND_END => Some(RawRecord::End(rec.complete_ns)),
        _ => None,
    }
}

fn corrupt(path: &Path, offset: u64, cause: String) -> Error {
    Error::CorruptHistory {
        path: path.to_path_buf(),
        offset,
        cause,
    }
}
