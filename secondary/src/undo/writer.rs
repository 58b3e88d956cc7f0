//! Writing an undo file: a cycle's (replaces) or a resync part (never replaces), durably.

use std::fs::{self, File};
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::format::{
    CYCLE_PART, ENTRY_LEN, Entry, HEADER_LEN, MAX_ENTRIES, MAX_ENTRY_LEN, entry_bytes, header,
};
use super::source::{Source, estimate_entries, step};
use super::{UndoIndex, file_name};

/// Writes what [`super::encode_index`] encodes at the start of `f`, a MiB of the table at a time (a
/// table of [`MAX_ENTRIES`] is 128 MiB: never encoded whole in memory).
pub(super) fn write_index(
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
    write_file(dir, seq, None, cut_time_ns, ranges, src, true)
}

/// Writes `undo/SEQ.rPART.undo`, part `part` of the resync before cycle `seq` (its
/// `from_seq`), from `src` for `ranges` (sorted, disjoint), durably: call it before writing
/// the batch into the replica. Never replaces a file. Returns its index.
///
/// # Errors
/// The file already exists ([`std::io::ErrorKind::AlreadyExists`]: take [`super::next_part`]),
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
    write_file(dir, seq, Some(part), cut_time_ns, ranges, src, false)
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

/// The one writer of undo files: a cycle's or a part, replacing a file of that name only when
/// `replace` (a cycle's undo, a trimmed file — never a new part).
pub(super) fn write_file(
    dir: &Path,
    seq: u64,
    part: Option<u32>,
    cut_time_ns: u64,
    ranges: &[(u64, u64)],
    mut src: impl Source,
    replace: bool,
) -> std::io::Result<UndoIndex> {
    let what = || match part {
        None => format!("cycle {seq}"),
        Some(p) => format!("resync part {p} before cycle {seq}"),
    };
    let name = file_name(seq, part);
    let path = dir.join(&name);
    let tmp = dir.join(format!("{name}.tmp"));
    if !replace && fs::symlink_metadata(&path).is_ok() {
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
    let (entries, pos) = save(&mut src, ranges, reserved, &mut w, data_start)?;
    let f = w.into_inner().map_err(|e| e.into_error())?;
    write_index(&f, seq, part, cut_time_ns, &entries)?;
    f.sync_all()?;
    drop(f);
    install(&tmp, &path, !replace, what)?;
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

/// Saves what `src` holds under `ranges` (sorted, disjoint): data pieces written to `w`
/// (which stands at file position `data_start`), zero entries for holes and all-zero pieces.
/// Returns the entries and the file position after the data.
fn save(
    src: &mut impl Source,
    ranges: &[(u64, u64)],
    reserved: u64,
    w: &mut impl Write,
    data_start: u64,
) -> std::io::Result<(Vec<Entry>, u64)> {
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
            let (s, t) = step(src, at, end)?;
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
    Ok((entries, pos))
}

/// Puts the written `tmp` in place at `path`: linked when it must not replace a file (a new
/// part), else renamed (replaces).
fn install(
    tmp: &Path,
    path: &Path,
    exclusive: bool,
    what: impl Fn() -> String,
) -> std::io::Result<()> {
    if exclusive {
        // A link cannot replace an existing name (a rename would).
        if let Err(e) = fs::hard_link(tmp, path) {
            let _ = fs::remove_file(tmp);
            return Err(if e.kind() == std::io::ErrorKind::AlreadyExists {
                std::io::Error::new(
                    e.kind(),
                    format!("{}: the undo of {} already exists", path.display(), what()),
                )
            } else {
                e
            });
        }
        fs::remove_file(tmp)?;
    } else {
        fs::rename(tmp, path)?;
    }
    Ok(())
}
