//! eBPF change tracking of live block devices, with no kernel module.
//!
//! **Status: not built yet** (issue "tracker-bpf"). This crate will hold:
//! - a CO-RE BPF program in C attached to `tp_btf/block_bio_queue` (raw tracepoint fallback)
//!   that classifies each bio by `bi_opf` (write, discard, secure erase, write-zeroes,
//!   preflush, FUA) for a selected set of devices, with a sequence number on every event and
//!   an in-kernel coarse dirty bitmap as the fallback when the ring buffer is full;
//! - the loader (libbpf-rs skeleton built by `build.rs`) and a userspace consumer thread that
//!   coalesces events into extents and appends them to the disk's HRL log through [`hrl`].
//!
//! Nothing here may lose a completed write silently: any unaccounted event becomes a
//! tracking-gap record in the log, which forces a bounded resync.

/// The change-log crate every interceptor writes through.
pub use hrl;
