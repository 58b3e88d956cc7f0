//! The fake against the [`ChangeSource`] contract, read back with the agent's own readers.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};

use super::*;
use crate::cycle::{Logged, MAX_LOGGED_DATA, raced, read_cycle, read_cycle_logged};

const SIZE: u64 = 1 << 20;
const GRANULE: u64 = 4096;

/// A 1 MiB "device" file and a log directory.
fn setup() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let dev = dir.path().join("disk.img");
    std::fs::File::create(&dev).unwrap().set_len(SIZE).unwrap();
    let logs = dir.path().join("logs");
    std::fs::create_dir(&logs).unwrap();
    (dir, dev, logs)
}

/// The fake as the agent holds it.
fn boxed(fake: &FakeSource) -> Box<dyn ChangeSource> {
    Box::new(fake.clone())
}

fn cycle(path: &Path) -> crate::cycle::CycleExtents {
    read_cycle(path, SIZE, GRANULE).unwrap()
}

#[test]
fn cuts_seal_logs_with_increasing_sequences_listed_in_order() {
    let (_d, dev, logs) = setup();
    let fake = FakeSource::new();
    let mut src = boxed(&fake);
    let added = src.add_device(&dev, &logs).unwrap();
    assert_eq!((added.size, added.block_size), (SIZE, BLOCK_SIZE));
    let cuts: Vec<Cut> = (0..3).map(|_| src.cut(&dev).unwrap()).collect();
    let seqs: Vec<u64> = cuts.iter().map(|c| c.seq).collect();
    assert_eq!(seqs, vec![seqs[0], seqs[0] + 1, seqs[0] + 2]);
    assert!(cuts.iter().all(|c| c.exact));
    let sealed = src.sealed(&dev).unwrap();
    let listed: Vec<(u64, PathBuf)> = cuts.iter().map(|c| (c.seq, c.path.clone())).collect();
    assert_eq!(sealed, listed);
    fake.set_exact(false);
    assert!(!src.cut(&dev).unwrap().exact);
}

#[test]
fn a_cycle_names_exactly_the_ranges_written_and_the_device_holds_the_bytes() {
    let (_d, dev, logs) = setup();
    let fake = FakeSource::new();
    let mut src = boxed(&fake);
    src.add_device(&dev, &logs).unwrap();
    // The first log holds the first start's gap; the cycles after it are clean.
    assert!(cycle(&src.cut(&dev).unwrap().path).whole_disk_gap.is_some());
    let before = src.records(&dev);
    fake.write(&dev, 12288, &[0xab; 4096]).unwrap();
    fake.write(&dev, 65536, &[0xcd; 8192]).unwrap();
    assert_eq!(src.records(&dev) - before, 2);
    let c = cycle(&src.cut(&dev).unwrap().path);
    assert_eq!(c.whole_disk_gap, None);
    assert_eq!(c.ranges, vec![(12288, 16384), (65536, 73728)]);
    assert_eq!(c.bytes, 4096 + 8192);
    let data = std::fs::read(&dev).unwrap();
    assert!(data[12288..16384].iter().all(|&b| b == 0xab));
    assert!(data[65536..73728].iter().all(|&b| b == 0xcd));
    assert!(data[..12288].iter().all(|&b| b == 0));
    // Nothing written since: the next cycle is empty.
    assert_eq!(cycle(&src.cut(&dev).unwrap().path).ranges, vec![]);
    assert!(fake.write(&dev, SIZE - 512, &[1; 1024]).is_err());
}

#[test]
fn a_gap_is_reported_once_per_interruption() {
    let (_d, dev, logs) = setup();
    let fake = FakeSource::new();
    let mut src = boxed(&fake);
    let restart = |src: &mut Box<dyn ChangeSource>| {
        src.remove_device(&dev).unwrap();
        src.add_device(&dev, &logs).unwrap().gap
    };
    assert!(
        src.add_device(&dev, &logs).unwrap().gap.is_some(),
        "first start"
    );
    assert_eq!(restart(&mut src), None, "clean stop, nothing written");
    src.remove_device(&dev).unwrap();
    fake.write(&dev, 0, &[1; 512]).unwrap();
    assert!(
        src.add_device(&dev, &logs).unwrap().gap.is_some(),
        "written untracked"
    );
    assert_eq!(restart(&mut src), None, "reported once");
    fake.crash();
    assert!(!fake.tracked(&dev));
    assert!(
        src.add_device(&dev, &logs).unwrap().gap.is_some(),
        "after a crash"
    );
    let gap = cycle(&src.cut(&dev).unwrap().path).whole_disk_gap;
    assert!(gap.is_some(), "the gap is in the log too");
    assert_eq!(restart(&mut src), None);
}

#[test]
fn lost_events_put_a_gap_in_the_current_log() {
    let (_d, dev, logs) = setup();
    let fake = FakeSource::new();
    let mut src = boxed(&fake);
    src.add_device(&dev, &logs).unwrap();
    src.cut(&dev).unwrap();
    fake.lose_track(&dev).unwrap();
    assert!(cycle(&src.cut(&dev).unwrap().path).whole_disk_gap.is_some());
    assert_eq!(cycle(&src.cut(&dev).unwrap().path).whole_disk_gap, None);
}

#[test]
fn a_tag_bounds_the_changes_the_verdict_reads() {
    let (_d, dev, logs) = setup();
    let fake = FakeSource::new();
    let mut src = boxed(&fake);
    src.add_device(&dev, &logs).unwrap();
    src.cut(&dev).unwrap();
    fake.write(&dev, 0, &[1; 4096]).unwrap();
    src.queue_marks(&dev, true).unwrap();
    assert!(fake.queue_marks_on(&dev));
    let quiet = src.cut(&dev).unwrap().seq;
    src.mark(&dev, quiet).unwrap();
    src.queue_marks(&dev, false).unwrap();
    assert!(!fake.queue_marks_on(&dev));
    assert_eq!(raced(&logs, quiet, &[(0, 4096)]).unwrap(), Some(false));
    let busy = src.cut(&dev).unwrap().seq;
    fake.write(&dev, 0, &[2; 512]).unwrap();
    src.mark(&dev, busy).unwrap();
    assert_eq!(raced(&logs, busy, &[(0, 4096)]).unwrap(), Some(true));
    assert_eq!(raced(&logs, busy, &[(8192, 4096)]).unwrap(), Some(false));
    assert_eq!(raced(&logs, busy + 1, &[(0, 4096)]).unwrap(), None);
}

#[test]
fn release_deletes_sealed_logs_only_and_stop_seals_every_disk() {
    let (_d, dev, logs) = setup();
    let fake = FakeSource::new();
    let mut src = boxed(&fake);
    src.add_device(&dev, &logs).unwrap();
    let a = src.cut(&dev).unwrap();
    let b = src.cut(&dev).unwrap();
    src.release(&dev, &a.path).unwrap();
    src.release(&dev, &a.path).unwrap();
    assert_eq!(src.sealed(&dev).unwrap(), vec![(b.seq, b.path.clone())]);
    let current = hrl::chain::list_logs(&logs).unwrap().pop().unwrap().1;
    assert!(src.release(&dev, &current).is_err());
    assert!(matches!(
        src.cut(Path::new("/nonexistent")),
        Err(SourceError::NotTracked(_))
    ));
    src.stop().unwrap();
    assert!(!fake.tracked(&dev));
    // A new agent given the same fake continues the chain without a gap.
    let mut again = boxed(&fake);
    assert_eq!(again.add_device(&dev, &logs).unwrap().gap, None);
    assert_eq!(again.cut(&dev).unwrap().seq, b.seq + 2);
}

#[test]
fn journal_mode_logs_the_data_before_the_write_and_seals_logs_by_itself() {
    let (_d, dev, logs) = setup();
    let fake = FakeSource::journal(64 << 10);
    let mut src = boxed(&fake);
    src.add_device(&dev, &logs).unwrap();
    src.cut(&dev).unwrap();
    fake.write(&dev, 1536, &[0xab; 2560]).unwrap();
    fake.write_zeroes(&dev, 2048, 512).unwrap();
    fake.discard(&dev, 8192, 4096).unwrap();
    fake.log_only_write(&dev, 16384, &[0x77; 512]).unwrap();
    assert!(
        fake.write(&dev, 100, &[1; 512]).is_err(),
        "not sector aligned"
    );
    let path = src.cut(&dev).unwrap().path;
    let c = read_cycle_logged(&path, SIZE, GRANULE, MAX_LOGGED_DATA).unwrap();
    assert!(c.logged_only(), "{c:?}");
    let spans: Vec<(bool, u64, u64)> = c
        .logged
        .iter()
        .map(|p| (matches!(p, Logged::Data { .. }), p.offset(), p.end()))
        .collect();
    assert_eq!(
        spans,
        vec![
            (true, 1536, 2048),
            (false, 2048, 2560),
            (true, 2560, 4096),
            (false, 8192, 12288),
            (true, 16384, 16896),
        ]
    );
    let data = std::fs::read(&dev).unwrap();
    assert!(data[1536..2048].iter().all(|&b| b == 0xab));
    assert!(data[2048..2560].iter().all(|&b| b == 0));
    assert!(data[2560..4096].iter().all(|&b| b == 0xab));
    assert!(
        data[16384..16896].iter().all(|&b| b == 0),
        "a log-only write is not performed"
    );
    // The extents reader names the same bytes as changed ranges.
    assert_eq!(
        cycle(&path).ranges,
        vec![(0, 4096), (8192, 12288), (16384, 20480)]
    );
    // Past 64 KiB of log, the writer seals the log itself.
    assert_eq!(fake.self_sealed(&dev), 0);
    let before = src.sealed(&dev).unwrap().len();
    fake.write(&dev, 0, &[1; 80 << 10]).unwrap();
    assert_eq!(fake.self_sealed(&dev), 1);
    assert_eq!(src.sealed(&dev).unwrap().len(), before + 1);
}

#[test]
fn a_log_only_write_needs_journal_mode() {
    let (_d, dev, logs) = setup();
    let fake = FakeSource::new();
    let mut src = boxed(&fake);
    src.add_device(&dev, &logs).unwrap();
    assert!(fake.log_only_write(&dev, 0, &[1; 512]).is_err());
    // Extents mode logs discards and write-zeroes as ranges.
    src.cut(&dev).unwrap();
    fake.discard(&dev, 4096, 512).unwrap();
    fake.write_zeroes(&dev, 8192, 512).unwrap();
    let c = cycle(&src.cut(&dev).unwrap().path);
    assert_eq!(c.ranges, vec![(4096, 12288)]);
    assert!(!c.journal);
}
