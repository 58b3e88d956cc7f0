//! The spare: the next log's preallocated file made ahead of a rotation
//! (`LogWriter::prepare_spare`), so a rotation writes only a header.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failures should panic

mod common;

use std::path::Path;

use common::{cfg, spec, write};
use hrl::chain::{check_link, list_logs};
use hrl::{LogReader, LogWriter, RecoveryMode, SPARE_FILE, WriterConfig};

const LOG: u64 = 256 << 10;

fn prealloc() -> WriterConfig {
    WriterConfig {
        preallocate: true,
        max_log_bytes: LOG,
        ..cfg()
    }
}

/// Records in the chain of `dir`, every link checked.
fn chain_records(dir: &Path) -> usize {
    let mut n = 0;
    let mut prev: Option<(hrl::LogHeader, Option<hrl::Seal>)> = None;
    for (_, path) in list_logs(dir).unwrap() {
        let mut r = LogReader::open(&path, RecoveryMode::Strict).unwrap();
        if let Some((h, s)) = &prev {
            check_link(h, s.as_ref(), r.header()).unwrap();
        }
        n += r.read_all().unwrap().len();
        prev = Some((*r.header(), r.seal().copied()));
    }
    n
}

#[test]
fn a_rotation_takes_the_spare_and_the_chain_is_the_same() {
    let d = tempfile::tempdir().unwrap();
    let (mut w, _) = LogWriter::open(d.path(), spec(), prealloc()).unwrap();
    let spare = d.path().join(SPARE_FILE);
    w.prepare_spare().unwrap();
    assert!(w.has_spare());
    assert_eq!(std::fs::metadata(&spare).unwrap().len(), LOG);
    for round in 0..4u64 {
        for i in 0..50 {
            write(&mut w, (round * 50 + i) * 4096, 4096);
        }
        let sealed = w.rotate().unwrap();
        // The spare became the next log: gone as a spare, a preallocated log in the chain.
        assert!(!w.has_spare() && !spare.exists(), "round {round}");
        let next = w.current_path().unwrap().to_owned();
        assert_eq!(std::fs::metadata(&next).unwrap().len(), LOG);
        assert!(sealed.path != next);
        // Not a log: chain listings never see it.
        w.prepare_spare().unwrap();
        assert!(spare.exists());
        assert!(
            list_logs(d.path())
                .unwrap()
                .iter()
                .all(|(_, p)| *p != spare)
        );
    }
    // A clean close removes it.
    w.close().unwrap();
    assert!(!spare.exists());
    assert_eq!(chain_records(d.path()), 200);
}

#[test]
fn a_spare_left_by_a_crash_is_removed_and_the_chain_continues() {
    let d = tempfile::tempdir().unwrap();
    {
        let (mut w, _) = LogWriter::open(d.path(), spec(), prealloc()).unwrap();
        write(&mut w, 0, 4096);
        w.commit().unwrap();
        w.prepare_spare().unwrap();
        // Dropped without close (the lock goes with the fd, as with a crash).
    }
    // A half-made spare (a crash while zero-filling) is just as stale.
    std::fs::write(d.path().join(SPARE_FILE), [1u8; 100]).unwrap();
    let (mut w, _) = LogWriter::open(d.path(), spec(), prealloc()).unwrap();
    assert!(!d.path().join(SPARE_FILE).exists());
    assert!(!w.has_spare());
    write(&mut w, 4096, 4096);
    w.prepare_spare().unwrap();
    w.rotate().unwrap();
    write(&mut w, 8192, 4096);
    w.close().unwrap();
    assert_eq!(chain_records(d.path()), 3);
}

#[test]
fn without_preallocation_there_is_no_spare() {
    let d = tempfile::tempdir().unwrap();
    let (mut w, _) = LogWriter::open(d.path(), spec(), cfg()).unwrap();
    w.prepare_spare().unwrap();
    assert!(!w.has_spare());
    assert!(!d.path().join(SPARE_FILE).exists());
}
