//! Undo files: what a cycle overwrote, so every retained recovery point can be rebuilt while
//! the replica moves on.
//!
//! Before cycle `k` is applied, the server saves the replica's current contents of every
//! range `k` will write into `undo/SEQ.undo` (durably, before the replica changes). The
//! replica after cycle `j` — recovery point `j` — is then: for each byte, the copy saved by
//! the *earliest* cycle `m > j` that overwrote it, or else the replica's current byte.
//!
//! **Format, version 1** (little-endian):
//!
//! | offset | size | field |
//! |-------:|-----:|-------|
//! | 0 | 8 | magic `SRUNDO01` |
//! | 8 | 4 | version (1) |
//! | 12 | 4 | flags (0) |
//! | 16 | 8 | cycle sequence |
//! | 24 | 8 | entry count `n` (at most [`MAX_ENTRIES`]) |
//! | 32 | 4 | CRC-32 of bytes 0..32, 36..64 and the entry table |
//! | 36 | 8 | the cycle's source-side cut time (ns since the epoch) |
//! | 44 | 20 | zero |
//! | 64 | 32·n | entries: `offset` u64, `len` u64 (1..=[`MAX_ENTRY_LEN`]), `data_pos` u64 (`u64::MAX`: the range was zero), `crc` u32 of the data, 4 zero bytes |
//! | … | | data, at each entry's `data_pos` |
//!
//! Entries are sorted by offset and do not overlap. The file is written to `.tmp`, fsynced,
//! and renamed; a reader checks the header CRC and sizes before allocating, and each entry's
//! data CRC when it reads it.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// File magic.
pub const MAGIC: &[u8; 8] = b"SRUNDO01";
/// Header size.
pub const HEADER_LEN: u64 = 64;
/// Entry size.
pub const ENTRY_LEN: u64 = 32;
/// Most entries in one file.
pub const MAX_ENTRIES: u64 = 1 << 22;
/// Longest entry (ranges are split to this size).
pub const MAX_ENTRY_LEN: u64 = 1 << 20;
const ZERO_POS: u64 = u64::MAX;

/// One saved range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// Byte offset on the disk.
    pub offset: u64,
    /// Length.
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

/// An undo file's index (its data stays on disk).
#[derive(Debug, Clone)]
pub struct UndoIndex {
    /// Cycle sequence.
    pub seq: u64,
    /// The cycle's cut time.
    pub cut_time_ns: u64,
    /// Where it is.
    pub path: PathBuf,
    /// Entries, sorted by offset.
    pub entries: Vec<Entry>,
    /// File size.
    pub bytes: u64,
}

fn le64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

fn le32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

/// Encodes the header and entry table (the data follows).
#[must_use]
pub fn encode_index(seq: u64, cut_time_ns: u64, entries: &[Entry]) -> Vec<u8> {
    let mut b = Vec::with_capacity(64 + entries.len() * 32);
    b.extend_from_slice(MAGIC);
    b.extend_from_slice(&1u32.to_le_bytes());
    b.extend_from_slice(&0u32.to_le_bytes());
    b.extend_from_slice(&seq.to_le_bytes());
    b.extend_from_slice(&(entries.len() as u64).to_le_bytes());
    b.extend_from_slice(&[0u8; 4]);
    b.extend_from_slice(&cut_time_ns.to_le_bytes());
    b.extend_from_slice(&[0u8; 20]);
    for e in entries {
        b.extend_from_slice(&e.offset.to_le_bytes());
        b.extend_from_slice(&e.len.to_le_bytes());
        b.extend_from_slice(&e.data_pos.unwrap_or(ZERO_POS).to_le_bytes());
        b.extend_from_slice(&e.crc.to_le_bytes());
        b.extend_from_slice(&[0u8; 4]);
    }
    let mut h = crc32fast::Hasher::new();
    h.update(&b[..32]);
    h.update(&b[36..]);
    let crc = h.finalize();
    b[32..36].copy_from_slice(&crc.to_le_bytes());
    b
}

/// Writes `undo/SEQ.undo` from `read(offset, buf)` (the replica's current bytes) for
/// `ranges` (sorted, disjoint), durably. Returns its index.
///
/// # Errors
/// Reading the replica or writing the file failed.
pub fn write(
    dir: &Path,
    seq: u64,
    cut_time_ns: u64,
    ranges: &[(u64, u64)],
    mut read: impl FnMut(u64, &mut [u8]) -> std::io::Result<()>,
) -> std::io::Result<UndoIndex> {
    let mut pieces = Vec::new();
    for &(o, l) in ranges {
        let mut at = o;
        while at < o + l {
            let n = (o + l - at).min(MAX_ENTRY_LEN);
            pieces.push((at, n));
            at += n;
        }
    }
    if pieces.len() as u64 > MAX_ENTRIES {
        return Err(std::io::Error::other(format!(
            "cycle {seq} overwrites {} ranges, more than an undo file holds",
            pieces.len()
        )));
    }
    let data_start = HEADER_LEN + ENTRY_LEN * pieces.len() as u64;
    let path = dir.join(format!("{seq:020}.undo"));
    let tmp = dir.join(format!("{seq:020}.undo.tmp"));
    let f = File::create(&tmp)?;
    let mut w = std::io::BufWriter::with_capacity(1 << 20, f);
    // Placeholder index; rewritten once the data's CRCs and positions are known.
    w.write_all(&vec![
        0u8;
        usize::try_from(data_start)
            .map_err(std::io::Error::other)?
    ])?;
    let mut entries = Vec::with_capacity(pieces.len());
    let mut pos = data_start;
    let mut buf = vec![0u8; usize::try_from(MAX_ENTRY_LEN).unwrap_or(1 << 20)];
    for (o, l) in pieces {
        let n = usize::try_from(l).map_err(std::io::Error::other)?;
        let b = &mut buf[..n];
        read(o, b)?;
        if crate::devread::is_zero(b) {
            entries.push(Entry {
                offset: o,
                len: l,
                data_pos: None,
                crc: 0,
            });
        } else {
            w.write_all(b)?;
            entries.push(Entry {
                offset: o,
                len: l,
                data_pos: Some(pos),
                crc: crc32fast::hash(b),
            });
            pos += l;
        }
    }
    let f = w.into_inner().map_err(|e| e.into_error())?;
    f.write_all_at(&encode_index(seq, cut_time_ns, &entries), 0)?;
    f.sync_all()?;
    fs::rename(&tmp, &path)?;
    File::open(dir)?.sync_all()?;
    Ok(UndoIndex {
        seq,
        cut_time_ns,
        path,
        entries,
        bytes: pos,
    })
}

/// Reads an undo file's index, checking it.
///
/// # Errors
/// Unreadable, wrong magic or version, bad CRC, or sizes that do not fit the file.
pub fn read_index(path: &Path) -> std::io::Result<UndoIndex> {
    let bad = |why: String| std::io::Error::other(format!("{}: {why}", path.display()));
    let mut f = File::open(path)?;
    let len = f.metadata()?.len();
    let mut h = [0u8; 64];
    f.read_exact(&mut h)
        .map_err(|e| bad(format!("header: {e}")))?;
    if &h[..8] != MAGIC {
        return Err(bad("not an undo file".into()));
    }
    if le32(&h, 8) != 1 {
        return Err(bad(format!("unsupported version {}", le32(&h, 8))));
    }
    let seq = le64(&h, 16);
    let n = le64(&h, 24);
    if n > MAX_ENTRIES || HEADER_LEN + n * ENTRY_LEN > len {
        return Err(bad(format!("{n} entries do not fit a {len}-byte file")));
    }
    let mut table = vec![0u8; usize::try_from(n * ENTRY_LEN).map_err(std::io::Error::other)?];
    f.read_exact(&mut table)
        .map_err(|e| bad(format!("entry table: {e}")))?;
    let mut c = crc32fast::Hasher::new();
    c.update(&h[..32]);
    c.update(&h[36..]);
    c.update(&table);
    if c.finalize() != le32(&h, 32) {
        return Err(bad("index CRC mismatch".into()));
    }
    let mut entries = Vec::with_capacity(table.len() / 32);
    let mut prev_end = 0;
    for e in table.chunks_exact(32) {
        let (offset, l, pos, crc) = (le64(e, 0), le64(e, 8), le64(e, 16), le32(e, 24));
        let end = offset.checked_add(l);
        if l == 0 || l > MAX_ENTRY_LEN || end.is_none() || offset < prev_end {
            return Err(bad(format!("bad entry {offset}+{l}")));
        }
        if pos != ZERO_POS && pos.checked_add(l).is_none_or(|x| x > len) {
            return Err(bad(format!("entry {offset}+{l} points past the end")));
        }
        prev_end = end.unwrap_or(u64::MAX);
        entries.push(Entry {
            offset,
            len: l,
            data_pos: (pos != ZERO_POS).then_some(pos),
            crc,
        });
    }
    Ok(UndoIndex {
        seq,
        cut_time_ns: le64(&h, 36),
        path: path.to_path_buf(),
        entries,
        bytes: len,
    })
}

/// Reads `out.len()` bytes of entry `e` starting at disk offset `at` (inside the entry).
///
/// # Errors
/// The read failed, or (when the whole entry is read) its CRC does not match.
pub fn read_entry(f: &File, e: &Entry, at: u64, out: &mut [u8]) -> std::io::Result<()> {
    let Some(pos) = e.data_pos else {
        out.fill(0);
        return Ok(());
    };
    f.read_exact_at(out, pos + (at - e.offset))?;
    if at == e.offset && out.len() as u64 == e.len && crc32fast::hash(out) != e.crc {
        return Err(std::io::Error::other(format!(
            "undo data of {}+{} fails its CRC",
            e.offset, e.len
        )));
    }
    Ok(())
}

/// Removes stale `.tmp` files in `dir` (a crash while writing one; the cycle was not applied).
pub fn clean_tmp(dir: &Path) {
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_name().to_string_lossy().ends_with(".undo.tmp") {
                let _ = fs::remove_file(e.path());
            }
        }
    }
}

/// The undo files in `dir`, by sequence.
///
/// # Errors
/// A file is unreadable or corrupt.
pub fn load_all(dir: &Path) -> std::io::Result<Vec<UndoIndex>> {
    let mut out = Vec::new();
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e),
    };
    for e in rd {
        let e = e?;
        let name = e.file_name();
        let Some(n) = name.to_str() else { continue };
        if n.strip_suffix(".undo")
            .is_some_and(|s| s.len() == 20 && s.bytes().all(|c| c.is_ascii_digit()))
        {
            out.push(read_index(&e.path())?);
        }
    }
    out.sort_by_key(|u| u.seq);
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn golden_index() {
        let b = encode_index(
            7,
            9,
            &[Entry {
                offset: 4096,
                len: 512,
                data_pos: None,
                crc: 0,
            }],
        );
        let mut want = Vec::new();
        want.extend_from_slice(b"SRUNDO01");
        want.extend_from_slice(&[1, 0, 0, 0, 0, 0, 0, 0]);
        want.extend_from_slice(&[7, 0, 0, 0, 0, 0, 0, 0]);
        want.extend_from_slice(&[1, 0, 0, 0, 0, 0, 0, 0]);
        want.extend_from_slice(&[0; 4]); // CRC patched below
        want.extend_from_slice(&[9, 0, 0, 0, 0, 0, 0, 0]);
        want.extend_from_slice(&[0; 20]);
        want.extend_from_slice(&[0, 0x10, 0, 0, 0, 0, 0, 0]);
        want.extend_from_slice(&[0, 2, 0, 0, 0, 0, 0, 0]);
        want.extend_from_slice(&[0xff; 8]);
        want.extend_from_slice(&[0; 8]);
        let mut h = crc32fast::Hasher::new();
        h.update(&want[..32]);
        h.update(&want[36..]);
        want[32..36].copy_from_slice(&h.finalize().to_le_bytes());
        assert_eq!(b, want);
    }

    #[test]
    fn round_trip_and_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let disk: Vec<u8> = (0..(3u32 << 20)).map(|i| (i % 251) as u8).collect();
        let mut zeroed = disk.clone();
        zeroed[(1 << 20)..(2 << 20)].fill(0);
        let idx = write(
            dir.path(),
            3,
            0,
            &[(0, 4096), (1 << 20, (1 << 20) + 4096)],
            |o, b| {
                let o = usize::try_from(o).unwrap();
                b.copy_from_slice(&zeroed[o..o + b.len()]);
                Ok(())
            },
        )
        .unwrap();
        assert_eq!(idx.entries.len(), 3, "the long range is split at 1 MiB");
        assert_eq!(
            idx.entries[1].data_pos, None,
            "an all-zero range stores no data"
        );
        let back = read_index(&idx.path).unwrap();
        assert_eq!(back.entries, idx.entries);
        let f = File::open(&idx.path).unwrap();
        let mut out = vec![0u8; 4096];
        read_entry(&f, &back.entries[0], 0, &mut out).unwrap();
        assert_eq!(out, disk[..4096]);
        // A flipped index byte is caught; a flipped data byte fails the entry CRC.
        let mut bytes = fs::read(&idx.path).unwrap();
        bytes[70] ^= 1;
        fs::write(&idx.path, &bytes).unwrap();
        assert!(read_index(&idx.path).is_err());
        bytes[70] ^= 1;
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        fs::write(&idx.path, &bytes).unwrap();
        let back = read_index(&idx.path).unwrap();
        let f = File::open(&idx.path).unwrap();
        let e = back.entries[2];
        let mut out = vec![0u8; usize::try_from(e.len).unwrap()];
        assert!(read_entry(&f, &e, e.offset, &mut out).is_err());
    }

    #[test]
    fn refuses_oversized_counts_before_allocating() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.undo");
        let mut b = encode_index(1, 0, &[]);
        b[24..32].copy_from_slice(&u64::MAX.to_le_bytes());
        fs::write(&p, &b).unwrap();
        let e = read_index(&p).unwrap_err().to_string();
        assert!(e.contains("do not fit"), "{e}");
    }
}
