//! Change records: the 32-byte record header and each kind's payload.
//!
//! ```text
//! Record header (little-endian), at an 8-byte aligned file offset:
//! off size field
//!   0    4 total_len     32 + payload length (padding excluded); ≤ 32 + MAX_PAYLOAD
//!   4    2 kind          see RecordKind
//!   6    2 flags         bit 0 FUA, bit 1 PREFLUSH (write kinds and Flush only); others zero
//!   8    8 seq           previous record's seq + 1 (first_seq for a log's first record)
//!  16    8 timestamp_ns  wall clock when the change was observed
//!  24    4 reserved      zero
//!  28    4 crc32         crc32 of: log_id (16 bytes, from the file header) ‖ bytes 0..28
//!                        of this header ‖ payload
//!  32    …  payload      total_len - 32 bytes
//!   …    …  padding      zero bytes up to the next multiple of 8
//! ```
//!
//! The crc is salted with the log's id so a record copied from (or left over by) another
//! log file can never validate here — MS-HRL's per-entry byte sum cannot tell.
//!
//! Payloads (offsets relative to the payload; byte offsets and lengths on the disk are
//! always bytes, 512-aligned, non-empty, inside the disk):
//! ```text
//! ExtentList (Write, Discard, SecureErase, WriteZeroes, and TrackingGap's extents)
//!   0  4 count (≥ 1)   4  4 reserved (zero)   8  16×count {offset u64, len u64}
//! WriteData          0  8 offset              8  data (len = payload - 8, ≥ 512, 512-aligned)
//! Flush              empty
//! ConsistencyTag     0 16 group_id           16  8 tag_id
//! AppConsistentTag   0 16 group_id           16  8 tag_id   24  4 label_len (≤ 1024)
//!                   28  label, UTF-8
//! TrackingGap        0  2 reason              2  2 scope (0 whole disk, 1 extents)
//!                    4  ExtentList when scope = 1; nothing when scope = 0
//! ```

use super::le::{Cursor, Short, put};
use super::{MAX_PAYLOAD, RECORD_ALIGN, align_up, crc32};
use crate::error::Corrupt;
use crate::units::{Extent, GroupId, LogId, SECTOR_SIZE, SeqNo};

/// Size of the record header.
pub const RECORD_HEADER_SIZE: usize = 32;
/// Longest app-consistent tag label.
pub const MAX_LABEL: usize = 1024;

/// What a record says happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[repr(u16)]
pub enum RecordKind {
    /// Ranges were written (data not logged: read it from the source disk when shipping).
    Write = 1,
    /// One range was written, and its data follows (journal mode).
    WriteData = 2,
    /// Ranges were discarded (TRIM/UNMAP): contents are now unspecified.
    Discard = 3,
    /// Ranges were securely erased.
    SecureErase = 4,
    /// Ranges were set to zeroes.
    WriteZeroes = 5,
    /// A flush barrier: every change before it was durable on the source when it completed.
    Flush = 6,
    /// A crash-consistent cut, shared by all disks of a consistency group.
    ConsistencyTag = 7,
    /// An app-consistent point: the application/filesystem was quiesced here.
    AppConsistentTag = 8,
    /// Changes were (or may have been) missed in these ranges: they must be resynced.
    TrackingGap = 9,
}

impl RecordKind {
    /// All kinds, in numeric order.
    pub const ALL: [RecordKind; 9] = [
        RecordKind::Write,
        RecordKind::WriteData,
        RecordKind::Discard,
        RecordKind::SecureErase,
        RecordKind::WriteZeroes,
        RecordKind::Flush,
        RecordKind::ConsistencyTag,
        RecordKind::AppConsistentTag,
        RecordKind::TrackingGap,
    ];

    /// The kind with this wire number.
    #[must_use]
    pub fn from_u16(v: u16) -> Option<Self> {
        Self::ALL.into_iter().find(|k| *k as u16 == v)
    }

    /// A short lowercase name for tools.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            RecordKind::Write => "write",
            RecordKind::WriteData => "write-data",
            RecordKind::Discard => "discard",
            RecordKind::SecureErase => "secure-erase",
            RecordKind::WriteZeroes => "write-zeroes",
            RecordKind::Flush => "flush",
            RecordKind::ConsistencyTag => "consistency-tag",
            RecordKind::AppConsistentTag => "app-consistent-tag",
            RecordKind::TrackingGap => "tracking-gap",
        }
    }
}

/// Per-record flags (the block layer's FUA and PREFLUSH as they arrived).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, serde::Serialize)]
pub struct RecordFlags(u16);

impl RecordFlags {
    /// Forced unit access: the write was durable when it completed.
    pub const FUA: RecordFlags = RecordFlags(1);
    /// The device cache was flushed before this change.
    pub const PREFLUSH: RecordFlags = RecordFlags(2);
    const KNOWN: u16 = 3;

    /// No flags.
    #[must_use]
    pub const fn empty() -> Self {
        RecordFlags(0)
    }
    /// Raw bits.
    #[must_use]
    pub const fn bits(self) -> u16 {
        self.0
    }
    /// Whether every flag in `other` is set.
    #[must_use]
    pub const fn contains(self, other: RecordFlags) -> bool {
        self.0 & other.0 == other.0
    }
    /// Both sets of flags.
    #[must_use]
    pub const fn union(self, other: RecordFlags) -> Self {
        RecordFlags(self.0 | other.0)
    }
}

/// Why a tracking gap was recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum GapReason {
    /// Tracking started with no cleanly closed predecessor log (first start, crash, reboot).
    NoCleanPredecessor,
    /// The interceptor lost events it could not account for.
    EventsLost,
    /// The log space cap was reached; changes went to a coarse bitmap.
    LogSpaceExhausted,
    /// The disk was written while it was not tracked.
    NotTracking,
    /// An operator asked for these ranges to be resynced.
    Operator,
    /// The kernel completed changes the tracker never saw complete (its completion counts
    /// fell short of the device's own); the scope is every range that could be theirs.
    CompletionsMissed,
    /// A reason this version does not name (still a gap: it must be resynced).
    Other(u16),
}

impl GapReason {
    /// Wire number.
    #[must_use]
    pub const fn to_u16(self) -> u16 {
        match self {
            GapReason::NoCleanPredecessor => 1,
            GapReason::EventsLost => 2,
            GapReason::LogSpaceExhausted => 3,
            GapReason::NotTracking => 4,
            GapReason::Operator => 5,
            GapReason::CompletionsMissed => 6,
            GapReason::Other(v) => v,
        }
    }
    /// From the wire number.
    #[must_use]
    pub const fn from_u16(v: u16) -> Self {
        match v {
            1 => GapReason::NoCleanPredecessor,
            2 => GapReason::EventsLost,
            3 => GapReason::LogSpaceExhausted,
            4 => GapReason::NotTracking,
            5 => GapReason::Operator,
            6 => GapReason::CompletionsMissed,
            v => GapReason::Other(v),
        }
    }
}

/// Which part of the disk a tracking gap covers.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub enum GapScope {
    /// Anything may have changed anywhere.
    WholeDisk,
    /// Only these ranges are suspect.
    Extents(Vec<Extent>),
}

/// A record's content.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub enum RecordBody {
    /// Ranges written.
    Write(Vec<Extent>),
    /// One range written, with its data.
    WriteData {
        /// Byte offset on the disk.
        offset: u64,
        /// The bytes written.
        #[serde(skip)]
        data: Vec<u8>,
    },
    /// Ranges discarded.
    Discard(Vec<Extent>),
    /// Ranges securely erased.
    SecureErase(Vec<Extent>),
    /// Ranges zeroed.
    WriteZeroes(Vec<Extent>),
    /// A flush barrier.
    Flush,
    /// A crash-consistent cut.
    ConsistencyTag {
        /// The consistency group.
        group: GroupId,
        /// The cut's id, the same on every disk of the group.
        tag: u64,
    },
    /// An app-consistent point.
    AppConsistentTag {
        /// The consistency group.
        group: GroupId,
        /// The point's id, the same on every disk of the group.
        tag: u64,
        /// Free text (e.g. which hook quiesced the app).
        label: String,
    },
    /// A tracking gap.
    TrackingGap {
        /// Why.
        reason: GapReason,
        /// Where.
        scope: GapScope,
    },
}

impl RecordBody {
    /// The record kind of this body.
    #[must_use]
    pub fn kind(&self) -> RecordKind {
        match self {
            RecordBody::Write(_) => RecordKind::Write,
            RecordBody::WriteData { .. } => RecordKind::WriteData,
            RecordBody::Discard(_) => RecordKind::Discard,
            RecordBody::SecureErase(_) => RecordKind::SecureErase,
            RecordBody::WriteZeroes(_) => RecordKind::WriteZeroes,
            RecordBody::Flush => RecordKind::Flush,
            RecordBody::ConsistencyTag { .. } => RecordKind::ConsistencyTag,
            RecordBody::AppConsistentTag { .. } => RecordKind::AppConsistentTag,
            RecordBody::TrackingGap { .. } => RecordKind::TrackingGap,
        }
    }

    /// The disk ranges this record changes or marks (empty for barriers and tags;
    /// `None` for a whole-disk gap).
    #[must_use]
    pub fn extents(&self) -> Option<Vec<Extent>> {
        Some(match self {
            RecordBody::Write(e)
            | RecordBody::Discard(e)
            | RecordBody::SecureErase(e)
            | RecordBody::WriteZeroes(e)
            | RecordBody::TrackingGap {
                scope: GapScope::Extents(e),
                ..
            } => e.clone(),
            RecordBody::WriteData { offset, data } => Extent::new(*offset, data.len() as u64)
                .into_iter()
                .collect(),
            RecordBody::TrackingGap {
                scope: GapScope::WholeDisk,
                ..
            } => return None,
            RecordBody::Flush
            | RecordBody::ConsistencyTag { .. }
            | RecordBody::AppConsistentTag { .. } => Vec::new(),
        })
    }
}

/// One decoded record.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Record {
    /// Sequence number.
    pub seq: SeqNo,
    /// When the change was observed, nanoseconds since the Unix epoch.
    pub timestamp_ns: u64,
    /// FUA / PREFLUSH.
    pub flags: RecordFlags,
    /// What happened.
    pub body: RecordBody,
}

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

fn bad(why: impl Into<String>) -> Corrupt {
    Corrupt::BadPayload(why.into())
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

/// Size of a change record of `n` extents ([`encode_extents_record`]): header, count,
/// reserved, the extents — a multiple of 8, no padding.
#[must_use]
pub const fn extents_record_size(n: usize) -> usize {
    RECORD_HEADER_SIZE + 8 + 16 * n
}

/// Most extents in one change record (the payload cap).
pub const MAX_RECORD_EXTENTS: usize = (MAX_PAYLOAD - 16) / 16;

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

/// Appends one encoded record (header, payload, padding) to `out`. The caller has validated
/// `body` with [`validate_body`]; `out.len()` must be a multiple of 8 relative to the file.
pub fn encode_record(
    log_id: &LogId,
    seq: SeqNo,
    timestamp_ns: u64,
    flags: RecordFlags,
    body: &RecordBody,
    out: &mut Vec<u8>,
) {
    let start = out.len();
    out.resize(start + RECORD_HEADER_SIZE, 0);
    encode_payload(body, out);
    finish_record(log_id, start, body.kind(), flags, seq, timestamp_ns, out);
}

/// Like [`encode_record`] for a change record of a list of extents (what a block
/// interceptor logs for the writes of one turn), byte for byte the same as `encode_record`
/// of the kind's body with that list, without building the body. `log_crc` is the CRC-32
/// state after the log's id ([`log_id_crc`]), so the id is not hashed again for every
/// record. The caller has validated the record with [`validate_extents_record`].
#[allow(clippy::too_many_arguments)] // the header's fields, as encode_record takes them
pub fn encode_extents_record(
    log_crc: u32,
    seq: SeqNo,
    timestamp_ns: u64,
    kind: RecordKind,
    flags: RecordFlags,
    extents: &[Extent],
    out: &mut Vec<u8>,
) {
    let start = out.len();
    let size = extents_record_size(extents.len());
    // Bounded by MAX_RECORD_EXTENTS through validate_extents_record: fits in u32.
    let total = u32::try_from(size).unwrap_or(u32::MAX);
    let count = u32::try_from(extents.len()).unwrap_or(u32::MAX);
    out.reserve(size);
    out.extend_from_slice(&total.to_le_bytes());
    out.extend_from_slice(&(kind as u16).to_le_bytes());
    out.extend_from_slice(&flags.bits().to_le_bytes());
    out.extend_from_slice(&seq.0.to_le_bytes());
    out.extend_from_slice(&timestamp_ns.to_le_bytes());
    out.extend_from_slice(&[0; 8]); // reserved, crc (below)
    out.extend_from_slice(&count.to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    for e in extents {
        out.extend_from_slice(&e.offset().to_le_bytes());
        out.extend_from_slice(&e.len().to_le_bytes());
    }
    let mut h = crc32fast::Hasher::new_with_initial(log_crc);
    h.update(&out[start..start + 28]);
    h.update(&out[start + RECORD_HEADER_SIZE..]);
    let crc = h.finalize();
    put(&mut out[start..], 28, &crc.to_le_bytes());
}

/// The CRC-32 state after a log's id, with which every record of that log's crc starts
/// ([`encode_extents_record`]).
#[must_use]
pub fn log_id_crc(log_id: &LogId) -> u32 {
    crc32(&[&log_id.0])
}

/// Like [`encode_record`] for a `WriteData` record, without copying `data` into a body first
/// (the journal-mode hot path).
pub fn encode_write_data(
    log_id: &LogId,
    seq: SeqNo,
    timestamp_ns: u64,
    flags: RecordFlags,
    offset: u64,
    data: &[u8],
    out: &mut Vec<u8>,
) {
    let start = out.len();
    out.resize(start + RECORD_HEADER_SIZE, 0);
    out.extend_from_slice(&offset.to_le_bytes());
    out.extend_from_slice(data);
    finish_record(
        log_id,
        start,
        RecordKind::WriteData,
        flags,
        seq,
        timestamp_ns,
        out,
    );
}

fn finish_record(
    log_id: &LogId,
    start: usize,
    kind: RecordKind,
    flags: RecordFlags,
    seq: SeqNo,
    ts: u64,
    out: &mut Vec<u8>,
) {
    // Bounded by MAX_PAYLOAD through validate_body, so it fits in u32.
    let total = u32::try_from(out.len() - start).unwrap_or(u32::MAX);
    let h = &mut out[start..start + RECORD_HEADER_SIZE];
    put(h, 0, &total.to_le_bytes());
    put(h, 4, &(kind as u16).to_le_bytes());
    put(h, 6, &flags.bits().to_le_bytes());
    put(h, 8, &seq.0.to_le_bytes());
    put(h, 16, &ts.to_le_bytes());
    let crc = crc32(&[
        &log_id.0,
        &out[start..start + 28],
        &out[start + RECORD_HEADER_SIZE..],
    ]);
    put(&mut out[start..], 28, &crc.to_le_bytes());
    let padded = start + (out.len() - start).next_multiple_of(RECORD_ALIGN);
    out.resize(padded, 0);
}

fn encode_payload(body: &RecordBody, out: &mut Vec<u8>) {
    let list = |v: &[Extent], out: &mut Vec<u8>| {
        let n = u32::try_from(v.len()).unwrap_or(u32::MAX);
        out.extend_from_slice(&n.to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        for e in v {
            out.extend_from_slice(&e.offset().to_le_bytes());
            out.extend_from_slice(&e.len().to_le_bytes());
        }
    };
    match body {
        RecordBody::Write(v)
        | RecordBody::Discard(v)
        | RecordBody::SecureErase(v)
        | RecordBody::WriteZeroes(v) => list(v, out),
        RecordBody::WriteData { offset, data } => {
            out.extend_from_slice(&offset.to_le_bytes());
            out.extend_from_slice(data);
        }
        RecordBody::Flush => {}
        RecordBody::ConsistencyTag { group, tag } => {
            out.extend_from_slice(&group.0);
            out.extend_from_slice(&tag.to_le_bytes());
        }
        RecordBody::AppConsistentTag { group, tag, label } => {
            out.extend_from_slice(&group.0);
            out.extend_from_slice(&tag.to_le_bytes());
            let n = u32::try_from(label.len()).unwrap_or(u32::MAX);
            out.extend_from_slice(&n.to_le_bytes());
            out.extend_from_slice(label.as_bytes());
        }
        RecordBody::TrackingGap { reason, scope } => {
            out.extend_from_slice(&reason.to_u16().to_le_bytes());
            match scope {
                GapScope::WholeDisk => out.extend_from_slice(&0u16.to_le_bytes()),
                GapScope::Extents(v) => {
                    out.extend_from_slice(&1u16.to_le_bytes());
                    list(v, out);
                }
            }
        }
    }
}
