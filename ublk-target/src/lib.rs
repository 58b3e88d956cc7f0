//! A ublk server exposing `/dev/ublkbN` over a backing file or device.
//!
//! **Status: not built yet** (issue "ublk-target"). This crate will hold the libublk-based
//! server that records every write, discard and write-zeroes in the disk's HRL log *before*
//! completing the I/O (group commit across a queue's in-flight I/O; flush and FUA complete
//! only once the log is durable), in `extents` or `journal` mode. Its tests run in the VM
//! tier, because the host kernel has no `ublk_drv`.

/// The change-log crate every interceptor writes through.
pub use hrl;
