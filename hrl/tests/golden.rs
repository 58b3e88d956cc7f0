//! Golden bytes: the encoding must match docs/hrl-format.md exactly. If one of these fails,
//! the on-disk format changed: bump FORMAT_VERSION and document the change, or fix the bug.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failures should panic

use hrl::format::header::{decode_header, encode_header, encode_seal};
use hrl::format::record::{encode_record, parse_record_header};
use hrl::{
    DiskId, DiskIdentity, Extent, GapReason, GapScope, Generation, GroupId, LogHeader, LogId,
    LogSeq, RecordBody, RecordFlags, Seal, SeqNo,
};

fn header() -> LogHeader {
    LogHeader {
        disk: DiskIdentity {
            id: DiskId([0x11; 16]),
            size: 1 << 30,
            logical_block_size: 4096,
        },
        journal: true,
        generation: Generation(3),
        log_seq: LogSeq(7),
        log_id: LogId([0xAA; 16]),
        prev_log_id: LogId([0xBB; 16]),
        created_unix_ns: 0x0102_0304_0506_0708,
        first_seq: SeqNo(1000),
    }
}

fn le(v: u64, n: usize) -> Vec<u8> {
    v.to_le_bytes()[..n].to_vec()
}

#[test]
fn header_layout_matches_the_document() {
    let b = encode_header(&header());
    let mut want = vec![0u8; 4096];
    let mut put = |at: usize, v: &[u8]| want[at..at + v.len()].copy_from_slice(v);
    put(0, b"SITRPHRL");
    put(8, &le(1, 2)); // format_version
    put(10, &le(1, 2)); // flags: JOURNAL
    put(12, &le(4096, 4)); // header_size
    put(16, &[0x11; 16]);
    put(32, &le(1 << 30, 8));
    put(40, &le(4096, 4));
    put(48, &le(3, 8));
    put(56, &le(7, 8));
    put(64, &[0xAA; 16]);
    put(80, &[0xBB; 16]);
    put(96, &le(0x0102_0304_0506_0708, 8));
    put(104, &le(1000, 8));
    let crc = crc32fast::hash(&want[..252]);
    want[252..256].copy_from_slice(&crc.to_le_bytes());
    assert_eq!(b.to_vec(), want);
    // Pin the checksum algorithm itself, not just its use.
    assert_eq!(crc, 0xb87b_f1a5, "header crc changed: {crc:#010x}");
    let (h, seal) = decode_header(&b).unwrap();
    assert_eq!(h, header());
    assert_eq!(seal, None);
}

#[test]
fn seal_layout_matches_the_document() {
    let s = encode_seal(&Seal {
        end_offset: 8192,
        record_count: 5,
        next_seq: SeqNo(1005),
        sealed_unix_ns: 9,
        recovered: true,
    });
    let mut want = Vec::new();
    want.extend_from_slice(b"SEALED\0\0");
    want.extend(le(8192, 8));
    want.extend(le(5, 8));
    want.extend(le(1005, 8));
    want.extend(le(9, 8));
    want.extend(le(1, 4));
    let crc = crc32fast::hash(&want);
    want.extend(crc.to_le_bytes());
    assert_eq!(s.to_vec(), want);
}

#[test]
fn write_record_layout_matches_the_document() {
    let log_id = LogId([0xAA; 16]);
    let body = RecordBody::Write(vec![
        Extent::new(4096, 8192).unwrap(),
        Extent::new(1 << 20, 512).unwrap(),
    ]);
    let mut out = Vec::new();
    encode_record(&log_id, SeqNo(42), 77, RecordFlags::FUA, &body, &mut out);

    let mut want = Vec::new();
    want.extend(le(32 + 8 + 32, 4)); // total_len
    want.extend(le(1, 2)); // kind Write
    want.extend(le(1, 2)); // flags FUA
    want.extend(le(42, 8));
    want.extend(le(77, 8));
    want.extend(le(0, 4)); // reserved
    let mut payload = Vec::new();
    payload.extend(le(2, 4));
    payload.extend(le(0, 4));
    payload.extend(le(4096, 8));
    payload.extend(le(8192, 8));
    payload.extend(le(1 << 20, 8));
    payload.extend(le(512, 8));
    let mut h = crc32fast::Hasher::new();
    h.update(&log_id.0);
    h.update(&want);
    h.update(&payload);
    let crc = h.finalize();
    want.extend(crc.to_le_bytes());
    want.extend(&payload);
    assert_eq!(out, want);
    assert_eq!(crc, 0x1a9c_186a, "record crc changed: {crc:#010x}");
    assert_eq!(out.len() % 8, 0);
}

#[test]
fn every_kind_has_its_documented_number_and_payload_size() {
    let log_id = LogId([1; 16]);
    let e = || vec![Extent::new(0, 512).unwrap()];
    let cases: Vec<(RecordBody, u16, usize)> = vec![
        (RecordBody::Write(e()), 1, 8 + 16),
        (
            RecordBody::WriteData {
                offset: 512,
                data: vec![7; 1024],
            },
            2,
            8 + 1024,
        ),
        (RecordBody::Discard(e()), 3, 24),
        (RecordBody::SecureErase(e()), 4, 24),
        (RecordBody::WriteZeroes(e()), 5, 24),
        (RecordBody::Flush, 6, 0),
        (
            RecordBody::ConsistencyTag {
                group: GroupId([2; 16]),
                tag: 9,
            },
            7,
            24,
        ),
        (
            RecordBody::AppConsistentTag {
                group: GroupId([2; 16]),
                tag: 9,
                label: "fsfreeze".into(),
            },
            8,
            28 + 8,
        ),
        (
            RecordBody::TrackingGap {
                reason: GapReason::EventsLost,
                scope: GapScope::WholeDisk,
            },
            9,
            4,
        ),
        (
            RecordBody::TrackingGap {
                reason: GapReason::Operator,
                scope: GapScope::Extents(e()),
            },
            9,
            4 + 24,
        ),
    ];
    for (body, kind, payload) in cases {
        let mut out = Vec::new();
        encode_record(&log_id, SeqNo(1), 0, RecordFlags::empty(), &body, &mut out);
        let h = parse_record_header(out[..32].try_into().unwrap()).unwrap();
        assert_eq!(h.kind, kind, "{body:?}");
        assert_eq!(h.payload_len(), payload, "{body:?}");
        assert_eq!(out.len(), (32 + payload).next_multiple_of(8), "{body:?}");
    }
}

#[test]
fn gap_reason_numbers_are_pinned() {
    let pinned = [
        (GapReason::NoCleanPredecessor, 1),
        (GapReason::EventsLost, 2),
        (GapReason::LogSpaceExhausted, 3),
        (GapReason::NotTracking, 4),
        (GapReason::Operator, 5),
        (GapReason::CompletionsMissed, 6),
        (GapReason::Other(77), 77),
    ];
    for (reason, n) in pinned {
        assert_eq!(reason.to_u16(), n, "{reason:?}");
        assert_eq!(GapReason::from_u16(n), reason, "{n}");
    }
}

#[test]
fn the_extents_encoder_writes_the_same_bytes_as_encode_record() {
    use hrl::RecordKind;
    use hrl::format::record::{encode_extents_record, extents_record_size, log_id_crc};
    let log_id = LogId([0x5C; 16]);
    let crc = log_id_crc(&log_id);
    let all = [
        (0, 512),
        (4096, 4096),
        (1 << 40, 1 << 20),
        (u64::MAX - 1023, 512),
        (8192, 4096),
    ];
    type Body = fn(Vec<Extent>) -> RecordBody;
    let kinds: [(RecordKind, Body); 4] = [
        (RecordKind::Write, RecordBody::Write),
        (RecordKind::Discard, RecordBody::Discard),
        (RecordKind::SecureErase, RecordBody::SecureErase),
        (RecordKind::WriteZeroes, RecordBody::WriteZeroes),
    ];
    for (kind, body) in kinds {
        for flags in [RecordFlags::empty(), RecordFlags::FUA] {
            for n in 1..=all.len() {
                let list: Vec<Extent> = all[..n]
                    .iter()
                    .map(|&(o, l)| Extent::new(o, l).unwrap())
                    .collect();
                let (seq, ts) = (SeqNo(1000 + n as u64), 0x0123_4567_89ab_cdef ^ n as u64);
                let mut want = vec![7u8; 8]; // something already in the batch
                encode_record(&log_id, seq, ts, flags, &body(list.clone()), &mut want);
                let mut got = vec![7u8; 8];
                encode_extents_record(crc, seq, ts, kind, flags, &list, &mut got);
                assert_eq!(got, want, "{kind:?} {flags:?} {n} extents");
                assert_eq!(got.len() - 8, extents_record_size(n));
            }
        }
    }
}
