//! A ublk server exposing `/dev/ublkbN` over a backing file or device, which records every
//! write, discard and write-zeroes in the disk's HRL log **before** performing it.
//!
//! - [`config`]: what the operator asks for ([`DiskConfig`], [`LogMode`]);
//! - [`backing`]: the backing file/device, `O_DIRECT`, locked against a second server;
//! - [`commit`]: group commit between the queues' I/Os and the disk's log writer;
//! - `queue`: the per-queue io_uring event loop and the per-I/O state machine (log →
//!   perform → complete);
//! - [`server`]: creating or recovering the device and serving it ([`serve`]);
//! - [`devices`]: listing and deleting the disks ([`devices::list`], [`devices::delete`]);
//! - [`control`]: the control socket through which the agent cuts and tags the logs, and
//!   its [`control::Client`].
//!
//! Why log before performing, not only before completing: a change that reached the
//! backing store but not the log would be missed silently after a crash. With the log
//! ahead of the data, a restart continues the chain with no resync (`Resume::Recovered`
//! needs no tracking gap), and the extents in the log are a superset of what changed.
//!
//! Its tests run in the VM tier (`tests/tests/vm_ublk*.rs`), because the host kernel has
//! no `ublk_drv`.

pub mod backing;
pub mod commit;
pub mod config;
pub mod control;
pub mod devices;
pub mod error;
mod marker;
mod queue;
pub mod server;
mod signals;

/// The change-log crate every interceptor writes through.
pub use hrl;

pub use config::{DiskConfig, Durability, LogMode};
pub use error::{Error, Result};
pub use server::{DiskInfo, Stopped, serve};

/// The logical block size of every disk this crate serves, in bytes.
pub const BLOCK_SIZE: u64 = 512;
