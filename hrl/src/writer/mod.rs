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

mod append;
mod commit;
mod open;
mod rotate;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::file::{LogFile, SyncPolicy};
use crate::format::header::{DiskIdentity, LogHeader, Seal};
use crate::units::{Generation, LogId, SeqNo};

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
    /// The next log's file, made ahead ([`LogWriter::prepare_spare`]).
    spare: Option<crate::file::Spare>,
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

// The writer's state as every concern reads it. The operations are split by concern:
// `open` (lock, recovery, first log), `append` (records into the batch), `commit` (group and
// split commit, sync), `rotate` (seal, next log, release).
impl LogWriter {
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
