//! Cuts, tags and the space count (`ops.rs`, `space.rs`), for both durabilities.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;

use hrl::{GroupId, LogReader, RecoveryMode, SeqNo, WriterConfig};

use super::tests::{
    BOTH, bodies_in_open_log, capped, shared, shared_with, wait, wait_logged, write,
};
use super::*;

/// Every log of `dir` in chain order, checked: each links to the one before, and the
/// records' sequence numbers run on with no hole across them. Returns each log's path, seal
/// and record sequence numbers.
fn chain(dir: &Path) -> Vec<(PathBuf, Option<hrl::Seal>, Vec<u64>)> {
    let mut out: Vec<(PathBuf, Option<hrl::Seal>, Vec<u64>)> = Vec::new();
    let mut prev: Option<(hrl::LogHeader, Option<hrl::Seal>)> = None;
    let mut next: Option<SeqNo> = None;
    for (_, p) in hrl::chain::list_logs(dir).unwrap() {
        let mut r = LogReader::open(&p, RecoveryMode::TruncateTail).unwrap();
        if let Some((h, s)) = &prev {
            hrl::chain::check_link(h, s.as_ref(), r.header()).unwrap();
        }
        let seqs: Vec<u64> = r.read_all().unwrap().iter().map(|x| x.seq.0).collect();
        for s in &seqs {
            if let Some(n) = next {
                assert_eq!(*s, n.0, "{}", p.display());
            }
            next = Some(SeqNo(s + 1));
        }
        prev = Some((*r.header(), r.seal().copied()));
        out.push((p, r.seal().copied(), seqs));
    }
    out
}

#[test]
fn a_cut_seals_every_record_appended_before_and_the_next_go_to_the_next_log() {
    for d in BOTH {
        let dir = tempfile::tempdir().unwrap();
        let log = shared(dir.path(), d);
        let q = QueueLog::new(Arc::clone(&log)).unwrap();
        // Ten writes completed (their records logged), three appended and not yet written
        // out (no after_tick): the cut takes all of them.
        let done: Vec<Ticket> = (0..10).map(|i| write(&q, i)).collect();
        q.after_tick();
        for t in &done {
            wait(&q, *t).unwrap();
        }
        let pending: Vec<Ticket> = (10..13).map(|i| write(&q, i)).collect();
        let cutter = {
            let log = Arc::clone(&log);
            std::thread::spawn(move || log.cut())
        };
        // The cut publishes them: their I/Os go on, durable (the seal synced them), and
        // the cut returns once they are performed.
        for t in &pending {
            wait_logged(&q, *t).unwrap();
            assert!(log.inner.durable_end.load(Ordering::SeqCst) >= t.end);
            assert!(
                !cutter.is_finished(),
                "{d:?}: the cut returned before its changes were performed"
            );
        }
        for t in &pending {
            q.performed(t.parity().unwrap());
        }
        let sealed = cutter.join().unwrap().unwrap();
        assert_eq!(sealed.seal.record_count, 13, "{d:?}");
        assert_eq!(sealed.seal.next_seq.0, pending[2].end, "{d:?}");
        assert_eq!(sealed.header.log_seq.0, 0);
        assert!(sealed.seal.sealed_unix_ns > 0);
        let next: Vec<Ticket> = (13..18).map(|i| write(&q, i)).collect();
        q.after_tick();
        for t in &next {
            wait(&q, *t).unwrap();
        }
        let open = log.with_writer(|w| w.current_path().unwrap().to_owned());
        assert_ne!(open.as_deref(), Some(sealed.path.as_path()));
        drop(q);
        log.take().unwrap().close().unwrap();
        let logs = chain(dir.path());
        assert_eq!(logs.len(), 2, "{d:?}");
        assert_eq!(logs[0].0, sealed.path);
        assert_eq!(logs[0].2.len(), 13);
        assert_eq!(logs[1].2.len(), 5);
    }
}

/// A queue keeps appending and completing I/Os while cuts come in: every I/O completed
/// before a cut was asked for is in the log it sealed or an earlier one.
#[test]
fn cuts_amid_appends_are_exact() {
    for d in BOTH {
        let dir = tempfile::tempdir().unwrap();
        let log = shared(dir.path(), d);
        // One past the last record whose I/O completed.
        let completed = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let queue = {
            let (log, completed, stop) =
                (Arc::clone(&log), Arc::clone(&completed), Arc::clone(&stop));
            std::thread::spawn(move || {
                let q = QueueLog::new(log).unwrap();
                let mut i = 0;
                while !stop.load(Ordering::SeqCst) {
                    let t: Vec<Ticket> = (0..4).map(|k| write(&q, i * 4 + k)).collect();
                    q.after_tick();
                    for tk in t {
                        wait(&q, tk).unwrap();
                        completed.fetch_max(tk.end, Ordering::SeqCst);
                    }
                    i += 1;
                }
            })
        };
        let mut seals = Vec::new();
        for _ in 0..20 {
            std::thread::sleep(std::time::Duration::from_millis(2));
            let before = completed.load(Ordering::SeqCst);
            let sealed = log.cut().unwrap();
            assert!(
                sealed.seal.next_seq.0 >= before,
                "{d:?}: an I/O missed its cut"
            );
            seals.push(sealed);
        }
        stop.store(true, Ordering::SeqCst);
        queue.join().unwrap();
        log.take().unwrap().close().unwrap();
        let logs = chain(dir.path());
        assert_eq!(logs.len(), 21, "{d:?}");
        for (s, l) in seals.iter().zip(&logs) {
            assert_eq!(s.path, l.0);
        }
    }
}

#[test]
fn a_tag_is_in_the_log_file_when_mark_returns() {
    for d in BOTH {
        let dir = tempfile::tempdir().unwrap();
        let log = shared(dir.path(), d);
        let q = QueueLog::new(Arc::clone(&log)).unwrap();
        let t = write(&q, 1);
        q.after_tick();
        wait(&q, t).unwrap();
        log.mark(42).unwrap();
        let bodies = bodies_in_open_log(&log);
        assert_eq!(
            bodies.last(),
            Some(&RecordBody::ConsistencyTag {
                group: GroupId::NIL,
                tag: 42
            }),
            "{d:?}"
        );
        let s = log.stats();
        assert_eq!((s.records, s.overflows, s.journal), (1, 0, false), "{d:?}");
        assert_eq!(s.next_seq, t.end + 1, "{d:?}");
        assert!(s.log_bytes > 0);
        drop(q);
        log.take().unwrap().close().unwrap();
    }
}

#[test]
fn over_the_cap_a_tag_is_refused_and_the_overflows_are_counted() {
    let dir = tempfile::tempdir().unwrap();
    let (log, q) = capped(dir.path());
    // 56 bytes a record (one write each, FUA so they do not share one): two fit.
    let data = [0u8; 4096];
    let mut out = Vec::new();
    for i in 0..5 {
        let change = Change::Write {
            offset: i * 8192,
            data: &data,
            fua: true,
        };
        q.append_all(std::iter::once(change), &mut out, true);
    }
    q.after_tick();
    let e = log.mark(9).unwrap_err();
    assert!(e.contains("space cap"), "{e}");
    let s = log.stats();
    assert_eq!(
        (s.records, s.overflows, s.log_cap),
        (5, 3, Some(4096 + 150))
    );
    drop(q);
    log.take().unwrap().close().unwrap();
}

/// The agent deletes the logs it shipped itself: the next cut uncounts them, so the cap
/// applies to the logs still there, not to every log the target ever wrote.
#[test]
fn logs_the_agent_deletes_are_uncounted_at_the_next_cut() {
    for d in BOTH {
        let dir = tempfile::tempdir().unwrap();
        let cfg = WriterConfig {
            max_total_bytes: Some(64 << 10),
            ..WriterConfig::default()
        };
        let log = shared_with(dir.path(), cfg, d);
        let q = QueueLog::new(Arc::clone(&log)).unwrap();
        let mut i = 0;
        let mut fill = |q: &QueueLog| {
            // ~17 KiB of records per round (56 bytes each): three rounds' logs fit under
            // the cap, six do not.
            for _ in 0..300 {
                let t = write(q, i);
                i += 1;
                q.after_tick();
                wait(q, t).unwrap();
            }
        };
        for round in 0..6 {
            fill(&q);
            let sealed = log.cut().unwrap();
            // The agent ships and releases it.
            std::fs::remove_file(&sealed.path).unwrap();
            let s = log.stats();
            assert_eq!(s.overflows, 0, "{d:?} round {round}: {s:?}");
        }
        // Released logs before the last cut are uncounted; the last one at the next.
        log.mark(1).unwrap();
        let s = log.stats();
        assert!(s.log_bytes < 40 << 10, "{d:?}: {s:?}");
        drop(q);
        log.take().unwrap().close().unwrap();
    }
}

#[test]
fn a_cut_or_a_tag_after_the_log_is_taken_is_refused() {
    for d in BOTH {
        let dir = tempfile::tempdir().unwrap();
        let log = shared(dir.path(), d);
        let w = log.take().unwrap();
        assert!(log.cut().unwrap_err().contains("closed"));
        assert!(log.mark(1).unwrap_err().contains("closed"));
        assert_eq!(log.stats().next_seq, 0);
        w.close().unwrap();
    }
}
