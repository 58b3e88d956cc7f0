//! Undo files: what a cycle (or a checksum resync) overwrote, so every retained recovery point
//! can be rebuilt while the replica moves on.
//!
//! Before cycle `k` is applied, the server saves the replica's current contents of every
//! range `k` will write into `undo/{k:020}.undo` (durably, before the replica changes).
//!
//! A checksum resync repairs the replica *between* cycles: it runs after cycle `S - 1` was
//! applied and before cycle `S` (its `from_seq`). Before it writes each batch of repaired
//! blocks it saves what the batch overwrites into an undo *part*,
//! `undo/{S:020}.r{p:08}.undo`, with `p` counting 0, 1, 2, … within the resync
//! ([`next_part`]). A part refuses to replace an existing file, so a batch re-sent after a
//! crash gets a new part number; several parts may cover the same byte.
//!
//! Undo files are ordered by [`UndoIndex::order`]: by sequence, and within one sequence
//! the parts by part number, then the cycle's own undo (`{S}.r*` before `{S}.undo`, which
//! follows `{S - 1}.undo`). Recovery point `j` (the replica after cycle `j`) is then, for
//! each byte, the copy saved by the *earliest* undo file ordered after `j` (every file with
//! sequence `> j`) that covers it, or else the replica's current byte. The earliest wins, so
//! a re-sent batch is harmless: its part saved half-written bytes, but an earlier part saved
//! the originals.
//!
//! **Format** (little-endian). Writers write version 2; readers accept versions 1 and 2.
//!
//! | offset | size | field |
//! |-------:|-----:|-------|
//! | 0 | 8 | magic `SRUNDO01` |
//! | 8 | 4 | version: 1 or 2 (anything else is refused) |
//! | 12 | 4 | flags (0; version 2 refuses others, version 1 ignores them) |
//! | 16 | 8 | sequence: the cycle's, or for a part the resync's `from_seq` |
//! | 24 | 8 | entry count `n` (at most [`MAX_ENTRIES`]) |
//! | 32 | 4 | CRC-32 of bytes 0..32, 36..64 and the entry table |
//! | 36 | 8 | cut time (ns since the epoch): the cycle's source-side cut; for a part, as passed to [`write_part`] |
//! | 44 | 4 | version 2: part number (0..`u32::MAX`), `u32::MAX` for a cycle's undo; version 1: zero, ignored (always a cycle's undo) |
//! | 48 | 16 | zero (version 2 refuses others, version 1 ignores them) |
//! | 64 | 32·n | entries: `offset` u64, `len` u64 (1..=[`MAX_ENTRY_LEN`]), `data_pos` u64 (`u64::MAX`: the range was zero), `crc` u32 of the data, 4 zero bytes |
//! | … | | data, at each entry's `data_pos` |
//!
//! Version 1 is version 2 without the part field: its bytes 44..64 were written as zero and
//! it is always a cycle's undo (`part` = `None`).
//!
//! Entries are sorted by offset and do not overlap. The file is written to `.tmp`, fsynced,
//! and renamed (a part is linked into place so that it cannot replace a file), then the
//! directory is fsynced; a reader checks the header CRC and sizes before allocating, and each
//! entry's data CRC when it reads it. [`load_all`] also checks that a file's header names the
//! same sequence and part as its file name.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// File magic.
pub const MAGIC: &[u8; 8] = b"SRUNDO01";
/// The format version writers write.
pub const VERSION: u32 = 2;
/// Header size.
pub const HEADER_LEN: u64 = 64;
/// Entry size.
pub const ENTRY_LEN: u64 = 32;
/// Most entries in one file.
pub const MAX_ENTRIES: u64 = 1 << 22;
/// Longest entry (ranges are split to this size).
pub const MAX_ENTRY_LEN: u64 = 1 << 20;
const ZERO_POS: u64 = u64::MAX;
/// The header's part field of a cycle's undo (version 2).
const CYCLE_PART: u32 = u32::MAX;

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
    /// Cycle sequence (for a part: the resync's `from_seq`, the cycle that follows it).
    pub seq: u64,
    /// `None`: the undo of cycle `seq`; `Some(p)`: part `p` of the resync before it.
    pub part: Option<u32>,
    /// The cycle's cut time (for a part, as passed to [`write_part`]).
    pub cut_time_ns: u64,
    /// Where it is.
    pub path: PathBuf,
    /// Entries, sorted by offset.
    pub entries: Vec<Entry>,
    /// File size.
    pub bytes: u64,
}

impl UndoIndex {
    /// The sort key: `(seq, part)`, a cycle's undo counting as part `u64::MAX` (after the
    /// parts of its sequence). For a byte, the earliest file in this order that covers it
    /// holds its value at every point before that file.
    #[must_use]
    pub fn order(&self) -> (u64, u64) {
        (self.seq, self.part.map_or(u64::MAX, u64::from))
    }
}

/// The file name of cycle `seq`'s undo (`part` `None`) or of part `p` of the resync before it.
#[must_use]
pub fn file_name(seq: u64, part: Option<u32>) -> String {
    match part {
        None => format!("{seq:020}.undo"),
        Some(p) => format!("{seq:020}.r{p:08}.undo"),
    }
}

/// The inverse of [`file_name`] (only its exact output: no other zero padding).
fn parse_name(name: &str) -> Option<(u64, Option<u32>)> {
    let stem = name.strip_suffix(".undo")?;
    let (s, part) = match stem.split_once(".r") {
        None => (stem, None),
        Some((s, p)) => {
            if p.len() < 8 || !p.bytes().all(|c| c.is_ascii_digit()) {
                return None;
            }
            let v: u32 = p.parse().ok()?;
            if v == CYCLE_PART || format!("{v:08}") != p {
                return None;
            }
            (s, Some(v))
        }
    };
    if s.len() != 20 || !s.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    Some((s.parse().ok()?, part))
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

/// Encodes a version-2 header and entry table (the data follows). `part` `None` is a cycle's
/// undo.
#[must_use]
pub fn encode_index(seq: u64, part: Option<u32>, cut_time_ns: u64, entries: &[Entry]) -> Vec<u8> {
    let mut b = Vec::with_capacity(64 + entries.len() * 32);
    b.extend_from_slice(MAGIC);
    b.extend_from_slice(&VERSION.to_le_bytes());
    b.extend_from_slice(&0u32.to_le_bytes());
    b.extend_from_slice(&seq.to_le_bytes());
    b.extend_from_slice(&(entries.len() as u64).to_le_bytes());
    b.extend_from_slice(&[0u8; 4]);
    b.extend_from_slice(&cut_time_ns.to_le_bytes());
    b.extend_from_slice(&part.unwrap_or(CYCLE_PART).to_le_bytes());
    b.extend_from_slice(&[0u8; 16]);
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

/// Writes `undo/SEQ.undo` (the undo of cycle `seq`) from `read(offset, buf)` (the replica's
/// current bytes) for `ranges` (sorted, disjoint), durably. Returns its index. An existing
/// file of that name is replaced (the caller checks its index first: after a crash that file
/// may be all that is left of the replica's old bytes).
///
/// # Errors
/// Reading the replica or writing the file failed.
pub fn write(
    dir: &Path,
    seq: u64,
    cut_time_ns: u64,
    ranges: &[(u64, u64)],
    read: impl FnMut(u64, &mut [u8]) -> std::io::Result<()>,
) -> std::io::Result<UndoIndex> {
    write_file(dir, seq, None, cut_time_ns, ranges, read)
}

/// Writes `undo/SEQ.rPART.undo`, part `part` of the resync before cycle `seq` (its
/// `from_seq`), from `read(offset, buf)` for `ranges` (sorted, disjoint), durably: call it
/// before writing the batch into the replica. Never replaces a file. Returns its index.
///
/// # Errors
/// The file already exists ([`std::io::ErrorKind::AlreadyExists`]: take [`next_part`]),
/// `part` is `u32::MAX` (reserved), or reading the replica or writing the file failed.
pub fn write_part(
    dir: &Path,
    seq: u64,
    part: u32,
    cut_time_ns: u64,
    ranges: &[(u64, u64)],
    read: impl FnMut(u64, &mut [u8]) -> std::io::Result<()>,
) -> std::io::Result<UndoIndex> {
    if part == CYCLE_PART {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("undo part number {part} is reserved"),
        ));
    }
    write_file(dir, seq, Some(part), cut_time_ns, ranges, read)
}

/// The one writer of undo files: a cycle's (`part` `None`, replaces) or a part (never replaces).
fn write_file(
    dir: &Path,
    seq: u64,
    part: Option<u32>,
    cut_time_ns: u64,
    ranges: &[(u64, u64)],
    mut read: impl FnMut(u64, &mut [u8]) -> std::io::Result<()>,
) -> std::io::Result<UndoIndex> {
    let what = || match part {
        None => format!("cycle {seq}"),
        Some(p) => format!("resync part {p} before cycle {seq}"),
    };
    let name = file_name(seq, part);
    let path = dir.join(&name);
    let tmp = dir.join(format!("{name}.tmp"));
    if part.is_some() && fs::symlink_metadata(&path).is_ok() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::AlreadyExists,
            format!("{}: the undo of {} already exists", path.display(), what()),
        ));
    }
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
            "{} overwrites {} ranges, more than an undo file holds",
            what(),
            pieces.len()
        )));
    }
    let data_start = HEADER_LEN + ENTRY_LEN * pieces.len() as u64;
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
    f.write_all_at(&encode_index(seq, part, cut_time_ns, &entries), 0)?;
    f.sync_all()?;
    drop(f);
    if part.is_some() {
        // A link cannot replace an existing name (a rename would).
        if let Err(e) = fs::hard_link(&tmp, &path) {
            let _ = fs::remove_file(&tmp);
            return Err(if e.kind() == std::io::ErrorKind::AlreadyExists {
                std::io::Error::new(
                    e.kind(),
                    format!("{}: the undo of {} already exists", path.display(), what()),
                )
            } else {
                e
            });
        }
        fs::remove_file(&tmp)?;
    } else {
        fs::rename(&tmp, &path)?;
    }
    File::open(dir)?.sync_all()?;
    Ok(UndoIndex {
        seq,
        part,
        cut_time_ns,
        path,
        entries,
        bytes: pos,
    })
}

/// The part number for the next batch of the resync before cycle `seq`: one more than the
/// highest part of `seq` in `dir`, or 0.
///
/// # Errors
/// `dir` is unreadable, or the part numbers ran out.
pub fn next_part(dir: &Path, seq: u64) -> std::io::Result<u32> {
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let mut max = None;
    for e in rd {
        let e = e?;
        if let Some((s, Some(p))) = e.file_name().to_str().and_then(parse_name)
            && s == seq
        {
            max = max.max(Some(p));
        }
    }
    match max {
        None => Ok(0),
        Some(p) => p
            .checked_add(1)
            .filter(|&n| n != CYCLE_PART)
            .ok_or_else(|| {
                std::io::Error::other(format!("no undo part numbers left before cycle {seq}"))
            }),
    }
}

/// Reads an undo file's index (version 1 or 2), checking it.
///
/// # Errors
/// Unreadable, wrong magic or version, bad CRC, nonzero reserved bytes (version 2), or sizes
/// that do not fit the file.
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
    let version = le32(&h, 8);
    if version != 1 && version != 2 {
        return Err(bad(format!("unsupported undo format version {version}")));
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
    let part = if version == 1 {
        None
    } else {
        if le32(&h, 12) != 0 || h[48..].iter().any(|&x| x != 0) {
            return Err(bad(format!(
                "version {version} header has nonzero flags or reserved bytes"
            )));
        }
        Some(le32(&h, 44)).filter(|&p| p != CYCLE_PART)
    };
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
        part,
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

/// Removes stale `.tmp` files in `dir` (a crash while writing one; the cycle was not applied,
/// or the resync batch was not written).
pub fn clean_tmp(dir: &Path) {
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_name().to_string_lossy().ends_with(".undo.tmp") {
                let _ = fs::remove_file(e.path());
            }
        }
    }
}

/// The undo files (cycles' and parts) in `dir`, sorted by [`UndoIndex::order`]. Other names
/// are ignored.
///
/// # Errors
/// A file is unreadable or corrupt, or its header names another sequence or part than its
/// file name.
pub fn load_all(dir: &Path) -> std::io::Result<Vec<UndoIndex>> {
    let mut out = Vec::new();
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e),
    };
    for e in rd {
        let e = e?;
        let Some((seq, part)) = e.file_name().to_str().and_then(parse_name) else {
            continue;
        };
        let u = read_index(&e.path())?;
        if (u.seq, u.part) != (seq, part) {
            return Err(std::io::Error::other(format!(
                "{}: its header says sequence {} part {:?}",
                u.path.display(),
                u.seq,
                u.part
            )));
        }
        out.push(u);
    }
    out.sort_by_key(UndoIndex::order);
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn zero_entry() -> Entry {
        Entry {
            offset: 4096,
            len: 512,
            data_pos: None,
            crc: 0,
        }
    }

    /// A header (seq 7, one entry, cut time 9) and that entry, from the documented offsets;
    /// bytes 8..12 and 44..48 are `version` and `part_field`, and the CRC is patched in.
    fn documented_bytes(version: u32, part_field: u32) -> Vec<u8> {
        let mut want = Vec::new();
        want.extend_from_slice(b"SRUNDO01"); // 0: magic
        want.extend_from_slice(&version.to_le_bytes()); // 8: version
        want.extend_from_slice(&[0; 4]); // 12: flags
        want.extend_from_slice(&[7, 0, 0, 0, 0, 0, 0, 0]); // 16: sequence
        want.extend_from_slice(&[1, 0, 0, 0, 0, 0, 0, 0]); // 24: entry count
        want.extend_from_slice(&[0; 4]); // 32: CRC, patched below
        want.extend_from_slice(&[9, 0, 0, 0, 0, 0, 0, 0]); // 36: cut time
        want.extend_from_slice(&part_field.to_le_bytes()); // 44: part (v2) / zero (v1)
        want.extend_from_slice(&[0; 16]); // 48: zero
        assert_eq!(want.len(), 64);
        want.extend_from_slice(&[0, 0x10, 0, 0, 0, 0, 0, 0]); // offset 4096
        want.extend_from_slice(&[0, 2, 0, 0, 0, 0, 0, 0]); // len 512
        want.extend_from_slice(&[0xff; 8]); // data_pos: zero range
        want.extend_from_slice(&[0; 8]); // crc, padding
        fix_crc(&mut want);
        want
    }

    fn fix_crc(b: &mut [u8]) {
        let mut h = crc32fast::Hasher::new();
        h.update(&b[..32]);
        h.update(&b[36..]);
        let crc = h.finalize();
        b[32..36].copy_from_slice(&crc.to_le_bytes());
    }

    #[test]
    fn golden_v1_still_reads() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(file_name(7, None));
        fs::write(&p, documented_bytes(1, 0)).unwrap();
        let u = read_index(&p).unwrap();
        assert_eq!((u.seq, u.part, u.cut_time_ns), (7, None, 9));
        assert_eq!(u.entries, [zero_entry()]);
        assert_eq!(u.order(), (7, u64::MAX));
        let all = load_all(dir.path()).unwrap();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].part, None);
    }

    #[test]
    fn golden_v2() {
        let part = encode_index(7, Some(3), 9, &[zero_entry()]);
        assert_eq!(part, documented_bytes(2, 3));
        assert_eq!(&part[44..48], &[3, 0, 0, 0]);
        let cycle = encode_index(7, None, 9, &[zero_entry()]);
        assert_eq!(cycle, documented_bytes(2, u32::MAX));
        assert_eq!(&cycle[8..12], &[2, 0, 0, 0]);
        assert_eq!(&cycle[44..48], &[0xff; 4]);
        // The CRC covers the part field.
        let (a, b) = (le32(&part, 32), le32(&cycle, 32));
        assert_ne!(a, b);
        let mut h = crc32fast::Hasher::new();
        h.update(&part[..32]);
        h.update(&part[36..]);
        assert_eq!(h.finalize(), a);
        // And the reader agrees.
        let dir = tempfile::tempdir().unwrap();
        for (bytes, want) in [(part, Some(3)), (cycle, None)] {
            let p = dir.path().join(file_name(7, want));
            fs::write(&p, &bytes).unwrap();
            let u = read_index(&p).unwrap();
            assert_eq!((u.seq, u.part, u.cut_time_ns), (7, want, 9));
            assert_eq!(u.entries, [zero_entry()]);
        }
    }

    #[test]
    fn names() {
        assert_eq!(file_name(5, None), "00000000000000000005.undo");
        assert_eq!(
            file_name(5, Some(12)),
            "00000000000000000005.r00000012.undo"
        );
        assert_eq!(
            file_name(5, Some(123_456_789)),
            "00000000000000000005.r123456789.undo"
        );
        for (s, p) in [(5, None), (5, Some(0)), (u64::MAX, Some(u32::MAX - 1))] {
            assert_eq!(parse_name(&file_name(s, p)), Some((s, p)));
        }
        for n in [
            "00000000000000000005.undo.tmp",
            "00000000000000000005.r00000012.undo.tmp",
            "5.undo",
            "00000000000000000005.r0000012.undo",
            "00000000000000000005.r000000012.undo",
            "00000000000000000005.r4294967295.undo",
            "00000000000000000005.r99999999999.undo",
            "00000000000000000005.r+0000012.undo",
            "00000000000000000005.rx.undo",
            "points.json",
        ] {
            assert_eq!(parse_name(n), None, "{n}");
        }
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
        assert_eq!(idx.part, None);
        assert_eq!(idx.entries.len(), 3, "the long range is split at 1 MiB");
        assert_eq!(
            idx.entries[1].data_pos, None,
            "an all-zero range stores no data"
        );
        let back = read_index(&idx.path).unwrap();
        assert_eq!(back.entries, idx.entries);
        assert_eq!(back.part, None);
        assert_eq!(
            le32(&fs::read(&idx.path).unwrap(), 8),
            2,
            "writes version 2"
        );
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
        bytes[45] ^= 1; // the part field is covered too
        fs::write(&idx.path, &bytes).unwrap();
        let e = read_index(&idx.path).unwrap_err().to_string();
        assert!(e.contains("CRC"), "{e}");
        bytes[45] ^= 1;
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
    fn part_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let disk: Vec<u8> = (0..(64u32 << 10)).map(|i| (i % 13) as u8 + 1).collect();
        let idx = write_part(dir.path(), 4, 2, 11, &[(4096, 8192)], |o, b| {
            let o = usize::try_from(o).unwrap();
            b.copy_from_slice(&disk[o..o + b.len()]);
            Ok(())
        })
        .unwrap();
        assert_eq!(
            idx.path,
            dir.path().join("00000000000000000004.r00000002.undo")
        );
        assert_eq!((idx.seq, idx.part, idx.cut_time_ns), (4, Some(2), 11));
        assert_eq!(idx.order(), (4, 2));
        let back = read_index(&idx.path).unwrap();
        assert_eq!((back.seq, back.part, back.cut_time_ns), (4, Some(2), 11));
        assert_eq!(back.entries, idx.entries);
        let f = File::open(&back.path).unwrap();
        let mut out = vec![0u8; 8192];
        read_entry(&f, &back.entries[0], 4096, &mut out).unwrap();
        assert_eq!(out, disk[4096..12288]);
        assert!(
            !dir.path()
                .join("00000000000000000004.r00000002.undo.tmp")
                .exists()
        );
    }

    fn empty_part(dir: &Path, seq: u64, part: u32) -> std::io::Result<UndoIndex> {
        write_part(dir, seq, part, 0, &[], |_, _| Ok(()))
    }

    #[test]
    fn ordering() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let none = |_: u64, _: &mut [u8]| Ok(());
        write(d, 6, 0, &[], none).unwrap();
        write(d, 5, 0, &[], none).unwrap();
        // Part numbers whose names sort the other way round (9 digits before 8).
        for p in [100_000_000, 10, 0, 99_999_999, 9, 1] {
            empty_part(d, 6, p).unwrap();
        }
        empty_part(d, 7, 0).unwrap();
        fs::write(d.join("unrelated.txt"), b"x").unwrap();
        fs::write(d.join("00000000000000000006.r00000003.undo.tmp"), b"x").unwrap();
        let got: Vec<(u64, Option<u32>)> = load_all(d)
            .unwrap()
            .iter()
            .map(|u| (u.seq, u.part))
            .collect();
        assert_eq!(
            got,
            [
                (5, None),
                (6, Some(0)),
                (6, Some(1)),
                (6, Some(9)),
                (6, Some(10)),
                (6, Some(99_999_999)),
                (6, Some(100_000_000)),
                (6, None),
                (7, Some(0)),
            ]
        );
        let mut names = [
            file_name(6, Some(99_999_999)),
            file_name(6, Some(100_000_000)),
        ];
        names.sort();
        assert_eq!(
            names[0],
            file_name(6, Some(100_000_000)),
            "names alone would misorder these"
        );
        clean_tmp(d);
        assert!(!d.join("00000000000000000006.r00000003.undo.tmp").exists());
    }

    #[test]
    fn write_part_refuses_to_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let first = write_part(d, 3, 0, 0, &[(0, 512)], |_, b| {
            b.fill(1);
            Ok(())
        })
        .unwrap();
        let before = fs::read(&first.path).unwrap();
        let mut reads = 0;
        let e = write_part(d, 3, 0, 0, &[(0, 512)], |_, b| {
            reads += 1;
            b.fill(2);
            Ok(())
        })
        .unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::AlreadyExists, "{e}");
        assert_eq!(reads, 0, "refused before reading the replica");
        assert_eq!(fs::read(&first.path).unwrap(), before);
        // Also when the file appears while the part is being written.
        let e = write_part(d, 3, 1, 0, &[(0, 512)], |_, b| {
            fs::write(d.join(file_name(3, Some(1))), b"racer")?;
            b.fill(3);
            Ok(())
        })
        .unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::AlreadyExists, "{e}");
        assert_eq!(fs::read(d.join(file_name(3, Some(1)))).unwrap(), b"racer");
        assert!(!d.join(format!("{}.tmp", file_name(3, Some(1)))).exists());
        // The reserved number is refused.
        let e = empty_part(d, 3, u32::MAX).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput, "{e}");
    }

    #[test]
    fn next_part_counts_up() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        assert_eq!(next_part(&d.join("missing"), 4).unwrap(), 0);
        assert_eq!(next_part(d, 4).unwrap(), 0);
        write(d, 4, 0, &[], |_, _| Ok(())).unwrap();
        empty_part(d, 3, 7).unwrap();
        empty_part(d, 5, 7).unwrap();
        assert_eq!(next_part(d, 4).unwrap(), 0, "other sequences do not count");
        for want in 0..3 {
            let p = next_part(d, 4).unwrap();
            assert_eq!(p, want);
            empty_part(d, 4, p).unwrap();
        }
        empty_part(d, 4, 99_999_999).unwrap();
        assert_eq!(next_part(d, 4).unwrap(), 100_000_000);
        fs::write(
            d.join(format!("{}.tmp", file_name(4, Some(200_000_000)))),
            b"",
        )
        .unwrap();
        assert_eq!(
            next_part(d, 4).unwrap(),
            100_000_000,
            ".tmp files do not count"
        );
        empty_part(d, 9, u32::MAX - 1).unwrap();
        assert!(next_part(d, 9).is_err(), "numbers ran out");
    }

    #[test]
    fn corrupt_and_unknown_versions() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(file_name(7, Some(3)));
        for v in [0u32, 3, u32::MAX] {
            let mut b = documented_bytes(2, 3);
            b[8..12].copy_from_slice(&v.to_le_bytes());
            fix_crc(&mut b);
            fs::write(&p, &b).unwrap();
            let e = read_index(&p).unwrap_err().to_string();
            assert!(e.contains(&p.display().to_string()), "{e}");
            assert!(e.contains(&format!("version {v}")), "{e}");
        }
        // Version 2 refuses nonzero flags or reserved bytes even with a good CRC.
        for at in [12, 48, 63] {
            let mut b = documented_bytes(2, 3);
            b[at] = 1;
            fix_crc(&mut b);
            fs::write(&p, &b).unwrap();
            let e = read_index(&p).unwrap_err().to_string();
            assert!(e.contains("reserved"), "{at}: {e}");
        }
        // A bad CRC, a bad magic, a short header.
        let mut b = documented_bytes(2, 3);
        b[33] ^= 1;
        fs::write(&p, &b).unwrap();
        assert!(read_index(&p).unwrap_err().to_string().contains("CRC"));
        let mut b = documented_bytes(2, 3);
        b[0] = b'X';
        fs::write(&p, &b).unwrap();
        assert!(
            read_index(&p)
                .unwrap_err()
                .to_string()
                .contains("not an undo")
        );
        fs::write(&p, &documented_bytes(2, 3)[..40]).unwrap();
        assert!(read_index(&p).unwrap_err().to_string().contains("header"));
        // load_all reports a broken file, and a header that disagrees with its name.
        fs::write(&p, &b).unwrap();
        assert!(load_all(dir.path()).is_err());
        fs::write(&p, documented_bytes(2, 4)).unwrap();
        let e = load_all(dir.path()).unwrap_err().to_string();
        assert!(e.contains("header says"), "{e}");
        fs::write(&p, documented_bytes(1, 0)).unwrap();
        let e = load_all(dir.path()).unwrap_err().to_string();
        assert!(e.contains("header says"), "a v1 file is never a part: {e}");
        fs::write(&p, documented_bytes(2, 3)).unwrap();
        assert_eq!(load_all(dir.path()).unwrap()[0].part, Some(3));
    }

    #[test]
    fn refuses_oversized_counts_before_allocating() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.undo");
        for (version, part) in [(1, 0), (2, 5), (2, u32::MAX)] {
            let mut b = documented_bytes(version, part);
            b.truncate(64);
            b[24..32].copy_from_slice(&u64::MAX.to_le_bytes());
            fs::write(&p, &b).unwrap();
            let e = read_index(&p).unwrap_err().to_string();
            assert!(e.contains("do not fit"), "v{version}: {e}");
            // A count just past the file's end.
            b[24..32].copy_from_slice(&1u64.to_le_bytes());
            fs::write(&p, &b).unwrap();
            let e = read_index(&p).unwrap_err().to_string();
            assert!(e.contains("do not fit"), "v{version}: {e}");
        }
        let mut b = encode_index(1, Some(0), 0, &[]);
        b[24..32].copy_from_slice(&(MAX_ENTRIES + 1).to_le_bytes());
        b.resize(usize::try_from(HEADER_LEN + 2 * ENTRY_LEN).unwrap(), 0);
        fs::write(&p, &b).unwrap();
        let e = read_index(&p).unwrap_err().to_string();
        assert!(e.contains("do not fit"), "{e}");
    }
}
