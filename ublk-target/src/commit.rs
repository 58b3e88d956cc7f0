//! Group commit between the queues' I/Os and the disk's one [`hrl::LogWriter`].
//!
//! Every change is appended to the log and its record is *written* (it survives a crash of
//! this process) **before** the change is performed on the backing store, so no completed
//! (or even attempted) change is ever missing from the log after `kill -9`. A flush or FUA
//! write completes only once the log is *durable*. When the log is synced is the disk's
//! [`Durability`]:
//!
//! - **`Flush`** (default): records are written by the queue thread itself, once per batch
//!   of io_uring completions (`QueueLog::after_tick`: one `pwrite` under the writer's mutex
//!   for everything every queue appended so far), and the tags waiting for those records
//!   perform their changes in the same turn of the event loop — no thread hop, no sync. A flush or FUA write asks
//!   the disk's **log thread** for a sync: it takes a second handle on the log
//!   ([`LogWriter::sync_handle`]) and runs the `fdatasync` without the mutex, then publishes
//!   "durable up to N" and wakes the waiting queues through their eventfds. The log thread
//!   also rotates full logs (after the sync), so a queue never stalls on a rotation. A power loss can lose
//!   records written since the last sync while their data reached the backing: the server
//!   then records a whole-disk gap at its next start (`server.rs`, the run marker).
//! - **`Write`**: every record is durable before its change is performed — pipelined group
//!   commit on the log thread: after a queue has handled one batch of completions it kicks
//!   the log thread once; the log thread takes the whole pending batch
//!   out of the writer ([`LogWriter::take_commit`]), writes and syncs it *without* the mutex
//!   (one `pwrite` + one `fdatasync`), hands it back, publishes, and wakes the queues; then
//!   it takes whatever the queues appended meanwhile, and so on. No timer: a batch is
//!   whatever was appended while the previous one synced.
//!
//! A queue keeps receiving, reading and performing already-logged writes while the log
//! thread syncs, and one sync serves every queue of the disk.
//!
//! **Why one writer for all queues** and not log writes issued through each queue's
//! io_uring: the log is one file and records must land in sequence order with no hole (a
//! reader stops at the first invalid record, so a later batch written before an earlier one
//! would be lost with it). Every `pwrite` of records happens under the writer's mutex, in
//! sequence order; only syncs run outside it.
//!
//! **Failure.** If a batch's write or sync fails, every task waiting on one of its records
//! fails its I/O with `EIO` (the change is not performed, the flush fails), and the records
//! stay in front of the batch to be retried with the next change: a record of a change that
//! was never made is harmless, a change without a record is not.

use std::cell::{Cell, RefCell};
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;

use hrl::format::record::MAX_RECORD_EXTENTS;
use hrl::{Extent, GapReason, GapScope, LogWriter, RecordBody, RecordFlags, RecordKind};

use crate::config::Durability;

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
    /// The disk's size, which every logged range must fit in.
    disk_size: u64,
    journal: bool,
    durability: Durability,
    /// One past the last record known durable.
    durable_end: AtomicU64,
    /// One past the last record written to the log file (equal to `durable_end` under
    /// [`Durability::Write`]). Records below it may be performed.
    written_end: AtomicU64,
    /// One past the last record whose write (or, for a flush's wait, sync) failed.
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
/// when the queue has tags waiting (`armed`), so idle queues cost nothing.
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

impl Change<'_> {
    /// Whether the I/O may complete only once its record is durable (not merely written).
    fn needs_durable(&self) -> bool {
        matches!(self, Change::Flush | Change::Write { fua: true, .. })
    }
}

/// What an I/O waits for before it goes on: its records written, or durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Need {
    Written,
    Durable,
}

/// An appended record: what the queue waits for ([`QueueLog::state`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Ticket {
    /// One past the record.
    end: u64,
    need: Need,
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
    /// Wraps an open writer and starts its log thread. The writer's
    /// [`hrl::SyncPolicy`] must match `durability` (`Explicit` for `Flush`, `Data` for
    /// `Write`; `server.rs` configures it).
    ///
    /// # Errors
    /// If the thread cannot be spawned.
    pub fn new(
        writer: LogWriter,
        journal: bool,
        durability: Durability,
    ) -> std::io::Result<Arc<Self>> {
        let start = writer.next_seq().0;
        let disk_size = writer.spec().disk.size;
        let inner = Arc::new(Inner {
            writer: Mutex::new(Some(writer)),
            disk_size,
            journal,
            durability,
            durable_end: AtomicU64::new(start),
            written_end: AtomicU64::new(start),
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

    /// Stops the log thread (after it has written and synced everything appended) and
    /// takes the writer out, for a clean close; later appends fail.
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
    /// Appends `change`'s record, stamped `now` (Unix ns), to the locked writer `w` (not yet
    /// written).
    fn append(
        &self,
        w: Option<&mut LogWriter>,
        change: Change<'_>,
        now: u64,
    ) -> Result<Ticket, LogFailed> {
        let w = w.ok_or(LogFailed)?;
        let (kind, flags, e) = match change {
            Change::Write { offset, data, fua } => {
                let flags = if fua {
                    RecordFlags::FUA
                } else {
                    RecordFlags::empty()
                };
                let e = extent(offset, data.len() as u64)?;
                if self.journal {
                    let res = w.append_write_data_at(flags, offset, data, now);
                    return self.admitted(w, res, &[e], fua);
                }
                (RecordKind::Write, flags, e)
            }
            Change::Discard { offset, len } => (
                RecordKind::Discard,
                RecordFlags::empty(),
                extent(offset, len)?,
            ),
            Change::WriteZeroes { offset, len } => (
                RecordKind::WriteZeroes,
                RecordFlags::empty(),
                extent(offset, len)?,
            ),
            Change::Flush => {
                let res = w.append_at(RecordFlags::empty(), &RecordBody::Flush, now);
                return self.admitted(w, res, &[], true);
            }
        };
        let res = w.append_extents_at(kind, flags, &[e], now);
        self.admitted(w, res, &[e], change.needs_durable())
    }

    /// Appends one `Write` record for `writes`, the plain (not FUA) writes of a queue's turn
    /// in extents mode: one record, one crc, ~26 bytes per write instead of 56 for a turn of
    /// four. Their I/Os were all in flight together, so nothing orders them among
    /// themselves.
    fn append_writes(
        &self,
        w: Option<&mut LogWriter>,
        writes: &[Extent],
        now: u64,
    ) -> Result<Ticket, LogFailed> {
        let w = w.ok_or(LogFailed)?;
        let res = w.append_extents_at(RecordKind::Write, RecordFlags::empty(), writes, now);
        self.admitted(w, res, writes, false)
    }

    /// The ticket of a record just appended to `w` (`res`), over `range` (the disk ranges
    /// it names, if any). Over the log's space cap the change is still recorded, as a gap
    /// over its ranges: the write goes ahead (never fail a write because replication is
    /// behind) and the ranges are resynced. A flush then waits for the records before it.
    fn admitted(
        &self,
        w: &mut LogWriter,
        res: hrl::Result<hrl::SeqNo>,
        range: &[Extent],
        durable: bool,
    ) -> Result<Ticket, LogFailed> {
        match res {
            Ok(_) => {}
            Err(hrl::Error::Full { .. }) if !range.is_empty() => {
                w.append(
                    RecordFlags::empty(),
                    &RecordBody::TrackingGap {
                        reason: GapReason::LogSpaceExhausted,
                        scope: GapScope::Extents(range.to_vec()),
                    },
                )
                .map_err(|e| log_error(&e))?;
            }
            Err(hrl::Error::Full { .. }) => {}
            Err(e) => return Err(log_error(&e)),
        }
        let need = if self.durability == Durability::Write || durable {
            Need::Durable
        } else {
            Need::Written
        };
        Ok(Ticket {
            end: w.next_seq().0,
            need,
        })
    }

    fn kick(&self) {
        let mut k = lock(&self.kick);
        if !k.pending {
            k.pending = true;
            self.kicked.notify_one();
        }
    }

    /// The log thread: commit (`Write`) or sync (`Flush`) each time a queue kicks, until
    /// stopped; the last pass leaves everything appended durable.
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
            match self.durability {
                Durability::Write => self.commit_all(),
                Durability::Flush => self.sync_all(),
            }
            if stop {
                return;
            }
        }
    }

    /// `Flush` durability, on a queue thread: writes every record appended so far (one
    /// `pwrite`, under the writer's mutex so records land in order) and publishes them as
    /// written. Kicks the log thread if the log is due to rotate.
    fn write_inline(&self) {
        self.write_locked(lock(&self.writer));
    }

    /// [`write_inline`](Self::write_inline) with the writer already locked.
    fn write_locked(&self, mut guard: MutexGuard<'_, Option<LogWriter>>) {
        let Some(w) = guard.as_mut() else { return };
        match w.write_pending() {
            Ok(written) => {
                let rotate = w.rotation_due();
                drop(guard);
                self.publish_written(written);
                if rotate {
                    self.kick();
                }
            }
            Err(e) => {
                let end = w.next_seq().0;
                drop(guard);
                log_error(&e);
                // Every record appended so far fails its I/O; they stay in the batch and
                // are retried with the next change.
                self.failed_end.fetch_max(end, Ordering::SeqCst);
            }
        }
    }

    /// `Flush` durability, on the log thread: writes what is pending, syncs the open log
    /// without the mutex and publishes it durable, then rotates a full log.
    fn sync_all(&self) {
        let (written, handle, rotate) = {
            let mut guard = lock(&self.writer);
            let Some(w) = guard.as_mut() else { return };
            let written = match w.write_pending() {
                Ok(s) => s,
                Err(e) => {
                    let end = w.next_seq().0;
                    drop(guard);
                    log_error(&e);
                    self.failed_end.fetch_max(end, Ordering::SeqCst);
                    self.notify_queues();
                    return;
                }
            };
            (written, w.sync_handle(), w.rotation_due())
        };
        self.publish_written(written);
        // The slow part, without the writer's mutex: the queues keep writing records.
        let synced = match handle {
            Ok((file, seq)) => file.sync_data().map(|()| seq).map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match synced {
            Ok(seq) => self.publish_durable(seq),
            Err(e) => {
                tracing::error!(error = %e, "syncing the change log failed; failing the flushes waiting for it");
                if let Some(s) = written {
                    // A later flush syncs again.
                    self.failed_end.fetch_max(s.0 + 1, Ordering::SeqCst);
                }
                self.notify_queues();
            }
        }
        // Rotate after the sync, so the seal (under the mutex) has only the records written
        // since to make durable, not the whole log.
        if rotate
            && let Some(w) = lock(&self.writer).as_mut()
            && let Err(e) = w.rotate()
        {
            // Appends keep going to the full log (or fail if the writer closed).
            tracing::error!(error = %e, "rotating the change log failed");
        }
    }

    /// `Write` durability: commits batch after batch until nothing is pending or a write
    /// fails.
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
                self.publish_durable(durable);
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
                Ok(()) => self.publish_durable(durable),
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

    fn publish_written(&self, written: Option<hrl::SeqNo>) {
        if let Some(s) = written {
            self.written_end.fetch_max(s.0 + 1, Ordering::SeqCst);
        }
    }

    /// Makes the records up to `durable` durable (and written), and wakes the queues
    /// waiting, if that is news.
    fn publish_durable(&self, durable: Option<hrl::SeqNo>) {
        if let Some(d) = durable {
            self.written_end.fetch_max(d.0 + 1, Ordering::SeqCst);
            if self.durable_end.fetch_max(d.0 + 1, Ordering::SeqCst) < d.0 + 1 {
                self.notify_queues();
            }
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

    /// Whether `t`'s records are there (Some(true)), failed (Some(false)), or still being
    /// written or synced (None).
    fn state_of(&self, t: Ticket) -> Option<bool> {
        let done = match t.need {
            Need::Written => &self.written_end,
            Need::Durable => &self.durable_end,
        };
        if done.load(Ordering::SeqCst) >= t.end {
            Some(true)
        } else if self.failed_end.load(Ordering::SeqCst) >= t.end {
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

/// One queue's view of the shared log and the eventfd the log thread wakes it with. Lives
/// on the queue's thread only.
#[derive(Debug)]
pub(crate) struct QueueLog {
    shared: Arc<SharedLog>,
    notifier: Arc<Notifier>,
    appended: Cell<bool>,
    sync_wanted: Cell<bool>,
    /// `append_all` already wrote this turn's records.
    written: Cell<bool>,
    /// Scratch list of a turn's plain writes (kept to reuse its allocation).
    writes: RefCell<Vec<Extent>>,
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
            appended: Cell::new(false),
            sync_wanted: Cell::new(false),
            written: Cell::new(false),
            writes: RefCell::new(Vec::new()),
        })
    }

    /// Appends `change`; returns what to wait for ([`state`](Self::state)).
    #[cfg(test)]
    pub(crate) fn append(&self, change: Change<'_>) -> Result<Ticket, LogFailed> {
        let mut t = Vec::with_capacity(1);
        self.append_all(std::iter::once(change), &mut t, false);
        t.pop().unwrap_or(Err(LogFailed))
    }

    /// Appends the records of a turn's changes under one lock of the writer, stamped with
    /// one clock read, pushing a ticket (or the failure) per change onto `out`; with `write`
    /// (`flush` durability, end of the turn) also writes them, under the same lock.
    pub(crate) fn append_all<'c>(
        &self,
        changes: impl Iterator<Item = Change<'c>>,
        out: &mut Vec<Result<Ticket, LogFailed>>,
        write: bool,
    ) {
        let inner = &self.shared.inner;
        let now = hrl::now_unix_ns();
        let mut guard = lock(&inner.writer);
        // Consecutive plain writes share one record (extents mode; see `append_writes`).
        let mut writes = std::mem::take(&mut *self.writes.borrow_mut());
        writes.clear();
        for change in changes {
            if let (
                false,
                Change::Write {
                    offset,
                    data,
                    fua: false,
                },
            ) = (inner.journal, change)
            {
                if writes.len() == MAX_RECORD_EXTENTS {
                    self.append_writes(guard.as_mut(), &mut writes, now, out);
                }
                // Checked here, so a bad range fails its own I/O, not the turn's record.
                match hrl::format::record::check_extent(offset, data.len() as u64, inner.disk_size)
                {
                    Ok(e) => writes.push(e),
                    Err(c) => {
                        tracing::error!(error = %c, "a write outside the log's disk; failing the I/O");
                        self.append_writes(guard.as_mut(), &mut writes, now, out);
                        out.push(Err(LogFailed));
                    }
                }
                continue;
            }
            self.append_writes(guard.as_mut(), &mut writes, now, out);
            let t = inner.append(guard.as_mut(), change, now);
            self.note(t);
            out.push(t);
        }
        self.append_writes(guard.as_mut(), &mut writes, now, out);
        *self.writes.borrow_mut() = writes;
        if write && inner.durability == Durability::Flush && self.appended.get() {
            inner.write_locked(guard);
            self.written.set(true);
        }
    }

    /// Appends the record of the plain writes collected in `writes` (if any), one ticket per
    /// write onto `out`, and empties `writes`.
    fn append_writes(
        &self,
        w: Option<&mut LogWriter>,
        writes: &mut Vec<Extent>,
        now: u64,
        out: &mut Vec<Result<Ticket, LogFailed>>,
    ) {
        if writes.is_empty() {
            return;
        }
        let t = self.shared.inner.append_writes(w, writes, now);
        self.note(t);
        out.extend(std::iter::repeat_n(t, writes.len()));
        writes.clear();
    }

    /// Notes what an appended record asks of the end of the turn.
    fn note(&self, t: Result<Ticket, LogFailed>) {
        if let Ok(t) = t {
            self.appended.set(true);
            if t.need == Need::Durable {
                self.sync_wanted.set(true);
            }
        }
    }

    /// Whether `t`'s records are logged as the change needs — written, or durable for a
    /// flush, a FUA write or under `Write` durability (Some(true)), failed (Some(false)), or
    /// not yet (None).
    pub(crate) fn state(&self, t: Ticket) -> Option<bool> {
        self.shared.inner.state_of(t)
    }

    /// Called once per batch of completions, after the batch's I/Os appended their records.
    /// `Write` durability: asks the log thread to commit, if this queue appended. `Flush`:
    /// writes the records inline (so they are [`state`](Self::state) `Some(true)` on
    /// return, unless the write failed), and asks the log thread for a sync if a flush or
    /// FUA write is waiting.
    pub(crate) fn after_tick(&self) {
        let written = self.written.replace(false);
        if !self.appended.replace(false) {
            return;
        }
        let inner = &self.shared.inner;
        if inner.durability == Durability::Flush {
            if !written {
                inner.write_inline();
            }
            if !self.sync_wanted.replace(false) {
                return;
            }
        }
        inner.kick();
    }

    /// Asks the log thread to signal the eventfd at its next publication (a sync, a commit
    /// or a failure). Arm *before* looking at [`state`](Self::state): the log thread
    /// publishes before it checks the arm, so nothing published after the look is missed.
    pub(crate) fn arm(&self) {
        self.notifier.armed.store(true, Ordering::SeqCst);
    }

    /// The eventfd the queue's io_uring polls for wake-ups from the log thread.
    pub(crate) fn event_fd(&self) -> RawFd {
        self.notifier.efd.as_raw_fd()
    }

    /// The eventfd fired: clears it.
    pub(crate) fn clear_event(&self) {
        let mut count = [0u8; 8];
        // Nonblocking: EAGAIN just means another wake-up already cleared it.
        let _ = (&self.notifier.efd).read(&mut count);
    }
}

impl Drop for QueueLog {
    fn drop(&mut self) {
        lock(&self.shared.inner.queues).retain(|n| !Arc::ptr_eq(n, &self.notifier));
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use hrl::{
        ChainSpec, DiskId, DiskIdentity, Generation, LogReader, RecoveryMode, SyncPolicy,
        WriterConfig,
    };

    use super::*;

    const DISK: u64 = 64 << 20;
    const BOTH: [Durability; 2] = [Durability::Flush, Durability::Write];

    fn shared(dir: &std::path::Path, d: Durability) -> Arc<SharedLog> {
        shared_with(dir, WriterConfig::default(), d)
    }

    fn shared_with(dir: &std::path::Path, cfg: WriterConfig, d: Durability) -> Arc<SharedLog> {
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
        let (w, _) = LogWriter::open(dir, spec, WriterConfig { sync, ..cfg }).unwrap();
        SharedLog::new(w, false, d).unwrap()
    }

    /// What a queue's event loop does, minus io_uring: arm, look at the ticket; while it is
    /// not logged, block on the eventfd the log thread signals.
    fn wait(q: &QueueLog, t: Ticket) -> Result<(), LogFailed> {
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

    fn write(q: &QueueLog, i: u64) -> Ticket {
        let data = [0u8; 4096];
        q.append(Change::Write {
            offset: (i % 1000) * 4096,
            data: &data,
            fua: false,
        })
        .unwrap()
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
        let path = log
            .with_writer(|w| w.current_path().unwrap().to_owned())
            .unwrap();
        let mut r = LogReader::open(&path, RecoveryMode::TruncateTail).unwrap();
        let bodies: Vec<RecordBody> = r.read_all().unwrap().into_iter().map(|r| r.body).collect();
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
        let cfg = WriterConfig {
            max_total_bytes: Some(4096 + 150),
            ..WriterConfig::default()
        };
        let log = shared_with(dir.path(), cfg, Durability::Flush);
        let q = QueueLog::new(Arc::clone(&log)).unwrap();
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
        let path = log
            .with_writer(|w| w.current_path().unwrap().to_owned())
            .unwrap();
        let mut r = LogReader::open(&path, RecoveryMode::TruncateTail).unwrap();
        let bodies: Vec<RecordBody> = r.read_all().unwrap().into_iter().map(|r| r.body).collect();
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
}
