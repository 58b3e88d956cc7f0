//! Rotation: preparing the next log, sealing the current one, and releasing shipped logs.

use std::path::Path;

#[cfg(doc)] // named in doc links only
use super::WriterConfig;
use super::{LogWriter, SealedLog};
use crate::chain::log_file_name;
use crate::error::{Error, Result};
use crate::file::{LogFile, Prepared, Spare};
use crate::format::header::LogHeader;
use crate::units::{LogId, LogSeq, SeqNo};

/// Mapped space beyond `max_log_bytes` (see [`WriterConfig::map`]).
const MAP_SLACK: usize = 1 << 20;

impl LogWriter {
    /// The next log, written but not in the chain yet (see [`LogFile::prepare`]).
    pub(super) fn prepare_log(
        &mut self,
        log_seq: LogSeq,
        prev: LogId,
        first_seq: SeqNo,
    ) -> Result<Prepared> {
        let header = LogHeader {
            disk: self.spec.disk,
            journal: self.spec.journal,
            generation: self.spec.generation,
            log_seq,
            log_id: LogId::random().map_err(|e| Error::io(&self.dir, "random id for", e))?,
            prev_log_id: prev,
            created_unix_ns: crate::now_unix_ns(),
            first_seq,
        };
        let prealloc = if self.cfg.preallocate {
            self.cfg.max_log_bytes
        } else {
            0
        };
        // Room for a batch that crosses max_log_bytes (rotation follows it); a bigger one
        // is written with pwrite.
        let map = if self.cfg.map && !self.cfg.preallocate {
            self.cfg
                .max_log_bytes
                .saturating_add(self.cfg.max_batch_bytes.min(MAP_SLACK) as u64)
        } else {
            0
        };
        LogFile::prepare(
            &self.dir.join(log_file_name(log_seq)),
            header,
            self.cfg.sync,
            prealloc,
            map,
            self.spare.take(),
        )
    }

    /// Makes the next log's file ahead (a spare: [`WriterConfig::max_log_bytes`] of zeros,
    /// synced), so the next rotation writes and syncs only a header. Owners call it when idle
    /// after a rotation: with preallocation, making the file is most of a rotation's time
    /// (16 MiB of zeros and their fdatasync: ~15 ms of the ~15-30 ms a cut took), and a cut's
    /// time is inside the race window of the cycle it starts. No-op without preallocation or
    /// when a spare is ready. The spare is one more log's worth of space, not counted in
    /// [`total_bytes`](Self::total_bytes).
    ///
    /// # Errors
    /// IO (no spare then; the next rotation makes its file itself, as without one).
    pub fn prepare_spare(&mut self) -> Result<()> {
        if !self.cfg.preallocate || self.spare.is_some() || self.current.is_none() {
            return Ok(());
        }
        self.spare = Some(Spare::create(
            &self.dir,
            self.cfg.max_log_bytes,
            self.cfg.sync,
        )?);
        Ok(())
    }

    /// Whether a spare is ready for the next rotation.
    #[must_use]
    pub fn has_spare(&self) -> bool {
        self.spare.is_some()
    }

    /// Whether the current log has reached [`WriterConfig::max_log_bytes`] and the next
    /// [`commit`](Self::commit) (or an explicit [`rotate`](Self::rotate)) will rotate.
    #[must_use]
    pub fn rotation_due(&self) -> bool {
        self.in_flight.is_none()
            && self
                .current
                .as_ref()
                .is_some_and(|c| c.end() >= self.cfg.max_log_bytes)
    }

    /// Commits, seals the current log and opens the next one. Returns the sealed log.
    ///
    /// The next log is written (header, preallocation) before the current one is sealed,
    /// and renamed into the chain after: if the filesystem is full, the rotation fails with
    /// nothing changed — the writer keeps appending to the current log, and a later
    /// `rotate` tries again.
    ///
    /// # Errors
    /// IO: writing the pending batch or the next log (nothing changed), or sealing (the
    /// current log stays open). Only a failure to rename the sealed log's successor into the
    /// chain closes the writer (the next [`open`](Self::open) continues the chain).
    /// [`Error::Config`] while a split commit is in flight.
    pub fn rotate(&mut self) -> Result<SealedLog> {
        self.refuse_in_flight("rotate")?;
        self.write_batch()?;
        let cur = self.current()?;
        let (log_seq, log_id, next_seq) =
            (cur.header().log_seq, cur.header().log_id, cur.next_seq());
        let next = self.prepare_log(LogSeq(log_seq.0 + 1), log_id, next_seq)?;
        let sealed = match self.seal_current() {
            Ok(s) => s,
            Err(e) => {
                next.discard();
                return Err(e);
            }
        };
        self.stats.rotations += 1;
        self.current = Some(next.publish(self.cfg.sync)?);
        Ok(sealed)
    }

    fn seal_current(&mut self) -> Result<SealedLog> {
        self.write_batch()?;
        let sync = self.cfg.sync;
        let cur = self
            .current
            .as_mut()
            .ok_or_else(|| Error::Config("log writer is closed".into()))?;
        let header = *cur.header();
        let (path, seal) = cur.seal(false, sync)?;
        self.current = None;
        self.sealed_bytes += seal.end_offset;
        Ok(SealedLog { path, header, seal })
    }

    /// Commits and seals the current log: a clean close, after which the next `open` of the
    /// directory continues the chain with nothing missed.
    ///
    /// # Errors
    /// IO (the log is then left unsealed, and the next open recovers it). [`Error::Config`]
    /// while a split commit is in flight (its log cannot be sealed under it; the next open
    /// recovers it).
    pub fn close(mut self) -> Result<SealedLog> {
        self.refuse_in_flight("close")?;
        let sealed = self.seal_current()?;
        if let Some(s) = self.spare.take() {
            s.discard();
        }
        Ok(sealed)
    }

    /// Counts again the bytes of the sealed logs in the directory (every log but the open
    /// one), so [`total_bytes`](Self::total_bytes) and the space cap follow logs deleted by
    /// another process — the replication agent deletes the logs of a ublk target it shipped,
    /// while the target's writer keeps running. Returns the sealed bytes now counted.
    ///
    /// # Errors
    /// The directory cannot be listed, or a log cannot be measured (one gone meanwhile is
    /// simply not counted).
    pub fn recount_sealed(&mut self) -> Result<u64> {
        let open = self.current_path().map(Path::to_path_buf);
        let mut bytes = 0u64;
        for (_, p) in crate::chain::list_logs(&self.dir)? {
            if open.as_ref() == Some(&p) {
                continue;
            }
            match std::fs::metadata(&p) {
                Ok(m) => bytes = bytes.saturating_add(m.len()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io(&p, "stat", e)),
            }
        }
        self.sealed_bytes = bytes;
        Ok(bytes)
    }

    /// Deletes a sealed log that has been shipped and applied, reclaiming its space.
    ///
    /// # Errors
    /// If `path` is the log being written, or IO.
    pub fn release(&mut self, path: &Path) -> Result<()> {
        if self.current_path() == Some(path) {
            return Err(Error::Config(format!(
                "{} is the open log; rotate before releasing it",
                path.display()
            )));
        }
        let len = std::fs::metadata(path)
            .map_err(|e| Error::io(path, "stat", e))?
            .len();
        std::fs::remove_file(path).map_err(|e| Error::io(path, "remove", e))?;
        self.sealed_bytes = self.sealed_bytes.saturating_sub(len);
        Ok(())
    }
}
