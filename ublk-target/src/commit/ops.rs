//! The control channel's operations on the log (`control.rs`): an exact cut, a consistency
//! tag, the counters.
//!
//! Cuts and tags run **on the log thread** (requested like a queue's kick, the caller waiting
//! for the reply): that thread owns the commits, so a cut never meets a split commit in
//! flight (`hrl` refuses to rotate under one), and it is the thread that populates a new
//! log's mapping after a rotation.

use std::sync::atomic::Ordering;
use std::sync::mpsc::{SyncSender, sync_channel};

use hrl::{GroupId, RecordBody, RecordFlags, SealedLog};

use super::{Inner, SharedLog, lock};
use crate::config::Durability;
use crate::control::ControlStats;

/// A request for the log thread, with where its reply goes.
#[derive(Debug)]
pub(super) enum Op {
    /// Seal the open log and open the next one; the reply also names the epoch parity
    /// that ended (`drain.rs`).
    Cut(SyncSender<Result<(SealedLog, u8), String>>),
    /// Append consistency tag `.0` and write it to the log.
    Mark(u64, SyncSender<Result<(), String>>),
}

const CLOSED: &str = "the disk's log is closed (the target is stopping)";

/// Longest a cut waits for the changes it sealed to be performed (`drain.rs`).
const DRAIN_LIMIT: std::time::Duration = std::time::Duration::from_secs(60);

impl SharedLog {
    /// Seals the open log and opens the next one: an **exact cut**. Everything appended so
    /// far is written out first (synced or committed, and published, so the I/Os waiting for
    /// their records go on), then [`hrl::LogWriter::rotate`] seals the log. A change's record
    /// is written before the change is performed, so every I/O completed before this call
    /// has its record in the sealed log or an earlier one. The rotation runs on the log
    /// thread; then this waits until every change recorded in the sealed log has been
    /// performed (`drain.rs`), so a read of the device after the cut sees all of them.
    ///
    /// # Errors
    /// The log is closed, or the rotation failed (nothing changed then: the open log stays
    /// open and keeps taking records), or the sealed changes were not performed within a
    /// minute.
    pub fn cut(&self) -> Result<SealedLog, String> {
        let (tx, rx) = sync_channel(1);
        self.inner.request(Op::Cut(tx))?;
        let (sealed, ended) = rx.recv().map_err(|_| CLOSED.to_owned())??;
        // Here, not on the log thread: a change still waiting may need it (a FUA write
        // waits for its record to be durable).
        if self.inner.drain.wait(ended, DRAIN_LIMIT) {
            Ok(sealed)
        } else {
            Err(format!(
                "{} is sealed, but changes it records were not performed within {} s (the \
                 backing is stuck?): not a usable cut",
                sealed.path.display(),
                DRAIN_LIMIT.as_secs()
            ))
        }
    }

    /// Appends consistency tag `tag` (group [`GroupId::NIL`], as the eBPF tracker tags) and
    /// writes it to the log file before returning (`Flush` durability: written; `Write`:
    /// durable). Tags are not exempt from the log space cap. Runs on the log thread.
    ///
    /// # Errors
    /// The log is closed, the space cap is reached (the text says so), or writing failed.
    pub fn mark(&self, tag: u64) -> Result<(), String> {
        let (tx, rx) = sync_channel(1);
        self.inner.request(Op::Mark(tag, tx))?;
        rx.recv().map_err(|_| CLOSED.to_owned())?
    }

    /// The counters, read without the log thread (one short lock of the writer).
    #[must_use]
    pub fn stats(&self) -> ControlStats {
        let inner = &self.inner;
        let (log_bytes, next_seq) = lock(&inner.writer)
            .as_ref()
            .map_or((0, 0), |w| (w.total_bytes(), w.next_seq().0));
        ControlStats {
            records: inner.records.load(Ordering::Relaxed),
            log_bytes,
            log_cap: inner.log_cap,
            overflows: inner.overflows.load(Ordering::Relaxed),
            journal: inner.journal,
            next_seq,
        }
    }
}

impl Inner {
    /// Queues `op` for the log thread, unless it is stopping.
    fn request(&self, op: Op) -> Result<(), String> {
        let mut k = lock(&self.kick);
        if k.stop {
            return Err(CLOSED.to_owned());
        }
        k.ops.push(op);
        self.kicked.notify_one();
        Ok(())
    }

    /// On the log thread: runs `op` and sends its reply (a caller that gave up is no
    /// matter).
    pub(super) fn execute(&self, op: Op) {
        match op {
            Op::Cut(tx) => {
                let _ = tx.send(self.cut_now());
            }
            Op::Mark(tag, tx) => {
                let _ = tx.send(self.mark_now(tag));
            }
        }
    }

    fn cut_now(&self) -> Result<(SealedLog, u8), String> {
        // Sync or commit what is pending first, without the writer's mutex where the
        // durability allows: the seal below then has little left to make durable.
        self.write_out();
        let mut guard = lock(&self.writer);
        let w = guard.as_mut().ok_or_else(|| CLOSED.to_owned())?;
        // The rotation writes (and the seal syncs) whatever was appended since.
        let sealed = w
            .rotate()
            .map_err(|e| format!("sealing the log for a cut: {e}"))?;
        // Under the mutex: a change appended from now on belongs to the next epoch.
        let ended = self.drain.next_epoch();
        let durable = w.durable_seq();
        lock(&self.space).recount(w);
        drop(guard);
        self.publish_durable(durable);
        tracing::debug!(log = %sealed.path.display(), records = sealed.seal.record_count,
            "cut: log sealed");
        Ok((sealed, ended))
    }

    fn mark_now(&self, tag: u64) -> Result<(), String> {
        let body = RecordBody::ConsistencyTag {
            group: GroupId::NIL,
            tag,
        };
        let mut guard = lock(&self.writer);
        let w = guard.as_mut().ok_or_else(|| CLOSED.to_owned())?;
        let appended = match w.append(RecordFlags::empty(), &body) {
            // Logs the agent released since the last recount may make room.
            Err(hrl::Error::Full { .. }) => {
                lock(&self.space).recount(w);
                w.append(RecordFlags::empty(), &body)
            }
            r => r,
        };
        let seq = appended.map_err(|e| match e {
            hrl::Error::Full { total, cap, .. } => format!(
                "the log space cap is reached ({total} of {cap} bytes in the disk's logs: \
                 shipped logs not released yet?); tag {tag} not recorded"
            ),
            e => format!("appending tag {tag}: {e}"),
        })?;
        match self.durability {
            Durability::Flush => self.write_locked(guard),
            Durability::Write => {
                drop(guard);
                self.commit_all();
            }
        }
        if self.written_end.load(Ordering::SeqCst) > seq.0 {
            Ok(())
        } else {
            Err(format!(
                "writing tag {tag} to the log failed (the target's own log says why)"
            ))
        }
    }
}
