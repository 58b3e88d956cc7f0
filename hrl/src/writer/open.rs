//! Opening a log directory: its lock, the recovery of an unsealed last log, and the first
//! log of this writer, chained to the last one.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::Path;

use super::{ChainSpec, LogWriter, Resume, SealedLog, WriterConfig, WriterStats};
use crate::chain::{FIRST_SEQ, list_logs};
use crate::error::{Error, Result};
use crate::file::{LogFile, SyncPolicy};
use crate::format::header::LogHeader;
use crate::reader::{LogReader, RecoveryMode, Tail};
use crate::units::{LogId, LogSeq, SeqNo};

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
        crate::file::remove_spare(dir)?;
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
            spare: None,
            _lock: lock,
        };
        w.current = Some(w.create_log(log_seq, prev_id, first_seq)?);
        Ok((w, resume))
    }

    fn create_log(&mut self, log_seq: LogSeq, prev: LogId, first_seq: SeqNo) -> Result<LogFile> {
        self.prepare_log(log_seq, prev, first_seq)?
            .publish(self.cfg.sync)
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
