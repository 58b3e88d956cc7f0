//! The rules a record must follow, enforced by the writer before encoding (as reasons for
//! [`Error::InvalidRecord`](crate::Error::InvalidRecord)) and by the reader after decoding
//! (as [`Corrupt`]).

use super::body::{GapScope, RecordBody, RecordFlags, RecordKind};
use super::{MAX_LABEL, MAX_RECORD_EXTENTS};
use crate::error::Corrupt;
use crate::format::MAX_PAYLOAD;
use crate::units::{Extent, SECTOR_SIZE};

pub(super) fn bad(why: impl Into<String>) -> Corrupt {
    Corrupt::BadPayload(why.into())
}

/// Validates a disk range: non-empty, 512-aligned, inside the disk.
///
/// # Errors
/// [`Corrupt::BadPayload`] naming the range.
pub fn check_extent(offset: u64, len: u64, disk_size: u64) -> Result<Extent, Corrupt> {
    let e = Extent::new(offset, len)
        .filter(|e| e.is_aligned_to(SECTOR_SIZE) && e.fits_in(disk_size))
        .ok_or_else(|| {
            bad(format!(
                "extent {offset}+{len} is empty, unaligned or outside the {disk_size}-byte disk"
            ))
        })?;
    Ok(e)
}

/// Validates what a writer is asked to log, with the same rules the reader enforces.
///
/// # Errors
/// The reason, for [`Error::InvalidRecord`](crate::Error::InvalidRecord).
pub fn validate_body(body: &RecordBody, flags: RecordFlags, disk_size: u64) -> Result<(), String> {
    let kind = body.kind();
    let list = |v: &[Extent]| check_list(kind, v, disk_size);
    match body {
        RecordBody::Write(v)
        | RecordBody::Discard(v)
        | RecordBody::SecureErase(v)
        | RecordBody::WriteZeroes(v)
        | RecordBody::TrackingGap {
            scope: GapScope::Extents(v),
            ..
        } => list(v)?,
        RecordBody::WriteData { offset, data } => {
            if data.len() > MAX_PAYLOAD - 8 {
                return Err(format!(
                    "{} bytes of data exceed the record cap",
                    data.len()
                ));
            }
            check_extent(*offset, data.len() as u64, disk_size).map_err(|c| c.to_string())?;
        }
        RecordBody::AppConsistentTag { label, .. } if label.len() > MAX_LABEL => {
            return Err(format!(
                "label of {} bytes exceeds {MAX_LABEL}",
                label.len()
            ));
        }
        _ => {}
    }
    check_flags(kind, flags)
}

/// The flags a record of `kind` may carry (FUA/PREFLUSH on the write kinds and Flush only).
fn check_flags(kind: RecordKind, flags: RecordFlags) -> Result<(), String> {
    if flags.bits() & !RecordFlags::KNOWN != 0
        || (flags.bits() != 0
            && !matches!(
                kind,
                RecordKind::Write
                    | RecordKind::WriteData
                    | RecordKind::WriteZeroes
                    | RecordKind::Flush
            ))
    {
        return Err(format!(
            "flags {:#x} not valid on {}",
            flags.bits(),
            kind.name()
        ));
    }
    Ok(())
}

/// Validates a change record of a list of extents as [`validate_body`] validates the same
/// record built as a [`RecordBody`].
///
/// # Errors
/// The reason, for [`Error::InvalidRecord`](crate::Error::InvalidRecord).
pub fn validate_extents_record(
    kind: RecordKind,
    flags: RecordFlags,
    extents: &[Extent],
    disk_size: u64,
) -> Result<(), String> {
    if !matches!(
        kind,
        RecordKind::Write | RecordKind::Discard | RecordKind::SecureErase | RecordKind::WriteZeroes
    ) {
        return Err(format!("{} is not a change of extents", kind.name()));
    }
    check_list(kind, extents, disk_size)?;
    check_flags(kind, flags)
}

/// An extent list of a `kind` record: not empty, under the record cap, every range inside
/// the disk and 512-aligned.
fn check_list(kind: RecordKind, v: &[Extent], disk_size: u64) -> Result<(), String> {
    if v.is_empty() {
        return Err(format!("{} with no extents", kind.name()));
    }
    if v.len() > MAX_RECORD_EXTENTS {
        return Err(format!("{} extents exceed the record cap", v.len()));
    }
    for e in v {
        check_extent(e.offset(), e.len(), disk_size).map_err(|c| c.to_string())?;
    }
    Ok(())
}
