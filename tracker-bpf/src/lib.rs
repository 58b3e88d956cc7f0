//! eBPF change tracking of live block devices, with no kernel module.
//!
//! CO-RE BPF programs (`src/bpf/tracker.bpf.c`) attached to `block_rq_complete`,
//! `block_bio_complete` and `block_bio_queue` (as `tp_btf`, raw tracepoint fallback) record
//! every write, discard, secure erase, write-zeroes and preflush to a selected set of devices
//! (up to 64, changeable while attached) **when it completes** — so a change still in flight
//! when a log is sealed lands in a later log. Plain writes set bits in a fine in-kernel
//! bitmap; other changes are ring-buffer events with a sequence number; when the ring is full
//! a per-device coarse bitmap takes the range instead, so an overflow loses no information.
//!
//! In userspace ([`Tracker`]) one poller thread owns the BPF object, drains the ring and
//! the bitmaps, and accounts for every sequence number; one log thread per device owns that
//! device's [`hrl::LogWriter`], coalesces events into extents and appends them with group
//! commit. Anything unaccounted for becomes a tracking-gap record, which forces a resync:
//! nothing here loses a completed write silently. See docs/tracking.md for exactly which
//! windows are covered.
//!
//! Layout: [`event`] (the ring-buffer record), [`device`] (dev_t, sysfs, counters),
//! [`coalesce`], `disk` (log thread), `poller` (BPF owner), [`continuity`] (clean stop and
//! restart), [`Tracker`] (the API).

mod attach;
pub mod coalesce;
mod completions;
pub mod continuity;
mod crash;
mod ctrl;
pub mod device;
mod disk;
pub mod error;
pub mod event;
mod fine;
mod kernel_stats;
mod load;
mod poller;
mod restart;
pub mod sentinel;
pub(crate) mod skel;
mod tracker;
mod words;

pub use attach::{AttachMode, Attached};
pub use device::{DeviceInfo, IoCounters};
pub use disk::{DiskStats, StopReport};
pub use error::{Error, Result};
pub use kernel_stats::KernelStats;
pub use poller::MAX_DEVICES;
pub use tracker::{AddReport, Cut, Tracker, TrackerConfig, TrackerStats};

/// The change-log crate every interceptor writes through.
pub use hrl;
