//! The history file: which write put which version on which block of which device, and
//! when.
//!
//! - [`format`](mod@format): the byte layouts (versions 1 and 2), documented on their types;
//! - [`writer`]: [`HistoryWriter`], used by the workload;
//! - here: [`read_history`], the validating reader with its torn-tail tolerance.
//!
//! Records are in completion order (a worker appends its record before it lets another
//! write touch the block, so per block, file order = seq order; and a write's dependency,
//! completed before it was issued, is recorded before it). The end record is written only by
//! a clean stop; without it the run was killed, and up to ~100 ms of completed writes may be
//! missing from the file (it is flushed every 50 ms). The reader tolerates a torn or invalid
//! tail (partial record, bad CRC) as long as no valid record follows it; a valid record after
//! an invalid one is corruption.

pub mod format;
pub mod writer;

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

pub use format::{
    DeviceGeometry, HEADER_LEN, HISTORY_FORMAT_VERSION, HISTORY_MAGIC, HistoryHeader, MAX_BLOCKS,
    MAX_DEVICES, MAX_HEADER_LEN, MAX_RECORDS, NO_DEPENDENCY, RECORD_LEN_V1, RECORD_LEN_V2,
};
pub use writer::HistoryWriter;

use crate::units::{RunId, UnixNs};
use crate::{Error, Result};
use format::{MAX_RECORD_LEN, RawRecord, parse_record, record_len};

/// One completed write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryRecord {
    /// The write's sequence number (unique in the run, issue order).
    pub seq: u64,
    /// The device it wrote (its index in the run; 0 in a single-device run).
    pub device: u16,
    /// The block it wrote, on that device.
    pub block: u64,
    /// Taken just before the write was submitted.
    pub issue_ns: UnixNs,
    /// Taken just after the write completed.
    pub complete_ns: UnixNs,
    /// The seq of the most recently completed write on another device when this one was
    /// issued (it completed before this one was issued); `None` when there was none, and
    /// always in a single-device run.
    pub depends_on: Option<u64>,
}

/// A history as read back.
#[derive(Debug, Clone)]
pub struct History {
    /// The file it was read from.
    pub path: PathBuf,
    /// The header.
    pub header: HistoryHeader,
    /// Every valid write record, in file (completion) order.
    pub records: Vec<HistoryRecord>,
    /// When the run ended, if it stopped cleanly (end record present).
    pub end_ns: Option<UnixNs>,
    /// Bytes after the last valid record that were ignored (a torn tail); 0 when clean.
    pub torn_tail_bytes: u64,
}

impl History {
    /// Whether the workload stopped cleanly (every completed write is recorded).
    #[must_use]
    pub fn clean(&self) -> bool {
        self.end_ns.is_some()
    }
}

/// Reads and validates the history `path` (format version 1 or 2). A history still being
/// written may be read: records appended after its size was taken are read too, and a
/// partial last record is a torn tail.
///
/// # Errors
/// Unreadable; a bad header; more than [`MAX_RECORDS`]; a valid record after an invalid one;
/// a record naming a device or block outside the run, completing before it was issued, or
/// depending on a write issued after it.
pub fn read_history(path: &Path) -> Result<History> {
    let file = File::open(path).map_err(Error::io(path, "open history"))?;
    let len = file
        .metadata()
        .map_err(Error::io(path, "stat history"))?
        .len();
    let mut r = BufReader::with_capacity(1 << 20, file);
    let header = read_header(&mut r, path, len)?;
    let rl = header.record_len();
    let header_len = header.header_len() as u64;
    let max_records = len.saturating_sub(header_len) / rl as u64;
    if max_records > MAX_RECORDS + 1 {
        return Err(Error::TooLarge {
            path: path.to_path_buf(),
            what: "the number of history records",
            found: max_records,
            limit: MAX_RECORDS,
        });
    }
    let cap = usize::try_from(max_records).unwrap_or(0);
    let mut h = History {
        path: path.to_path_buf(),
        header,
        records: Vec::with_capacity(cap),
        end_ns: None,
        torn_tail_bytes: 0,
    };
    let version = h.header.version();
    let run = h.header.run_id;
    let mut offset = header_len;
    let mut buf = [0u8; MAX_RECORD_LEN];
    let rb = &mut buf[..rl];
    loop {
        match read_full(&mut r, rb).map_err(Error::io(path, "read history"))? {
            0 => break,
            n if n < rl => {
                h.torn_tail_bytes = len.saturating_sub(offset);
                break;
            }
            _ => {}
        }
        let Some(rec) = parse_record(version, run, rb) else {
            ensure_nothing_valid_after(&mut r, version, run, path, offset)?;
            h.torn_tail_bytes = len.saturating_sub(offset);
            break;
        };
        if h.end_ns.is_some() {
            return Err(corrupt(path, offset, "a record after the end record"));
        }
        match rec {
            RawRecord::End(end) => h.end_ns = Some(end),
            RawRecord::Write(w) => {
                check_write(&h.header, &w).map_err(|c| corrupt(path, offset, &c))?;
                h.records.push(w);
            }
        }
        offset += rl as u64;
    }
    Ok(h)
}

/// Reads the header (its fixed part, then the device table its fixed part announces).
fn read_header(r: &mut impl Read, path: &Path, len: u64) -> Result<HistoryHeader> {
    let short = |need: usize| Error::CorruptHistory {
        path: path.to_path_buf(),
        offset: 0,
        cause: format!("{len} bytes: shorter than the {need}-byte header"),
    };
    let mut first = [0u8; HEADER_LEN];
    if read_full(r, &mut first).map_err(Error::io(path, "read history"))? < HEADER_LEN {
        return Err(short(HEADER_LEN));
    }
    let header_len = HistoryHeader::header_len_of(&first, path)?;
    let mut all = [0u8; MAX_HEADER_LEN];
    all[..HEADER_LEN].copy_from_slice(&first);
    let rest = &mut all[HEADER_LEN..header_len];
    if read_full(r, rest).map_err(Error::io(path, "read history"))? < rest.len() {
        return Err(short(header_len));
    }
    HistoryHeader::decode(&all[..header_len], path)
}

/// A write record agrees with the header and with itself.
fn check_write(header: &HistoryHeader, w: &HistoryRecord) -> std::result::Result<(), String> {
    let Some(dev) = header.devices.get(usize::from(w.device)) else {
        return Err(format!(
            "write seq {} names device {} of {}",
            w.seq,
            w.device,
            header.devices.len()
        ));
    };
    if w.block >= dev.block_count {
        let on = if header.devices.len() > 1 {
            format!(" on device {}", w.device)
        } else {
            String::new()
        };
        return Err(format!(
            "write seq {} names block {} of {}{on}",
            w.seq, w.block, dev.block_count
        ));
    }
    if w.complete_ns < w.issue_ns {
        return Err(format!(
            "write seq {} completed before it was issued",
            w.seq
        ));
    }
    if let Some(d) = w.depends_on.filter(|&d| d >= w.seq) {
        return Err(format!(
            "write seq {} depends on seq {d}, which was not issued before it",
            w.seq
        ));
    }
    Ok(())
}

fn corrupt(path: &Path, offset: u64, cause: &str) -> Error {
    Error::CorruptHistory {
        path: path.to_path_buf(),
        offset,
        cause: cause.to_owned(),
    }
}

/// The bad record at `offset` is a torn tail only if no valid record follows it.
fn ensure_nothing_valid_after(
    r: &mut impl Read,
    version: u16,
    run: RunId,
    path: &Path,
    offset: u64,
) -> Result<()> {
    let rl = record_len(version);
    let mut buf = [0u8; MAX_RECORD_LEN];
    let rb = &mut buf[..rl];
    let mut at = offset + rl as u64;
    while read_full(r, rb).map_err(Error::io(path, "read history"))? == rl {
        if parse_record(version, run, rb).is_some() {
            return Err(corrupt(
                path,
                offset,
                &format!("invalid record followed by a valid one at byte {at}"),
            ));
        }
        at += rl as u64;
    }
    Ok(())
}

/// Reads until `buf` is full or end of file; returns the bytes read.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests;
