//! From a sealed HRL log to what its cycle ships: the changed ranges to read from the
//! device, rounded out to the read granule; in a journal log, the pieces whose content the
//! log itself holds; and whether the log says tracking missed something.
//!
//! **Extents-mode semantics.** A record means "this range changed"; the cycle ships the
//! range's contents as read from the device after the seal. Because the tracker records a
//! change in the log that is current when the change completes (or a later one —
//! docs/tracking.md), every change a cycle names that completed before its seal is in the
//! data read after it, and a change still in flight at the seal is named again by a later
//! cycle. Whether the data read is the source *at the cut* is the race rule's question
//! ([`raced`]).
//!
//! **Journal-mode semantics** ([`read_cycle_logged`], the header's `JOURNAL` flag). A ublk
//! target in journal mode appends every write's data to its log (`WriteData`), in the order
//! it performs the writes, *before* performing each one, and completes an I/O only after. So
//! the log says what every byte it touches holds after its last record, and the cycle ships
//! that from the log — no read of the device:
//! - `WriteData` — its data; a later record over the same bytes replaces it (the pieces are
//!   split where records partly overlap);
//! - `WriteZeroes` — zeros;
//! - `Discard` — zeros, too: the target performs a discard on a file backing as a punched
//!   hole, which reads zeros. (A discarded range's contents are unspecified, and zeros are
//!   one such content; on a block-device backing, `BLKDISCARD`, the blocks may read back
//!   otherwise — the replica then holds zeros there, which `sitrep verify` would report,
//!   until they are written again.)
//! - anything else with ranges (`Write`, `SecureErase`, a `TrackingGap` with extents — the
//!   target records those past its log space cap) — ranges read from the device after the
//!   seal, rounded out to the granule, as in extents mode; a whole-disk gap as ever.
//!
//! A byte read from the device is not also sent from the log: the read is newer than any
//! record, so every known piece inside a device range (which covers whole granules) is
//! dropped. The known pieces ([`CycleExtents::logged`]) and the device ranges are therefore
//! disjoint; the server may receive them in any order.
//!
//! *Exactness.* Records are appended before their change is performed and an I/O completes
//! only after its record, so when a write W1 completed before W2 was issued, W1's record
//! precedes W2's. Any prefix of the log is therefore a state the disk could have been left
//! in by a crash at that moment: a cycle made only of known pieces (no device range) is an
//! exact crash-consistent point at its log's seal, whoever sealed it — the agent's cut, the
//! target's own rotation, or crash recovery (see `sealed.rs` for when the replica before it
//! allows calling it one). Overlapping writes *in flight together* are the exception the
//! target documents (docs/ublk.md, *Known limits*): they may reach the backing in another
//! order than their records, and the replica, which follows the log, then differs from the
//! source in those bytes until they are written again.
//!
//! *Bounds.* A log keeps at most [`MAX_LOGGED_DATA`] bytes of data in memory; past that, the
//! rest of its `WriteData` records become device ranges (correct, no longer exact). And a
//! cycle must fit the server's frame cap (one frame per 4 KiB of the disk): a log of more
//! scattered small pieces than that is shipped as device ranges instead.
//!
//! [`read_cycle`] reads every log, journal or not, the extents way (all changes as device
//! ranges): what the resync, the planned failover's "nobody wrote" check and the backlog
//! count need, without holding any data.

mod known;
#[cfg(test)]
mod tests;

use std::path::Path;

use hrl::dirty::{DirtyBudget, DirtyMap};
use hrl::{Extent, GapScope, LogReader, RecordBody, RecoveryMode};

use known::Known;

/// Most data bytes of one journal log kept in memory for shipping (see the module docs).
pub const MAX_LOGGED_DATA: u64 = 256 << 20;

/// The server stages at most one Data/Zero frame per this many bytes of the disk
/// (`secondary::store::staging::max_cycle_frames`, which adds a few).
const SERVER_FRAME_GRAIN: u64 = 4096;

/// ... and never more than this many in one cycle (`secondary`'s `MAX_CYCLE_FRAMES`).
const SERVER_MAX_FRAMES: u64 = 1 << 22;

/// A piece of a cycle whose content its journal log holds: one frame's worth (data pieces
/// are at most [`proto::MAX_DATA`] bytes). Offsets and lengths are multiples of 512.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Logged {
    /// These bytes at `offset`.
    Data {
        /// Byte offset on the disk.
        offset: u64,
        /// The bytes.
        data: Vec<u8>,
    },
    /// Zeros over `[offset, offset + len)`.
    Zero {
        /// Byte offset on the disk.
        offset: u64,
        /// Length in bytes.
        len: u64,
    },
}

impl Logged {
    /// Where the piece starts.
    #[must_use]
    pub fn offset(&self) -> u64 {
        match self {
            Self::Data { offset, .. } | Self::Zero { offset, .. } => *offset,
        }
    }

    /// One past where it ends.
    #[must_use]
    pub fn end(&self) -> u64 {
        match self {
            Self::Data { offset, data } => offset.saturating_add(data.len() as u64),
            Self::Zero { offset, len } => offset.saturating_add(*len),
        }
    }
}

/// What one sealed log asks to ship.
#[derive(Debug)]
pub struct CycleExtents {
    /// Log sequence number (the cycle's sequence).
    pub seq: u64,
    /// Log id.
    pub log_id: [u8; 16],
    /// When the log was sealed (ns since the epoch): the cycle's cut time.
    pub cut_time_ns: u64,
    /// Ranges to read from the device: merged, rounded out to `granule` and clipped to the
    /// disk; disjoint from `logged`.
    pub ranges: Vec<(u64, u64)>,
    /// Sum of `ranges` lengths (the bytes read from the device).
    pub bytes: u64,
    /// Whether the log is a journal log (its writes carry their data).
    pub journal: bool,
    /// The pieces the log holds the content of (journal logs read by
    /// [`read_cycle_logged`]; empty otherwise): sorted, disjoint, touching pieces of one
    /// kind merged up to a frame.
    pub logged: Vec<Logged>,
    /// Bytes `logged` covers (data and zeros).
    pub logged_bytes: u64,
    /// Data past a cap (memory, or the server's frames) was turned into device ranges.
    pub capped: bool,
    /// A tracking gap: `WholeDisk` → everything is suspect; `Extents` gaps are merged into
    /// `ranges` (re-reading them is enough).
    pub whole_disk_gap: Option<String>,
    /// Records read.
    pub records: u64,
}

impl CycleExtents {
    /// Whether the cycle is all from its journal log: nothing to read from the device, so
    /// it is the log's prefix state (module docs, *Exactness*).
    #[must_use]
    pub fn logged_only(&self) -> bool {
        self.journal && self.ranges.is_empty() && self.whole_disk_gap.is_none()
    }
}

/// Why a log could not be turned into a cycle.
#[derive(Debug, thiserror::Error)]
pub enum CycleError {
    /// The log is not sealed (still open, or torn by a crash and not yet recovered).
    #[error("{path}: log is not sealed")]
    NotSealed {
        /// The log.
        path: String,
    },
    /// The log failed validation.
    #[error("{0}")]
    Log(#[from] hrl::Error),
    /// Memory budget problem.
    #[error("{0}")]
    Dirty(String),
    /// The pieces of a journal log did not add up (a bug, reported rather than shipped).
    #[error("{0}")]
    Pieces(String),
}

/// Reads sealed log `path` of a `disk_size`-byte disk and collects its changed ranges,
/// rounded out to `granule` (a power of two, e.g. 4096 so O_DIRECT can read them) — every
/// change, a journal log's writes included, as a range of the device (`logged` is empty).
///
/// Memory is bounded: past [`DirtyBudget::default`]'s extent cap the map turns into a coarse
/// bitmap (more bytes re-read, never fewer).
///
/// # Errors
/// The log is unsealed or corrupt.
pub fn read_cycle(path: &Path, disk_size: u64, granule: u64) -> Result<CycleExtents, CycleError> {
    read_log(path, disk_size, granule, None)
}

/// Like [`read_cycle`], for shipping: in a journal log, the pieces whose content the log
/// holds go into [`CycleExtents::logged`] instead of `ranges` (module docs), keeping at most
/// `max_data` bytes of data (pass [`MAX_LOGGED_DATA`]). A log without the journal flag reads
/// exactly as with [`read_cycle`].
///
/// # Errors
/// The log is unsealed or corrupt.
pub fn read_cycle_logged(
    path: &Path,
    disk_size: u64,
    granule: u64,
    max_data: u64,
) -> Result<CycleExtents, CycleError> {
    read_log(path, disk_size, granule, Some(max_data))
}

/// [`read_cycle`] (`keep` None) or [`read_cycle_logged`] (`keep`: its `max_data`).
fn read_log(
    path: &Path,
    disk_size: u64,
    granule: u64,
    keep: Option<u64>,
) -> Result<CycleExtents, CycleError> {
    let mut r = LogReader::open(path, RecoveryMode::Strict)?;
    let header = *r.header();
    let Some(seal) = r.seal().copied() else {
        return Err(CycleError::NotSealed {
            path: path.display().to_string(),
        });
    };
    let mut map = DirtyMap::new(disk_size, DirtyBudget::default())
        .map_err(|e| CycleError::Dirty(e.to_string()))?;
    let mut known = keep.filter(|_| header.journal).map(Known::new);
    let mut whole_disk_gap = None;
    let mut records = 0u64;
    while let Some(rec) = r.next_record()? {
        records += 1;
        let body = match known.as_mut() {
            Some(k) => match k.take(rec.body) {
                Some(b) => b,
                None => continue,
            },
            None => rec.body,
        };
        if let RecordBody::TrackingGap {
            reason,
            scope: GapScope::WholeDisk,
        } = &body
        {
            whole_disk_gap = Some(format!("{reason:?}"));
            continue;
        }
        for e in body.extents().unwrap_or_default() {
            if let Some(x) = round_out(
                e.offset(),
                e.offset().saturating_add(e.len()),
                granule,
                disk_size,
            ) {
                map.insert(x);
            }
        }
    }
    let (mut ranges, mut bytes) = merged(&map, granule, disk_size);
    let (mut logged, mut logged_bytes, mut capped) = (Vec::new(), 0, false);
    if let Some(k) = known {
        capped = k.capped();
        let (pieces, covered) = k.finish(&ranges, proto::MAX_DATA)?;
        if fits_the_server(&pieces, &ranges, disk_size) {
            (logged, logged_bytes) = (pieces, covered);
        } else {
            // More scattered small pieces than the server takes frames in one cycle: read
            // them from the device instead, in whole granules.
            for p in &pieces {
                if let Some(x) = round_out(p.offset(), p.end(), granule, disk_size) {
                    map.insert(x);
                }
            }
            (ranges, bytes) = merged(&map, granule, disk_size);
            capped = true;
        }
    }
    Ok(CycleExtents {
        seq: header.log_seq.0,
        log_id: header.log_id.0,
        cut_time_ns: seal.sealed_unix_ns,
        ranges,
        bytes,
        journal: header.journal,
        logged,
        logged_bytes,
        capped,
        whole_disk_gap,
        records,
    })
}

/// `[start, end)` rounded out to `granule` and clipped to the disk (None if empty).
fn round_out(start: u64, end: u64, granule: u64, disk_size: u64) -> Option<Extent> {
    let s = start & !(granule - 1);
    let e = end.saturating_add(granule - 1) & !(granule - 1);
    Extent::new(s, e.min(disk_size).saturating_sub(s))
}

/// The map's ranges, merged, and their total length.
fn merged(map: &DirtyMap, granule: u64, disk_size: u64) -> (Vec<(u64, u64)>, u64) {
    let mut ranges: Vec<(u64, u64)> = Vec::with_capacity(map.len());
    let mut bytes = 0;
    for e in map.iter() {
        let start = e.offset() & !(granule - 1);
        let end = (e.offset() + e.len()).min(disk_size);
        if let Some((_, last)) = ranges.last_mut()
            && *last >= start
        {
            bytes += end.saturating_sub(*last);
            *last = (*last).max(end);
            continue;
        }
        bytes += end - start;
        ranges.push((start, end));
    }
    (ranges, bytes)
}

/// Whether `logged` (one frame each) and the frames reading `ranges` takes (one per
/// [`proto::MAX_DATA`] chunk of each range at most) fit the server's frame cap for a
/// `disk_size`-byte disk.
fn fits_the_server(logged: &[Logged], ranges: &[(u64, u64)], disk_size: u64) -> bool {
    let chunk = proto::MAX_DATA as u64;
    let device: u64 = ranges.iter().map(|(s, e)| (e - s).div_ceil(chunk)).sum();
    let cap = disk_size
        .div_ceil(SERVER_FRAME_GRAIN)
        .min(SERVER_MAX_FRAMES);
    (logged.len() as u64).saturating_add(device) <= cap
}

/// Whether a change recorded after cycle `seq`'s cut and before its consistency tag (the
/// moment its ranges were all read) touched any of `ranges` (sorted, disjoint) — the cycle
/// then is not the source at its cut. Reads the logs after `seq` in `dir` (the current one
/// too: everything before the tag is committed) up to tag `seq`. `None` if the tag is not
/// found.
///
/// # Errors
/// A log cannot be read.
pub fn raced(dir: &Path, seq: u64, ranges: &[(u64, u64)]) -> Result<Option<bool>, CycleError> {
    let hits = |o: u64, l: u64| {
        let i = ranges.partition_point(|&(_, e)| e <= o);
        ranges.get(i).is_some_and(|&(s, _)| s < o.saturating_add(l))
    };
    let mut raced = false;
    for (s, path) in hrl::chain::list_logs(dir)? {
        if s.0 <= seq {
            continue;
        }
        let mut r = LogReader::open(&path, RecoveryMode::TruncateTail)?;
        while let Some(rec) = r.next_record()? {
            match &rec.body {
                RecordBody::ConsistencyTag { tag, .. } if *tag == seq => return Ok(Some(raced)),
                RecordBody::TrackingGap {
                    scope: GapScope::WholeDisk,
                    ..
                } => raced = true,
                b => {
                    for e in b.extents().unwrap_or_default() {
                        raced |= hits(e.offset(), e.len());
                    }
                }
            }
        }
    }
    Ok(None)
}
