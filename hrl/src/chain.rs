//! A disk's log directory: file naming, listing, and chain-link validation.
//!
//! Each protected disk has its own directory of logs named by log sequence number
//! (`00000000000000000007.hrl`), so `ls` order is chain order. Consecutive logs must link:
//! the later one names the earlier one's id as its predecessor, its log sequence number is
//! one more, its first record sequence number is the earlier one's sealed `next_seq`, and
//! both describe the same disk. A missing, reordered, or foreign log is thus detected from
//! headers alone, before any record is applied.

use std::path::{Path, PathBuf};

use crate::error::{ChainBreak, Error, Result};
use crate::format::header::{LogHeader, Seal};
use crate::units::{LogSeq, SeqNo};

/// The file extension of a log.
pub const LOG_EXTENSION: &str = "hrl";

/// The file name of the log with sequence number `seq`.
#[must_use]
pub fn log_file_name(seq: LogSeq) -> String {
    format!("{:020}.{LOG_EXTENSION}", seq.0)
}

/// The log sequence number in a log file name, if it is one.
#[must_use]
pub fn parse_log_file_name(name: &str) -> Option<LogSeq> {
    let digits = name.strip_suffix(".hrl")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok().map(LogSeq)
}

/// The logs in `dir`, in chain order. Other files (the lock, `*.hrl.tmp` left by a crash
/// during creation) are ignored.
///
/// # Errors
/// If the directory cannot be read.
pub fn list_logs(dir: &Path) -> Result<Vec<(LogSeq, PathBuf)>> {
    let mut v = Vec::new();
    let rd = std::fs::read_dir(dir).map_err(|e| Error::io(dir, "read directory", e))?;
    for entry in rd {
        let entry = entry.map_err(|e| Error::io(dir, "read directory", e))?;
        if let Some(seq) = entry.file_name().to_str().and_then(parse_log_file_name) {
            v.push((seq, entry.path()));
        }
    }
    v.sort();
    Ok(v)
}

/// Checks that `next` directly follows `prev` (sealed with `prev_seal`) in a disk's chain.
///
/// # Errors
/// The first way the link fails.
pub fn check_link(
    prev: &LogHeader,
    prev_seal: Option<&Seal>,
    next: &LogHeader,
) -> Result<(), ChainBreak> {
    if prev.disk != next.disk {
        return Err(ChainBreak::Disk(format!(
            "{} ({} bytes, block {}) then {} ({} bytes, block {})",
            prev.disk.id,
            prev.disk.size,
            prev.disk.logical_block_size,
            next.disk.id,
            next.disk.size,
            next.disk.logical_block_size
        )));
    }
    if next.generation < prev.generation {
        return Err(ChainBreak::Generation {
            before: prev.generation.0,
            after: next.generation.0,
        });
    }
    let expected = LogSeq(prev.log_seq.0.wrapping_add(1));
    if next.log_seq != expected {
        return Err(ChainBreak::LogSeq {
            expected,
            found: next.log_seq,
        });
    }
    if next.prev_log_id != prev.log_id {
        return Err(ChainBreak::PrevId {
            expected: prev.log_id,
            found: next.prev_log_id,
        });
    }
    let seal = prev_seal.ok_or(ChainBreak::UnsealedPredecessor)?;
    if next.first_seq != seal.next_seq {
        return Err(ChainBreak::RecordSeq {
            expected: seal.next_seq,
            found: next.first_seq,
        });
    }
    Ok(())
}

/// Converts a link failure into the crate error for `path` (the later log).
#[must_use]
pub fn broken(path: &Path, cause: ChainBreak) -> Error {
    Error::BrokenChain {
        path: path.to_owned(),
        cause,
    }
}

/// The first record sequence number of a chain that starts fresh.
pub const FIRST_SEQ: SeqNo = SeqNo(1);
