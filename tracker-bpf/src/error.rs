//! The tracker's error type.

use std::path::PathBuf;

/// Result alias.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can go wrong tracking a device.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The device is missing, not a block device, or cannot be queried.
    #[error("{}: {why}", path.display())]
    Device {
        /// The device path.
        path: PathBuf,
        /// The cause.
        why: String,
    },
    /// Loading or attaching the BPF program failed (needs root, BPF and BTF).
    #[error("BPF: {0}")]
    Bpf(String),
    /// The device's change log failed.
    #[error("{}: log: {source}", device.display())]
    Log {
        /// The device whose log failed.
        device: PathBuf,
        /// The log error.
        #[source]
        source: hrl::Error,
    },
    /// The request is not valid now (device already tracked, no free slot, ...).
    #[error("{0}")]
    Invalid(String),
    /// The tracker's threads are gone (it was stopped, or one of them failed).
    #[error("tracker stopped: {0}")]
    Stopped(String),
}
