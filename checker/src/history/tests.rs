//! The history reader against good files of both versions, against damaged ones, and against
//! random mutations of both (it must refuse or read, never panic or over-allocate).

use super::format::{KIND_END, KIND_WRITE, encode_record};
use super::*;
use crate::block::BlockSize;

const RUN: RunId = RunId([0xab; 16]);

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

pub(crate) fn header() -> HistoryHeader {
    HistoryHeader {
        run_id: RUN,
        block_size: BlockSize::DEFAULT,
        devices: vec![DeviceGeometry {
            block_count: 16,
            device_size: 16 * 4096 + 100,
        }],
        start_ns: UnixNs(1_000),
    }
}

/// Two devices: 16 blocks (65636 bytes) and 8 blocks (32768 bytes).
fn header2() -> HistoryHeader {
    let mut h = header();
    h.devices.push(DeviceGeometry {
        block_count: 8,
        device_size: 8 * 4096,
    });
    h
}

fn rec(seq: u64, block: u64) -> HistoryRecord {
    HistoryRecord {
        seq,
        device: 0,
        block,
        issue_ns: UnixNs(10 * seq + 1),
        complete_ns: UnixNs(10 * seq + 5),
        depends_on: None,
    }
}

/// Write s of a two-device run: even seqs on device 0, odd on device 1, each depending on
/// the one before it (a strict chain alternating between the devices).
fn rec2(seq: u64) -> HistoryRecord {
    HistoryRecord {
        device: u16::from(seq % 2 == 1),
        block: seq % 8,
        depends_on: seq.checked_sub(1),
        ..rec(seq, 0)
    }
}

fn write(path: &Path, n: u64, end: bool) {
    let mut w = HistoryWriter::create(path, &header()).unwrap();
    for s in 0..n {
        w.push(&rec(s, s % 16));
    }
    w.flush().unwrap();
    if end {
        assert_eq!(w.finish(UnixNs(999)).unwrap(), n);
    }
}

fn write2(path: &Path, n: u64, end: bool) {
    let mut w = HistoryWriter::create(path, &header2()).unwrap();
    for s in 0..n {
        w.push(&rec2(s));
    }
    w.flush().unwrap();
    if end {
        assert_eq!(w.finish(UnixNs(999)).unwrap(), n);
    }
}

fn record_bytes(version: u16, r: &HistoryRecord, kind: u32) -> Vec<u8> {
    let mut out = Vec::new();
    encode_record(version, RUN, r, kind, &mut out);
    out
}

#[test]
fn golden_header_and_record_v1() {
    // Derived independently (Python struct + zlib.crc32), not copied from this crate.
    let want_header = concat!(
        "5349545257484953",                 // magic "SITRWHIS"
        "0100",                             // version 1
        "4000",                             // header length 64
        "00100000",                         // block size 4096
        "abababababababababababababababab", // run id
        "1000000000000000",                 // block count 16
        "6400010000000000",                 // device size 65636
        "e803000000000000",                 // start_ns 1000
        "6104779a",                         // crc
        "00000000",                         // reserved
    );
    assert_eq!(hex(&header().encode()), want_header);
    let r = HistoryRecord {
        issue_ns: UnixNs(51),
        complete_ns: UnixNs(55),
        ..rec(5, 3)
    };
    let want_record = concat!(
        "0500000000000000", // seq 5
        "0300000000000000", // block 3
        "3300000000000000", // issue_ns 51
        "3700000000000000", // complete_ns 55
        "01000000",         // kind: write
        "b0f45561",         // crc (salted with the run id)
    );
    assert_eq!(hex(&record_bytes(1, &r, KIND_WRITE)), want_record);
}

/// Fails if the version-2 encoding drifts. Change only with HISTORY_FORMAT_VERSION and
/// docs/checker.md.
#[test]
fn golden_header_and_records_v2() {
    // Derived independently (the same Python model, which also reproduces the version-1
    // goldens above), not copied from this crate.
    let want_header = concat!(
        "5349545257484953",                 // magic "SITRWHIS"
        "0200",                             // version 2
        "6000",                             // header length 96 = 64 + 16 * 2
        "00100000",                         // block size 4096
        "abababababababababababababababab", // run id
        "02000000",                         // device count 2
        "000000000000000000000000",         // reserved
        "e803000000000000",                 // start_ns 1000
        "fa5bb8ae",                         // crc of 0..56 and the device table
        "00000000",                         // reserved
        "1000000000000000",                 // device 0: 16 blocks
        "6400010000000000",                 //           65636 bytes
        "0800000000000000",                 // device 1: 8 blocks
        "0080000000000000",                 //           32768 bytes
    );
    assert_eq!(hex(&header2().encode()), want_header);
    let r = HistoryRecord {
        seq: 5,
        device: 1,
        block: 3,
        issue_ns: UnixNs(51),
        complete_ns: UnixNs(55),
        depends_on: Some(2),
    };
    let want = concat!(
        "0500000000000000", // seq 5
        "0300000000000000", // block 3
        "3300000000000000", // issue_ns 51
        "3700000000000000", // complete_ns 55
        "0200000000000000", // depends on seq 2
        "0100",             // device 1
        "0100",             // kind: write
        "6954cd0d",         // crc (salted with the run id)
    );
    assert_eq!(hex(&record_bytes(2, &r, KIND_WRITE)), want);
    let first = HistoryRecord {
        seq: 0,
        block: 0,
        issue_ns: UnixNs(1),
        complete_ns: UnixNs(5),
        depends_on: None,
        device: 0,
    };
    let want = concat!(
        "0000000000000000", // seq 0
        "0000000000000000", // block 0
        "0100000000000000", // issue_ns 1
        "0500000000000000", // complete_ns 5
        "ffffffffffffffff", // no dependency
        "0000",             // device 0
        "0100",             // kind: write
        "6913aabf",         // crc
    );
    assert_eq!(hex(&record_bytes(2, &first, KIND_WRITE)), want);
    let end = HistoryRecord {
        seq: 7,
        complete_ns: UnixNs(999),
        issue_ns: UnixNs(0),
        ..first
    };
    let want = concat!(
        "0700000000000000", // 7 write records
        "0000000000000000",
        "0000000000000000",
        "e703000000000000", // ended at 999
        "0000000000000000", // no dependency field in an end record: 0
        "0000",
        "0200", // kind: end
        "8b4d7070",
    );
    assert_eq!(hex(&record_bytes(2, &end, KIND_END)), want);
}

#[test]
fn clean_round_trip() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("h");
    write(&p, 50, true);
    let h = read_history(&p).unwrap();
    assert_eq!(h.header, header());
    assert_eq!(h.records.len(), 50);
    assert_eq!(h.records[7], rec(7, 7));
    assert_eq!(h.end_ns, Some(UnixNs(999)));
    assert_eq!(h.torn_tail_bytes, 0);
    assert!(
        HistoryWriter::create(&p, &header()).is_err(),
        "overwrote a history"
    );
}

#[test]
fn clean_round_trip_v2() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("h");
    write2(&p, 50, true);
    assert_eq!(
        std::fs::metadata(&p).unwrap().len(),
        96 + 51 * RECORD_LEN_V2 as u64
    );
    let h = read_history(&p).unwrap();
    assert_eq!((h.header.clone(), h.header.version()), (header2(), 2));
    assert_eq!(h.header.total_blocks(), 24);
    assert_eq!(h.records.len(), 50);
    assert_eq!(h.records[0], rec2(0));
    assert_eq!(h.records[7], rec2(7));
    assert_eq!(h.records[7].depends_on, Some(6));
    assert_eq!(h.records[7].device, 1);
    assert_eq!(h.end_ns, Some(UnixNs(999)));
}

#[test]
fn torn_tail_is_tolerated_and_counted() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("h");
    write(&p, 10, false);
    let full = std::fs::read(&p).unwrap();
    // Cut in the middle of record 9.
    std::fs::write(&p, &full[..full.len() - 17]).unwrap();
    let h = read_history(&p).unwrap();
    assert_eq!(
        (h.records.len(), h.torn_tail_bytes, h.clean()),
        (9, 23, false)
    );
    // A zero-filled tail (a crash after the size was extended) is a torn tail too.
    let mut z = full.clone();
    z.extend_from_slice(&[0u8; 3 * RECORD_LEN_V1]);
    std::fs::write(&p, &z).unwrap();
    let h = read_history(&p).unwrap();
    assert_eq!((h.records.len(), h.torn_tail_bytes), (10, 120));
}

#[test]
fn torn_tail_is_tolerated_and_counted_v2() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("h");
    write2(&p, 10, false);
    let full = std::fs::read(&p).unwrap();
    std::fs::write(&p, &full[..full.len() - 17]).unwrap();
    let h = read_history(&p).unwrap();
    assert_eq!(
        (h.records.len(), h.torn_tail_bytes, h.clean()),
        (9, 31, false)
    );
    let mut z = full.clone();
    z.extend_from_slice(&[0u8; 3 * RECORD_LEN_V2]);
    std::fs::write(&p, &z).unwrap();
    let h = read_history(&p).unwrap();
    assert_eq!((h.records.len(), h.torn_tail_bytes), (10, 144));
}

#[test]
fn damage_before_valid_records_is_corruption() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("h");
    write(&p, 10, true);
    let mut b = std::fs::read(&p).unwrap();
    b[HEADER_LEN + 3 * RECORD_LEN_V1 + 8] ^= 1;
    std::fs::write(&p, &b).unwrap();
    let e = read_history(&p).unwrap_err().to_string();
    assert!(
        e.contains("byte 184") && e.contains("followed by a valid one"),
        "{e}"
    );
    // Version 2: the device and dependency fields are under the CRC too.
    write2(&d.path().join("h2"), 10, true);
    let p = d.path().join("h2");
    for at in [32, 40] {
        let mut b = std::fs::read(&p).unwrap();
        b[96 + 3 * RECORD_LEN_V2 + at] ^= 1;
        std::fs::write(d.path().join("h3"), &b).unwrap();
        let e = read_history(&d.path().join("h3")).unwrap_err().to_string();
        assert!(
            e.contains("byte 240") && e.contains("followed by a valid one at byte 288"),
            "{e}"
        );
    }
}

#[test]
fn bad_headers_are_refused_before_allocating() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("h");
    let mut big = header();
    big.devices[0].block_count = u64::MAX / 4096;
    big.devices[0].device_size = u64::MAX;
    std::fs::write(&p, big.encode()).unwrap();
    assert!(matches!(read_history(&p), Err(Error::TooLarge { .. })));
    let mut b = header().encode();
    b[33] ^= 1;
    std::fs::write(&p, b).unwrap();
    let e = read_history(&p).unwrap_err().to_string();
    assert!(e.contains("header checksum"), "{e}");
    std::fs::write(&p, b"SITRWHIS").unwrap();
    let e = read_history(&p).unwrap_err().to_string();
    assert!(e.contains("shorter than the 64-byte header"), "{e}");
    let mut wrong = header();
    wrong.devices[0].device_size = 4096;
    std::fs::write(&p, wrong.encode()).unwrap();
    assert!(
        read_history(&p)
            .unwrap_err()
            .to_string()
            .contains("do not fit")
    );
    let mut v3 = header().encode();
    v3[8] = 3;
    std::fs::write(&p, v3).unwrap();
    let e = read_history(&p).unwrap_err().to_string();
    assert!(e.contains("version 3 (this build reads 1 and 2)"), "{e}");
}

/// The version-2 header's hostile cases: each refused with its reason, and the device count
/// capped before the device table is read.
#[test]
fn bad_headers_are_refused_before_allocating_v2() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("h");
    let refused = |bytes: &[u8]| {
        std::fs::write(&p, bytes).unwrap();
        read_history(&p).unwrap_err()
    };
    // A device count over the cap: TooLarge, from the first 64 bytes alone.
    let mut b = header2().encode();
    b[32..36].copy_from_slice(&1_000_000u32.to_le_bytes());
    let e = refused(&b[..HEADER_LEN]);
    assert!(
        matches!(
            e,
            Error::TooLarge {
                found: 1_000_000,
                limit: 64,
                ..
            }
        ),
        "{e}"
    );
    // A header length that does not match the device count.
    let mut b = header2().encode();
    b[10] = 0x70;
    let e = refused(&b).to_string();
    assert!(e.contains("does not fit 2 devices (want 96)"), "{e}");
    let mut b = header2().encode();
    b[32..36].copy_from_slice(&0u32.to_le_bytes());
    b[10..12].copy_from_slice(&64u16.to_le_bytes());
    let e = refused(&b[..HEADER_LEN]).to_string();
    assert!(e.contains("does not fit 0 devices"), "{e}");
    // The device table cut short.
    let e = refused(&header2().encode()[..80]).to_string();
    assert!(e.contains("shorter than the 96-byte header"), "{e}");
    // The device table is under the checksum.
    let mut b = header2().encode();
    b[64 + 16 + 1] ^= 1;
    let e = refused(&b).to_string();
    assert!(e.contains("header checksum"), "{e}");
    // A device whose blocks do not fit it, named.
    let mut h = header2();
    h.devices[1].device_size = 4096;
    let e = refused(&h.encode()).to_string();
    assert!(
        e.contains("device 1: 8 blocks of 4096 bytes do not fit"),
        "{e}"
    );
    // Devices that together exceed MAX_BLOCKS, each within it.
    let mut h = header2();
    for g in &mut h.devices {
        g.block_count = MAX_BLOCKS / 2 + 1;
        g.device_size = u64::MAX;
    }
    assert!(matches!(refused(&h.encode()), Error::TooLarge { .. }));
    // A device with no blocks.
    let mut h = header2();
    h.devices[0].block_count = 0;
    assert!(refused(&h.encode()).to_string().contains("0 blocks"));
}

#[test]
fn records_outside_the_device_are_corruption() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("h");
    let mut w = HistoryWriter::create(&p, &header()).unwrap();
    w.push(&rec(0, 16));
    w.flush().unwrap();
    let e = read_history(&p).unwrap_err().to_string();
    assert!(e.contains("names block 16 of 16"), "{e}");
}

#[test]
fn records_outside_the_run_are_corruption_v2() {
    let d = tempfile::tempdir().unwrap();
    let cases: [(HistoryRecord, &str); 4] = [
        (
            HistoryRecord {
                device: 2,
                ..rec2(1)
            },
            "names device 2 of 2",
        ),
        (
            HistoryRecord {
                block: 8,
                ..rec2(1)
            },
            "names block 8 of 8 on device 1",
        ),
        (
            HistoryRecord {
                depends_on: Some(1),
                ..rec2(1)
            },
            "depends on seq 1, which was not issued before it",
        ),
        (
            HistoryRecord {
                complete_ns: UnixNs(0),
                ..rec2(1)
            },
            "completed before it was issued",
        ),
    ];
    for (i, (bad, want)) in cases.into_iter().enumerate() {
        let p = d.path().join(format!("h{i}"));
        let mut w = HistoryWriter::create(&p, &header2()).unwrap();
        w.push(&rec2(0));
        w.push(&bad);
        w.flush().unwrap();
        let e = read_history(&p).unwrap_err().to_string();
        assert!(e.contains(want) && e.contains("byte 144"), "{e}");
    }
}

/// xorshift64*: a reproducible stream for the mutation test.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next() % n as u64).unwrap()
    }
}

/// One random damage to a history file: flipped bits, a field set to an extreme, a cut, a
/// tail of junk, or a header field rewritten with a valid CRC (so the checks behind the CRC
/// are reached too).
fn mutate(b: &mut Vec<u8>, rng: &mut Rng) {
    let extremes = [
        0u64,
        1,
        63,
        64,
        65,
        u64::from(u32::MAX),
        u64::MAX / 2,
        u64::MAX,
    ];
    match rng.below(5) {
        0 => {
            let at = rng.below(b.len());
            b[at] ^= 1 << rng.below(8);
        }
        1 => {
            let at = rng.below(b.len().saturating_sub(8).max(1));
            let v = extremes[rng.below(extremes.len())].to_le_bytes();
            let n = v.len().min(b.len() - at);
            b[at..at + n].copy_from_slice(&v[..n]);
        }
        2 => b.truncate(rng.below(b.len())),
        3 => b.extend((0..rng.below(200)).map(|_| rng.next().to_le_bytes()[0])),
        _ => {
            // A header field (at an 8-byte or 2-byte slot before the CRC, or in the device
            // table) set to an extreme, then the header CRC recomputed as a writer would.
            let v = extremes[rng.below(extremes.len())].to_le_bytes();
            let at = [10usize, 12, 32, 40, 48, 64, 72, 80, 88][rng.below(9)];
            if at + 8 <= b.len() && b.len() >= HEADER_LEN {
                let n = if at == 10 { 2 } else { 8 };
                b[at..at + n].copy_from_slice(&v[..n]);
                let len = usize::from(u16::from_le_bytes([b[10], b[11]])).min(b.len());
                let mut h = crc32fast::Hasher::new();
                h.update(&b[..56]);
                h.update(&b[HEADER_LEN.min(len)..len]);
                let crc = h.finalize().to_le_bytes();
                b[56..60].copy_from_slice(&crc);
            }
        }
    }
}

/// Thousands of randomly damaged histories of both versions: the reader refuses or reads
/// them, never panics, and what it reads still obeys the header (every record's device and
/// block inside the run, every dependency earlier than its write).
#[test]
fn random_damage_is_refused_or_read_never_a_panic() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("h");
    let (v1, v2) = (d.path().join("v1"), d.path().join("v2"));
    write(&v1, 20, true);
    write2(&v2, 20, true);
    let originals = [std::fs::read(&v1).unwrap(), std::fs::read(&v2).unwrap()];
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let (mut read, mut refused) = (0, 0);
    for i in 0..3000 {
        let mut b = originals[i % 2].clone();
        for _ in 0..=rng.below(3) {
            if !b.is_empty() {
                mutate(&mut b, &mut rng);
            }
        }
        std::fs::write(&p, &b).unwrap();
        match read_history(&p) {
            Ok(h) => {
                read += 1;
                assert!(
                    h.records.len() <= 20,
                    "case {i}: {} records",
                    h.records.len()
                );
                for r in &h.records {
                    let g = h.header.devices[usize::from(r.device)];
                    assert!(r.block < g.block_count, "case {i}: {r:?}");
                    assert!(r.depends_on.is_none_or(|s| s < r.seq), "case {i}: {r:?}");
                }
            }
            Err(_) => refused += 1,
        }
    }
    // Both outcomes happen: the mutations are neither all fatal nor all harmless.
    assert!(
        read > 100 && refused > 100,
        "read {read}, refused {refused}"
    );
}
