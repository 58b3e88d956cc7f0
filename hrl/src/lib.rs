//! The HRL change-log format: per-disk, append-only, chained logs of block changes.
//!
//! Inspired by Microsoft's published Hyper-V Replica Log format (MS-HRL) — a 4 KiB header
//! with magic and version, an end-of-log location zeroed while open and written on clean
//! close, and Unique/Previous id chaining — and improved where it is weak: CRC-32 salted with
//! the log's id instead of a byte sum, every block-layer operation (not only writes), a
//! journal mode carrying data, consistency tags shared by a group of disks, and explicit
//! tracking-gap records so a lost change always turns into a resync instead of silence.
//!
//! - [`format`](mod@format): the byte layout (pure encode/decode; docs/hrl-format.md is its prose copy);
//! - [`LogWriter`]: group commit, rotation, space cap, crash recovery of the last log;
//! - [`LogReader`]: streaming validation with a caller-chosen [`RecoveryMode`];
//! - [`chain`]: naming, listing and linking the logs of one disk;
//! - [`dirty`]: the bounded-memory dirty-extent map interceptors coalesce changes in.

pub mod chain;
pub mod dirty;
pub mod error;
mod file;
pub mod format;
mod mapped;
pub mod reader;
pub mod units;
pub mod writer;

pub use error::{ChainBreak, Corrupt, Error, Result};
pub use file::{SPARE_FILE, SyncPolicy};
pub use format::FORMAT_VERSION;
pub use format::header::{DiskIdentity, LogHeader, Seal};
pub use format::record::{GapReason, GapScope, Record, RecordBody, RecordFlags, RecordKind};
pub use mapped::Prefault;
pub use reader::{LogReader, RecoveryMode, Tail};
pub use units::{DiskId, Extent, Generation, GroupId, LogId, LogSeq, SECTOR_SIZE, SeqNo};
pub use writer::{ChainSpec, LogWriter, Resume, SealedLog, WriterConfig, WriterStats};

/// Wall-clock time in nanoseconds since the Unix epoch (0 if the clock is before 1970).
#[must_use]
pub fn now_unix_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}
