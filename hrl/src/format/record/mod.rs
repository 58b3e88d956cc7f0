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

// The encoders live here, beside the layout above; the typed records are in `body`, their
// decoding in `decode`, and the rules both sides enforce in `validate`.
mod body;
mod decode;
mod validate;

pub use body::{GapReason, GapScope, Record, RecordBody, RecordFlags, RecordKind};
pub use decode::{RecordHeader, decode_record, parse_record_header};
pub use validate::{check_extent, validate_body, validate_extents_record};

use super::le::put;
use super::{MAX_PAYLOAD, RECORD_ALIGN, crc32};
use crate::units::{Extent, LogId, SeqNo};

/// Size of the record header.
pub const RECORD_HEADER_SIZE: usize = 32;

/// Longest app-consistent tag label.
pub const MAX_LABEL: usize = 1024;

/// Size of a change record of `n` extents ([`encode_extents_record`]): header, count,
/// reserved, the extents — a multiple of 8, no padding.
#[must_use]
pub const fn extents_record_size(n: usize) -> usize {
    RECORD_HEADER_SIZE + 8 + 16 * n
}

/// Most extents in one change record (the payload cap).
pub const MAX_RECORD_EXTENTS: usize = (MAX_PAYLOAD - 16) / 16;

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
