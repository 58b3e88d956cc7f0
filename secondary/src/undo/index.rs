//! The undo files of a directory: their names, their order, the next part number, loading
//! them all.

use std::fs;
use std::path::{Path, PathBuf};

use super::format::{CYCLE_PART, Entry};
use super::reader::read_index;

/// An undo file's index (its data stays on disk).
#[derive(Debug, Clone)]
pub struct UndoIndex {
    /// Cycle sequence (for a part: the resync's `from_seq`, the cycle that follows it).
    pub seq: u64,
    /// `None`: the undo of cycle `seq`; `Some(p)`: part `p` of the resync before it.
    pub part: Option<u32>,
    /// The cycle's cut time (for a part, as passed to [`super::write_part`]).
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
pub(super) fn parse_name(name: &str) -> Option<(u64, Option<u32>)> {
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
