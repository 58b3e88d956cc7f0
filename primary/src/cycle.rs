//! From a sealed HRL log to what its cycle ships: the changed ranges, rounded out to the
//! read granule, and whether the log says tracking missed something.
//!
//! Extents-mode semantics: a record means "this range changed"; the cycle ships the range's
//! contents as read from the device after the seal. Because the tracker records a change in
//! the log that is current when the change completes (or a later one — docs/tracking.md),
//! every change a cycle names that completed before its seal is in the data read after it,
//! and a change still in flight at the seal is named again by a later cycle.

use std::path::Path;

use hrl::dirty::{DirtyBudget, DirtyMap};
use hrl::{Extent, GapScope, LogReader, RecordBody, RecoveryMode};

/// What one sealed log asks to ship.
#[derive(Debug)]
pub struct CycleExtents {
    /// Log sequence number (the cycle's sequence).
    pub seq: u64,
    /// Log id.
    pub log_id: [u8; 16],
    /// When the log was sealed (ns since the epoch): the cycle's cut time.
    pub cut_time_ns: u64,
    /// Changed ranges, merged, rounded out to `granule` and clipped to the disk.
    pub ranges: Vec<(u64, u64)>,
    /// Sum of `ranges` lengths.
    pub bytes: u64,
    /// A tracking gap: `WholeDisk` → everything is suspect; `Extents` gaps are merged into
    /// `ranges` (re-reading them is enough).
    pub whole_disk_gap: Option<String>,
    /// Records read.
    pub records: u64,
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
}

/// Reads sealed log `path` of a `disk_size`-byte disk and collects its changed ranges,
/// rounded out to `granule` (a power of two, e.g. 4096 so O_DIRECT can read them).
///
/// Memory is bounded: past [`DirtyBudget::default`]'s extent cap the map turns into a coarse
/// bitmap (more bytes re-read, never fewer).
///
/// # Errors
/// The log is unsealed or corrupt.
pub fn read_cycle(path: &Path, disk_size: u64, granule: u64) -> Result<CycleExtents, CycleError> {
    let mut r = LogReader::open(path, RecoveryMode::Strict)?;
    let header = *r.header();
    let Some(seal) = r.seal().copied() else {
        return Err(CycleError::NotSealed {
            path: path.display().to_string(),
        });
    };
    let mut map = DirtyMap::new(disk_size, DirtyBudget::default())
        .map_err(|e| CycleError::Dirty(e.to_string()))?;
    let mut whole_disk_gap = None;
    let mut records = 0u64;
    while let Some(rec) = r.next_record()? {
        records += 1;
        if let RecordBody::TrackingGap {
            reason,
            scope: GapScope::WholeDisk,
        } = &rec.body
        {
            whole_disk_gap = Some(format!("{reason:?}"));
            continue;
        }
        for e in rec.body.extents().unwrap_or_default() {
            let start = e.offset() & !(granule - 1);
            let end = e
                .offset()
                .saturating_add(e.len())
                .saturating_add(granule - 1)
                & !(granule - 1);
            let end = end.min(disk_size);
            if let Some(x) = Extent::new(start, end.saturating_sub(start)) {
                map.insert(x);
            }
        }
    }
    let mut ranges = Vec::with_capacity(map.len());
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
    Ok(CycleExtents {
        seq: header.log_seq.0,
        log_id: header.log_id.0,
        cut_time_ns: seal.sealed_unix_ns,
        ranges,
        bytes,
        whole_disk_gap,
        records,
    })
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
