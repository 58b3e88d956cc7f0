//! What the kernel side counts: the program's per-CPU counters, the programs' own run
//! statistics, and the per-device completed sectors of the missed-completion check.

use std::os::fd::{AsFd, AsRawFd};

use libbpf_rs::{MapCore, MapFlags};

use crate::attach::Attached;
use crate::skel::TrackerSkel;

/// `struct trk_stats` (tracker.h): 12 counters.
const STATS_SIZE: usize = 12 * 8;

/// Kernel-side counters plus the consumer's accounting.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct KernelStats {
    /// Events the program submitted to the ring buffer.
    pub events: u64,
    /// Bytes those events covered.
    pub bytes: u64,
    /// Failed ring-buffer reservations (each fell back to the bitmap).
    pub drops: u64,
    /// Bitmap words touched by fallbacks.
    pub fallback_bits: u64,
    /// Fallbacks that marked a whole device dirty.
    pub overflows: u64,
    /// Bios from sitrep's own process, not tracked.
    pub excluded: u64,
    /// Tracked-device bios that change nothing (reads, ...).
    pub ignored_ops: u64,
    /// Sequence numbers handed out (events + drops + bitmap writes + coarse).
    pub seq: u64,
    /// Events the consumer received.
    pub received: u64,
    /// Sequence numbers neither received nor dropped after a grace period (should be 0;
    /// each loss turned into a whole-disk gap on every tracked disk).
    pub unaccounted: u64,
    /// Events for no registered slot (device removed while its bio was in flight).
    pub orphans: u64,
    /// Runs of the busiest program — about one per I/O on the system, since every I/O passes
    /// both `block_bio_queue` and a completion (0 unless `kernel.bpf_stats_enabled`).
    /// `prog_run_ns / prog_runs` is then the tracker's cost per I/O.
    pub prog_runs: u64,
    /// Nanoseconds all the programs ran in total (0 unless `kernel.bpf_stats_enabled`).
    pub prog_run_ns: u64,
    /// Runs of the `block_bio_queue` program.
    pub queue_runs: u64,
    /// Nanoseconds in the `block_bio_queue` program.
    pub queue_run_ns: u64,
    /// Runs of the two completion programs (`block_rq_complete`, `block_bio_complete`).
    pub complete_runs: u64,
    /// Nanoseconds in the completion programs.
    pub complete_run_ns: u64,
    /// Writes recorded in the fine write bitmap instead of the ring.
    pub bitmap_writes: u64,
    /// Ranges of requests walked bio by bio (spanning devices, or multi-range discards),
    /// recorded straight into the coarse bitmap.
    pub coarse: u64,
    /// Completions of bio-based bios queued before tracking saw them (recorded from the
    /// bio's own range).
    pub late: u64,
    /// Bio-based bios that found the in-flight table full (their device was marked dirty).
    pub inflight_full: u64,
}

/// The attached programs: `block_bio_queue` first, then the two completions.
pub(crate) fn programs<'a>(
    skel: &'a TrackerSkel<'_>,
    attached: Attached,
) -> [std::os::fd::BorrowedFd<'a>; 3] {
    let p = &skel.progs;
    match attached {
        Attached::TpBtf => [
            p.on_bio_queue_btf.as_fd(),
            p.on_rq_complete_btf.as_fd(),
            p.on_bio_complete_btf.as_fd(),
        ],
        Attached::RawTp => [
            p.on_bio_queue_raw.as_fd(),
            p.on_rq_complete_raw.as_fd(),
            p.on_bio_complete_raw.as_fd(),
        ],
    }
}

/// The program's run statistics and `recursion_misses` counter, if they can be read.
pub(crate) fn prog_info(prog: std::os::fd::BorrowedFd<'_>) -> Option<libbpf_sys::bpf_prog_info> {
    let mut info = libbpf_sys::bpf_prog_info::default();
    let mut len = u32::try_from(size_of::<libbpf_sys::bpf_prog_info>()).ok()?;
    // SAFETY: `info` is a bpf_prog_info of `len` bytes that the kernel fills in; no other
    // pointer fields are set, so the kernel writes nothing else.
    let rc = unsafe {
        libbpf_sys::bpf_prog_get_info_by_fd(prog.as_raw_fd(), &raw mut info, &raw mut len)
    };
    (rc == 0).then_some(info)
}

pub(crate) fn read_stats(skel: &TrackerSkel<'_>) -> Option<KernelStats> {
    let per_cpu = skel
        .maps
        .stats
        .lookup_percpu(&0u32.to_ne_bytes(), MapFlags::ANY)
        .ok()??;
    let mut k = KernelStats::default();
    for cpu in per_cpu {
        let f = |i: usize| -> u64 {
            cpu.get(i * 8..i * 8 + 8)
                .and_then(|b| b.try_into().ok())
                .map_or(0, u64::from_ne_bytes)
        };
        if cpu.len() < STATS_SIZE {
            continue;
        }
        k.events += f(0);
        k.bytes += f(1);
        k.drops += f(2);
        k.fallback_bits += f(3);
        k.overflows += f(4);
        k.excluded += f(5);
        k.ignored_ops += f(6);
        k.seq += f(7);
        k.bitmap_writes += f(8);
        k.coarse += f(9);
        k.late += f(10);
        k.inflight_full += f(11);
    }
    Some(k)
}

/// The sectors of change requests the program saw complete on `slot`, all CPUs.
pub(crate) fn seen_sectors(skel: &TrackerSkel<'_>, slot: u16) -> Option<u64> {
    let per_cpu = skel
        .maps
        .done_sectors
        .lookup_percpu(&u32::from(slot).to_ne_bytes(), MapFlags::ANY)
        .ok()??;
    Some(
        per_cpu
            .iter()
            .filter_map(|v| v.get(..8)?.try_into().ok().map(u64::from_ne_bytes))
            .fold(0u64, u64::wrapping_add),
    )
}
