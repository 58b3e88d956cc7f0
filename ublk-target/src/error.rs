//! The one error type of this crate. Variants say what the operator should do.

use std::path::PathBuf;

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why a tracked ublk disk could not be created, served or removed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The command line or configuration is wrong; nothing was created.
    #[error("{0}")]
    Config(String),

    /// The backing file or device cannot be used as asked; nothing was created.
    #[error("backing {}: {reason}", path.display())]
    Backing {
        /// The backing file or device.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },

    /// Another process already serves this backing file (it holds the lock).
    #[error("backing {} is already served by another sitrep process (it holds the lock); \
             use `sitrep disk list` to find it", path.display())]
    Busy {
        /// The backing file or device.
        path: PathBuf,
    },

    /// The kernel has no ublk (module `ublk_drv` not loaded, or not root).
    #[error("ublk is not available: {0} (needs root and `modprobe ublk_drv`)")]
    NoUblk(String),

    /// A ublk control command failed.
    #[error("ublk {op}: {detail}")]
    Ublk {
        /// What we asked the kernel.
        op: &'static str,
        /// libublk's error.
        detail: String,
    },

    /// The disk's change log failed; the disk must not be served untracked.
    #[error("change log: {0}")]
    Log(#[from] hrl::Error),

    /// An operating-system call failed.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// The file concerned.
        path: PathBuf,
        /// What we were doing.
        op: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// An [`Error::Io`] for `path`.
    pub(crate) fn io(path: impl Into<PathBuf>, op: &'static str, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            op,
            source,
        }
    }

    /// A [`Error::Ublk`] from a libublk error.
    pub(crate) fn ublk(op: &'static str, e: &libublk::UblkError) -> Self {
        Self::Ublk {
            op,
            detail: e.to_string(),
        }
    }
}
