//! The crate's one error type.
//!
//! Variants say what the caller should do, not where the code was: `Corruption` and
//! `BrokenChain` are never retried (the disk must be resynced), `TornTail` can be recovered by
//! reopening with [`RecoveryMode::TruncateTail`](crate::RecoveryMode), `Full` means "stop
//! logging extents, fall back to a coarse bitmap and a gap record", `Io` is whatever the OS
//! said. Every variant names the file (or directory) it is about.

use std::fmt;
use std::io;
use std::path::PathBuf;

use crate::units::{LogId, LogSeq, SeqNo};

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong reading or writing HRL logs.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The operating system refused an operation on `path`.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// The file or directory concerned.
        path: PathBuf,
        /// What we were doing (`"open"`, `"write"`, `"fdatasync"`, ...).
        op: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },

    /// The file does not start with the HRL magic: it is not a sitrep log at all.
    #[error("{}: not an HRL log (magic {found:02x?}, expected \"SITRPHRL\")", path.display())]
    NotALog {
        /// The file concerned.
        path: PathBuf,
        /// The first eight bytes found.
        found: [u8; 8],
    },

    /// The log was written by a format version this build does not read.
    #[error("{}: HRL format version {found} is not supported (this build reads {supported})",
        path.display())]
    VersionMismatch {
        /// The file concerned.
        path: PathBuf,
        /// The version in the header.
        found: u16,
        /// The version this build reads.
        supported: u16,
    },

    /// Bytes that must be valid are not: the log cannot be trusted; resync the disk.
    #[error("{}: corrupt at byte {offset}: {cause}", path.display())]
    Corruption {
        /// The file concerned.
        path: PathBuf,
        /// File offset of the structure that failed validation.
        offset: u64,
        /// What exactly failed.
        cause: Corrupt,
    },

    /// An unsealed log ends in an incomplete or invalid record (the writer died mid-append).
    /// Reopen with `RecoveryMode::TruncateTail` to keep every record before `offset`.
    #[error("{}: torn tail at byte {offset} of an unsealed log: {cause}", path.display())]
    TornTail {
        /// The file concerned.
        path: PathBuf,
        /// Offset of the first invalid record; everything before it is valid.
        offset: u64,
        /// Why the record there is invalid.
        cause: Corrupt,
    },

    /// Two logs that should be consecutive in a disk's chain are not.
    #[error("{}: broken log chain: {cause}", path.display())]
    BrokenChain {
        /// The later log of the pair.
        path: PathBuf,
        /// How the link fails.
        cause: ChainBreak,
    },

    /// Appending would take the disk's logs past their size cap.
    #[error("{}: log space cap reached ({total} bytes used + {need} needed > cap {cap})",
        dir.display())]
    Full {
        /// The disk's log directory.
        dir: PathBuf,
        /// Bytes the directory's logs use now.
        total: u64,
        /// Bytes the append needed.
        need: u64,
        /// The configured cap.
        cap: u64,
    },

    /// The caller asked to log something the format cannot represent.
    #[error("invalid record for disk of {disk_size} bytes: {reason}")]
    InvalidRecord {
        /// Size of the disk the log describes.
        disk_size: u64,
        /// What is wrong with it.
        reason: String,
    },

    /// The caller passed a configuration or identity that cannot work.
    #[error("invalid configuration: {0}")]
    Config(String),
}

impl Error {
    /// Whether retrying the same operation later might succeed (the retry policy keys on this,
    /// never on message text).
    #[must_use]
    pub fn is_recoverable(&self) -> bool {
        match self {
            Error::Io { source, .. } => !matches!(
                source.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::PermissionDenied
            ),
            Error::Full { .. } => true,
            _ => false,
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, op: &'static str, source: io::Error) -> Self {
        Error::Io {
            path: path.into(),
            op,
            source,
        }
    }
}

/// The exact validation that failed inside a log file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Corrupt {
    /// The file is shorter than the fixed-size header.
    TruncatedHeader {
        /// Bytes present.
        len: u64,
    },
    /// The header's identity block fails its checksum.
    HeaderCrc {
        /// Checksum stored in the file.
        stored: u32,
        /// Checksum of the bytes present.
        computed: u32,
    },
    /// A header field holds an impossible value.
    HeaderField {
        /// The field's name as in docs/hrl-format.md.
        field: &'static str,
        /// The value found.
        value: u64,
    },
    /// The seal block is present (non-zero) but fails its checksum or magic.
    BadSeal,
    /// The seal says the log ends at `end` but the file holds only `file_len` bytes.
    SealPastEnd {
        /// End offset recorded by the seal.
        end: u64,
        /// Actual file length.
        file_len: u64,
    },
    /// The seal's record count or last sequence number disagrees with the records.
    SealMismatch {
        /// What the seal says.
        sealed: u64,
        /// What the records say.
        found: u64,
        /// Which quantity (`"record_count"`, `"next_seq"`).
        what: &'static str,
    },
    /// A record extends past the end of the file (or of the sealed range).
    RecordTruncated {
        /// Bytes the record needs.
        need: u64,
        /// Bytes left.
        have: u64,
    },
    /// A record's length field is impossible (too small or over the cap).
    RecordLength {
        /// The length field.
        len: u64,
    },
    /// A record fails its checksum.
    RecordCrc {
        /// Checksum stored in the record.
        stored: u32,
        /// Checksum computed over its bytes.
        computed: u32,
    },
    /// A record's sequence number is not the previous one plus one.
    SeqGap {
        /// The sequence number expected.
        expected: SeqNo,
        /// The sequence number found.
        found: SeqNo,
    },
    /// A record kind this version does not know. Never skipped: an unknown change could be a
    /// write, and skipping it would lose that write silently.
    UnknownKind(u16),
    /// The payload does not decode as its kind says it should.
    BadPayload(String),
    /// Reserved or padding bytes that must be zero are not.
    NonZeroReserved,
}

impl fmt::Display for Corrupt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Corrupt::TruncatedHeader { len } => {
                write!(f, "truncated header ({len} bytes, need 4096)")
            }
            Corrupt::HeaderCrc { stored, computed } => write!(
                f,
                "header crc mismatch (stored {stored:#010x}, computed {computed:#010x})"
            ),
            Corrupt::HeaderField { field, value } => {
                write!(f, "header field {field} has impossible value {value}")
            }
            Corrupt::BadSeal => write!(f, "seal block present but invalid"),
            Corrupt::SealPastEnd { end, file_len } => write!(
                f,
                "seal says the log ends at byte {end} but the file has {file_len} bytes"
            ),
            Corrupt::SealMismatch {
                sealed,
                found,
                what,
            } => write!(f, "seal {what} is {sealed} but the records give {found}"),
            Corrupt::RecordTruncated { need, have } => {
                write!(f, "record needs {need} bytes but only {have} remain")
            }
            Corrupt::RecordLength { len } => write!(f, "impossible record length {len}"),
            Corrupt::RecordCrc { stored, computed } => write!(
                f,
                "record crc mismatch (stored {stored:#010x}, computed {computed:#010x})"
            ),
            Corrupt::SeqGap { expected, found } => {
                write!(f, "sequence gap: expected record {expected}, found {found}")
            }
            Corrupt::UnknownKind(k) => write!(f, "unknown record kind {k}"),
            Corrupt::BadPayload(why) => write!(f, "bad payload: {why}"),
            Corrupt::NonZeroReserved => write!(f, "reserved or padding bytes are not zero"),
        }
    }
}

/// How two logs fail to chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChainBreak {
    /// The later log names a different predecessor.
    PrevId {
        /// The id of the log before it.
        expected: LogId,
        /// The predecessor id the later log names.
        found: LogId,
    },
    /// Log sequence numbers are not consecutive (a log is missing).
    LogSeq {
        /// The log sequence number expected.
        expected: LogSeq,
        /// The one found.
        found: LogSeq,
    },
    /// Record sequence numbers do not continue across the two logs.
    RecordSeq {
        /// First record sequence number expected in the later log.
        expected: SeqNo,
        /// The one its header declares.
        found: SeqNo,
    },
    /// The logs describe different disks (or a disk whose size changed).
    Disk(String),
    /// The later log's generation is older than the earlier one's.
    Generation {
        /// Generation of the earlier log.
        before: u64,
        /// Generation of the later log.
        after: u64,
    },
    /// The earlier log was never sealed, so records may be missing between the two.
    UnsealedPredecessor,
}

impl fmt::Display for ChainBreak {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChainBreak::PrevId { expected, found } => write!(
                f,
                "names predecessor {found} but the previous log is {expected}"
            ),
            ChainBreak::LogSeq { expected, found } => {
                write!(
                    f,
                    "log sequence {found} follows, expected {expected} (a log is missing)"
                )
            }
            ChainBreak::RecordSeq { expected, found } => write!(
                f,
                "first record is {found} but the previous log ended before {expected}"
            ),
            ChainBreak::Disk(why) => write!(f, "different disk: {why}"),
            ChainBreak::Generation { before, after } => {
                write!(f, "generation went back from {before} to {after}")
            }
            ChainBreak::UnsealedPredecessor => {
                write!(f, "the previous log was not closed cleanly")
            }
        }
    }
}
