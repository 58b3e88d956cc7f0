//! Group commit: writing the batch (one `pwrite`, one `fdatasync`), the split commit
//! ([`PendingCommit`]) that does it without holding the writer, and explicit sync.

use std::fs::File;
use std::time::Instant;

use super::{InFlight, LogWriter, PendingCommit};
use crate::error::{Error, Result};
#[cfg(doc)] // named in doc links only
use crate::file::SyncPolicy;
use crate::units::SeqNo;

impl PendingCommit {
    /// Writes the batch at the end of its log (one `pwrite`) and syncs it (one `fdatasync`,
    /// per the writer's [`SyncPolicy`]). Idempotent once it has succeeded.
    ///
    /// # Errors
    /// IO; the commit must still be handed back (its records are then retried).
    pub fn write(&mut self) -> Result<()> {
        if !self.written {
            self.file
                .append_batch(&self.batch, self.records, self.sync)?;
            self.written = true;
        }
        Ok(())
    }

    /// The last record in the batch: durable once [`write`](Self::write) has succeeded.
    #[must_use]
    pub fn last_seq(&self) -> SeqNo {
        self.last_seq
    }

    /// Records in the batch.
    #[must_use]
    pub fn records(&self) -> u64 {
        self.records
    }

    /// Encoded bytes in the batch.
    #[must_use]
    pub fn bytes(&self) -> usize {
        self.batch.len()
    }
}

impl LogWriter {
    /// Writes the batch (one write, one fdatasync) and rotates if the log is full.
    /// Returns the last durable sequence number.
    ///
    /// # Errors
    /// IO; the batch is kept, so a later commit retries it. [`Error::Config`] while a split
    /// commit is in flight.
    pub fn commit(&mut self) -> Result<Option<SeqNo>> {
        self.refuse_in_flight("commit")?;
        if self.write_batch()? && self.current()?.end() >= self.cfg.max_log_bytes {
            self.rotate()?;
        }
        Ok(self.durable_seq)
    }

    /// Writes the pending batch, if any; returns whether there was one.
    pub(super) fn write_batch(&mut self) -> Result<bool> {
        if self.batch_records == 0 {
            return Ok(false);
        }
        let sync = self.cfg.sync;
        let cur = self
            .current
            .as_mut()
            .ok_or_else(|| Error::Config("log writer is closed".into()))?;
        cur.append_batch(&self.batch, self.batch_records, sync)?;
        self.stats.commits += 1;
        if sync.syncs_batches() {
            self.stats.syncs += 1;
        }
        self.batch.clear();
        self.batch_records = 0;
        self.batch_since = None;
        self.durable_seq = Some(SeqNo(self.next_seq.0 - 1));
        Ok(true)
    }

    /// Writes the pending batch (one `pwrite`, synced only under [`SyncPolicy::Data`]) and
    /// never rotates, so it is cheap enough for a caller that must not stall (the owner
    /// rotates later, see [`rotation_due`](Self::rotation_due)). Returns the last record
    /// written; under [`SyncPolicy::Explicit`] it survives a crash of this process, and is
    /// durable once [`sync_handle`](Self::sync_handle)'s file has been synced.
    ///
    /// # Errors
    /// IO (the batch is kept for a retry); [`Error::Config`] while a split commit is in
    /// flight or the writer is closed.
    pub fn write_pending(&mut self) -> Result<Option<SeqNo>> {
        self.refuse_in_flight("write")?;
        self.write_batch()?;
        Ok(self.durable_seq)
    }

    /// For [`SyncPolicy::Explicit`]: a second handle on the open log and the last record
    /// written so far. Once `handle.sync_data()` returns, every record up to that one is
    /// durable (records in earlier logs were made durable when those logs were sealed). The
    /// sync can run without holding the writer.
    ///
    /// # Errors
    /// [`Error::Config`] while a split commit is in flight or the writer is closed; IO
    /// (`dup`).
    pub fn sync_handle(&self) -> Result<(File, Option<SeqNo>)> {
        self.refuse_in_flight("sync")?;
        let cur = self.current()?;
        let f = cur
            .file()
            .try_clone()
            .map_err(|e| Error::io(cur.path(), "duplicate the handle of", e))?;
        Ok((f, self.durable_seq))
    }

    /// Starts a split commit: takes the pending batch and the open log out of the writer
    /// (see the module docs). `None` if the batch is empty or a commit is already in flight.
    /// Appends keep working meanwhile; hand the result back with
    /// [`finish_commit`](Self::finish_commit).
    ///
    /// # Errors
    /// [`Error::Config`] if the writer is closed.
    pub fn take_commit(&mut self) -> Result<Option<PendingCommit>> {
        if self.in_flight.is_some() || self.batch_records == 0 {
            return Ok(None);
        }
        let file = self
            .current
            .take()
            .ok_or_else(|| Error::Config("log writer is closed".into()))?;
        self.in_flight = Some(InFlight {
            path: file.path().to_owned(),
            log_id: file.header().log_id,
            end_after: file.end() + self.batch.len() as u64,
        });
        let batch = std::mem::take(&mut self.batch);
        let records = std::mem::take(&mut self.batch_records);
        Ok(Some(PendingCommit {
            file,
            batch,
            records,
            since: self.batch_since.take(),
            last_seq: SeqNo(self.next_seq.0 - 1),
            sync: self.cfg.sync,
            written: false,
        }))
    }

    /// Ends a split commit. If it was written, its records are durable: returns the new
    /// durable sequence number and rotates if the log is full. If not (its write failed or
    /// was never tried), its records go back to the front of the batch, ahead of those
    /// appended meanwhile, and the durable sequence number is unchanged.
    ///
    /// # Errors
    /// A rotation's errors (see [`rotate`](Self::rotate)); the commit itself is settled.
    pub fn finish_commit(&mut self, done: PendingCommit) -> Result<Option<SeqNo>> {
        self.in_flight = None;
        let PendingCommit {
            file,
            mut batch,
            records,
            since,
            last_seq,
            sync,
            written,
        } = done;
        self.current = Some(file);
        if !written {
            batch.extend_from_slice(&self.batch);
            self.batch = batch;
            self.batch_records += records;
            self.batch_since = since.or(self.batch_since);
            return Ok(self.durable_seq);
        }
        self.stats.commits += 1;
        if sync.syncs_batches() {
            self.stats.syncs += 1;
        }
        self.durable_seq = Some(last_seq);
        if self.current()?.end() >= self.cfg.max_log_bytes {
            self.rotate()?;
        }
        Ok(self.durable_seq)
    }

    /// Whether the oldest uncommitted record has waited `max_delay` by `now`.
    #[must_use]
    pub fn commit_due(&self, now: Instant) -> bool {
        self.batch_since
            .is_some_and(|t| now.duration_since(t) >= self.cfg.max_delay)
    }

    /// When the pending batch must be committed at the latest, if there is one.
    #[must_use]
    pub fn commit_deadline(&self) -> Option<Instant> {
        self.batch_since.map(|t| t + self.cfg.max_delay)
    }
}
