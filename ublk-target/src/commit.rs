//! Group commit between a queue's I/O tasks and the disk's one [`hrl::LogWriter`].
//!
//! Every change is appended to the log and the log is made durable **before** the change is
//! performed on the backing store, so no completed (or even attempted) change is ever
//! missing from the log — not after `kill -9`, not after power loss. Making that cheap is
//! group commit: each I/O task appends its record and then awaits `QueueLog::durable`;
//! the queue's loop, after it has run every task woken by one batch of io_uring
//! completions, calls `QueueLog::commit_pending` once, which commits everything appended
//! with one `pwrite` + one `fdatasync` and wakes the waiting tasks. A batch is therefore
//! "all I/Os the kernel handed the queue since the last commit", with no timer involved.
//!
//! The writer is shared by the queue threads behind a mutex. The alternative — a log
//! thread fed by a channel — would put a cross-thread hop on every write; the mutex is
//! held only for an in-memory append, or for one commit that covers every queue's records
//! appended before it (a queue that finds its records already committed by another queue
//! commits an empty batch, which costs nothing).

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use hrl::{Extent, GapReason, GapScope, LogWriter, RecordBody, RecordFlags};

/// The disk's log writer, shared by its queue threads.
#[derive(Debug)]
pub struct SharedLog {
    writer: Mutex<Option<LogWriter>>,
    journal: bool,
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

impl SharedLog {
    /// Wraps an open writer.
    #[must_use]
    pub fn new(writer: LogWriter, journal: bool) -> Arc<Self> {
        Arc::new(Self {
            writer: Mutex::new(Some(writer)),
            journal,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Option<LogWriter>> {
        // A poisoned lock means a queue thread panicked mid-append; the writer's batch is
        // still consistent (appends validate before encoding), so keep using it.
        self.writer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Appends the record for `change` (not yet durable).
    pub(crate) fn append(&self, change: Change<'_>) -> Result<(), LogFailed> {
        let mut guard = self.lock();
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
            Ok(_) => Ok(()),
            // Over the space cap the change is still recorded, as a gap over its range:
            // the write goes ahead (never fail a write because replication is behind) and
            // the range is resynced.
            Err(hrl::Error::Full { .. }) => {
                let scope = match change {
                    Change::Write { offset, data, .. } => {
                        GapScope::Extents(vec![extent(offset, data.len() as u64)?])
                    }
                    Change::Discard { offset, len } | Change::WriteZeroes { offset, len } => {
                        GapScope::Extents(vec![extent(offset, len)?])
                    }
                    Change::Flush => return Ok(()),
                };
                w.append(
                    RecordFlags::empty(),
                    &RecordBody::TrackingGap {
                        reason: GapReason::LogSpaceExhausted,
                        scope,
                    },
                )
                .map(drop)
                .map_err(|e| log_error(&e))
            }
            Err(e) => Err(log_error(&e)),
        }
    }

    /// Commits everything appended so far (one pwrite + one fdatasync).
    pub(crate) fn commit(&self) -> Result<(), LogFailed> {
        let mut guard = self.lock();
        let w = guard.as_mut().ok_or(LogFailed)?;
        w.commit().map(drop).map_err(|e| log_error(&e))
    }

    /// Takes the writer out (for a clean close); later appends fail.
    pub fn take(&self) -> Option<LogWriter> {
        self.lock().take()
    }

    /// Runs `f` on the writer, if it is still open.
    pub fn with_writer<R>(&self, f: impl FnOnce(&mut LogWriter) -> R) -> Option<R> {
        self.lock().as_mut().map(f)
    }
}

fn extent(offset: u64, len: u64) -> Result<Extent, LogFailed> {
    Extent::new(offset, len).ok_or(LogFailed)
}

fn log_error(e: &hrl::Error) -> LogFailed {
    tracing::error!(error = %e, "change log append/commit failed; failing the I/O");
    LogFailed
}

/// One queue's view of the shared log: which batch is open, which is durable, and the
/// tasks waiting. Lives on the queue's thread only (`Rc`), so no locking here.
#[derive(Debug)]
pub(crate) struct QueueLog {
    shared: Arc<SharedLog>,
    state: RefCell<BatchState>,
}

#[derive(Debug, Default)]
struct BatchState {
    /// The batch records are appended to now; becomes durable at the next commit.
    open: u64,
    /// Highest batch known durable.
    durable: u64,
    /// Highest batch whose commit failed.
    failed: u64,
    /// Whether the open batch has records.
    pending: bool,
    waiters: Vec<Waker>,
}

impl QueueLog {
    pub(crate) fn new(shared: Arc<SharedLog>) -> Self {
        Self {
            shared,
            state: RefCell::new(BatchState {
                open: 1,
                ..BatchState::default()
            }),
        }
    }

    /// Appends `change`; returns the batch to await with [`durable`](Self::durable).
    pub(crate) fn append(&self, change: Change<'_>) -> Result<u64, LogFailed> {
        self.shared.append(change)?;
        let mut st = self.state.borrow_mut();
        st.pending = true;
        Ok(st.open)
    }

    /// Resolves once `batch` is durable (or failed to be).
    pub(crate) fn durable(&self, batch: u64) -> Durable<'_> {
        Durable { log: self, batch }
    }

    /// Commits the open batch if it has records and wakes its waiters. Returns whether it
    /// did anything (so the caller runs the woken tasks).
    pub(crate) fn commit_pending(&self) -> bool {
        let batch = {
            let mut st = self.state.borrow_mut();
            if !st.pending {
                return false;
            }
            st.pending = false;
            let b = st.open;
            st.open += 1;
            b
        };
        let ok = self.shared.commit().is_ok();
        let waiters = {
            let mut st = self.state.borrow_mut();
            if ok {
                st.durable = batch;
            } else {
                st.failed = batch;
            }
            std::mem::take(&mut st.waiters)
        };
        for w in waiters {
            w.wake();
        }
        true
    }
}

/// Future of `QueueLog::durable`.
#[derive(Debug)]
pub(crate) struct Durable<'a> {
    log: &'a QueueLog,
    batch: u64,
}

impl Future for Durable<'_> {
    type Output = Result<(), LogFailed>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut st = self.log.state.borrow_mut();
        if st.durable >= self.batch {
            Poll::Ready(Ok(()))
        } else if st.failed >= self.batch {
            Poll::Ready(Err(LogFailed))
        } else {
            st.waiters.push(cx.waker().clone());
            Poll::Pending
        }
    }
}
