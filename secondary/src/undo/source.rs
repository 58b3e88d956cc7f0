//! What an undo file saves from: the replica as a [`Source`] (its data and its holes), and
//! the bound on the entries a file for some ranges needs, found without reading.

use std::fs::File;
use std::os::unix::fs::FileExt;

use super::format::{ENTRY_LEN, HEADER_LEN, MAX_ENTRY_LEN};

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
pub(super) fn step(src: &mut impl Source, at: u64, end: u64) -> std::io::Result<(u64, u64)> {
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
/// ([`super::write()`] merges zero pieces, so it needs at most this many). Nothing is read. Counting
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
