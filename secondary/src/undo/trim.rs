//! Trimming an undo file down to some of its ranges: compaction drops the pre-images an
//! earlier file of the same retained interval already holds (see `store/compact.rs`).
//!
//! The trimmed file keeps its name, sequence, part and cut time, and is written like any
//! other (to `.tmp`, fsynced, renamed over the old one, directory fsynced): a crash leaves
//! either the old file or the trimmed one, and both rebuild every retained point alike,
//! because only bytes an earlier file covers are dropped. Data is copied from the old file
//! with each entry's CRC checked (an entry is read whole, then sliced).

use std::fs::{self, File};
use std::path::Path;

use super::UndoIndex;
use super::format::Entry;
use super::reader::read_entry;
use super::source::Source;
use super::writer::write_file;
use base::ranges::{Range, normalize};

/// The ranges `idx` covers (normalized).
#[must_use]
pub fn covered(idx: &UndoIndex) -> Vec<Range> {
    normalize(idx.entries.iter().map(|e| (e.offset, e.len)).collect())
}

/// Rewrites `idx` to hold only `keep` (normalized, inside [`covered`]`(idx)`). Returns the
/// new index, the same one when nothing is dropped, or `None` when nothing is kept (the file
/// is removed).
///
/// # Errors
/// Reading the old file (or a CRC mismatch) or writing the new one failed; the old file is
/// then left as it was.
pub fn trim(idx: &UndoIndex, keep: &[Range]) -> std::io::Result<Option<UndoIndex>> {
    let dir = idx.path.parent().unwrap_or(Path::new("."));
    if keep.is_empty() {
        fs::remove_file(&idx.path)?;
        File::open(dir)?.sync_all()?;
        return Ok(None);
    }
    if keep == covered(idx).as_slice() {
        return Ok(Some(idx.clone()));
    }
    let src = FileSource {
        f: File::open(&idx.path)?,
        entries: &idx.entries,
        cache: None,
    };
    let new =
        write_file(dir, idx.seq, idx.part, idx.cut_time_ns, keep, src, true).inspect_err(|_| {
            let name = super::file_name(idx.seq, idx.part);
            let _ = fs::remove_file(dir.join(format!("{name}.tmp")));
        })?;
    Ok(Some(new))
}

/// An undo file read as a [`Source`]: zero entries are holes, data entries are read whole
/// and checked against their CRC.
struct FileSource<'a> {
    f: File,
    entries: &'a [Entry],
    /// The last data entry read whole: its index and bytes.
    cache: Option<(usize, Vec<u8>)>,
}

impl FileSource<'_> {
    fn entry_bytes(&mut self, i: usize) -> std::io::Result<&[u8]> {
        if self.cache.as_ref().is_none_or(|c| c.0 != i) {
            let e = self.entries[i];
            let mut b = vec![0u8; usize::try_from(e.len).map_err(std::io::Error::other)?];
            read_entry(&self.f, &e, e.offset, &mut b)?;
            self.cache = Some((i, b));
        }
        Ok(self.cache.as_ref().map_or(&[][..], |c| c.1.as_slice()))
    }
}

impl Source for FileSource<'_> {
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        let end = offset + buf.len() as u64;
        let mut at = offset;
        let mut i = self.entries.partition_point(|e| e.end() <= offset);
        while at < end {
            let e = match self.entries.get(i) {
                Some(e) if e.offset <= at => *e,
                _ => {
                    return Err(std::io::Error::other(format!(
                        "byte {at} is not in the undo file being trimmed"
                    )));
                }
            };
            let t = e.end().min(end);
            let (a, b) = (
                usize::try_from(at - offset).map_err(std::io::Error::other)?,
                usize::try_from(t - offset).map_err(std::io::Error::other)?,
            );
            if e.data_pos.is_none() {
                buf[a..b].fill(0);
            } else {
                let skip = usize::try_from(at - e.offset).map_err(std::io::Error::other)?;
                let whole = self.entry_bytes(i)?;
                buf[a..b].copy_from_slice(&whole[skip..skip + (b - a)]);
            }
            at = t;
            i += 1;
        }
        Ok(())
    }

    fn next_data(&mut self, from: u64, end: u64) -> std::io::Result<Option<(u64, u64)>> {
        let i = self.entries.partition_point(|e| e.end() <= from);
        Ok(self.entries[i..]
            .iter()
            .take_while(|e| e.offset < end)
            .find(|e| e.data_pos.is_some())
            .map(|e| (e.offset.max(from), e.end().min(end))))
    }
}
