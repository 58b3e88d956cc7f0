//! The writer: group commit, rotation, space cap, crash recovery, locking.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failures should panic

mod common;

use std::path::Path;

use common::{DISK_SIZE, cfg, ext, open, spec, write};
use hrl::chain::{check_link, list_logs};
use hrl::{
    Error, GapReason, GapScope, GroupId, LogReader, LogWriter, Record, RecordBody, RecordFlags,
    RecoveryMode, Resume, SeqNo, Tail, WriterConfig,
};

/// Every record of every log in `dir`, validating each link of the chain.
fn read_chain(dir: &Path) -> Vec<Record> {
    let mut out = Vec::new();
    let mut prev: Option<(hrl::LogHeader, Option<hrl::Seal>)> = None;
    for (_, path) in list_logs(dir).unwrap() {
        let mut r = LogReader::open(&path, RecoveryMode::Strict).unwrap();
        if let Some((h, s)) = &prev {
            check_link(h, s.as_ref(), r.header()).unwrap();
        }
        out.extend(r.read_all().unwrap());
        prev = Some((*r.header(), r.seal().copied()));
    }
    out
}

fn all_kinds() -> Vec<(RecordFlags, RecordBody)> {
    vec![
        (
            RecordFlags::empty(),
            RecordBody::Write(vec![ext(0, 4096), ext(8192, 512)]),
        ),
        (
            RecordFlags::FUA,
            RecordBody::WriteData {
                offset: DISK_SIZE - 1024,
                data: (0..1024u32).map(|i| (i % 251) as u8).collect(),
            },
        ),
        (
            RecordFlags::empty(),
            RecordBody::Discard(vec![ext(1 << 20, 1 << 20)]),
        ),
        (
            RecordFlags::empty(),
            RecordBody::SecureErase(vec![ext(0, 512)]),
        ),
        (
            RecordFlags::empty(),
            RecordBody::WriteZeroes(vec![ext(4096, 4096)]),
        ),
        (RecordFlags::PREFLUSH, RecordBody::Flush),
        (
            RecordFlags::empty(),
            RecordBody::ConsistencyTag {
                group: GroupId([3; 16]),
                tag: 1,
            },
        ),
        (
            RecordFlags::empty(),
            RecordBody::AppConsistentTag {
                group: GroupId([3; 16]),
                tag: 2,
                label: "fsfreeze /srv".into(),
            },
        ),
        (
            RecordFlags::empty(),
            RecordBody::TrackingGap {
                reason: GapReason::NoCleanPredecessor,
                scope: GapScope::WholeDisk,
            },
        ),
        (
            RecordFlags::empty(),
            RecordBody::TrackingGap {
                reason: GapReason::EventsLost,
                scope: GapScope::Extents(vec![ext(0, 1 << 20)]),
            },
        ),
    ]
}

#[test]
fn every_kind_round_trips_through_a_sealed_log() {
    let d = tempfile::tempdir().unwrap();
    let (mut w, resume) = open(d.path());
    assert_eq!(resume, Resume::Fresh);
    for (f, b) in all_kinds() {
        w.append(f, &b).unwrap();
    }
    let sealed = w.close().unwrap();
    assert_eq!(sealed.seal.record_count, 10);
    assert_eq!(sealed.seal.next_seq, SeqNo(11));
    let recs = read_chain(d.path());
    let got: Vec<_> = recs.iter().map(|r| (r.flags, r.body.clone())).collect();
    assert_eq!(got, all_kinds());
    assert_eq!(recs[0].seq, SeqNo(1));
}

#[test]
fn group_commit_writes_one_batch_for_many_records() {
    let d = tempfile::tempdir().unwrap();
    let (mut w, _) = open(d.path());
    for i in 0..100 {
        write(&mut w, i * 512, 512);
    }
    assert_eq!(w.durable_seq(), None, "nothing is durable before commit");
    assert!(w.commit_deadline().is_some());
    assert_eq!(w.commit().unwrap(), Some(SeqNo(100)));
    let s = w.stats();
    assert_eq!((s.records, s.commits), (100, 1));
    assert!(w.commit_deadline().is_none());
    // Committed records are readable before the log is sealed.
    let path = w.current_path().unwrap().to_owned();
    let mut r = LogReader::open(&path, RecoveryMode::Strict).unwrap();
    assert_eq!(r.read_all().unwrap().len(), 100);
    assert_eq!(r.tail(), Some(&Tail::UnsealedClean));
}

#[test]
fn batch_limits_commit_automatically() {
    let d = tempfile::tempdir().unwrap();
    let c = WriterConfig {
        max_batch_records: 10,
        ..cfg()
    };
    let (mut w, _) = LogWriter::open(d.path(), spec(), c).unwrap();
    for i in 0..25 {
        write(&mut w, i * 512, 512);
    }
    assert_eq!(w.stats().commits, 2);
    assert_eq!(w.durable_seq(), Some(SeqNo(20)));
}

/// `SyncPolicy::Explicit`: `write_pending` puts the batch in the file (readable by
/// another handle: it survives the process) but never rotates and counts no sync;
/// `rotation_due` says when the owner should rotate; `sync_handle` names the last record
/// a sync of its file makes durable.
#[test]
fn explicit_sync_writes_without_rotating_and_hands_out_a_sync_handle() {
    let d = tempfile::tempdir().unwrap();
    let c = WriterConfig {
        sync: hrl::SyncPolicy::Explicit,
        max_log_bytes: 8 << 10,
        ..cfg()
    };
    let (mut w, _) = LogWriter::open(d.path(), spec(), c).unwrap();
    assert_eq!(w.write_pending().unwrap(), None, "nothing appended");
    for i in 0..400 {
        write(&mut w, i * 4096, 4096);
    }
    assert!(!w.rotation_due(), "nothing written yet");
    assert_eq!(w.write_pending().unwrap(), Some(SeqNo(400)));
    assert!(w.rotation_due(), "past max_log_bytes, left to the owner");
    assert_eq!(w.stats().rotations, 0);
    assert_eq!(w.stats().syncs, 0, "Explicit never syncs a batch by itself");
    let path = w.current_path().unwrap().to_owned();
    let mut r = LogReader::open(&path, RecoveryMode::Strict).unwrap();
    assert_eq!(r.read_all().unwrap().len(), 400);
    let (file, seq) = w.sync_handle().unwrap();
    assert_eq!(seq, Some(SeqNo(400)));
    file.sync_data().unwrap();
    w.rotate().unwrap();
    assert!(!w.rotation_due());
    write(&mut w, 0, 512);
    w.write_pending().unwrap();
    let (_, seq) = w.sync_handle().unwrap();
    assert_eq!(seq, Some(SeqNo(401)));
    w.close().unwrap();
    assert_eq!(read_chain(d.path()).len(), 401);
}

#[test]
fn rotation_chains_logs_and_total_bytes_matches_the_files() {
    let d = tempfile::tempdir().unwrap();
    let c = WriterConfig {
        max_log_bytes: 16 << 10,
        max_batch_records: 8,
        ..cfg()
    };
    let (mut w, _) = LogWriter::open(d.path(), spec(), c).unwrap();
    for i in 0..2000 {
        write(&mut w, (i % 1000) * 4096, 4096);
    }
    w.commit().unwrap();
    assert!(w.stats().rotations >= 5, "{:?}", w.stats());
    let on_disk: u64 = list_logs(d.path())
        .unwrap()
        .iter()
        .map(|(_, p)| std::fs::metadata(p).unwrap().len())
        .sum();
    assert_eq!(w.total_bytes(), on_disk);
    w.close().unwrap();
    let recs = read_chain(d.path());
    assert_eq!(recs.len(), 2000);
    assert!(recs.windows(2).all(|p| p[1].seq == p[0].seq.next()));
}

#[test]
fn release_frees_shipped_logs_but_not_the_open_one() {
    let d = tempfile::tempdir().unwrap();
    let (mut w, _) = open(d.path());
    write(&mut w, 0, 4096);
    let sealed = w.rotate().unwrap();
    let before = w.total_bytes();
    w.release(&sealed.path).unwrap();
    assert_eq!(w.total_bytes(), before - sealed.seal.end_offset);
    let cur = w.current_path().unwrap().to_owned();
    assert!(matches!(w.release(&cur), Err(Error::Config(_))));
}

#[test]
fn space_cap_refuses_appends_but_always_takes_a_gap_record() {
    let d = tempfile::tempdir().unwrap();
    let c = WriterConfig {
        max_total_bytes: Some(4096 + 10 * 56),
        ..cfg()
    };
    let (mut w, _) = LogWriter::open(d.path(), spec(), c).unwrap();
    for i in 0..10 {
        write(&mut w, i * 512, 512);
    }
    let e = w
        .append(RecordFlags::empty(), &RecordBody::Write(vec![ext(0, 512)]))
        .unwrap_err();
    assert!(matches!(e, Error::Full { .. }) && e.is_recoverable(), "{e}");
    let gap = RecordBody::TrackingGap {
        reason: GapReason::LogSpaceExhausted,
        scope: GapScope::WholeDisk,
    };
    assert_eq!(w.append(RecordFlags::empty(), &gap).unwrap(), SeqNo(11));
    w.close().unwrap();
    let recs = read_chain(d.path());
    assert_eq!(recs.len(), 11, "the refused record left no trace");
    assert_eq!(recs[10].body, gap);
}

#[test]
fn invalid_records_are_refused_with_the_reason() {
    let d = tempfile::tempdir().unwrap();
    let (mut w, _) = open(d.path());
    let cases = [
        RecordBody::Write(vec![]),
        RecordBody::Write(vec![ext(DISK_SIZE - 512, 1024)]),
        RecordBody::Discard(vec![ext(100, 512)]),
    ];
    for b in cases {
        let e = w.append(RecordFlags::empty(), &b).unwrap_err();
        assert!(matches!(e, Error::InvalidRecord { .. }), "{e}");
    }
    let e = w.append(RecordFlags::FUA, &RecordBody::Discard(vec![ext(0, 512)]));
    assert!(e.is_err());
    assert_eq!(
        w.next_seq(),
        SeqNo(1),
        "refused records consume no sequence number"
    );
}

#[test]
fn clean_close_resumes_without_loss() {
    let d = tempfile::tempdir().unwrap();
    let (mut w, _) = open(d.path());
    write(&mut w, 0, 512);
    let first = w.close().unwrap();
    let (mut w, resume) = open(d.path());
    assert_eq!(resume, Resume::Clean { prev: first.path });
    assert_eq!(write(&mut w, 512, 512), SeqNo(2));
    w.close().unwrap();
    assert_eq!(read_chain(d.path()).len(), 2);
}

#[test]
fn crash_recovery_truncates_the_torn_tail_and_continues_the_chain() {
    let d = tempfile::tempdir().unwrap();
    let (mut w, _) = open(d.path());
    for i in 0..5 {
        write(&mut w, i * 512, 512);
    }
    w.commit().unwrap();
    let path = w.current_path().unwrap().to_owned();
    std::mem::forget(w); // a crash: no seal (the lock goes with the fd... see below)
    // Simulate a torn append: half a record after the committed ones.
    let f = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap();
    std::io::Write::write_all(&mut &f, &[0x38, 0, 0, 0, 1, 0, 0]).unwrap();
    drop(f);
    // `forget` leaked the locked fd; a crashed process's lock dies with it. Release it.
    release_leaked_lock(d.path());
    let (mut w, resume) = open(d.path());
    assert_eq!(
        resume,
        Resume::Recovered {
            prev: path.clone(),
            records_kept: 5,
            bytes_truncated: 7
        }
    );
    assert_eq!(write(&mut w, 0, 512), SeqNo(6));
    w.close().unwrap();
    let recs = read_chain(d.path());
    assert_eq!(recs.len(), 6);
    let r = LogReader::open(&path, RecoveryMode::Strict).unwrap();
    assert!(r.seal().unwrap().recovered);
}

/// Closes every fd of this process open on `dir/LOCK` (after a deliberate `mem::forget`).
fn release_leaked_lock(dir: &Path) {
    let lock = std::fs::canonicalize(dir.join("LOCK")).unwrap();
    for e in std::fs::read_dir("/proc/self/fd").unwrap() {
        let e = e.unwrap();
        if std::fs::read_link(e.path()).ok().as_deref() == Some(lock.as_path()) {
            let fd: i32 = e.file_name().to_str().unwrap().parse().unwrap();
            // SAFETY: the fd belongs to a File leaked with mem::forget that nothing will
            // use again.
            unsafe { libc::close(fd) };
        }
    }
}

#[test]
fn a_second_writer_on_the_same_directory_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let (_w, _) = open(d.path());
    let e = LogWriter::open(d.path(), spec(), cfg()).unwrap_err();
    assert!(
        e.to_string().contains("locked by another log writer"),
        "{e}"
    );
}

#[test]
fn a_different_disk_is_refused_before_anything_is_touched() {
    let d = tempfile::tempdir().unwrap();
    let (mut w, _) = open(d.path());
    write(&mut w, 0, 512);
    w.commit().unwrap();
    let path = w.current_path().unwrap().to_owned();
    drop(w); // unsealed, lock released
    let before = std::fs::read(&path).unwrap();
    let mut other = spec();
    other.disk.size *= 2;
    let e = LogWriter::open(d.path(), other, cfg()).unwrap_err();
    assert!(
        matches!(e, Error::Config(_)) && e.to_string().contains("describes disk"),
        "{e}"
    );
    assert_eq!(
        std::fs::read(&path).unwrap(),
        before,
        "the log was not modified"
    );
    assert_eq!(list_logs(d.path()).unwrap().len(), 1, "no log was created");
}

#[test]
fn missing_directory_is_a_clear_error() {
    let e = LogWriter::open(Path::new("/nonexistent/sitrep-logs"), spec(), cfg()).unwrap_err();
    assert!(e.to_string().contains("/nonexistent/sitrep-logs"), "{e}");
}

#[test]
fn journal_write_data_matches_the_generic_append() {
    let d = tempfile::tempdir().unwrap();
    let (mut w, _) = open(d.path());
    let data = vec![0x5a; 8192];
    w.append_write_data(RecordFlags::FUA, 4096, &data).unwrap();
    w.close().unwrap();
    let recs = read_chain(d.path());
    assert_eq!(recs[0].body, RecordBody::WriteData { offset: 4096, data });
    assert_eq!(recs[0].flags, RecordFlags::FUA);
}

#[test]
fn preallocated_logs_read_cleanly_seal_compactly_and_recover() {
    let d = tempfile::tempdir().unwrap();
    let c = WriterConfig {
        preallocate: true,
        max_log_bytes: 1 << 20,
        ..cfg()
    };
    let (mut w, _) = LogWriter::open(d.path(), spec(), c.clone()).unwrap();
    for i in 0..10 {
        write(&mut w, i * 512, 512);
    }
    w.commit().unwrap();
    let path = w.current_path().unwrap().to_owned();
    assert_eq!(
        std::fs::metadata(&path).unwrap().len(),
        1 << 20,
        "preallocated"
    );
    // An open preallocated log reads to its last record; the zero tail is not a tear.
    let mut r = LogReader::open(&path, RecoveryMode::Strict).unwrap();
    assert_eq!(r.read_all().unwrap().len(), 10);
    assert_eq!(r.tail(), Some(&Tail::UnsealedClean));
    // Crash, then recovery: no torn bytes reported for the zero tail.
    drop(w);
    let (w, resume) = LogWriter::open(d.path(), spec(), c).unwrap();
    assert_eq!(
        resume,
        Resume::Recovered {
            prev: path.clone(),
            records_kept: 10,
            bytes_truncated: 0
        }
    );
    let sealed = w.close().unwrap();
    assert_eq!(
        std::fs::metadata(&sealed.path).unwrap().len(),
        sealed.seal.end_offset,
        "sealing trims the preallocated tail"
    );
    assert_eq!(read_chain(d.path()).len(), 10);
}

#[test]
fn a_log_left_half_created_by_a_crash_does_not_block_the_next_open() {
    let d = tempfile::tempdir().unwrap();
    let (mut w, _) = open(d.path());
    write(&mut w, 0, 512);
    let first = w.close().unwrap();
    // The writer died while creating (preallocating) log 1: only its .tmp exists.
    let stale = d.path().join("00000000000000000001.hrl.tmp");
    std::fs::write(&stale, vec![0u8; 8192]).unwrap();
    let (mut w, resume) = open(d.path());
    assert_eq!(resume, Resume::Clean { prev: first.path });
    assert!(!stale.exists(), "the stale half-created log is gone");
    write(&mut w, 512, 512);
    w.close().unwrap();
    assert_eq!(read_chain(d.path()).len(), 2);
}

#[test]
fn split_commit_keeps_appending_while_a_batch_is_written() {
    let d = tempfile::tempdir().unwrap();
    let c = WriterConfig {
        max_batch_records: 4,
        ..cfg()
    };
    let (mut w, _) = LogWriter::open(d.path(), spec(), c).unwrap();
    for i in 0..3 {
        write(&mut w, i * 512, 512);
    }
    let total = w.total_bytes();
    let path = w.current_path().unwrap().to_owned();
    let mut p = w.take_commit().unwrap().unwrap();
    assert_eq!((p.records(), p.last_seq()), (3, SeqNo(3)));
    assert!(
        w.take_commit().unwrap().is_none(),
        "one commit in flight at a time"
    );
    assert_eq!(w.total_bytes(), total, "the in-flight batch still counts");
    assert_eq!(w.current_path(), Some(path.as_path()));
    // Past max_batch_records, but with a commit in flight appends do not commit.
    for i in 3..10 {
        write(&mut w, i * 512, 512);
    }
    assert_eq!(w.stats().commits, 0);
    assert!(matches!(w.commit(), Err(Error::Config(_))));
    assert!(matches!(w.rotate(), Err(Error::Config(_))));
    assert_eq!(w.durable_seq(), None);
    p.write().unwrap();
    assert_eq!(w.finish_commit(p).unwrap(), Some(SeqNo(3)));
    let mut p = w.take_commit().unwrap().unwrap();
    assert_eq!((p.records(), p.last_seq()), (7, SeqNo(10)));
    p.write().unwrap();
    assert_eq!(w.finish_commit(p).unwrap(), Some(SeqNo(10)));
    assert!(w.take_commit().unwrap().is_none(), "nothing pending");
    let s = w.stats();
    assert_eq!((s.records, s.commits), (10, 2));
    w.close().unwrap();
    let recs = read_chain(d.path());
    let seqs: Vec<u64> = recs.iter().map(|r| r.seq.0).collect();
    assert_eq!(seqs, (1..=10).collect::<Vec<_>>());
    let offsets: Vec<u64> = recs
        .iter()
        .map(|r| match &r.body {
            RecordBody::Write(e) => e[0].offset(),
            b => panic!("unexpected {b:?}"),
        })
        .collect();
    assert_eq!(offsets, (0..10).map(|i| i * 512).collect::<Vec<_>>());
}

#[test]
fn an_unwritten_split_commit_goes_back_in_front_of_newer_records() {
    let d = tempfile::tempdir().unwrap();
    let (mut w, _) = open(d.path());
    write(&mut w, 0, 512);
    write(&mut w, 512, 512);
    let p = w.take_commit().unwrap().unwrap();
    write(&mut w, 1024, 512);
    // As if its pwrite/fdatasync failed: handed back without being written.
    assert_eq!(w.finish_commit(p).unwrap(), None);
    assert_eq!(w.stats().commits, 0);
    let mut p = w.take_commit().unwrap().unwrap();
    assert_eq!((p.records(), p.last_seq()), (3, SeqNo(3)));
    p.write().unwrap();
    p.write().unwrap(); // idempotent: written once
    assert_eq!(w.finish_commit(p).unwrap(), Some(SeqNo(3)));
    w.close().unwrap();
    let recs = read_chain(d.path());
    assert_eq!(recs.len(), 3);
    assert!(recs.windows(2).all(|p| p[1].seq == p[0].seq.next()));
}

#[test]
fn split_commits_rotate_when_the_log_is_full() {
    let d = tempfile::tempdir().unwrap();
    let c = WriterConfig {
        max_log_bytes: 16 << 10,
        preallocate: true,
        ..cfg()
    };
    let (mut w, _) = LogWriter::open(d.path(), spec(), c).unwrap();
    let mut last = None;
    for i in 0..200u8 {
        w.append_write_data(RecordFlags::empty(), u64::from(i % 100) * 4096, &[i; 512])
            .unwrap();
        if i % 7 == 0 {
            let mut p = w.take_commit().unwrap().unwrap();
            p.write().unwrap();
            last = w.finish_commit(p).unwrap();
        }
    }
    assert_eq!(last, Some(SeqNo(197)));
    assert!(w.stats().rotations >= 3, "{:?}", w.stats());
    w.close().unwrap();
    let recs = read_chain(d.path());
    assert_eq!(recs.len(), 200);
    assert!(recs.windows(2).all(|p| p[1].seq == p[0].seq.next()));
}

#[test]
fn close_refuses_while_a_split_commit_is_in_flight() {
    let d = tempfile::tempdir().unwrap();
    let (mut w, _) = open(d.path());
    write(&mut w, 0, 512);
    let p = w.take_commit().unwrap().unwrap();
    drop(p);
    assert!(matches!(w.close(), Err(Error::Config(_))));
    // The unsealed log is recovered by the next open; the unwritten record is not in it.
    let (w, resume) = open(d.path());
    assert!(
        matches!(
            resume,
            Resume::Recovered {
                records_kept: 0,
                ..
            }
        ),
        "{resume:?}"
    );
    w.close().unwrap();
}

/// A rotation that cannot create the next log (a full filesystem; here a directory squats
/// on the next log's temporary name, so the create fails) changes nothing: the writer keeps
/// appending to the current log, and once the obstacle is gone a rotation succeeds and the
/// chain is whole.
#[test]
fn a_rotation_that_cannot_create_the_next_log_leaves_the_writer_usable() {
    let d = tempfile::tempdir().unwrap();
    let (mut w, _) = open(d.path());
    write(&mut w, 0, 4096);
    w.commit().unwrap();
    let (seq, cur) = list_logs(d.path()).unwrap().pop().unwrap();
    let next = hrl::chain::log_file_name(hrl::LogSeq(seq.0 + 1));
    let squat = d.path().join(next).with_extension("hrl.tmp");
    std::fs::create_dir(&squat).unwrap();
    std::fs::write(squat.join("keep"), b"x").unwrap();

    let err = w.rotate().unwrap_err();
    assert!(err.to_string().contains("hrl.tmp"), "{err}");
    assert_eq!(w.current_path(), Some(cur.as_path()), "still the same log");
    assert_eq!(w.stats().rotations, 0);
    write(&mut w, 8192, 4096);
    w.commit().unwrap();

    std::fs::remove_dir_all(&squat).unwrap();
    let sealed = w.rotate().unwrap();
    assert_eq!(sealed.path, cur);
    assert_eq!(sealed.seal.record_count, 2, "both writes in the first log");
    write(&mut w, 16384, 4096);
    w.close().unwrap();
    let recs = read_chain(d.path());
    assert_eq!(recs.len(), 3);
    assert!(recs.windows(2).all(|p| p[1].seq == p[0].seq.next()));
}

#[test]
fn extents_appends_are_the_same_log_as_generic_appends() {
    use hrl::{Extent, RecordKind};
    let cfg = WriterConfig {
        max_log_bytes: 8192, // a few rotations: the cached log-id crc must follow them
        ..cfg()
    };
    let fast = tempfile::tempdir().unwrap();
    let slow = tempfile::tempdir().unwrap();
    let spec = spec();
    let (mut f, _) = LogWriter::open(fast.path(), spec, cfg.clone()).unwrap();
    let (mut s, _) = LogWriter::open(slow.path(), spec, cfg).unwrap();
    for i in 0..600u64 {
        let list: Vec<Extent> = (0..1 + i % 5)
            .map(|k| Extent::new(((i + k * 13) * 7919 % 1000) * 4096, 4096 * (1 + k % 3)).unwrap())
            .collect();
        let (kind, body) = match i % 3 {
            0 => (RecordKind::Write, RecordBody::Write(list.clone())),
            1 => (RecordKind::Discard, RecordBody::Discard(list.clone())),
            _ => (
                RecordKind::WriteZeroes,
                RecordBody::WriteZeroes(list.clone()),
            ),
        };
        let flags = if kind == RecordKind::Write && i % 5 == 0 {
            RecordFlags::FUA
        } else {
            RecordFlags::empty()
        };
        let a = f.append_extents_at(kind, flags, &list, 1_000 + i).unwrap();
        let b = s.append_at(flags, &body, 1_000 + i).unwrap();
        assert_eq!(a, b);
        if i % 7 == 0 {
            f.commit().unwrap();
            s.commit().unwrap();
        }
    }
    // Refused like the generic path: a kind that is not a change of extents, no extents,
    // an extent outside the disk, a flag a discard cannot carry.
    let e = Extent::new(0, 4096).unwrap();
    let none = RecordFlags::empty();
    assert!(
        f.append_extents_at(RecordKind::Flush, none, &[e], 0)
            .is_err()
    );
    assert!(
        f.append_extents_at(RecordKind::Write, none, &[], 0)
            .is_err()
    );
    let outside = Extent::new(spec.disk.size, 4096).unwrap();
    assert!(
        f.append_extents_at(RecordKind::Write, none, &[e, outside], 0)
            .is_err()
    );
    assert!(
        f.append_extents_at(RecordKind::Discard, RecordFlags::FUA, &[e], 0)
            .is_err()
    );
    f.close().unwrap();
    s.close().unwrap();
    let (fa, sa) = (read_chain(fast.path()), read_chain(slow.path()));
    assert_eq!(fa.len(), 600);
    assert_eq!(fa, sa);
    assert!(
        list_logs(fast.path()).unwrap().len() > 3,
        "no rotation exercised"
    );
}

/// `prefault` hands out the mapping ahead of the appends, once, in page-aligned stretches
/// that follow the end; running them (and a stale one, after the log it came from was
/// sealed) changes no record; an unmapped writer never asks for one.
#[test]
fn prefaulting_the_mapping_ahead_changes_no_record() {
    let d = tempfile::tempdir().unwrap();
    let cfg = WriterConfig {
        sync: hrl::SyncPolicy::Explicit,
        map: true,
        max_log_bytes: 4 << 20,
        ..cfg()
    };
    let (mut w, _) = LogWriter::open(d.path(), spec(), cfg).unwrap();
    const AHEAD: usize = 256 << 10;
    const LOW: usize = 128 << 10;
    assert!(w.prefault_due(LOW), "a new log has nothing populated");
    let first = w.prefault(AHEAD).unwrap();
    // From the end (just past the 4 KiB header) to 256 KiB past it.
    assert_eq!(first.len(), AHEAD);
    first.run().unwrap();
    assert!(!w.prefault_due(LOW));
    assert_eq!(w.prefault(AHEAD), None, "already handed out");
    // ~150 KiB of records: less than LOW is left ahead, the next stretch follows the last.
    let mut n = 0u64;
    while !w.prefault_due(LOW) {
        write(&mut w, (n * 4096) % (DISK_SIZE - 4096), 4096);
        w.write_pending().unwrap();
        n += 1;
    }
    let next = w.prefault(AHEAD).unwrap();
    assert_eq!(next.len() % 4096, 0);
    assert!(
        next.len() < AHEAD && next.len() > AHEAD - LOW,
        "{}",
        next.len()
    );
    next.run().unwrap();
    // A stale stretch, run after its log was sealed and unmapped: harmless either way.
    let stale = w.prefault(AHEAD + (1 << 20)).unwrap();
    w.rotate().unwrap();
    let _ = stale.run();
    for _ in 0..100 {
        write(&mut w, (n * 4096) % (DISK_SIZE - 4096), 4096);
        n += 1;
    }
    w.close().unwrap();
    let recs = read_chain(d.path());
    assert_eq!(recs.len() as u64, n);
    for (i, r) in recs.iter().enumerate() {
        let off = (i as u64 * 4096) % (DISK_SIZE - 4096);
        assert_eq!(
            r.body,
            RecordBody::Write(vec![ext(off, 4096)]),
            "record {i}"
        );
    }

    let plain = tempfile::tempdir().unwrap();
    let (mut u, _) = LogWriter::open(plain.path(), spec(), common::cfg()).unwrap();
    assert!(!u.prefault_due(LOW));
    assert_eq!(u.prefault(AHEAD), None);
}

#[test]
fn a_recount_forgets_logs_another_process_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let (mut w, _) = open(dir.path());
    write(&mut w, 0, 4096);
    let a = w.rotate().unwrap();
    write(&mut w, 8192, 4096);
    let b = w.rotate().unwrap();
    let before = w.total_bytes();
    let a_len = std::fs::metadata(&a.path).unwrap().len();
    // Shipped and deleted by the agent, not through `release`.
    std::fs::remove_file(&a.path).unwrap();
    assert_eq!(w.total_bytes(), before, "not noticed before the recount");
    let sealed = w.recount_sealed().unwrap();
    assert_eq!(sealed, std::fs::metadata(&b.path).unwrap().len());
    assert_eq!(w.total_bytes(), before - a_len);
    // The open log is never counted as sealed.
    std::fs::remove_file(&b.path).unwrap();
    assert_eq!(w.recount_sealed().unwrap(), 0);
    write(&mut w, 0, 4096);
    w.commit().unwrap();
}
