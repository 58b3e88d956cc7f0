//! Decoding records read from a log: the header checked before anything is allocated for
//! the payload, then the crc, the flags and the payload of each kind.

use super::body::{GapReason, GapScope, Record, RecordBody, RecordFlags, RecordKind};
use super::validate::{bad, check_extent};
use super::{MAX_LABEL, RECORD_HEADER_SIZE};
use crate::error::Corrupt;
use crate::format::le::{Cursor, Short};
use crate::format::{MAX_PAYLOAD, align_up, crc32};
use crate::units::{Extent, GroupId, LogId, SeqNo};

/// The fixed part of a record, decoded before its payload is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordHeader {
    /// Header + payload length (padding excluded).
    pub total_len: u32,
    /// Raw kind number.
    pub kind: u16,
    /// Raw flags.
    pub flags: u16,
    /// Sequence number.
    pub seq: SeqNo,
    /// Timestamp.
    pub timestamp_ns: u64,
    /// Stored crc.
    pub crc: u32,
}

impl RecordHeader {
    /// Payload length in bytes.
    #[must_use]
    pub fn payload_len(&self) -> usize {
        (self.total_len as usize).saturating_sub(RECORD_HEADER_SIZE)
    }
    /// Bytes the record occupies in the file, padding included.
    #[must_use]
    pub fn padded_len(&self) -> u64 {
        align_up(u64::from(self.total_len))
    }
}

/// Parses and range-checks a record header (before any allocation for its payload).
///
/// # Errors
/// [`Corrupt::RecordLength`] or [`Corrupt::NonZeroReserved`].
pub fn parse_record_header(b: &[u8; RECORD_HEADER_SIZE]) -> Result<RecordHeader, Corrupt> {
    let short = |_: Short| Corrupt::RecordLength { len: 0 };
    let mut c = Cursor::new(b);
    let total_len = c.u32().map_err(short)?;
    let h = RecordHeader {
        total_len,
        kind: c.u16().map_err(short)?,
        flags: c.u16().map_err(short)?,
        seq: SeqNo(c.u64().map_err(short)?),
        timestamp_ns: c.u64().map_err(short)?,
        crc: {
            let reserved = c.u32().map_err(short)?;
            if reserved != 0 {
                return Err(Corrupt::NonZeroReserved);
            }
            c.u32().map_err(short)?
        },
    };
    let len = total_len as usize;
    if !(RECORD_HEADER_SIZE..=RECORD_HEADER_SIZE + MAX_PAYLOAD).contains(&len) {
        return Err(Corrupt::RecordLength {
            len: u64::from(total_len),
        });
    }
    Ok(h)
}

/// Checks a record's crc and decodes its payload. `disk_size` bounds every extent.
///
/// # Errors
/// The first validation that fails.
pub fn decode_record(
    log_id: &LogId,
    header_bytes: &[u8; RECORD_HEADER_SIZE],
    h: &RecordHeader,
    payload: &[u8],
    disk_size: u64,
) -> Result<Record, Corrupt> {
    let computed = crc32(&[&log_id.0, &header_bytes[..28], payload]);
    if computed != h.crc {
        return Err(Corrupt::RecordCrc {
            stored: h.crc,
            computed,
        });
    }
    let kind = RecordKind::from_u16(h.kind).ok_or(Corrupt::UnknownKind(h.kind))?;
    let flags = RecordFlags(h.flags);
    let flags_ok = h.flags & !RecordFlags::KNOWN == 0
        && (h.flags == 0
            || matches!(
                kind,
                RecordKind::Write
                    | RecordKind::WriteData
                    | RecordKind::WriteZeroes
                    | RecordKind::Flush
            ));
    if !flags_ok {
        return Err(bad(format!(
            "flags {:#x} not valid on {}",
            h.flags,
            kind.name()
        )));
    }
    let body = decode_body(kind, payload, disk_size)?;
    Ok(Record {
        seq: h.seq,
        timestamp_ns: h.timestamp_ns,
        flags,
        body,
    })
}

fn decode_body(kind: RecordKind, p: &[u8], disk_size: u64) -> Result<RecordBody, Corrupt> {
    let short = |_: Short| bad(format!("{} payload too short", kind.name()));
    let mut c = Cursor::new(p);
    let body = match kind {
        RecordKind::Write => RecordBody::Write(extent_list(&mut c, disk_size)?),
        RecordKind::Discard => RecordBody::Discard(extent_list(&mut c, disk_size)?),
        RecordKind::SecureErase => RecordBody::SecureErase(extent_list(&mut c, disk_size)?),
        RecordKind::WriteZeroes => RecordBody::WriteZeroes(extent_list(&mut c, disk_size)?),
        RecordKind::WriteData => {
            let offset = c.u64().map_err(short)?;
            let data = c.remaining();
            check_extent(offset, data.len() as u64, disk_size)?;
            c.bytes(data.len()).map_err(short)?;
            RecordBody::WriteData {
                offset,
                data: data.to_vec(),
            }
        }
        RecordKind::Flush => RecordBody::Flush,
        RecordKind::ConsistencyTag => RecordBody::ConsistencyTag {
            group: GroupId(c.array().map_err(short)?),
            tag: c.u64().map_err(short)?,
        },
        RecordKind::AppConsistentTag => {
            let group = GroupId(c.array().map_err(short)?);
            let tag = c.u64().map_err(short)?;
            let n = c.u32().map_err(short)? as usize;
            if n > MAX_LABEL {
                return Err(bad(format!("label of {n} bytes exceeds {MAX_LABEL}")));
            }
            let label = std::str::from_utf8(c.bytes(n).map_err(short)?)
                .map_err(|_| bad("label is not UTF-8"))?
                .to_owned();
            RecordBody::AppConsistentTag { group, tag, label }
        }
        RecordKind::TrackingGap => {
            let reason = GapReason::from_u16(c.u16().map_err(short)?);
            let scope = match c.u16().map_err(short)? {
                0 => GapScope::WholeDisk,
                1 => GapScope::Extents(extent_list(&mut c, disk_size)?),
                s => return Err(bad(format!("unknown gap scope {s}"))),
            };
            RecordBody::TrackingGap { reason, scope }
        }
    };
    if !c.remaining().is_empty() {
        return Err(bad(format!(
            "{} trailing bytes after {} payload",
            c.remaining().len(),
            kind.name()
        )));
    }
    Ok(body)
}

fn extent_list(c: &mut Cursor<'_>, disk_size: u64) -> Result<Vec<Extent>, Corrupt> {
    let short = |_: Short| bad("extent list too short");
    let count = c.u32().map_err(short)? as usize;
    if c.u32().map_err(short)? != 0 {
        return Err(Corrupt::NonZeroReserved);
    }
    if count == 0 {
        return Err(bad("empty extent list"));
    }
    // Size-check before allocating: the count comes from the file.
    if count.saturating_mul(16) != c.remaining().len() {
        return Err(bad(format!(
            "extent count {count} does not match {} payload bytes",
            c.remaining().len()
        )));
    }
    let mut v = Vec::with_capacity(count);
    for _ in 0..count {
        let off = c.u64().map_err(short)?;
        let len = c.u64().map_err(short)?;
        v.push(check_extent(off, len, disk_size)?);
    }
    Ok(v)
}
