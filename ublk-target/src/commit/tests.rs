#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use hrl::{
    ChainSpec, DiskId, DiskIdentity, Generation, LogReader, RecoveryMode, SyncPolicy, WriterConfig,
};

use super::*;

pub(super) const DISK: u64 = 64 << 20;
pub(super) const BOTH: [Durability; 2] = [Durability::Flush, Durability::Write];

pub(super) fn shared(dir: &std::path::Path, d: Durability) -> Arc<SharedLog> {
    shared_with(dir, WriterConfig::default(), d)
}

pub(super) fn shared_with(
    dir: &std::path::Path,
    cfg: WriterConfig,
    d: Durability,
) -> Arc<SharedLog> {
    let spec = ChainSpec {
        disk: DiskIdentity {
            id: DiskId([1; 16]),
            size: DISK,
            logical_block_size: 512,
        },
        journal: false,
        generation: Generation(1),
    };
    let sync = match d {
        Durability::Flush => SyncPolicy::Explicit,
        Durability::Write => SyncPolicy::Data,
    };
    let cap = cfg.max_total_bytes;
    let (w, _) = LogWriter::open(dir, spec, WriterConfig { sync, ..cfg }).unwrap();
    SharedLog::new(w, false, d, cap).unwrap()
}

/// A `flush`-durability log whose space cap fits the first log's header and two records,
/// and a queue on it.
pub(super) fn capped(dir: &std::path::Path) -> (Arc<SharedLog>, QueueLog) {
    let cfg = WriterConfig {
        max_total_bytes: Some(4096 + 150),
        ..WriterConfig::default()
    };
    let log = shared_with(dir, cfg, Durability::Flush);
    let q = QueueLog::new(Arc::clone(&log)).unwrap();
    (log, q)
}

/// What a queue's event loop does, minus io_uring: arm, look at the ticket; while it is
/// not logged, block on the eventfd the log thread signals.
/// Once logged, the change is "performed" at once and its I/O completed (what lets a cut's
/// wait end, `drain.rs`); [`wait_logged`] stops before that.
pub(super) fn wait(q: &QueueLog, t: Ticket) -> Result<(), LogFailed> {
    let r = wait_logged(q, t);
    if let Some(p) = t.parity() {
        q.performed(p);
    }
    r
}

/// [`wait`] without completing the change's I/O.
pub(super) fn wait_logged(q: &QueueLog, t: Ticket) -> Result<(), LogFailed> {
    loop {
        q.arm();
        if let Some(ok) = q.state(t) {
            return if ok { Ok(()) } else { Err(LogFailed) };
        }
        let mut pfd = libc::pollfd {
            fd: q.event_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, for the duration of the call.
        let n = unsafe { libc::poll(&raw mut pfd, 1, 10_000) };
        assert_eq!(n, 1, "the log thread did not wake the queue within 10 s");
        q.clear_event();
    }
}

pub(super) fn write(q: &QueueLog, i: u64) -> Ticket {
    let data = [0u8; 4096];
    q.append(Change::Write {
        offset: (i % 1000) * 4096,
        data: &data,
        fua: false,
    })
    .unwrap()
}

/// The records of the disk's open log, read back from the file.
pub(super) fn bodies_in_open_log(log: &SharedLog) -> Vec<RecordBody> {
    let path = log
        .with_writer(|w| w.current_path().unwrap().to_owned())
        .unwrap();
    let mut r = LogReader::open(&path, RecoveryMode::TruncateTail).unwrap();
    r.read_all().unwrap().into_iter().map(|r| r.body).collect()
}

fn records_in(path: &std::path::Path) -> usize {
    let mut r = LogReader::open(path, RecoveryMode::TruncateTail).unwrap();
    r.read_all().unwrap().len()
}

#[test]
fn queues_keep_appending_while_the_log_thread_commits_and_every_wait_ends() {
    for d in BOTH {
        let dir = tempfile::tempdir().unwrap();
        let log = shared(dir.path(), d);
        let threads: Vec<_> = (0..2u64)
            .map(|t| {
                let log = Arc::clone(&log);
                std::thread::spawn(move || {
                    let q = QueueLog::new(log).unwrap();
                    for round in 0..50 {
                        // A "batch of completions": a few appends, one after_tick, then
                        // wait; every 10th round ends with a flush.
                        let mut tickets: Vec<Ticket> = (0..8)
                            .map(|i| write(&q, t * 10_000 + round * 8 + i))
                            .collect();
                        if round % 10 == 9 {
                            tickets.push(q.append(Change::Flush).unwrap());
                        }
                        q.after_tick();
                        for tk in tickets {
                            wait(&q, tk).unwrap();
                            let inner = &q.shared.inner;
                            assert!(inner.written_end.load(Ordering::SeqCst) >= tk.end);
                            if tk.need == Need::Durable {
                                assert!(inner.durable_end.load(Ordering::SeqCst) >= tk.end);
                            }
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let w = log.take().unwrap();
        assert_eq!(w.stats().records, 810, "{d:?}");
        let sealed = w.close().unwrap();
        let mut r = LogReader::open(&sealed.path, RecoveryMode::Strict).unwrap();
        let recs = r.read_all().unwrap();
        assert_eq!(recs.len(), 810, "{d:?}");
        assert!(recs.windows(2).all(|p| p[1].seq == p[0].seq.next()));
    }
}

/// `Flush` durability: a plain write goes ahead once its record is in the log file
/// (readable by another process, so it survives a crash of this one) without waiting for
/// any sync; a flush waits until the log thread has synced everything before it.
#[test]
fn flush_durability_writes_records_inline_and_syncs_at_a_flush() {
    let dir = tempfile::tempdir().unwrap();
    let log = shared(dir.path(), Durability::Flush);
    let q = QueueLog::new(Arc::clone(&log)).unwrap();
    let tickets: Vec<Ticket> = (0..5).map(|i| write(&q, i)).collect();
    assert!(tickets.iter().all(|t| t.need == Need::Written));
    let inner = &log.inner;
    let start = inner.durable_end.load(Ordering::SeqCst);
    assert_eq!(
        inner.state_of(tickets[4]),
        None,
        "not written before after_tick"
    );
    q.after_tick();
    for t in &tickets {
        assert_eq!(inner.state_of(*t), Some(true));
    }
    assert_eq!(
        inner.durable_end.load(Ordering::SeqCst),
        start,
        "plain writes asked for no sync"
    );
    let path = log
        .with_writer(|w| w.current_path().unwrap().to_owned())
        .unwrap();
    assert_eq!(records_in(&path), 5, "the records are in the file already");
    // A FUA write and a flush need the sync.
    let data = [1u8; 512];
    let fua = q
        .append(Change::Write {
            offset: 0,
            data: &data,
            fua: true,
        })
        .unwrap();
    let flush = q.append(Change::Flush).unwrap();
    assert_eq!((fua.need, flush.need), (Need::Durable, Need::Durable));
    q.after_tick();
    wait(&q, fua).unwrap();
    wait(&q, flush).unwrap();
    assert!(inner.durable_end.load(Ordering::SeqCst) >= flush.end);
    drop(q);
    log.take().unwrap().close().unwrap();
}

#[test]
fn a_turns_plain_writes_share_one_record_and_other_changes_keep_their_own() {
    let dir = tempfile::tempdir().unwrap();
    let log = shared(dir.path(), Durability::Flush);
    let q = QueueLog::new(Arc::clone(&log)).unwrap();
    let data = [0u8; 4096];
    let w = |i: u64, fua| Change::Write {
        offset: i * 8192,
        data: &data,
        fua,
    };
    let turn = [
        w(0, false),
        w(1, false),
        w(2, false),
        w(3, true),
        w(4, false),
        Change::Discard {
            offset: 1 << 20,
            len: 4096,
        },
        w(5, false),
        w(6, false),
        // Outside the 64 MiB disk: refused alone, the writes around it still logged.
        w(1 << 20, false),
        w(7, false),
    ];
    let mut out = Vec::new();
    q.append_all(turn.iter().copied(), &mut out, true);
    q.after_tick();
    assert_eq!(out.len(), turn.len(), "one ticket per change");
    assert_eq!(out[8], Err(LogFailed));
    let t: Vec<Ticket> = out.iter().filter_map(|t| t.ok()).collect();
    // Records: W{0,1,2}, FUA W3, W{4}, Discard, W{5,6}, W{7}.
    let ends: Vec<u64> = t.iter().map(|x| x.end - t[0].end).collect();
    assert_eq!(ends, [0, 0, 0, 1, 2, 3, 4, 4, 5]);
    assert_eq!(t[3].need, Need::Durable);
    wait(&q, t[3]).unwrap();
    let bodies = bodies_in_open_log(&log);
    let ext = |i: u64| Extent::new(i * 8192, 4096).unwrap();
    assert_eq!(
        bodies,
        [
            RecordBody::Write(vec![ext(0), ext(1), ext(2)]),
            RecordBody::Write(vec![ext(3)]),
            RecordBody::Write(vec![ext(4)]),
            RecordBody::Discard(vec![Extent::new(1 << 20, 4096).unwrap()]),
            RecordBody::Write(vec![ext(5), ext(6)]),
            RecordBody::Write(vec![ext(7)]),
        ]
    );
    drop(q);
    log.take().unwrap().close().unwrap();
}

#[test]
fn over_the_space_cap_a_turns_writes_become_one_gap_and_still_go_ahead() {
    let dir = tempfile::tempdir().unwrap();
    let (log, q) = capped(dir.path());
    let data = [0u8; 4096];
    let w = |i: u64| Change::Write {
        offset: i * 8192,
        data: &data,
        fua: false,
    };
    let mut out = Vec::new();
    // 40 + 16 × 3 = 88 bytes: fits under the cap; the next turn's 104 do not.
    q.append_all((0..3).map(w), &mut out, true);
    q.append_all((3..7).map(w), &mut out, true);
    q.after_tick();
    assert_eq!(out.len(), 7);
    for t in &out {
        assert_eq!(q.state(t.unwrap()), Some(true), "the writes go ahead");
    }
    let bodies = bodies_in_open_log(&log);
    let ext = |i: u64| Extent::new(i * 8192, 4096).unwrap();
    assert_eq!(
        bodies,
        [
            RecordBody::Write((0..3).map(ext).collect()),
            RecordBody::TrackingGap {
                reason: GapReason::LogSpaceExhausted,
                scope: GapScope::Extents((3..7).map(ext).collect()),
            },
        ]
    );
    drop(q);
    log.take().unwrap().close().unwrap();
}

/// `Flush` durability with tiny logs: the log thread rotates them (a queue never does),
/// and the chain holds every record once, in order.
#[test]
fn flush_durability_rotates_on_the_log_thread_and_keeps_the_chain() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = WriterConfig {
        max_log_bytes: 16 << 10,
        ..WriterConfig::default()
    };
    let log = shared_with(dir.path(), cfg, Durability::Flush);
    let q = QueueLog::new(Arc::clone(&log)).unwrap();
    for round in 0..200 {
        let tickets: Vec<Ticket> = (0..10).map(|i| write(&q, round * 10 + i)).collect();
        q.after_tick();
        for t in tickets {
            wait(&q, t).unwrap();
        }
    }
    let flush = q.append(Change::Flush).unwrap();
    q.after_tick();
    wait(&q, flush).unwrap();
    drop(q);
    let w = log.take().unwrap();
    // ~7 logs' worth, but a log overshoots while the log thread syncs before rotating
    // (the writer here is as fast as memory), so how many rotations is timing.
    assert!(w.stats().rotations >= 1, "{:?}", w.stats());
    w.close().unwrap();
    let mut total = 0;
    let mut next = None;
    for (_, p) in hrl::chain::list_logs(dir.path()).unwrap() {
        let mut r = LogReader::open(&p, RecoveryMode::Strict).unwrap();
        for rec in r.read_all().unwrap() {
            if let Some(n) = next {
                assert_eq!(rec.seq, n);
            }
            next = Some(rec.seq.next());
            total += 1;
        }
    }
    assert_eq!(total, 2001);
}

/// The writer's batch-size backstop commits inside an append, on the queue's thread:
/// the log thread must still publish it (this hung journal-mode 1 MiB writes once).
#[test]
fn a_commit_made_by_an_append_itself_still_wakes_its_waiters() {
    for d in BOTH {
        let dir = tempfile::tempdir().unwrap();
        let cfg = WriterConfig {
            max_batch_records: 3,
            ..WriterConfig::default()
        };
        let log = shared_with(dir.path(), cfg, d);
        let q = QueueLog::new(Arc::clone(&log)).unwrap();
        for round in 0..20 {
            let tickets: Vec<Ticket> = (0..3).map(|i| write(&q, round * 3 + i)).collect();
            q.after_tick();
            for t in tickets {
                wait(&q, t).unwrap();
            }
        }
        drop(q);
        let w = log.take().unwrap();
        assert_eq!(w.stats().records, 60);
        w.close().unwrap();
    }
}

#[test]
fn a_change_is_refused_once_the_log_is_taken_and_take_commits_the_rest() {
    for d in BOTH {
        let dir = tempfile::tempdir().unwrap();
        let log = shared(dir.path(), d);
        let q = QueueLog::new(Arc::clone(&log)).unwrap();
        let t = write(&q, 1);
        // No after_tick: stopping the log thread still writes (and syncs) what was
        // appended.
        let w = log.take().unwrap();
        assert_eq!(w.durable_seq().map(|s| s.0 + 1), Some(t.end));
        assert_eq!(wait(&q, t), Ok(()));
        let data = [0u8; 512];
        let change = Change::Write {
            offset: 0,
            data: &data,
            fua: false,
        };
        assert_eq!(q.append(change), Err(LogFailed));
        w.close().unwrap();
    }
}

/// Waits (up to 10 s) until the log thread has populated the open log's mapping ahead.
fn wait_populated(log: &SharedLog) -> bool {
    for _ in 0..1000 {
        if log.with_writer(|w| !w.prefault_due(PREFAULT_LOW)) == Some(true) {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    false
}

/// The log thread keeps the open log's mapping populated ahead of the queue's appends: at
/// start, again once the appends have used up to the low mark, and in the log that
/// follows a rotation; the records are all there.
#[test]
fn the_log_thread_populates_the_mapping_ahead_of_the_appends() {
    let d = tempfile::tempdir().unwrap();
    let cfg = WriterConfig {
        map: true,
        max_log_bytes: 4 << 20,
        ..WriterConfig::default()
    };
    let log = shared_with(d.path(), cfg, Durability::Flush);
    assert!(wait_populated(&log), "the first stretch at start");
    let q = QueueLog::new(Arc::clone(&log)).unwrap();
    let data = [0u8; 4096];
    let mut n = 0u64;
    let mut append_until_due = |q: &QueueLog| {
        let mut tickets = Vec::new();
        while log.with_writer(|w| w.prefault_due(PREFAULT_LOW)) == Some(false) {
            tickets.clear();
            let change = Change::Write {
                offset: (n * 4096) % (DISK - 4096),
                data: &data,
                fua: n.is_multiple_of(2), // one record per write: the log fills faster
            };
            q.append_all(std::iter::once(change), &mut tickets, true);
            q.after_tick();
            n += 1;
        }
    };
    append_until_due(&q);
    assert!(wait_populated(&log), "asked again at the low mark");
    // Into the next log: the log thread rotates and populates that one too.
    let first = log.with_writer(|w| w.current_path().map(std::path::Path::to_owned));
    while log.with_writer(|w| w.current_path().map(std::path::Path::to_owned)) == first {
        append_until_due(&q);
        assert!(wait_populated(&log));
    }
    assert!(wait_populated(&log), "the log after the rotation");
    drop(q);
    let w = log.take().unwrap();
    w.close().unwrap();
    let mut writes = 0;
    for (_, path) in hrl::chain::list_logs(d.path()).unwrap() {
        let mut r = LogReader::open(&path, RecoveryMode::Strict).unwrap();
        for rec in r.read_all().unwrap() {
            if let RecordBody::Write(l) = rec.body {
                writes += l.len() as u64;
            }
        }
    }
    assert_eq!(writes, n);
}
