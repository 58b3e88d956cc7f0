//! The history file: which write put which version on which block, and when.
//!
//! # Layout, format version 1 (all integers little-endian)
//!
//! A 64-byte header, then 40-byte records appended as writes complete.
//!
//! Header:
//!
//! | offset | size | field | meaning |
//! |-------:|-----:|-------|---------|
//! | 0 | 8 | magic | `b"SITRWHIS"` |
//! | 8 | 2 | version | [`HISTORY_FORMAT_VERSION`] (1) |
//! | 10 | 2 | header_len | 64 |
//! | 12 | 4 | block_size | bytes per block (as in every block) |
//! | 16 | 16 | run_id | the run (as in every block) |
//! | 32 | 8 | block_count | blocks written: `device_size / block_size` (rounded down) |
//! | 40 | 8 | device_size | the device's size in bytes when the run started |
//! | 48 | 8 | start_ns | when the run started (CLOCK_REALTIME ns since the epoch) |
//! | 56 | 4 | crc | CRC-32 of bytes `0..56` |
//! | 60 | 4 | reserved | 0 |
//!
//! Record:
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
//! Records are in completion order (a worker appends its record before it lets another
//! write touch the block, so per block, file order = seq order). The end record is written
//! only by a clean stop; without it the run was killed, and up to ~100 ms of completed writes
//! may be missing from the file (it is flushed every 100 ms). The reader tolerates a torn or
//! invalid tail (partial record, bad CRC) as long as no valid record follows it; a valid
//! record after an invalid one is corruption. The CRC is salted with the run id so records of
//! an older run left in a reused file never validate.

use std::fs::File;
use std::io::{BufReader, Read, Write};
use std::path::{Path, PathBuf};

use crate::block::{BlockSize, le_u64};
use crate::units::{RunId, UnixNs};
use crate::{Error, Result};

/// `b"SITRWHIS"`: the first bytes of a history file.
pub const HISTORY_MAGIC: [u8; 8] = *b"SITRWHIS";
/// The history format version written by this build, and the only one it reads.
///
/// - 1: the layout in the module documentation.
pub const HISTORY_FORMAT_VERSION: u16 = 1;
/// Header bytes.
pub const HEADER_LEN: usize = 64;
/// Bytes per record.
pub const RECORD_LEN: usize = 40;
/// Most records a history may hold (5 GiB of file, ~4 GiB in memory); refused above.
pub const MAX_RECORDS: u64 = 1 << 27;
/// Most blocks a run may have (a 64 TiB device at 4 KiB; the workload's in-flight bitmap is
/// `block_count / 8` bytes).
pub const MAX_BLOCKS: u64 = 1 << 34;

const KIND_WRITE: u32 = 1;
const KIND_END: u32 = 2;

/// The history header: which run, which device geometry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryHeader {
    /// The run.
    pub run_id: RunId,
    /// Bytes per block.
    pub block_size: BlockSize,
    /// Number of blocks.
    pub block_count: u64,
    /// Device size in bytes (≥ `block_count * block_size`).
    pub device_size: u64,
    /// When the run started.
    pub start_ns: UnixNs,
}

impl HistoryHeader {
    /// The 64 header bytes.
    #[must_use]
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[..8].copy_from_slice(&HISTORY_MAGIC);
        b[8..10].copy_from_slice(&HISTORY_FORMAT_VERSION.to_le_bytes());
        b[10..12].copy_from_slice(&64u16.to_le_bytes());
        b[12..16].copy_from_slice(&self.block_size.bytes().to_le_bytes());
        b[16..32].copy_from_slice(&self.run_id.0);
        b[32..40].copy_from_slice(&self.block_count.to_le_bytes());
        b[40..48].copy_from_slice(&self.device_size.to_le_bytes());
        b[48..56].copy_from_slice(&self.start_ns.0.to_le_bytes());
        let crc = crc32fast::hash(&b[..56]);
        b[56..60].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Parses and checks the header of the history `path`.
    ///
    /// # Errors
    /// [`Error::CorruptHistory`] naming the field; [`Error::TooLarge`] for a block count
    /// over [`MAX_BLOCKS`].
    pub fn decode(b: &[u8; HEADER_LEN], path: &Path) -> Result<Self> {
        let bad = |offset: u64, cause: String| Error::CorruptHistory {
            path: path.to_path_buf(),
            offset,
            cause,
        };
        if b[..8] != HISTORY_MAGIC {
            return Err(bad(
                0,
                format!("not a workload history (magic {:02x?})", &b[..8]),
            ));
        }
        let version = u16::from_le_bytes([b[8], b[9]]);
        if version != HISTORY_FORMAT_VERSION {
            return Err(bad(
                8,
                format!("history format version {version} (this build reads 1)"),
            ));
        }
        let stored = u32::from_le_bytes([b[56], b[57], b[58], b[59]]);
        if stored != crc32fast::hash(&b[..56]) {
            return Err(bad(56, "header checksum mismatch".into()));
        }
        if u16::from_le_bytes([b[10], b[11]]) != 64 {
            return Err(bad(10, "header length is not 64".into()));
        }
        let block_size =
            BlockSize::new(u64::from(u32::from_le_bytes([b[12], b[13], b[14], b[15]])))
                .map_err(|e| bad(12, e.to_string()))?;
        let mut run = [0u8; 16];
        run.copy_from_slice(&b[16..32]);
        let (block_count, device_size) = (le_u64(b, 32), le_u64(b, 40));
        if block_count > MAX_BLOCKS {
            return Err(Error::TooLarge {
                path: path.to_path_buf(),
                what: "the history's block count",
                found: block_count,
                limit: MAX_BLOCKS,
            });
        }
        if block_count == 0 || block_count.checked_mul(block_size.as_u64()) > Some(device_size) {
            return Err(bad(
                32,
                format!(
                    "{block_count} blocks of {} bytes do not fit a device of {device_size} bytes",
                    block_size.bytes()
                ),
            ));
        }
        Ok(Self {
            run_id: RunId(run),
            block_size,
            block_count,
            device_size,
            start_ns: UnixNs(le_u64(b, 48)),
        })
    }
}

/// One completed write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryRecord {
    /// The write's sequence number (unique in the run, issue order).
    pub seq: u64,
    /// The block it wrote.
    pub block: u64,
    /// Taken just before the write was submitted.
    pub issue_ns: UnixNs,
    /// Taken just after the write completed.
    pub complete_ns: UnixNs,
}

fn encode_record(run: RunId, fields: [u64; 4], kind: u32) -> [u8; RECORD_LEN] {
    let mut b = [0u8; RECORD_LEN];
    for (i, v) in fields.iter().enumerate() {
        b[i * 8..i * 8 + 8].copy_from_slice(&v.to_le_bytes());
    }
    b[32..36].copy_from_slice(&kind.to_le_bytes());
    let crc = record_crc(run, &b);
    b[36..40].copy_from_slice(&crc.to_le_bytes());
    b
}

fn record_crc(run: RunId, b: &[u8; RECORD_LEN]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&run.0);
    h.update(&b[..36]);
    h.finalize()
}

/// The history writer: header at creation, records appended from memory on [`flush`],
/// an end record and fsync on [`finish`].
///
/// [`flush`]: HistoryWriter::flush
/// [`finish`]: HistoryWriter::finish
pub struct HistoryWriter {
    file: File,
    path: PathBuf,
    run_id: RunId,
    pending: Vec<u8>,
    written: u64,
}

impl HistoryWriter {
    /// Creates `path` (which must not exist: a history is never overwritten) with `header`.
    ///
    /// # Errors
    /// The file exists or cannot be created or written.
    pub fn create(path: &Path, header: &HistoryHeader) -> Result<Self> {
        let mut file = File::options()
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(Error::io(path, "create history"))?;
        file.write_all(&header.encode())
            .map_err(Error::io(path, "write history header"))?;
        Ok(Self {
            file,
            path: path.to_path_buf(),
            run_id: header.run_id,
            pending: Vec::new(),
            written: 0,
        })
    }

    /// Buffers `r` (written by the next [`Self::flush`]).
    pub fn push(&mut self, r: &HistoryRecord) {
        let fields = [r.seq, r.block, r.issue_ns.0, r.complete_ns.0];
        self.pending
            .extend_from_slice(&encode_record(self.run_id, fields, KIND_WRITE));
        self.written += 1;
    }

    /// Writes the buffered records to the file (one `write`; no fsync).
    ///
    /// # Errors
    /// The write failed.
    pub fn flush(&mut self) -> Result<()> {
        if !self.pending.is_empty() {
            self.file
                .write_all(&self.pending)
                .map_err(Error::io(&self.path, "append to history"))?;
            self.pending.clear();
        }
        Ok(())
    }

    /// Writes the end record (the run stopped cleanly at `end`) and fsyncs.
    ///
    /// # Errors
    /// The write or fsync failed.
    pub fn finish(mut self, end: UnixNs) -> Result<u64> {
        let end_rec = encode_record(self.run_id, [self.written, 0, 0, end.0], KIND_END);
        self.pending.extend_from_slice(&end_rec);
        self.flush()?;
        self.file
            .sync_all()
            .map_err(Error::io(&self.path, "fsync history"))?;
        Ok(self.written)
    }
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

/// Reads and validates the history `path`.
///
/// # Errors
/// Unreadable; a bad header; more than [`MAX_RECORDS`]; a valid record after an invalid one;
/// a record naming a block outside the device or completing before it was issued.
pub fn read_history(path: &Path) -> Result<History> {
    let file = File::open(path).map_err(Error::io(path, "open history"))?;
    let len = file
        .metadata()
        .map_err(Error::io(path, "stat history"))?
        .len();
    let mut r = BufReader::with_capacity(1 << 20, file);
    let mut hb = [0u8; HEADER_LEN];
    r.read_exact(&mut hb).map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => Error::CorruptHistory {
            path: path.to_path_buf(),
            offset: 0,
            cause: format!("{len} bytes: shorter than the 64-byte header"),
        },
        _ => Error::io(path, "read history")(e),
    })?;
    let header = HistoryHeader::decode(&hb, path)?;
    let max_records = (len - HEADER_LEN as u64) / RECORD_LEN as u64;
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
    let mut offset = HEADER_LEN as u64;
    let mut rb = [0u8; RECORD_LEN];
    loop {
        match read_full(&mut r, &mut rb).map_err(Error::io(path, "read history"))? {
            0 => break,
            n if n < RECORD_LEN => {
                h.torn_tail_bytes = len - offset;
                break;
            }
            _ => {}
        }
        let Some((fields, kind)) = parse_record(header.run_id, &rb) else {
            ensure_nothing_valid_after(&mut r, header.run_id, path, offset)?;
            h.torn_tail_bytes = len - offset;
            break;
        };
        if h.end_ns.is_some() {
            return Err(corrupt(path, offset, "a record after the end record"));
        }
        if kind == KIND_END {
            h.end_ns = Some(UnixNs(fields[3]));
        } else {
            let rec = check_write(&header, fields).map_err(|c| corrupt(path, offset, &c))?;
            h.records.push(rec);
        }
        offset += RECORD_LEN as u64;
    }
    Ok(h)
}

fn check_write(header: &HistoryHeader, f: [u64; 4]) -> std::result::Result<HistoryRecord, String> {
    let rec = HistoryRecord {
        seq: f[0],
        block: f[1],
        issue_ns: UnixNs(f[2]),
        complete_ns: UnixNs(f[3]),
    };
    if rec.block >= header.block_count {
        return Err(format!(
            "write seq {} names block {} of {}",
            rec.seq, rec.block, header.block_count
        ));
    }
    if rec.complete_ns < rec.issue_ns {
        return Err(format!(
            "write seq {} completed before it was issued",
            rec.seq
        ));
    }
    Ok(rec)
}

fn corrupt(path: &Path, offset: u64, cause: &str) -> Error {
    Error::CorruptHistory {
        path: path.to_path_buf(),
        offset,
        cause: cause.to_owned(),
    }
}

/// A record's fields and kind, or `None` if its CRC or kind is wrong.
fn parse_record(run: RunId, b: &[u8; RECORD_LEN]) -> Option<([u64; 4], u32)> {
    let stored = u32::from_le_bytes([b[36], b[37], b[38], b[39]]);
    let kind = u32::from_le_bytes([b[32], b[33], b[34], b[35]]);
    if stored != record_crc(run, b) || !matches!(kind, KIND_WRITE | KIND_END) {
        return None;
    }
    Some((
        [le_u64(b, 0), le_u64(b, 8), le_u64(b, 16), le_u64(b, 24)],
        kind,
    ))
}

/// The bad record at `offset` is a torn tail only if no valid record follows it.
fn ensure_nothing_valid_after(
    r: &mut impl Read,
    run: RunId,
    path: &Path,
    offset: u64,
) -> Result<()> {
    let mut rb = [0u8; RECORD_LEN];
    let mut at = offset + RECORD_LEN as u64;
    while read_full(r, &mut rb).map_err(Error::io(path, "read history"))? == RECORD_LEN {
        if parse_record(run, &rb).is_some() {
            return Err(corrupt(
                path,
                offset,
                &format!("invalid record followed by a valid one at byte {at}"),
            ));
        }
        at += RECORD_LEN as u64;
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
mod tests {
    use super::*;

    pub(crate) fn header() -> HistoryHeader {
        HistoryHeader {
            run_id: RunId([0xab; 16]),
            block_size: BlockSize::DEFAULT,
            block_count: 16,
            device_size: 16 * 4096 + 100,
            start_ns: UnixNs(1_000),
        }
    }

    fn rec(seq: u64, block: u64) -> HistoryRecord {
        HistoryRecord {
            seq,
            block,
            issue_ns: UnixNs(10 * seq + 1),
            complete_ns: UnixNs(10 * seq + 5),
        }
    }

    fn write(path: &Path, n: u64, end: bool) {
        let mut w = HistoryWriter::create(path, &header()).unwrap();
        for s in 0..n {
            w.push(&rec(s, s % 16));
        }
        w.flush().unwrap();
        if end {
            assert_eq!(w.finish(UnixNs(999)).unwrap(), n);
        }
    }

    #[test]
    fn golden_header_and_record() {
        let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
        // Derived independently (Python struct + zlib.crc32), not copied from this crate.
        let want_header = concat!(
            "5349545257484953",                 // magic "SITRWHIS"
            "0100",                             // version 1
            "4000",                             // header length 64
            "00100000",                         // block size 4096
            "abababababababababababababababab", // run id
            "1000000000000000",                 // block count 16
            "6400010000000000",                 // device size 65636
            "e803000000000000",                 // start_ns 1000
            "6104779a",                         // crc
            "00000000",                         // reserved
        );
        assert_eq!(hex(&header().encode()), want_header);
        let r = encode_record(RunId([0xab; 16]), [5, 3, 51, 55], KIND_WRITE);
        let want_record = concat!(
            "0500000000000000", // seq 5
            "0300000000000000", // block 3
            "3300000000000000", // issue_ns 51
            "3700000000000000", // complete_ns 55
            "01000000",         // kind: write
            "b0f45561",         // crc (salted with the run id)
        );
        assert_eq!(hex(&r), want_record);
    }

    #[test]
    fn clean_round_trip() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("h");
        write(&p, 50, true);
        let h = read_history(&p).unwrap();
        assert_eq!(h.header, header());
        assert_eq!(h.records.len(), 50);
        assert_eq!(h.records[7], rec(7, 7));
        assert_eq!(h.end_ns, Some(UnixNs(999)));
        assert_eq!(h.torn_tail_bytes, 0);
        assert!(
            HistoryWriter::create(&p, &header()).is_err(),
            "overwrote a history"
        );
    }

    #[test]
    fn torn_tail_is_tolerated_and_counted() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("h");
        write(&p, 10, false);
        let full = std::fs::read(&p).unwrap();
        // Cut in the middle of record 9.
        std::fs::write(&p, &full[..full.len() - 17]).unwrap();
        let h = read_history(&p).unwrap();
        assert_eq!(
            (h.records.len(), h.torn_tail_bytes, h.clean()),
            (9, 23, false)
        );
        // A zero-filled tail (a crash after the size was extended) is a torn tail too.
        let mut z = full.clone();
        z.extend_from_slice(&[0u8; 3 * RECORD_LEN]);
        std::fs::write(&p, &z).unwrap();
        let h = read_history(&p).unwrap();
        assert_eq!((h.records.len(), h.torn_tail_bytes), (10, 120));
    }

    #[test]
    fn damage_before_valid_records_is_corruption() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("h");
        write(&p, 10, true);
        let mut b = std::fs::read(&p).unwrap();
        b[HEADER_LEN + 3 * RECORD_LEN + 8] ^= 1;
        std::fs::write(&p, &b).unwrap();
        let e = read_history(&p).unwrap_err().to_string();
        assert!(
            e.contains("byte 184") && e.contains("followed by a valid one"),
            "{e}"
        );
    }

    #[test]
    fn bad_headers_are_refused_before_allocating() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("h");
        let mut big = header();
        big.block_count = u64::MAX / 4096;
        big.device_size = u64::MAX;
        std::fs::write(&p, big.encode()).unwrap();
        assert!(matches!(read_history(&p), Err(Error::TooLarge { .. })));
        let mut b = header().encode();
        b[33] ^= 1;
        std::fs::write(&p, b).unwrap();
        let e = read_history(&p).unwrap_err().to_string();
        assert!(e.contains("header checksum"), "{e}");
        std::fs::write(&p, b"SITRWHIS").unwrap();
        let e = read_history(&p).unwrap_err().to_string();
        assert!(e.contains("shorter than the 64-byte header"), "{e}");
        let mut wrong = header();
        wrong.device_size = 4096;
        std::fs::write(&p, wrong.encode()).unwrap();
        assert!(
            read_history(&p)
                .unwrap_err()
                .to_string()
                .contains("do not fit")
        );
    }

    #[test]
    fn records_outside_the_device_are_corruption() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("h");
        let mut w = HistoryWriter::create(&p, &header()).unwrap();
        w.push(&rec(0, 16));
        w.flush().unwrap();
        let e = read_history(&p).unwrap_err().to_string();
        assert!(e.contains("names block 16 of 16"), "{e}");
    }
}
