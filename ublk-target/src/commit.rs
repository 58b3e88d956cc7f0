//! Pipelined group commit between the queues' I/O tasks and the disk's one
//! [`hrl::LogWriter`].
//!
//! Every change is appended to the log and the log is made durable **before** the change is
//! performed on the backing store, so no completed (or even attempted) change is ever
//! missing from the log — not after `kill -9`, not after power loss. Making that cheap is
//! group commit, and keeping the queues busy while it happens is pipelining:
//!
//! - an I/O task appends its record (an in-memory encode under the writer's mutex), which
//!   returns the record's sequence number, and awaits `QueueLog::durable` for it;
//! - after a queue has run every task woken by one batch of io_uring completions, it kicks
//!   the disk's **log thread** once (`QueueLog::kick_if_appended`);
//! - the log thread takes the whole pending batch out of the writer
//!   ([`LogWriter::take_commit`]), writes and syncs it *without* the mutex (one `pwrite` +
//!   one `fdatasync`), hands it back, and publishes "durable up to sequence N"; then it
//!   takes whatever the queues appended meanwhile, and so on. No timer: a batch is whatever
//!   was appended while the previous one synced;
//! - every queue with tasks waiting has an armed eventfd that the log thread signals after
//!   publishing; each queue's io_uring polls its eventfd, so the wake-up is one more
//!   completion in the queue's own event loop (`queue.rs`), which then wakes its tasks.
//!
//! So a queue keeps receiving, reading and performing already-logged writes while a batch
//! syncs, and one commit serves every queue of the disk.
//!
//! **Why a log thread** and not log writes issued through each queue's io_uring
//! (`O_DIRECT` + `RWF_DSYNC`, or linked write + fsync): the log is one file shared by all
//! queues and records must land in sequence order with no hole (a reader stops at the first
//! invalid record, so a later batch made durable before an earlier one would be lost with
//! it). Per-queue rings would need a cross-queue ordering protocol and the same cross-thread
//! wake-up anyway; one writer thread gets the order for free. Records are not block aligned,
//! so `O_DIRECT` would also mean rewriting the last partial block of each batch.
//!
//! **Failure.** If a batch's write or sync fails, every task waiting on one of its records
//! fails its I/O with `EIO` (the change is not performed), and the records go back in front
//! of the batch to be retried by the next commit: a record of a change that was never made
//! is harmless, a change without a record is not.

use std::cell::{Cell, RefCell};
use std::fs::File;
use std::future::Future;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};
use std::thread::JoinHandle;

use hrl::{Extent, GapReason, GapScope, LogWriter, RecordBody, RecordFlags};

/// The disk's log writer and its log thread, shared by the queue threads.
#[derive(Debug)]
pub struct SharedLog {
    inner: Arc<Inner>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

/// What the queues and the log thread share.
#[derive(Debug)]
struct Inner {
    writer: Mutex<Option<LogWriter>>,
    journal: bool,
    /// One past the last record known durable (records below it may be performed).
    durable_end: AtomicU64,
    /// One past the last record of the last batch whose write failed.
    failed_end: AtomicU64,
    kick: Mutex<Kick>,
    kicked: Condvar,
    queues: Mutex<Vec<Arc<Notifier>>>,
}

#[derive(Debug, Default)]
struct Kick {
    pending: bool,
    stop: bool,
}

/// How the log thread wakes one queue: an eventfd the queue's io_uring polls, signalled only
/// when the queue has tasks waiting (`armed`), so idle queues cost nothing.
#[derive(Debug)]
struct Notifier {
    efd: File,
    armed: AtomicBool,
}

/// What to log for one I/O.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Change<'a> {
    /// A write; `data` is logged in journal mode.
    Write {
        offset: u64,
        data: &'a [u8],
        fua: bool,
    },
    /// A discard.
    Discard { offset: u64, len: u64 },
    /// A write-zeroes.
    WriteZeroes { offset: u64, len: u64 },
    /// A flush that has completed on the backing store.
    Flush,
}

/// The log failed: the I/O must fail rather than complete untracked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LogFailed;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A poisoned lock means a thread panicked while holding it; the writer's batch is still
    // consistent (appends validate before encoding) and the rest is plain flags, so keep
    // going rather than take the disk down.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl SharedLog {
    /// Wraps an open writer and starts its log thread.
    ///
    /// # Errors
    /// If the thread cannot be spawned.
    pub fn new(writer: LogWriter, journal: bool) -> std::io::Result<Arc<Self>> {
        let start = writer.next_seq().0;
        let inner = Arc::new(Inner {
            writer: Mutex::new(Some(writer)),
            journal,
            durable_end: AtomicU64::new(start),
            failed_end: AtomicU64::new(0),
            kick: Mutex::new(Kick::default()),
            kicked: Condvar::new(),
            queues: Mutex::new(Vec::new()),
        });
        let t = Arc::clone(&inner);
        let thread = std::thread::Builder::new()
            .name("sitrep-log".into())
            .spawn(move || t.run())?;
        Ok(Arc::new(Self {
            inner,
            thread: Mutex::new(Some(thread)),
        }))
    }

    /// Stops the log thread (after it has committed everything appended) and takes the
    /// writer out, for a clean close; later appends fail.
    pub fn take(&self) -> Option<LogWriter> {
        self.stop_thread();
        lock(&self.inner.writer).take()
    }

    /// Runs `f` on the writer, if it is still open.
    pub fn with_writer<R>(&self, f: impl FnOnce(&mut LogWriter) -> R) -> Option<R> {
        lock(&self.inner.writer).as_mut().map(f)
    }

    fn stop_thread(&self) {
        let Some(t) = lock(&self.thread).take() else {
            return;
        };
        lock(&self.inner.kick).stop = true;
        self.inner.kicked.notify_one();
        if t.join().is_err() {
            tracing::error!("the log thread panicked");
        }
    }
}

impl Drop for SharedLog {
    fn drop(&mut self) {
        self.stop_thread();
    }
}

impl Inner {
    /// Appends the record for `change` (not yet durable). Returns the end of the records
    /// that must be durable before the change may be performed.
    fn append(&self, change: Change<'_>) -> Result<u64, LogFailed> {
        let mut guard = lock(&self.writer);
        let w = guard.as_mut().ok_or(LogFailed)?;
        let res = match change {
            Change::Write { offset, data, fua } => {
                let flags = if fua {
                    RecordFlags::FUA
                } else {
                    RecordFlags::empty()
                };
                if self.journal {
                    w.append_write_data(flags, offset, data)
                } else {
                    let ext = extent(offset, data.len() as u64)?;
                    w.append(flags, &RecordBody::Write(vec![ext]))
                }
            }
            Change::Discard { offset, len } => w.append(
                RecordFlags::empty(),
                &RecordBody::Discard(vec![extent(offset, len)?]),
            ),
            Change::WriteZeroes { offset, len } => w.append(
                RecordFlags::empty(),
                &RecordBody::WriteZeroes(vec![extent(offset, len)?]),
            ),
            Change::Flush => w.append(RecordFlags::empty(), &RecordBody::Flush),
        };
        match res {
            Ok(_) => {}
            // Over the space cap the change is still recorded, as a gap over its range:
            // the write goes ahead (never fail a write because replication is behind) and
            // the range is resynced. A flush then waits for the records before it.
            Err(hrl::Error::Full { .. }) => {
                let scope = match change {
                    Change::Write { offset, data, .. } => {
                        Some(GapScope::Extents(vec![extent(offset, data.len() as u64)?]))
                    }
                    Change::Discard { offset, len } | Change::WriteZeroes { offset, len } => {
                        Some(GapScope::Extents(vec![extent(offset, len)?]))
                    }
                    Change::Flush => None,
                };
                if let Some(scope) = scope {
                    w.append(
                        RecordFlags::empty(),
                        &RecordBody::TrackingGap {
                            reason: GapReason::LogSpaceExhausted,
                            scope,
                        },
                    )
                    .map_err(|e| log_error(&e))?;
                }
            }
            Err(e) => return Err(log_error(&e)),
        }
        Ok(w.next_seq().0)
    }

    fn kick(&self) {
        let mut k = lock(&self.kick);
        if !k.pending {
            k.pending = true;
            self.kicked.notify_one();
        }
    }

    /// The log thread: commit whatever is pending each time a queue kicks, until stopped.
    fn run(&self) {
        loop {
            let stop = {
                let mut k = lock(&self.kick);
                while !k.pending && !k.stop {
                    k = self.kicked.wait(k).unwrap_or_else(PoisonError::into_inner);
                }
                k.pending = false;
                k.stop
            };
            self.commit_all();
            if stop {
                return;
            }
        }
    }

    /// Commits batch after batch until nothing is pending or a write fails.
    fn commit_all(&self) {
        loop {
            let taken = {
                let mut guard = lock(&self.writer);
                let Some(w) = guard.as_mut() else { return };
                // An append may have committed by itself (the writer's batch-size
                // backstop, while no commit was in flight): publish that first, or its
                // waiters would wait for a commit that already happened.
                let durable = w.durable_seq();
                let taken = w.take_commit();
                drop(guard);
                self.publish(durable);
                match taken {
                    Ok(Some(p)) => p,
                    Ok(None) => return,
                    Err(e) => {
                        tracing::error!(error = %e, "taking a log batch failed");
                        return;
                    }
                }
            };
            let mut p = taken;
            let end = p.last_seq().0 + 1;
            // The slow part, without the writer's mutex: queues keep appending meanwhile.
            let wrote = p.write();
            let durable = {
                let mut guard = lock(&self.writer);
                match guard.as_mut() {
                    Some(w) => {
                        if let Err(e) = w.finish_commit(p) {
                            // The batch is durable; the rotation after it failed (and
                            // later appends will fail on the closed writer).
                            tracing::error!(error = %e, "rotating the change log failed");
                        }
                        w.durable_seq()
                    }
                    None => None,
                }
            };
            match wrote {
                Ok(()) => self.publish(durable),
                Err(e) => {
                    log_error(&e);
                    self.failed_end.fetch_max(end, Ordering::SeqCst);
                    self.notify_queues();
                    // Retried at the next kick, i.e. with the next change; not in a loop.
                    return;
                }
            }
        }
    }

    /// Makes the records up to `durable` performable and wakes the queues waiting, if that
    /// is news.
    fn publish(&self, durable: Option<hrl::SeqNo>) {
        if let Some(d) = durable
            && self.durable_end.fetch_max(d.0 + 1, Ordering::SeqCst) < d.0 + 1
        {
            self.notify_queues();
        }
    }

    fn notify_queues(&self) {
        for q in lock(&self.queues).iter() {
            if q.armed.swap(false, Ordering::SeqCst)
                && let Err(e) = (&q.efd).write_all(&1u64.to_ne_bytes())
            {
                // Cannot happen for an eventfd short of 2^64 - 1 signals; the queue then
                // still wakes at its next completion.
                tracing::error!(error = %e, "waking a queue failed");
            }
        }
    }

    /// Whether the records before `end` are durable (Some(true)), failed (Some(false)), or
    /// still being committed (None).
    fn state_of(&self, end: u64) -> Option<bool> {
        if self.durable_end.load(Ordering::SeqCst) >= end {
            Some(true)
        } else if self.failed_end.load(Ordering::SeqCst) >= end {
            Some(false)
        } else {
            None
        }
    }
}

fn extent(offset: u64, len: u64) -> Result<Extent, LogFailed> {
    Extent::new(offset, len).ok_or(LogFailed)
}

fn log_error(e: &hrl::Error) -> LogFailed {
    tracing::error!(error = %e, "change log append/commit failed; failing the I/O");
    LogFailed
}

/// One queue's view of the shared log: its tasks waiting for durability and the eventfd the
/// log thread wakes it with. Lives on the queue's thread only (`Rc`).
#[derive(Debug)]
pub(crate) struct QueueLog {
    shared: Arc<SharedLog>,
    notifier: Arc<Notifier>,
    waiters: RefCell<Vec<Waker>>,
    appended: Cell<bool>,
}

impl QueueLog {
    /// Registers a queue with the log thread.
    pub(crate) fn new(shared: Arc<SharedLog>) -> std::io::Result<Self> {
        // SAFETY: eventfd takes no pointers; the result is checked before use.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor that nothing else owns; the File closes it.
        let efd = unsafe { File::from_raw_fd(fd) };
        let notifier = Arc::new(Notifier {
            efd,
            armed: AtomicBool::new(false),
        });
        lock(&shared.inner.queues).push(Arc::clone(&notifier));
        Ok(Self {
            shared,
            notifier,
            waiters: RefCell::new(Vec::new()),
            appended: Cell::new(false),
        })
    }

    /// Appends `change`; returns what to await with [`durable`](Self::durable).
    pub(crate) fn append(&self, change: Change<'_>) -> Result<u64, LogFailed> {
        let end = self.shared.inner.append(change)?;
        self.appended.set(true);
        Ok(end)
    }

    /// Resolves once the records before `end` are durable (or failed to be).
    pub(crate) fn durable(&self, end: u64) -> Durable<'_> {
        Durable { log: self, end }
    }

    /// Asks the log thread to commit, if this queue appended since the last call. Called
    /// once per batch of completions, after the woken tasks ran.
    pub(crate) fn kick_if_appended(&self) {
        if self.appended.replace(false) {
            self.shared.inner.kick();
        }
    }

    /// The eventfd the queue's io_uring polls for wake-ups from the log thread.
    pub(crate) fn event_fd(&self) -> RawFd {
        self.notifier.efd.as_raw_fd()
    }

    /// The eventfd fired: clears it and wakes every waiting task (each re-checks its own
    /// records).
    pub(crate) fn on_notified(&self) {
        let mut count = [0u8; 8];
        // Nonblocking: EAGAIN just means another wake-up already cleared it.
        let _ = (&self.notifier.efd).read(&mut count);
        let waiters = std::mem::take(&mut *self.waiters.borrow_mut());
        for w in waiters {
            w.wake();
        }
    }
}

impl Drop for QueueLog {
    fn drop(&mut self) {
        lock(&self.shared.inner.queues).retain(|n| !Arc::ptr_eq(n, &self.notifier));
    }
}

/// Future of `QueueLog::durable`.
#[derive(Debug)]
pub(crate) struct Durable<'a> {
    log: &'a QueueLog,
    end: u64,
}

impl Future for Durable<'_> {
    type Output = Result<(), LogFailed>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let inner = &self.log.shared.inner;
        if let Some(ok) = inner.state_of(self.end) {
            return Poll::Ready(if ok { Ok(()) } else { Err(LogFailed) });
        }
        self.log.waiters.borrow_mut().push(cx.waker().clone());
        // Arm, then look again: the log thread publishes before it checks `armed`, so a
        // commit that finished before the arm is seen here and one after it signals us.
        self.log.notifier.armed.store(true, Ordering::SeqCst);
        match inner.state_of(self.end) {
            Some(ok) => Poll::Ready(if ok { Ok(()) } else { Err(LogFailed) }),
            None => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use std::pin::pin;

    use hrl::{ChainSpec, DiskId, DiskIdentity, Generation, LogReader, RecoveryMode, WriterConfig};

    use super::*;

    const DISK: u64 = 64 << 20;

    fn shared(dir: &std::path::Path) -> Arc<SharedLog> {
        shared_with(dir, WriterConfig::default())
    }

    fn shared_with(dir: &std::path::Path, cfg: WriterConfig) -> Arc<SharedLog> {
        let spec = ChainSpec {
            disk: DiskIdentity {
                id: DiskId([1; 16]),
                size: DISK,
                logical_block_size: 512,
            },
            journal: false,
            generation: Generation(1),
        };
        let (w, _) = LogWriter::open(dir, spec, cfg).unwrap();
        SharedLog::new(w, false).unwrap()
    }

    /// What a queue's event loop does, minus io_uring: poll the future; while it is pending,
    /// block on the eventfd the log thread signals.
    fn wait(q: &QueueLog, end: u64) -> Result<(), LogFailed> {
        let mut fut = pin!(q.durable(end));
        let mut cx = Context::from_waker(Waker::noop());
        loop {
            if let Poll::Ready(r) = fut.as_mut().poll(&mut cx) {
                return r;
            }
            let mut pfd = libc::pollfd {
                fd: q.event_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd, for the duration of the call.
            let n = unsafe { libc::poll(&raw mut pfd, 1, 10_000) };
            assert_eq!(n, 1, "the log thread did not wake the queue within 10 s");
            q.on_notified();
        }
    }

    fn write(q: &QueueLog, i: u64) -> u64 {
        let data = [0u8; 4096];
        q.append(Change::Write {
            offset: (i % 1000) * 4096,
            data: &data,
            fua: false,
        })
        .unwrap()
    }

    #[test]
    fn queues_keep_appending_while_the_log_thread_commits_and_every_wait_ends_durable() {
        let d = tempfile::tempdir().unwrap();
        let log = shared(d.path());
        let threads: Vec<_> = (0..2u64)
            .map(|t| {
                let log = Arc::clone(&log);
                std::thread::spawn(move || {
                    let q = QueueLog::new(log).unwrap();
                    for round in 0..50 {
                        // A "batch of completions": a few appends, one kick, then wait.
                        let ends: Vec<u64> = (0..8)
                            .map(|i| write(&q, t * 10_000 + round * 8 + i))
                            .collect();
                        q.kick_if_appended();
                        for end in ends {
                            wait(&q, end).unwrap();
                            assert!(q.shared.inner.durable_end.load(Ordering::SeqCst) >= end);
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let w = log.take().unwrap();
        let stats = w.stats();
        assert_eq!(stats.records, 800);
        assert!(stats.commits <= 800 && stats.commits >= 1, "{stats:?}");
        let sealed = w.close().unwrap();
        let mut r = LogReader::open(&sealed.path, RecoveryMode::Strict).unwrap();
        let recs = r.read_all().unwrap();
        assert_eq!(recs.len(), 800);
        assert!(recs.windows(2).all(|p| p[1].seq == p[0].seq.next()));
    }

    /// The writer's batch-size backstop commits inside an append, on the queue's thread:
    /// the log thread must still publish it (this hung journal-mode 1 MiB writes once).
    #[test]
    fn a_commit_made_by_an_append_itself_still_wakes_its_waiters() {
        let d = tempfile::tempdir().unwrap();
        let cfg = WriterConfig {
            max_batch_records: 3,
            ..WriterConfig::default()
        };
        let log = shared_with(d.path(), cfg);
        let q = QueueLog::new(Arc::clone(&log)).unwrap();
        for round in 0..20 {
            let ends: Vec<u64> = (0..3).map(|i| write(&q, round * 3 + i)).collect();
            q.kick_if_appended();
            for end in ends {
                wait(&q, end).unwrap();
            }
        }
        let w = log.take().unwrap();
        assert_eq!(w.stats().records, 60);
        w.close().unwrap();
    }

    #[test]
    fn a_change_is_refused_once_the_log_is_taken_and_take_commits_the_rest() {
        let d = tempfile::tempdir().unwrap();
        let log = shared(d.path());
        let q = QueueLog::new(Arc::clone(&log)).unwrap();
        let end = write(&q, 1);
        // No kick: stopping the log thread still commits what was appended.
        let w = log.take().unwrap();
        assert_eq!(w.durable_seq().map(|s| s.0 + 1), Some(end));
        assert_eq!(wait(&q, end), Ok(()));
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
