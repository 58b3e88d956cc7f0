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
//! **Cuts and tags** (the control channel, `control.rs`). [`SharedLog::cut`] and
//! [`SharedLog::mark`] run on the log thread, between its passes: a cut writes out and
//! publishes everything appended, then seals the open log and opens the next one; a tag is
//! appended and written before the call returns. Since a change's record is written before
//! the change is performed, every I/O completed before a cut has its record in the sealed log
//! or an earlier one: the cut is exact.
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

mod drain;
mod ops;
mod space;
mod thread;

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
    /// The writer's space cap ([`hrl::WriterConfig::max_total_bytes`]), for the stats.
    log_cap: Option<u64>,
    /// Change records appended since the start (gap records over the cap included, tags
    /// not).
    records: AtomicU64,
    /// Change records that did not fit under the space cap and were appended as extents-only
    /// tracking gaps instead.
    overflows: AtomicU64,
    /// An append hit the space cap since the log thread last recounted the released logs.
    over_cap: AtomicBool,
    /// The sealed logs the writer counts against the cap (see `space.rs`).
    space: Mutex<space::Space>,
    /// Changes logged but not yet performed, per cut epoch (`drain.rs`).
    drain: drain::Drain,
    /// A queue has asked the log thread to populate more of the log's mapping (cleared by
    /// the log thread when it takes the request).
    prefault_asked: AtomicBool,
    queues: Mutex<Vec<Arc<Notifier>>>,
}

#[derive(Debug, Default)]
struct Kick {
    /// Write/sync/commit (and rotate) what the queues appended.
    pending: bool,
    /// Populate the open log's mapping ahead of the appends.
    prefault: bool,
    stop: bool,
    /// Cuts and tags asked for through the control channel, in order.
    ops: Vec<ops::Op>,
}

/// The log thread keeps this much of the open log's mapping populated past its end
/// ([`LogWriter::prefault`]), so a queue's append is a copy into memory that is already
/// there, not a page fault (page allocation and the log filesystem's `page_mkwrite`, on the
/// I/O path); it is asked for more when less than [`PREFAULT_LOW`] is left.
const PREFAULT_AHEAD: usize = 1 << 20;
/// See [`PREFAULT_AHEAD`].
const PREFAULT_LOW: usize = 512 << 10;

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
    /// A change (not a flush): the epoch parity it is counted under until its I/O completes
    /// ([`QueueLog::performed`], `drain.rs`).
    parity: Option<u8>,
}

impl Ticket {
    /// The epoch parity to hand back to [`QueueLog::performed`] when the change's I/O
    /// completes; None for a flush.
    pub(crate) fn parity(&self) -> Option<u8> {
        self.parity
    }
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
    /// `Write`; `server.rs` configures it); `log_cap` is its
    /// [`hrl::WriterConfig::max_total_bytes`], reported by [`stats`](Self::stats).
    ///
    /// # Errors
    /// If the thread cannot be spawned.
    pub fn new(
        writer: LogWriter,
        journal: bool,
        durability: Durability,
        log_cap: Option<u64>,
    ) -> std::io::Result<Arc<Self>> {
        let start = writer.next_seq().0;
        let disk_size = writer.spec().disk.size;
        let space = space::Space::new(&writer);
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
            log_cap,
            records: AtomicU64::new(0),
            overflows: AtomicU64::new(0),
            over_cap: AtomicBool::new(false),
            space: Mutex::new(space),
            drain: drain::Drain::default(),
            prefault_asked: AtomicBool::new(false),
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
            Ok(_) => {
                self.records.fetch_add(1, Ordering::Relaxed);
            }
            Err(hrl::Error::Full { .. }) if !range.is_empty() => {
                self.over_cap.store(true, Ordering::Relaxed);
                w.append(
                    RecordFlags::empty(),
                    &RecordBody::TrackingGap {
                        reason: GapReason::LogSpaceExhausted,
                        scope: GapScope::Extents(range.to_vec()),
                    },
                )
                .map_err(|e| log_error(&e))?;
                self.records.fetch_add(1, Ordering::Relaxed);
                self.overflows.fetch_add(1, Ordering::Relaxed);
            }
            Err(hrl::Error::Full { .. }) => {
                self.over_cap.store(true, Ordering::Relaxed);
            }
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
            parity: (!range.is_empty()).then(|| self.drain.parity()),
        })
    }

    fn kick(&self) {
        let mut k = lock(&self.kick);
        if !k.pending {
            k.pending = true;
            self.kicked.notify_one();
        }
    }

    /// Asks the log thread to populate more of the log's mapping, once per request.
    fn kick_prefault(&self) {
        if self.prefault_asked.load(Ordering::Relaxed)
            || self.prefault_asked.swap(true, Ordering::AcqRel)
        {
            return;
        }
        let mut k = lock(&self.kick);
        if !k.prefault {
            k.prefault = true;
            self.kicked.notify_one();
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
                let prefault = w.prefault_due(PREFAULT_LOW);
                drop(guard);
                self.publish_written(written);
                if rotate {
                    self.kick();
                } else if prefault {
                    self.kick_prefault();
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
        let first = out.len();
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
        // Counted in flight before the mutex is let go, so on the right side of any cut.
        for t in out[first..].iter().flatten() {
            if let Some(p) = t.parity {
                inner.drain.begin(p, 1);
            }
        }
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

    /// The I/O of a change whose ticket had `parity` completed to the kernel (performed or
    /// failed): a cut waiting for it may return (`drain.rs`).
    pub(crate) fn performed(&self, parity: u8) {
        self.shared.inner.drain.end(parity);
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
mod tests;
#[cfg(test)]
mod tests_cut;
