//! The disk's log thread (see the parent module): it syncs (`Flush` durability) or commits
//! (`Write`) what the queues appended each time one kicks, rotates full logs, keeps the open
//! log's mapping populated ahead of the appends, and runs the control channel's cuts and tags
//! (`ops.rs`) between those passes — so a rotation never meets a split commit in
//! flight.

use std::sync::PoisonError;
use std::sync::atomic::Ordering;

use super::{Inner, PREFAULT_AHEAD, PREFAULT_LOW, lock, log_error};
use crate::config::Durability;

/// Ends the log thread's service, however the thread ends (even by a panic): later requests
/// are refused, and those still queued are dropped, so their callers get an error instead of
/// waiting forever.
struct Closing<'a>(&'a Inner);

impl Drop for Closing<'_> {
    fn drop(&mut self) {
        let mut k = lock(&self.0.kick);
        k.stop = true;
        k.ops.clear();
    }
}

impl Inner {
    /// If less than [`PREFAULT_LOW`] of the open log's mapping is populated past its end,
    /// populates it up to [`PREFAULT_AHEAD`], without the writer's mutex (the queues keep
    /// appending meanwhile).
    pub(super) fn prefault(&self) {
        self.prefault_asked.store(false, Ordering::Release);
        let Some(p) = lock(&self.writer)
            .as_mut()
            .filter(|w| w.prefault_due(PREFAULT_LOW))
            .and_then(|w| w.prefault(PREFAULT_AHEAD))
        else {
            return;
        };
        if let Err(e) = p.run() {
            // Not an error for the disk: the appends take the page faults themselves.
            tracing::debug!(error = %e, bytes = p.len(), "populating the log's mapping failed");
        }
    }

    /// The log thread: commit (`Write`) or sync (`Flush`) each time a queue kicks, until
    /// stopped (the last pass leaves everything appended durable); run the control
    /// channel's requests; keep the open log's mapping populated ahead of the appends.
    pub(super) fn run(&self) {
        let _closing = Closing(self);
        // The log the server opened: populate its first stretch before the first I/O.
        self.prefault();
        loop {
            let (stop, pending, prefault, ops) = {
                let mut k = lock(&self.kick);
                while !k.pending && !k.prefault && !k.stop && k.ops.is_empty() {
                    k = self.kicked.wait(k).unwrap_or_else(PoisonError::into_inner);
                }
                let taken = (k.stop, k.pending, k.prefault, std::mem::take(&mut k.ops));
                k.pending = false;
                k.prefault = false;
                taken
            };
            if pending || stop {
                self.write_out();
            }
            let requested = !ops.is_empty();
            for op in ops {
                self.execute(op);
            }
            // After a commit, a sync or a cut too: each may have rotated to a new, empty log.
            if prefault || requested || (pending && !stop) {
                self.prefault();
            }
            self.maintain_space();
            if stop {
                return;
            }
        }
    }

    /// Makes everything appended so far written and published: synced (`Flush`), or
    /// committed (`Write`: durable, with no split commit left in flight).
    pub(super) fn write_out(&self) {
        match self.durability {
            Durability::Write => self.commit_all(),
            Durability::Flush => self.sync_all(),
        }
    }

    /// `Flush` durability, on the log thread: writes what is pending, syncs the open log
    /// without the mutex and publishes it durable, then rotates a full log.
    pub(super) fn sync_all(&self) {
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
    pub(super) fn commit_all(&self) {
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
}
