//! Property tests: any record sequence round-trips through the writer and reader across
//! rotations; any damage to a log gives records or a typed error, never a panic, and never
//! a record that was not written.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failures should panic

mod common;

use proptest::prelude::*;

use common::{DISK_SIZE, cfg, spec};
use hrl::chain::list_logs;
use hrl::{
    Extent, GapReason, GapScope, GroupId, LogReader, LogWriter, RecordBody, RecordFlags,
    RecoveryMode, WriterConfig,
};

fn extent() -> impl Strategy<Value = Extent> {
    (0..DISK_SIZE / 512, 1..64u64).prop_map(|(s, n)| {
        let off = s * 512;
        let len = (n * 512).min(DISK_SIZE - off);
        Extent::new(off, len).unwrap()
    })
}

fn body() -> impl Strategy<Value = (RecordFlags, RecordBody)> {
    let exts = || prop::collection::vec(extent(), 1..8);
    prop_oneof![
        (exts(), any::<bool>()).prop_map(|(v, fua)| (
            if fua {
                RecordFlags::FUA
            } else {
                RecordFlags::empty()
            },
            RecordBody::Write(v)
        )),
        (0..DISK_SIZE / 512 - 8, 1..8usize, any::<u8>()).prop_map(|(s, n, b)| (
            RecordFlags::empty(),
            RecordBody::WriteData {
                offset: s * 512,
                data: vec![b; n * 512]
            }
        )),
        exts().prop_map(|v| (RecordFlags::empty(), RecordBody::Discard(v))),
        exts().prop_map(|v| (RecordFlags::empty(), RecordBody::SecureErase(v))),
        exts().prop_map(|v| (RecordFlags::empty(), RecordBody::WriteZeroes(v))),
        Just((RecordFlags::PREFLUSH, RecordBody::Flush)),
        (any::<[u8; 16]>(), any::<u64>()).prop_map(|(g, t)| (
            RecordFlags::empty(),
            RecordBody::ConsistencyTag {
                group: GroupId(g),
                tag: t
            }
        )),
        (any::<u64>(), "[a-z /]{0,40}").prop_map(|(t, l)| (
            RecordFlags::empty(),
            RecordBody::AppConsistentTag {
                group: GroupId([1; 16]),
                tag: t,
                label: l
            }
        )),
        (any::<u16>(), prop::option::of(exts())).prop_map(|(r, e)| (
            RecordFlags::empty(),
            RecordBody::TrackingGap {
                reason: GapReason::from_u16(r),
                scope: e.map_or(GapScope::WholeDisk, GapScope::Extents)
            }
        )),
    ]
}

/// (record, commit after it, rotate after it)
fn script() -> impl Strategy<Value = Vec<((RecordFlags, RecordBody), bool, bool)>> {
    prop::collection::vec(
        (
            body(),
            prop::bool::weighted(0.3),
            prop::bool::weighted(0.05),
        ),
        0..60,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn records_round_trip_across_rotations(s in script()) {
        let d = tempfile::tempdir().unwrap();
        let (mut w, _) = LogWriter::open(d.path(), spec(), cfg()).unwrap();
        for ((f, b), commit, rotate) in &s {
            w.append(*f, b).unwrap();
            if *commit { w.commit().unwrap(); }
            if *rotate { w.rotate().unwrap(); }
        }
        w.close().unwrap();
        let mut got = Vec::new();
        for (_, p) in list_logs(d.path()).unwrap() {
            let mut r = LogReader::open(&p, RecoveryMode::Strict).unwrap();
            got.extend(r.read_all().unwrap().into_iter().map(|r| (r.flags, r.body)));
        }
        let want: Vec<_> = s.into_iter().map(|(b, _, _)| b).collect();
        prop_assert_eq!(got, want);
    }

    #[test]
    fn damaged_logs_never_panic_nor_invent_records(
        s in prop::collection::vec(body(), 1..20),
        cut in any::<prop::sample::Index>(),
        flips in prop::collection::vec((any::<prop::sample::Index>(), 1..=255u8), 0..4),
        seal in any::<bool>(),
    ) {
        let d = tempfile::tempdir().unwrap();
        let c = WriterConfig { max_log_bytes: u64::MAX, ..cfg() };
        let (mut w, _) = LogWriter::open(d.path(), spec(), c).unwrap();
        for (f, b) in &s { w.append(*f, b).unwrap(); }
        w.commit().unwrap();
        let path = w.current_path().unwrap().to_owned();
        if seal { w.close().unwrap(); } else { drop(w); }
        let mut bytes = std::fs::read(&path).unwrap();
        for (i, x) in flips { let i = i.index(bytes.len()); bytes[i] ^= x; }
        let keep = cut.index(bytes.len() + 1).max(bytes.len() * 3 / 4);
        bytes.truncate(keep);
        std::fs::write(&path, &bytes).unwrap();
        for mode in [RecoveryMode::Strict, RecoveryMode::TruncateTail] {
            let Ok(mut r) = LogReader::open(&path, mode) else { continue };
            let mut n = 0;
            while let Ok(Some(rec)) = r.next_record() {
                // A crc collision is possible in principle; a record we did not write
                // would have to match the salted crc, so it does not happen in practice.
                prop_assert_eq!(&(rec.flags, rec.body), &s[n]);
                n += 1;
            }
        }
    }
}
