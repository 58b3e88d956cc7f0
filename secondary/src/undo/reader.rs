//! Reading an undo file: its index (checked before anything is allocated) and an entry's data
//! (checked against its CRC).

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::UndoIndex;
use super::format::{
    CYCLE_PART, ENTRY_LEN, Entry, HEADER_LEN, MAGIC, MAX_ENTRIES, MAX_ENTRY_LEN, ZERO_POS, le32,
    le64,
};

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
