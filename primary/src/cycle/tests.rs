//! Logs written with the `hrl` writer, read back as cycles: journal pieces (newest record
//! winning, split where records partly overlap, zeros), device ranges subtracted from them,
//! the caps, and extents logs unchanged.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;

use hrl::{
    ChainSpec, DiskId, DiskIdentity, Extent, GapReason, GapScope, Generation, LogWriter,
    RecordBody, RecordFlags, SyncPolicy, WriterConfig,
};

use super::*;

const SIZE: u64 = 8 << 20;
const GRANULE: u64 = 4096;

/// A change to log.
enum Rec {
    /// `WriteData` of `len` bytes of `byte` at an offset.
    Data(u64, usize, u8),
    /// Any other record.
    Body(RecordBody),
}

fn ext(offset: u64, len: u64) -> Vec<Extent> {
    vec![Extent::new(offset, len).unwrap()]
}

/// A sealed log of a `size`-byte disk holding `recs` (journal mode or not).
fn log(dir: &tempfile::TempDir, size: u64, journal: bool, recs: &[Rec]) -> PathBuf {
    let spec = ChainSpec {
        disk: DiskIdentity {
            id: DiskId::random().unwrap(),
            size,
            logical_block_size: 512,
        },
        journal,
        generation: Generation(1),
    };
    let cfg = WriterConfig {
        sync: SyncPolicy::Never,
        ..WriterConfig::default()
    };
    let (mut w, _) = LogWriter::open(dir.path(), spec, cfg).unwrap();
    for r in recs {
        match r {
            Rec::Data(o, n, b) => w
                .append_write_data(RecordFlags::empty(), *o, &vec![*b; *n])
                .map(|_| ())
                .unwrap(),
            Rec::Body(b) => w.append(RecordFlags::empty(), b).map(|_| ()).unwrap(),
        }
    }
    w.close().unwrap().path
}

fn journal(recs: &[Rec]) -> CycleExtents {
    let dir = tempfile::tempdir().unwrap();
    read_cycle_logged(&log(&dir, SIZE, true, recs), SIZE, GRANULE, MAX_LOGGED_DATA).unwrap()
}

/// The disk `logged` describes, over a disk of 0xee bytes (to see the zeros).
fn image(logged: &[Logged], len: usize) -> Vec<u8> {
    let mut img = vec![0xee; len];
    for p in logged {
        let at = usize::try_from(p.offset()).unwrap();
        match p {
            Logged::Data { data, .. } => img[at..at + data.len()].copy_from_slice(data),
            Logged::Zero { len, .. } => img[at..at + usize::try_from(*len).unwrap()].fill(0),
        }
    }
    img
}

/// Spans of `logged`, tagged 'd' (data) or 'z' (zeros).
fn spans(logged: &[Logged]) -> Vec<(char, u64, u64)> {
    logged
        .iter()
        .map(|p| {
            let k = if matches!(p, Logged::Data { .. }) {
                'd'
            } else {
                'z'
            };
            (k, p.offset(), p.end())
        })
        .collect()
}

#[test]
fn the_newest_record_wins_and_partial_overlaps_split_the_older_pieces() {
    let c = journal(&[
        Rec::Data(0, 8192, 0xaa),
        Rec::Data(1024, 1024, 0xbb),
        Rec::Data(6144, 6144, 0xcc),
        Rec::Data(1 << 20, 512, 0x11),
        // Entirely replaced by the next one.
        Rec::Data(20480, 1024, 0x22),
        Rec::Data(19968, 2048, 0x33),
    ]);
    assert!(c.journal && c.logged_only(), "{c:?}");
    assert_eq!((c.ranges.clone(), c.bytes), (vec![], 0));
    // Touching data pieces are one piece (one frame).
    assert_eq!(
        spans(&c.logged),
        vec![
            ('d', 0, 12288),
            ('d', 19968, 22016),
            ('d', 1 << 20, (1 << 20) + 512)
        ]
    );
    assert_eq!(c.logged_bytes, 12288 + 2048 + 512);
    let img = image(&c.logged, 1 << 21);
    assert!(img[..1024].iter().all(|&b| b == 0xaa));
    assert!(img[1024..2048].iter().all(|&b| b == 0xbb));
    assert!(img[2048..6144].iter().all(|&b| b == 0xaa));
    assert!(img[6144..12288].iter().all(|&b| b == 0xcc));
    assert!(img[12288..19968].iter().all(|&b| b == 0xee));
    assert!(img[19968..22016].iter().all(|&b| b == 0x33));
    assert!(img[(1 << 20)..(1 << 20) + 512].iter().all(|&b| b == 0x11));
    assert_eq!(c.records, 6);
}

#[test]
fn write_zeroes_and_discards_are_zeros_and_can_be_overwritten() {
    let c = journal(&[
        Rec::Data(0, 4096, 0xaa),
        Rec::Body(RecordBody::WriteZeroes(ext(512, 512))),
        Rec::Body(RecordBody::Discard(ext(2048, 512))),
        // Zeros where nothing was known, then data over part of them.
        Rec::Body(RecordBody::Discard(ext(65536, 8192))),
        Rec::Data(66560, 1024, 0xbb),
        // Touching zero ranges merge.
        Rec::Body(RecordBody::WriteZeroes(ext(73728, 512))),
    ]);
    assert!(c.logged_only(), "{c:?}");
    assert_eq!(
        spans(&c.logged),
        vec![
            ('d', 0, 512),
            ('z', 512, 1024),
            ('d', 1024, 2048),
            ('z', 2048, 2560),
            ('d', 2560, 4096),
            ('z', 65536, 66560),
            ('d', 66560, 67584),
            ('z', 67584, 74240),
        ]
    );
    assert_eq!(c.logged_bytes, 4096 + 8192 + 512);
}

#[test]
fn device_ranges_take_their_granules_from_the_known_pieces() {
    let gap = RecordBody::TrackingGap {
        reason: GapReason::LogSpaceExhausted,
        scope: GapScope::Extents(ext(4608, 512)),
    };
    let c = journal(&[
        Rec::Data(0, 16384, 0xaa),
        Rec::Body(gap),
        // Newer than the gap, but inside its granule: the device read covers it.
        Rec::Data(5120, 512, 0xbb),
        // An extents record and a secure erase are read from the device too.
        Rec::Body(RecordBody::Write(ext(32768, 512))),
        Rec::Body(RecordBody::SecureErase(ext(40960, 4096))),
        Rec::Body(RecordBody::WriteZeroes(ext(36864, 8192))),
    ]);
    assert!(!c.logged_only());
    assert_eq!(c.ranges, vec![(4096, 8192), (32768, 36864), (40960, 45056)]);
    assert_eq!(c.bytes, 3 * 4096);
    assert_eq!(
        spans(&c.logged),
        vec![('d', 0, 4096), ('d', 8192, 16384), ('z', 36864, 40960),]
    );
    assert_eq!(c.logged_bytes, 4096 + 8192 + 4096);
    // A whole-disk gap is a gap, journal or not.
    let g = journal(&[
        Rec::Data(0, 512, 1),
        Rec::Body(RecordBody::TrackingGap {
            reason: GapReason::EventsLost,
            scope: GapScope::WholeDisk,
        }),
    ]);
    assert!(g.whole_disk_gap.is_some() && !g.logged_only());
}

#[test]
fn past_the_memory_cap_the_rest_of_the_data_is_read_from_the_device() {
    let dir = tempfile::tempdir().unwrap();
    let path = log(
        &dir,
        SIZE,
        true,
        &[
            Rec::Data(0, 4096, 1),
            Rec::Data(65536, 4096, 2),
            // 12 KiB kept would pass the 8 KiB cap: from here on, device ranges.
            Rec::Data(131072, 4096, 3),
            Rec::Data(196608, 512, 4),
            // Zeros cost no memory: still known.
            Rec::Body(RecordBody::WriteZeroes(ext(262144, 4096))),
            // A device range newer data would also have lost to.
            Rec::Data(0, 512, 5),
        ],
    );
    let c = read_cycle_logged(&path, SIZE, GRANULE, 8192).unwrap();
    assert!(c.capped && !c.logged_only(), "{c:?}");
    assert_eq!(
        c.ranges,
        vec![(0, 4096), (131072, 135168), (196608, 200704)]
    );
    assert_eq!(
        spans(&c.logged),
        vec![('d', 65536, 69632), ('z', 262144, 266240)]
    );
    // Without the cap, all of it is known.
    let all = read_cycle_logged(&path, SIZE, GRANULE, MAX_LOGGED_DATA).unwrap();
    assert!(all.logged_only() && !all.capped);
    let img = image(&all.logged, 266240);
    assert!(img[..512].iter().all(|&b| b == 5));
    assert!(img[512..4096].iter().all(|&b| b == 1));
}

#[test]
fn more_pieces_than_the_server_takes_frames_are_read_from_the_device() {
    // 64 KiB: the server takes 16 frames of a cycle.
    const SMALL: u64 = 64 << 10;
    let dir = tempfile::tempdir().unwrap();
    let scattered: Vec<Rec> = (0..20u64).map(|i| Rec::Data(i * 3072, 512, 7)).collect();
    let path = log(&dir, SMALL, true, &scattered);
    let c = read_cycle_logged(&path, SMALL, GRANULE, MAX_LOGGED_DATA).unwrap();
    assert!(c.capped && c.logged.is_empty(), "{c:?}");
    assert_eq!(c.ranges, vec![(0, 61440)]);
    // 16 pieces fit.
    let dir = tempfile::tempdir().unwrap();
    let path = log(&dir, SMALL, true, &scattered[..16]);
    let c = read_cycle_logged(&path, SMALL, GRANULE, MAX_LOGGED_DATA).unwrap();
    assert!(c.logged_only() && c.logged.len() == 16, "{c:?}");
}

#[test]
fn data_is_cut_into_frames_of_at_most_max_data() {
    let c = journal(&[Rec::Data(4096, (2 << 20) + 512, 9), Rec::Data(0, 4096, 8)]);
    let max = proto::MAX_DATA as u64;
    assert_eq!(
        spans(&c.logged),
        vec![
            ('d', 0, max),
            ('d', max, 2 * max),
            ('d', 2 * max, 2 * max + 4096 + 512),
        ]
    );
    let img = image(&c.logged, (3 << 20) as usize);
    assert!(img[..4096].iter().all(|&b| b == 8));
    assert!(img[4096..4096 + (2 << 20) + 512].iter().all(|&b| b == 9));
}

#[test]
fn an_extents_log_reads_as_before_and_read_cycle_ignores_the_journal() {
    let recs = [
        Rec::Body(RecordBody::Write(ext(512, 1024))),
        Rec::Body(RecordBody::WriteZeroes(ext(65536, 4096))),
        Rec::Body(RecordBody::Discard(ext(131072, 8192))),
    ];
    let dir = tempfile::tempdir().unwrap();
    let path = log(&dir, SIZE, false, &recs);
    let c = read_cycle_logged(&path, SIZE, GRANULE, MAX_LOGGED_DATA).unwrap();
    let want = vec![(0, 4096), (65536, 69632), (131072, 139264)];
    assert_eq!((c.ranges.clone(), c.bytes), (want.clone(), 16384));
    assert!(!c.journal && c.logged.is_empty() && c.logged_bytes == 0 && !c.logged_only());
    let old = read_cycle(&path, SIZE, GRANULE).unwrap();
    assert_eq!((old.ranges, old.bytes, old.records), (want, 16384, 3));
    // A journal log read by `read_cycle`: every change a device range (what the resync and
    // the planned failover's "nobody wrote" check need).
    let dir = tempfile::tempdir().unwrap();
    let path = log(
        &dir,
        SIZE,
        true,
        &[
            Rec::Data(1024, 512, 1),
            Rec::Body(RecordBody::Discard(ext(65536, 4096))),
        ],
    );
    let j = read_cycle(&path, SIZE, GRANULE).unwrap();
    assert!(j.journal && j.logged.is_empty() && !j.logged_only());
    assert_eq!(j.ranges, vec![(0, 4096), (65536, 69632)]);
}
