//! The checker's one error type. Every variant names the file or device and the cause.

use std::io;
use std::path::PathBuf;

/// Result with [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

/// Why a workload or a check could not run. (A check that *ran* and found an inconsistent
/// image is not an error: it is a [`Report`](crate::Report) with violations.)
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The operating system refused an operation on `path`.
    // The OS error is part of the message, and deliberately not a `#[source]`: anyhow's
    // `{:#}` would print it twice.
    #[error("{op} {}: {err}", path.display())]
    Io {
        /// The file or device concerned.
        path: PathBuf,
        /// What we were doing (`"open"`, `"read"`, `"pwrite"`, ...).
        op: &'static str,
        /// The OS error.
        err: io::Error,
    },

    /// The history file's bytes cannot be trusted (beyond a torn last record, which is
    /// tolerated): bad magic, version, header checksum, or a valid record after a bad one.
    #[error("{}: corrupt history at byte {offset}: {cause}", path.display())]
    CorruptHistory {
        /// The history file.
        path: PathBuf,
        /// Byte offset of the structure that failed validation.
        offset: u64,
        /// What is wrong.
        cause: String,
    },

    /// A size or count exceeds what this build accepts; refused before allocating.
    #[error("{}: {what} is {found}, over the limit of {limit}", path.display())]
    TooLarge {
        /// The file or device concerned.
        path: PathBuf,
        /// What was too large.
        what: &'static str,
        /// The value found.
        found: u64,
        /// The largest accepted value.
        limit: u64,
    },

    /// The image and the history do not describe the same device (size, block size).
    #[error("{}: {cause}", path.display())]
    Mismatch {
        /// The image or device concerned.
        path: PathBuf,
        /// What differs.
        cause: String,
    },

    /// A bad argument (block size, queue depth, time, rate); the message says which and why.
    #[error("{0}")]
    Invalid(String),
}

impl Error {
    /// An [`Error::Io`] builder for `map_err`.
    pub(crate) fn io(path: &std::path::Path, op: &'static str) -> impl FnOnce(io::Error) -> Self {
        let path = path.to_path_buf();
        move |err| Self::Io { path, op, err }
    }
}
