//! The log writer: one owner appends a disk's change records, with group commit, rotation
//! (double buffering) and a space cap.
//!
//! One [`LogWriter`] owns one disk's log directory (it holds an exclusive `flock` on
//! `DIR/LOCK`, so a second writer fails fast instead of interleaving). It is deliberately
//! single-threaded: interceptors funnel their events to one thread that owns the writer
//! (crossbeam channel), which is both simpler and faster than a shared, locked writer.
//!
//! **Group commit.** [`LogWriter::append`] encodes into an in-memory batch and returns the
//! record's sequence number; nothing is durable until [`LogWriter::commit`] writes the whole
//! batch with one `pwrite` and one `fdatasync`. The owner commits when the batch is big
//! enough (automatic, [`WriterConfig::max_batch_bytes`] / `max_batch_records`), when its
//! oldest record has waited [`WriterConfig::max_delay`] (the owner's loop asks
//! [`LogWriter::commit_due`]), or when a caller needs durability (flush/FUA).
//!
//! **Split commit** (pipelining). [`LogWriter::take_commit`] moves the pending batch and the
//! open log file out of the writer as a [`PendingCommit`]; its owner runs
//! [`PendingCommit::write`] (the `pwrite` + `fdatasync`) *without* holding the writer —
//! typically on a log thread, while other threads keep appending behind a mutex — and hands
//! it back with [`LogWriter::finish_commit`], which publishes the new durable sequence
//! number (and rotates if the log is full). At most one commit is in flight: the next batch
//! must follow this one in the file, so it can only be taken once this one is written. While
//! one is in flight, appends never commit automatically (the batch simply grows), and
//! `commit`, `rotate` and `close` refuse with [`Error::Config`]. A failed write is handed
//! back the same way: its records return to the front of the batch, to be retried by the
//! next commit, exactly like a failed [`LogWriter::commit`].
//!
//! **Rotation.** [`LogWriter::rotate`] seals the current log and opens the next one, chained
//! to it; the sealed log can then be shipped while new changes go to the new log. Rotation
//! also happens automatically at commit once the current log passes
//! [`WriterConfig::max_log_bytes`].
//!
//! **Space cap.** [`LogWriter::total_bytes`] is every byte of every log still in the
//! directory plus the pending batch, so the agent can compare it with the disk size (resync
//! when logs exceed 50 % of it). With [`WriterConfig::max_total_bytes`] set, an append that
//! would pass the cap fails with [`Error::Full`] — except tracking-gap records, which are
//! always accepted so the writer can always record that it lost track.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::chain::{FIRST_SEQ, list_logs, log_file_name};
use crate::error::{Error, Result};
use crate::file::{LogFile, Prepared, SyncPolicy};
use crate::format::header::{DiskIdentity, LogHeader, Seal};
use crate::format::record::{
    RecordBody, RecordFlags, RecordKind, encode_extents_record, encode_record, encode_write_data,
    log_id_crc, validate_body, validate_extents_record,
};
use crate::mapped::Prefault;
use crate::reader::{LogReader, RecoveryMode, Tail};
use crate::units::{Extent, Generation, LogId, LogSeq, SeqNo};

/// Tuning for a [`LogWriter`]. Defaults suit a tracked disk in production.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriterConfig {
    /// When to fdatasync.
    pub sync: SyncPolicy,
    /// Commit automatically once the batch holds this many bytes (default 1 MiB).
    pub max_batch_bytes: usize,
    /// Commit automatically once the batch holds this many records (default 4096).
    pub max_batch_records: u64,
    /// Longest a record should wait in the batch; see [`LogWriter::commit_due`]
    /// (default 5 ms).
    pub max_delay: Duration,
    /// Rotate automatically at commit once the current log is this big (default 64 MiB).
    pub max_log_bytes: u64,
    /// Refuse appends that would take all logs in the directory past this (default: none).
    pub max_total_bytes: Option<u64>,
    /// Create each log already `max_log_bytes` long, zero-filled, so that appends are pure
    /// overwrites and their fdatasync needs no filesystem journal commit (see `file.rs`;
    /// needed when the log directory lives on a tracked device). Default false.
    pub preallocate: bool,
    /// Append through a shared memory mapping of each log's space, allocated when the log is
    /// created (`fallocate`, not written): a batch is then a copy into the page cache, with no
    /// system call — as safe as a `pwrite` against a crash of the writer's process (see
    /// `mapped.rs`). For [`SyncPolicy::Explicit`] writers that write many small batches.
    /// Ignored with `preallocate`; falls back to `pwrite` where the filesystem cannot.
    /// Default false.
    pub map: bool,
}

/// Mapped space beyond `max_log_bytes` (see [`WriterConfig::map`]).
const MAP_SLACK: usize = 1 << 20;

impl Default for WriterConfig {
    fn default() -> Self {
        Self {
            sync: SyncPolicy::Data,
            max_batch_bytes: 1 << 20,
            max_batch_records: 4096,
            max_delay: Duration::from_millis(5),
            max_log_bytes: 64 << 20,
            max_total_bytes: None,
            preallocate: false,
            map: false,
        }
    }
}

/// What to create if the directory holds no logs, and what to expect if it does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChainSpec {
    /// The disk the logs describe; must match existing logs exactly.
    pub disk: DiskIdentity,
    /// Journal mode (write records carry data).
    pub journal: bool,
    /// Generation of new logs; must not be older than existing logs'.
    pub generation: Generation,
}

/// How the directory looked when the writer opened it. The interceptor decides from this
/// whether its first record must be a whole-disk tracking gap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resume {
    /// No logs: a new chain starts.
    Fresh,
    /// The last log was sealed by a clean close: the chain continues with nothing missed.
    Clean {
        /// The sealed predecessor.
        prev: PathBuf,
    },
    /// The last log was not sealed (the writer died). It has been truncated to its last
    /// valid record and sealed with the RECOVERED flag; the chain continues.
    Recovered {
        /// The recovered predecessor.
        prev: PathBuf,
        /// Valid records kept in it.
        records_kept: u64,
        /// Torn bytes cut off its end.
        bytes_truncated: u64,
    },
}

/// A sealed log, ready to ship.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedLog {
    /// Where it is.
    pub path: PathBuf,
    /// Its header.
    pub header: LogHeader,
    /// Its seal.
    pub seal: Seal,
}

/// Counters since the writer was opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct WriterStats {
    /// Records appended.
    pub records: u64,
    /// Encoded bytes appended (headers, payloads, padding).
    pub bytes: u64,
    /// Batches written.
    pub commits: u64,
    /// fdatasync calls made for batches.
    pub syncs: u64,
    /// Logs sealed by rotation.
    pub rotations: u64,
}

/// Appends change records to a disk's chain of logs. See the module docs.
#[derive(Debug)]
pub struct LogWriter {
    dir: PathBuf,
    spec: ChainSpec,
    cfg: WriterConfig,
    current: Option<LogFile>,
    batch: Vec<u8>,
    batch_records: u64,
    batch_since: Option<Instant>,
    next_seq: SeqNo,
    durable_seq: Option<SeqNo>,
    sealed_bytes: u64,
    stats: WriterStats,
    /// The split commit in flight, if any (see the module docs).
    in_flight: Option<InFlight>,
    /// The CRC-32 state after the id of the log records go to (see `append_extents_at`).
    log_crc: Option<(LogId, u32)>,
    _lock: File,
}

/// What the writer remembers about the log file while a [`PendingCommit`] holds it.
#[derive(Debug)]
struct InFlight {
    path: PathBuf,
    log_id: LogId,
    /// The file's end once the in-flight batch is written.
    end_after: u64,
}

/// A batch and the log file it goes to, taken out of the writer by
/// [`LogWriter::take_commit`] so it can be written and synced without holding the writer.
/// Must be handed back with [`LogWriter::finish_commit`], written or not; dropping it instead
/// leaves the writer unable to commit (as if closed), and the log is recovered at next open.
#[derive(Debug)]
pub struct PendingCommit {
    file: LogFile,
    batch: Vec<u8>,
    records: u64,
    since: Option<Instant>,
    last_seq: SeqNo,
    sync: SyncPolicy,
    written: bool,
}

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
    /// Opens `dir` (which must exist) for appending: takes its lock, recovers an unsealed
    /// last log if there is one, and starts a new log chained to the last one.
    ///
    /// # Errors
    /// [`Error::Config`] if another writer holds the directory or the spec contradicts
    /// existing logs; [`Error::BrokenChain`]/[`Error::Corruption`] if the last log cannot be
    /// trusted; IO.
    pub fn open(dir: &Path, spec: ChainSpec, cfg: WriterConfig) -> Result<(Self, Resume)> {
        spec.disk
            .validate()
            .map_err(|c| Error::Config(format!("disk identity: {c}")))?;
        if cfg.max_log_bytes == 0 || cfg.max_batch_bytes == 0 || cfg.max_batch_records == 0 {
            return Err(Error::Config(
                "max_log_bytes, max_batch_bytes and max_batch_records must be > 0".into(),
            ));
        }
        let meta = std::fs::metadata(dir).map_err(|e| Error::io(dir, "open log directory", e))?;
        if !meta.is_dir() {
            return Err(Error::Config(format!(
                "{} is not a directory",
                dir.display()
            )));
        }
        let lock = lock_dir(dir)?;
        let logs = list_logs(dir)?;
        let (prev, resume) = match logs.last() {
            None => (None, Resume::Fresh),
            Some((_, path)) => {
                let (sealed, resume) = recover_last(path, &spec, cfg.sync)?;
                (Some(sealed), resume)
            }
        };
        let mut sealed_bytes = 0;
        for (_, p) in &logs {
            sealed_bytes += std::fs::metadata(p)
                .map_err(|e| Error::io(p, "stat", e))?
                .len();
        }
        let (log_seq, prev_id, first_seq) = match &prev {
            None => (LogSeq(0), LogId::NIL, FIRST_SEQ),
            Some(s) => (
                LogSeq(s.header.log_seq.0 + 1),
                s.header.log_id,
                s.seal.next_seq,
            ),
        };
        let mut w = Self {
            dir: dir.to_owned(),
            spec,
            cfg,
            current: None,
            batch: Vec::new(),
            batch_records: 0,
            batch_since: None,
            next_seq: first_seq,
            durable_seq: None,
            sealed_bytes,
            stats: WriterStats::default(),
            in_flight: None,
            log_crc: None,
            _lock: lock,
        };
        w.current = Some(w.create_log(log_seq, prev_id, first_seq)?);
        Ok((w, resume))
    }

    fn create_log(&self, log_seq: LogSeq, prev: LogId, first_seq: SeqNo) -> Result<LogFile> {
        self.prepare_log(log_seq, prev, first_seq)?
            .publish(self.cfg.sync)
    }

    /// The next log, written but not in the chain yet (see [`LogFile::prepare`]).
    fn prepare_log(&self, log_seq: LogSeq, prev: LogId, first_seq: SeqNo) -> Result<Prepared> {
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
        )
    }

    fn current(&self) -> Result<&LogFile> {
        self.current
            .as_ref()
            .ok_or_else(|| Error::Config("log writer is closed".into()))
    }

    /// The id of the log records are appended to (also while its file is in flight).
    fn current_log_id(&self) -> Result<LogId> {
        match &self.in_flight {
            Some(f) => Ok(f.log_id),
            None => Ok(self.current()?.header().log_id),
        }
    }

    fn refuse_in_flight(&self, what: &str) -> Result<()> {
        match self.in_flight {
            Some(_) => Err(Error::Config(format!(
                "cannot {what} {} while a split commit is in flight; finish it first",
                self.dir.display()
            ))),
            None => Ok(()),
        }
    }

    /// Adds a record to the batch; returns its sequence number. It is durable only after
    /// the next [`commit`](Self::commit) (which this calls itself when the batch is full).
    ///
    /// # Errors
    /// [`Error::InvalidRecord`] (nothing appended), [`Error::Full`], or a commit's errors.
    pub fn append(&mut self, flags: RecordFlags, body: &RecordBody) -> Result<SeqNo> {
        self.append_at(flags, body, crate::now_unix_ns())
    }

    /// [`append`](Self::append) with the record's time (Unix ns) given by the caller — one
    /// clock read for a whole batch of records appended at the same moment.
    ///
    /// # Errors
    /// As [`append`](Self::append).
    pub fn append_at(
        &mut self,
        flags: RecordFlags,
        body: &RecordBody,
        unix_ns: u64,
    ) -> Result<SeqNo> {
        validate_body(body, flags, self.spec.disk.size).map_err(|reason| Error::InvalidRecord {
            disk_size: self.spec.disk.size,
            reason,
        })?;
        let exempt = matches!(body, RecordBody::TrackingGap { .. });
        let log_id = self.current_log_id()?;
        let start = self.batch.len();
        let seq = self.next_seq;
        encode_record(&log_id, seq, unix_ns, flags, body, &mut self.batch);
        self.admit(start, exempt)
    }

    /// Appends a change record of a list of extents — what a block interceptor logs for
    /// the I/Os of one turn (`Write`, `Discard`, `SecureErase` or `WriteZeroes`) — stamped
    /// `unix_ns`. The same record, byte for byte, as [`append_at`](Self::append_at) with the
    /// kind's body of that list, at a fraction of the cost: no body is built or dropped,
    /// and the log's id is not hashed again for every record.
    ///
    /// # Errors
    /// As [`append`](Self::append); [`Error::InvalidRecord`] for another kind, an empty or
    /// too long list.
    pub fn append_extents_at(
        &mut self,
        kind: RecordKind,
        flags: RecordFlags,
        extents: &[Extent],
        unix_ns: u64,
    ) -> Result<SeqNo> {
        validate_extents_record(kind, flags, extents, self.spec.disk.size).map_err(|reason| {
            Error::InvalidRecord {
                disk_size: self.spec.disk.size,
                reason,
            }
        })?;
        let log_id = self.current_log_id()?;
        let log_crc = match self.log_crc {
            Some((id, crc)) if id == log_id => crc,
            _ => {
                let crc = log_id_crc(&log_id);
                self.log_crc = Some((log_id, crc));
                crc
            }
        };
        let start = self.batch.len();
        let seq = self.next_seq;
        encode_extents_record(log_crc, seq, unix_ns, kind, flags, extents, &mut self.batch);
        self.admit(start, false)
    }

    /// Appends a journal-mode `WriteData` record without copying `data` first.
    ///
    /// # Errors
    /// As [`append`](Self::append); also if the log was not opened in journal mode.
    pub fn append_write_data(
        &mut self,
        flags: RecordFlags,
        offset: u64,
        data: &[u8],
    ) -> Result<SeqNo> {
        self.append_write_data_at(flags, offset, data, crate::now_unix_ns())
    }

    /// [`append_write_data`](Self::append_write_data) with the record's time given (see
    /// [`append_at`](Self::append_at)).
    ///
    /// # Errors
    /// As [`append_write_data`](Self::append_write_data).
    pub fn append_write_data_at(
        &mut self,
        flags: RecordFlags,
        offset: u64,
        data: &[u8],
        unix_ns: u64,
    ) -> Result<SeqNo> {
        if !self.spec.journal {
            return Err(Error::Config(
                "write data logged to a non-journal log".into(),
            ));
        }
        let disk_size = self.spec.disk.size;
        let invalid = |reason: String| Error::InvalidRecord { disk_size, reason };
        if data.len() > crate::format::MAX_PAYLOAD - 8 {
            return Err(invalid(format!(
                "{} bytes exceed the record cap",
                data.len()
            )));
        }
        crate::format::record::check_extent(offset, data.len() as u64, disk_size)
            .map_err(|c| invalid(c.to_string()))?;
        let log_id = self.current_log_id()?;
        let start = self.batch.len();
        let seq = self.next_seq;
        encode_write_data(&log_id, seq, unix_ns, flags, offset, data, &mut self.batch);
        self.admit(start, false)
    }

    /// Accepts (or, over the cap, rolls back) the record just encoded at `batch[start..]`.
    fn admit(&mut self, start: usize, cap_exempt: bool) -> Result<SeqNo> {
        let need = (self.batch.len() - start) as u64;
        if let (Some(cap), false) = (self.cfg.max_total_bytes, cap_exempt) {
            let total = self.total_bytes() - need;
            if total + need > cap {
                self.batch.truncate(start);
                return Err(Error::Full {
                    dir: self.dir.clone(),
                    total,
                    need,
                    cap,
                });
            }
        }
        let seq = self.next_seq;
        self.next_seq = seq.next();
        self.batch_records += 1;
        self.batch_since.get_or_insert_with(Instant::now);
        self.stats.records += 1;
        self.stats.bytes += need;
        if self.in_flight.is_none()
            && (self.batch.len() >= self.cfg.max_batch_bytes
                || self.batch_records >= self.cfg.max_batch_records)
        {
            self.commit()?;
        }
        Ok(seq)
    }

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
    fn write_batch(&mut self) -> Result<bool> {
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

    /// Whether fewer than `low` bytes past the open log's end are populated in its mapping
    /// ([`WriterConfig::map`]) — time for a [`prefault`](Self::prefault). Cheap: two
    /// comparisons, for the appending thread to decide whether to ask for one.
    #[must_use]
    pub fn prefault_due(&self, low: usize) -> bool {
        self.in_flight.is_none() && self.current.as_ref().is_some_and(|c| c.prefault_due(low))
    }

    /// The stretch of the open log's mapping to populate so that `ahead` bytes past its end
    /// are; run it ([`Prefault::run`]) without holding the writer. `None` if the log is not
    /// mapped, a split commit holds it, or the stretch is already populated (or handed out).
    pub fn prefault(&mut self, ahead: usize) -> Option<Prefault> {
        if self.in_flight.is_some() {
            return None;
        }
        self.current.as_mut().and_then(|c| c.prefault(ahead))
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
        self.seal_current()
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

    /// Bytes used by all logs in the directory, including the open log and the batch.
    #[must_use]
    pub fn total_bytes(&self) -> u64 {
        let cur = match &self.in_flight {
            Some(f) => f.end_after,
            None => self.current.as_ref().map_or(0, LogFile::end),
        };
        self.sealed_bytes + cur + self.batch.len() as u64
    }

    /// The last record made durable by a commit (under [`SyncPolicy::Explicit`]: the last
    /// record written; see [`sync_handle`](Self::sync_handle)).
    #[must_use]
    pub fn durable_seq(&self) -> Option<SeqNo> {
        self.durable_seq
    }

    /// The chain this writer appends to: the disk, the mode, the generation.
    #[must_use]
    pub fn spec(&self) -> &ChainSpec {
        &self.spec
    }

    /// The sequence number the next record will get.
    #[must_use]
    pub fn next_seq(&self) -> SeqNo {
        self.next_seq
    }

    /// The log being appended to.
    #[must_use]
    pub fn current_path(&self) -> Option<&Path> {
        match &self.in_flight {
            Some(f) => Some(&f.path),
            None => self.current.as_ref().map(LogFile::path),
        }
    }

    /// The directory this writer owns.
    #[must_use]
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Counters since open.
    #[must_use]
    pub fn stats(&self) -> WriterStats {
        self.stats
    }
}

fn check_spec(spec: &ChainSpec, h: &LogHeader, path: &Path) -> Result<()> {
    if h.disk != spec.disk || h.journal != spec.journal {
        return Err(Error::Config(format!(
            "{} describes disk {} ({} bytes, block {}, journal {}), not disk {} ({} bytes, \
             block {}, journal {})",
            path.display(),
            h.disk.id,
            h.disk.size,
            h.disk.logical_block_size,
            h.journal,
            spec.disk.id,
            spec.disk.size,
            spec.disk.logical_block_size,
            spec.journal
        )));
    }
    if spec.generation < h.generation {
        return Err(Error::Config(format!(
            "generation {} is older than {} in {}",
            spec.generation,
            h.generation,
            path.display()
        )));
    }
    Ok(())
}

/// Validates the directory's last log; if it is unsealed, truncates its torn tail and
/// seals it as recovered.
fn recover_last(path: &Path, spec: &ChainSpec, sync: SyncPolicy) -> Result<(SealedLog, Resume)> {
    let mut r = LogReader::open(path, RecoveryMode::TruncateTail)?;
    // Check before touching anything: a foreign log must not be "recovered".
    check_spec(spec, r.header(), path)?;
    while r.next_record()?.is_some() {}
    let header = *r.header();
    if let Some(seal) = r.seal().copied() {
        let sealed = SealedLog {
            path: path.to_owned(),
            header,
            seal,
        };
        return Ok((
            sealed,
            Resume::Clean {
                prev: path.to_owned(),
            },
        ));
    }
    let file_len = std::fs::metadata(path)
        .map_err(|e| Error::io(path, "stat", e))?
        .len();
    let end = r.valid_end();
    // Only a real tear counts as truncated; a preallocated zero tail is not data.
    let torn = matches!(r.tail(), Some(Tail::Truncated { .. }));
    let mut f = LogFile::reopen_truncated(path, header, end, r.next_seq(), r.records_read())?;
    let (_, seal) = f.seal(true, sync)?;
    let resume = Resume::Recovered {
        prev: path.to_owned(),
        records_kept: r.records_read(),
        bytes_truncated: if torn { file_len - end } else { 0 },
    };
    Ok((
        SealedLog {
            path: path.to_owned(),
            header,
            seal,
        },
        resume,
    ))
}

fn lock_dir(dir: &Path) -> Result<File> {
    let path = dir.join("LOCK");
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| Error::io(&path, "open lock", e))?;
    // SAFETY: flock on a file descriptor we own and keep open for the writer's lifetime;
    // no memory is passed to the kernel.
    let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        if e.kind() == std::io::ErrorKind::WouldBlock {
            return Err(Error::Config(format!(
                "{} is locked by another log writer (is a tracker already running for this \
                 disk?)",
                dir.display()
            )));
        }
        return Err(Error::io(&path, "lock", e));
    }
    Ok(f)
}
