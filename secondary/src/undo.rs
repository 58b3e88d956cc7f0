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
//! | 36 | 8 | cut time (ns since the epoch): the cycle's source-side cut; for a part, as passed to [`write_part`] |
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
//! **What a writer saves.** The writer asks its [`Source`] (the replica) where its data lies
//! (`SEEK_DATA`/`SEEK_HOLE` on a file): a hole becomes one zero entry without being read, data
//! is read in pieces of at most [`MAX_ENTRY_LEN`] (an all-zero piece becomes a zero entry), and
//! adjacent zero entries merge. The entries of a file, and so the memory and the time to
//! write it, are bounded by the holes and the MiB of data under its ranges — never by the
//! ranges' length. [`estimate_entries`] computes that bound without reading, so a cycle
//! whose undo would not fit is refused before it is acknowledged.
//!
//! Entries are sorted by offset and do not overlap. The file is written to `.tmp`, fsynced,
//! and renamed (a part is linked into place so that it cannot replace a file), then the
//! directory is fsynced; a reader checks the header CRC and sizes before allocating, and each
//! entry's data CRC when it reads it. [`load_all`] also checks that a file's header names the
//! same sequence and part as its file name.

use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

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
const ZERO_POS: u64 = u64::MAX;
/// The header's part field of a cycle's undo (version 2).
const CYCLE_PART: u32 = u32::MAX;

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

/// The 64-byte header of a file of `n` entries, its CRC field zero.
fn header(seq: u64, part: Option<u32>, cut_time_ns: u64, n: u64) -> [u8; 64] {
    let mut h = [0u8; 64];
    h[..8].copy_from_slice(MAGIC);
    h[8..12].copy_from_slice(&VERSION.to_le_bytes());
    h[16..24].copy_from_slice(&seq.to_le_bytes());
    h[24..32].copy_from_slice(&n.to_le_bytes());
    h[36..44].copy_from_slice(&cut_time_ns.to_le_bytes());
    h[44..48].copy_from_slice(&part.unwrap_or(CYCLE_PART).to_le_bytes());
    h
}

fn entry_bytes(e: &Entry) -> [u8; 32] {
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

/// Writes what [`encode_index`] encodes at the start of `f`, a MiB of the table at a time (a
/// table of [`MAX_ENTRIES`] is 128 MiB: never encoded whole in memory).
fn write_index(
    f: &File,
    seq: u64,
    part: Option<u32>,
    cut_time_ns: u64,
    entries: &[Entry],
) -> std::io::Result<()> {
    let mut h = header(seq, part, cut_time_ns, entries.len() as u64);
    let mut crc = crc32fast::Hasher::new();
    crc.update(&h[..32]);
    crc.update(&h[36..]);
    let mut at = HEADER_LEN;
    for group in entries.chunks(1 << 15) {
        let table: Vec<u8> = group.iter().flat_map(entry_bytes).collect();
        crc.update(&table);
        f.write_all_at(&table, at)?;
        at += table.len() as u64;
    }
    h[32..36].copy_from_slice(&crc.finalize().to_le_bytes());
    f.write_all_at(&h, 0)
}

/// What an undo file saves: the replica's current bytes, and where it has none (holes).
pub trait Source {
    /// Fills `buf` with the bytes at `offset`.
    ///
    /// # Errors
    /// The read failed.
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> std::io::Result<()>;

    /// The first run of data in `[from, end)`: `Some((start, stop))` with
    /// `from <= start < stop <= end`, every byte of `[from, start)` reading as zero; `None`
    /// when all of `[from, end)` reads as zero. A source that cannot tell answers that it is
    /// all data (the default).
    ///
    /// # Errors
    /// The query failed.
    fn next_data(&mut self, from: u64, end: u64) -> std::io::Result<Option<(u64, u64)>> {
        Ok((from < end).then_some((from, end)))
    }
}

/// A [`Source`] that reads with `read(offset, buf)` and knows no holes (see [`from_fn`]).
#[derive(Debug)]
pub struct FnSource<F>(F);

/// A [`Source`] made of `read(offset, buf)`, all data (no holes).
pub fn from_fn<F: FnMut(u64, &mut [u8]) -> std::io::Result<()>>(read: F) -> FnSource<F> {
    FnSource(read)
}

impl<F: FnMut(u64, &mut [u8]) -> std::io::Result<()>> Source for FnSource<F> {
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        (self.0)(offset, buf)
    }
}

/// A file (the replica): its holes are found with `SEEK_DATA`/`SEEK_HOLE`, never read.
impl Source for &File {
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        self.read_exact_at(buf, offset)
    }

    fn next_data(&mut self, from: u64, end: u64) -> std::io::Result<Option<(u64, u64)>> {
        Ok(data_run(self, from, end))
    }
}

/// The first data run of `f` in `[from, end)` (see [`Source::next_data`]). Moves the file
/// offset, which positional reads and writes ignore. A file system or device that cannot
/// answer (`EINVAL`...) is taken as all data: only the cost changes, never the contents.
#[must_use]
pub fn data_run(f: &File, from: u64, end: u64) -> Option<(u64, u64)> {
    use nix::errno::Errno;
    use nix::unistd::{Whence, lseek};
    if from >= end {
        return None;
    }
    let all = Some((from, end));
    let Ok(o) = i64::try_from(from) else {
        return all;
    };
    let start = match lseek(f, o, Whence::SeekData) {
        Ok(s) => u64::try_from(s).unwrap_or(from).max(from),
        // No data at or after `from`.
        Err(Errno::ENXIO) => return None,
        Err(_) => return all,
    };
    if start >= end {
        return None;
    }
    let stop = i64::try_from(start)
        .ok()
        .and_then(|s| lseek(f, s, Whence::SeekHole).ok())
        .and_then(|h| u64::try_from(h).ok())
        .filter(|&h| h > start)
        .map_or(end, |h| h.min(end));
    Some((start, stop))
}

/// The next step of a walk over `[at, end)` of `src`: `(start, stop)` with
/// `at <= start <= stop <= end`, a hole before `start`, data in `[start, stop)`, and progress
/// made (`stop > at`, or `start == end`) whatever the source answers.
fn step(src: &mut impl Source, at: u64, end: u64) -> std::io::Result<(u64, u64)> {
    Ok(match src.next_data(at, end)? {
        None => (end, end),
        Some((s, t)) => {
            let s = s.clamp(at, end);
            let t = t.clamp(s, end);
            if t == s && s < end { (s, end) } else { (s, t) }
        }
    })
}

/// An upper bound of the entries an undo file for `ranges` (sorted, disjoint) of `src` needs
/// as `src` is now: one per hole and one per started [`MAX_ENTRY_LEN`] of each data run
/// ([`write()`] merges zero pieces, so it needs at most this many). Nothing is read. Counting
/// stops once past `limit` (the result is then some value above `limit`), so the walk costs
/// at most `limit` + `ranges.len()` steps however long the ranges are.
///
/// # Errors
/// The source could not say where its data is.
pub fn estimate_entries(
    src: &mut impl Source,
    ranges: &[(u64, u64)],
    limit: u64,
) -> std::io::Result<u64> {
    Ok(estimate(src, ranges, limit)?.entries)
}

/// What the undo file of `ranges` will need at most, found without reading any data (see
/// [`estimate_entries`]; the walk stops once past `limit` entries).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Estimate {
    /// Entries: one per hole, one per MiB of allocated data.
    pub entries: u64,
    /// Allocated bytes of the source under the ranges: the most data the file can hold.
    pub data_bytes: u64,
}

impl Estimate {
    /// The most bytes the undo file can take on disk: header, entry table, data.
    #[must_use]
    pub fn file_bytes(&self) -> u64 {
        HEADER_LEN
            .saturating_add(self.entries.saturating_mul(ENTRY_LEN))
            .saturating_add(self.data_bytes)
    }
}

/// [`estimate_entries`] with the data bytes too.
///
/// # Errors
/// The source could not say where its data is.
pub fn estimate(
    src: &mut impl Source,
    ranges: &[(u64, u64)],
    limit: u64,
) -> std::io::Result<Estimate> {
    let mut e = Estimate::default();
    for &(o, l) in ranges {
        let end = o.saturating_add(l);
        let mut at = o;
        while at < end {
            let (s, t) = step(src, at, end)?;
            e.entries = e
                .entries
                .saturating_add(u64::from(s > at))
                .saturating_add((t - s).div_ceil(MAX_ENTRY_LEN));
            e.data_bytes = e.data_bytes.saturating_add(t - s);
            if e.entries > limit {
                return Ok(e);
            }
            at = t.max(s);
        }
    }
    Ok(e)
}

/// Writes `undo/SEQ.undo` (the undo of cycle `seq`) from `src` (the replica's current bytes)
/// for `ranges` (sorted, disjoint), durably. Returns its index. An existing file of that name
/// is replaced (the caller checks its index first: after a crash that file may be all that is
/// left of the replica's old bytes).
///
/// # Errors
/// More than [`MAX_ENTRIES`] entries would be needed ([`std::io::ErrorKind::FileTooLarge`],
/// before anything is read: see [`estimate_entries`]), or reading the replica or writing the
/// file failed.
pub fn write(
    dir: &Path,
    seq: u64,
    cut_time_ns: u64,
    ranges: &[(u64, u64)],
    src: impl Source,
) -> std::io::Result<UndoIndex> {
    write_file(dir, seq, None, cut_time_ns, ranges, src)
}

/// Writes `undo/SEQ.rPART.undo`, part `part` of the resync before cycle `seq` (its
/// `from_seq`), from `src` for `ranges` (sorted, disjoint), durably: call it before writing
/// the batch into the replica. Never replaces a file. Returns its index.
///
/// # Errors
/// The file already exists ([`std::io::ErrorKind::AlreadyExists`]: take [`next_part`]),
/// `part` is `u32::MAX` (reserved), more than [`MAX_ENTRIES`] entries would be needed, or
/// reading the replica or writing the file failed.
pub fn write_part(
    dir: &Path,
    seq: u64,
    part: u32,
    cut_time_ns: u64,
    ranges: &[(u64, u64)],
    src: impl Source,
) -> std::io::Result<UndoIndex> {
    if part == CYCLE_PART {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("undo part number {part} is reserved"),
        ));
    }
    write_file(dir, seq, Some(part), cut_time_ns, ranges, src)
}

/// Appends entry `e` to `entries`, merged into the previous one when both are zero and
/// touch. Fails when a new entry would pass `reserved` (the source changed since it was
/// estimated).
fn push_entry(entries: &mut Vec<Entry>, e: Entry, reserved: u64) -> std::io::Result<()> {
    if e.data_pos.is_none()
        && let Some(last) = entries.last_mut()
        && last.data_pos.is_none()
        && last.end() == e.offset
    {
        last.len += e.len;
        return Ok(());
    }
    if entries.len() as u64 >= reserved {
        return Err(std::io::Error::other(
            "the replica's layout changed while its undo data was being saved",
        ));
    }
    entries.push(e);
    Ok(())
}

/// The one writer of undo files: a cycle's (`part` `None`, replaces) or a part (never replaces).
fn write_file(
    dir: &Path,
    seq: u64,
    part: Option<u32>,
    cut_time_ns: u64,
    ranges: &[(u64, u64)],
    mut src: impl Source,
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
    // The table's room is reserved for the bound; entries merged below it leave a hole in the
    // file between the table and the data, which readers never look at.
    let reserved = estimate_entries(&mut src, ranges, MAX_ENTRIES)?;
    if reserved > MAX_ENTRIES {
        return Err(std::io::Error::new(
            std::io::ErrorKind::FileTooLarge,
            format!(
                "{} overwrites more than {MAX_ENTRIES} holes and MiB of data, more than an undo file holds",
                what()
            ),
        ));
    }
    let data_start = HEADER_LEN + ENTRY_LEN * reserved;
    let mut f = File::create(&tmp)?;
    f.seek(SeekFrom::Start(data_start))?;
    let mut w = std::io::BufWriter::with_capacity(1 << 20, f);
    let mut entries = Vec::new();
    let mut pos = data_start;
    let mut buf = vec![0u8; usize::try_from(MAX_ENTRY_LEN).unwrap_or(1 << 20)];
    let zero = |offset, len| Entry {
        offset,
        len,
        data_pos: None,
        crc: 0,
    };
    for &(o, l) in ranges {
        let end = o.saturating_add(l);
        let mut at = o;
        while at < end {
            let (s, t) = step(&mut src, at, end)?;
            if s > at {
                push_entry(&mut entries, zero(at, s - at), reserved)?;
            }
            let mut p = s;
            while p < t {
                let n = (t - p).min(MAX_ENTRY_LEN);
                let b = &mut buf[..usize::try_from(n).map_err(std::io::Error::other)?];
                src.read_at(p, b)?;
                if base::devread::is_zero(b) {
                    push_entry(&mut entries, zero(p, n), reserved)?;
                } else {
                    w.write_all(b)?;
                    let e = Entry {
                        offset: p,
                        len: n,
                        data_pos: Some(pos),
                        crc: crc32fast::hash(b),
                    };
                    push_entry(&mut entries, e, reserved)?;
                    pos += n;
                }
                p += n;
            }
            at = t.max(s);
        }
    }
    let f = w.into_inner().map_err(|e| e.into_error())?;
    write_index(&f, seq, part, cut_time_ns, &entries)?;
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

/// Reads an undo file's index (version 1, 2 or 3), checking it.
///
/// # Errors
/// Unreadable, wrong magic or version, bad CRC, nonzero reserved bytes (versions 2 and 3),
/// entries too long for their version, or sizes that do not fit the file.
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
    if !(1..=3).contains(&version) {
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
        // Version 3 lets a zero entry be longer than a data entry.
        let long_ok = version >= 3 && pos == ZERO_POS;
        if l == 0 || (l > MAX_ENTRY_LEN && !long_ok) || end.is_none() || offset < prev_end {
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
        want.extend_from_slice(&part_field.to_le_bytes()); // 44: part (v2, v3) / zero (v1)
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
    fn golden_v2_still_reads() {
        let dir = tempfile::tempdir().unwrap();
        for (part_field, want) in [(3, Some(3)), (u32::MAX, None)] {
            let p = dir.path().join(file_name(7, want));
            fs::write(&p, documented_bytes(2, part_field)).unwrap();
            let u = read_index(&p).unwrap();
            assert_eq!((u.seq, u.part, u.cut_time_ns), (7, want, 9));
            assert_eq!(u.entries, [zero_entry()]);
        }
        // Version 2 never held an entry longer than MAX_ENTRY_LEN, zero or not.
        let p = dir.path().join(file_name(7, None));
        fs::write(&p, with_long_zero_entry(2)).unwrap();
        let e = read_index(&p).unwrap_err().to_string();
        assert!(e.contains("bad entry"), "{e}");
    }

    /// `documented_bytes(version, u32::MAX)` whose one zero entry is 64 TiB long.
    fn with_long_zero_entry(version: u32) -> Vec<u8> {
        let mut b = documented_bytes(version, u32::MAX);
        b[72..80].copy_from_slice(&(64u64 << 40).to_le_bytes());
        fix_crc(&mut b);
        b
    }

    #[test]
    fn golden_v3() {
        let part = encode_index(7, Some(3), 9, &[zero_entry()]);
        assert_eq!(part, documented_bytes(3, 3));
        assert_eq!(&part[44..48], &[3, 0, 0, 0]);
        let cycle = encode_index(7, None, 9, &[zero_entry()]);
        assert_eq!(cycle, documented_bytes(3, u32::MAX));
        assert_eq!(&cycle[8..12], &[3, 0, 0, 0]);
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
        // A zero entry of any length (a 64 TiB hole: bytes 72..80 are its length).
        let long = with_long_zero_entry(3);
        let mut e = zero_entry();
        e.len = 64 << 40;
        assert_eq!(long, encode_index(7, None, 9, &[e]));
        assert_eq!(&long[72..80], &[0, 0, 0, 0, 0, 0x40, 0, 0]);
        let p = dir.path().join(file_name(7, None));
        fs::write(&p, &long).unwrap();
        assert_eq!(read_index(&p).unwrap().entries, [e]);
        // A data entry stays at most MAX_ENTRY_LEN (its CRC covers it whole).
        let mut b = long.clone();
        b[80..88].copy_from_slice(&64u64.to_le_bytes());
        fix_crc(&mut b);
        b.resize(b.len() + 64, 0);
        fs::write(&p, &b).unwrap();
        let err = read_index(&p).unwrap_err().to_string();
        assert!(err.contains("bad entry"), "{err}");
        // The streaming writer writes exactly what encode_index encodes.
        let f = File::create(&p).unwrap();
        write_index(&f, 7, None, 9, &[e]).unwrap();
        assert_eq!(fs::read(&p).unwrap(), long);
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
            from_fn(|o, b| {
                let o = usize::try_from(o).unwrap();
                b.copy_from_slice(&zeroed[o..o + b.len()]);
                Ok(())
            }),
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
            3,
            "writes version 3"
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
    fn holes_cost_one_entry_whatever_their_length() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("replica");
        let f = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&img)
            .unwrap();
        let size = 64u64 << 30;
        f.set_len(size).unwrap();
        f.write_all_at(&[7u8; 8192], 1 << 30).unwrap();
        // Allocated but all zero: merges with the holes around it.
        f.write_all_at(&[0u8; 8192], 2 << 30).unwrap();
        f.write_all_at(&vec![9u8; 3 << 20], 3 << 30).unwrap();
        let ranges = [(0, size)];
        let bound = estimate_entries(&mut &f, &ranges, MAX_ENTRIES).unwrap();
        assert!(bound <= 12, "{bound}");
        let d = dir.path().join("undo");
        fs::create_dir(&d).unwrap();
        let idx = write(&d, 5, 0, &ranges, &f).unwrap();
        let kinds: Vec<(u64, u64, bool)> = idx
            .entries
            .iter()
            .map(|e| (e.offset, e.len, e.data_pos.is_some()))
            .collect();
        // A file system may allocate around a write (ext4 and tmpfs do not); what the
        // entries say must hold whatever it did.
        assert!(kinds.len() as u64 <= bound, "{kinds:?}");
        assert_eq!(kinds.iter().map(|k| k.1).sum::<u64>(), size);
        let data: u64 = kinds.iter().filter(|k| k.2).map(|k| k.1).sum();
        assert!(data >= 8192 + (3 << 20), "{kinds:?}");
        assert!(data < 16 << 20, "holes are not saved as data: {kinds:?}");
        assert!(fs::metadata(&idx.path).unwrap().len() < 64 << 20);
        for w in kinds.windows(2) {
            assert!(w[0].2 || w[1].2, "adjacent zero entries merge: {kinds:?}");
        }
        // Read back through the index: the bytes and the zeros.
        let back = read_index(&idx.path).unwrap();
        assert_eq!(back.entries, idx.entries);
        let u = File::open(&idx.path).unwrap();
        let at = |o: u64| {
            back.entries
                .iter()
                .find(|e| e.offset <= o && o < e.end())
                .unwrap()
        };
        for (o, want) in [(1u64 << 30, 7u8), (3 << 30, 9), (2 << 30, 0), (5 << 30, 0)] {
            let mut b = [1u8; 4096];
            read_entry(&u, at(o), o, &mut b).unwrap();
            assert!(b.iter().all(|&x| x == want), "{o}");
        }
    }

    #[test]
    fn an_undo_past_the_entry_cap_is_refused_before_reading() {
        let dir = tempfile::tempdir().unwrap();
        let mut reads = 0;
        // A source that cannot tell holes: 4 TiB + 1 MiB of data needs one entry too many.
        let e = write(
            dir.path(),
            1,
            0,
            &[(0, MAX_ENTRIES * MAX_ENTRY_LEN + 1)],
            from_fn(|_, _| {
                reads += 1;
                Ok(())
            }),
        )
        .unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::FileTooLarge, "{e}");
        assert_eq!(reads, 0);
        let mut all_data = from_fn(|_, _| Ok(()));
        let n = estimate_entries(
            &mut all_data,
            &[(0, MAX_ENTRIES * MAX_ENTRY_LEN)],
            MAX_ENTRIES,
        )
        .unwrap();
        assert_eq!(n, MAX_ENTRIES);
        assert!(
            !dir.path()
                .join(format!("{}.tmp", file_name(1, None)))
                .exists()
        );
    }

    #[test]
    fn part_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let disk: Vec<u8> = (0..(64u32 << 10)).map(|i| (i % 13) as u8 + 1).collect();
        let idx = write_part(
            dir.path(),
            4,
            2,
            11,
            &[(4096, 8192)],
            from_fn(|o, b| {
                let o = usize::try_from(o).unwrap();
                b.copy_from_slice(&disk[o..o + b.len()]);
                Ok(())
            }),
        )
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
        write_part(dir, seq, part, 0, &[], from_fn(|_, _| Ok(())))
    }

    #[test]
    fn ordering() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let none = || from_fn(|_, _| Ok(()));
        write(d, 6, 0, &[], none()).unwrap();
        write(d, 5, 0, &[], none()).unwrap();
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
        let first = write_part(
            d,
            3,
            0,
            0,
            &[(0, 512)],
            from_fn(|_, b| {
                b.fill(1);
                Ok(())
            }),
        )
        .unwrap();
        let before = fs::read(&first.path).unwrap();
        let mut reads = 0;
        let e = write_part(
            d,
            3,
            0,
            0,
            &[(0, 512)],
            from_fn(|_, b| {
                reads += 1;
                b.fill(2);
                Ok(())
            }),
        )
        .unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::AlreadyExists, "{e}");
        assert_eq!(reads, 0, "refused before reading the replica");
        assert_eq!(fs::read(&first.path).unwrap(), before);
        // Also when the file appears while the part is being written.
        let e = write_part(
            d,
            3,
            1,
            0,
            &[(0, 512)],
            from_fn(|_, b| {
                fs::write(d.join(file_name(3, Some(1))), b"racer")?;
                b.fill(3);
                Ok(())
            }),
        )
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
        write(d, 4, 0, &[], from_fn(|_, _| Ok(()))).unwrap();
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
        for v in [0u32, 4, u32::MAX] {
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
