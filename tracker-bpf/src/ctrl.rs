//! What the tracker tells its poller thread: a tracked device's slot settings, the
//! missed-completion check's inputs, and the control requests handled between polls.

use std::time::Instant;

use crossbeam_channel::Sender;

use crate::completions::{MissCheck, RETENTION};
use crate::disk::DiskMsg;
use crate::error::Result;
use crate::fine;

pub(crate) struct SlotCfg {
    pub(crate) dev: u32,
    pub(crate) start_sect: u64,
    pub(crate) nr_sects: u64,
    pub(crate) granule_shift: u32,
    /// Device-mapper, md: completions come from `block_bio_complete`.
    pub(crate) bio_based: bool,
    /// Changes are also recorded at queue time ([`crate::Tracker::queue_marks`]).
    pub(crate) queue_mark: bool,
    pub(crate) tx: Sender<DiskMsg>,
    /// Set by the poller when the device gets a region of the fine write bitmap.
    pub(crate) fine: Option<fine::Region>,
    /// The missed-completion check, if the device can be checked (blk-mq, iostats on).
    pub(crate) check: Option<CompletionCheck>,
    /// Since when changes are also recorded at queue time (set by the poller); `None` while
    /// they are not.
    pub(crate) marked_since: Option<Instant>,
    /// ... and that has been so since the device was added.
    pub(crate) marked_from_add: bool,
}

impl SlotCfg {
    /// Whether every change that can still complete was recorded when it was queued, so a
    /// missed completion's range is in a recent log: queue marks on since the device was
    /// added (a change in flight at that moment is covered by the first log's whole-disk
    /// gap, or there is none: a clean restart waits for the device to be idle), or for
    /// longer than [`RETENTION`].
    pub(crate) fn marks_cover(&self) -> bool {
        self.marked_from_add || self.marked_since.is_some_and(|t| t.elapsed() > RETENTION)
    }
}

/// What [`Poller::check_completions`] needs of a device (see [`crate::completions`]).
pub(crate) struct CompletionCheck {
    /// `/sys/dev/block/M:m/stat`.
    pub(crate) stat: std::path::PathBuf,
    /// A whole disk with partitions: writes through their nodes count in its statistics but
    /// are never seen, so a shortfall cannot be placed.
    pub(crate) partitions: bool,
    pub(crate) miss: MissCheck,
}

/// One slot of a [`Ctrl::Cut`] and where its sealed log is answered.
pub(crate) type CutSlot = (u16, Sender<Result<hrl::SealedLog>>);

pub(crate) enum Ctrl {
    Add(u16, SlotCfg, Sender<Result<()>>),
    Remove(u16, Sender<Result<()>>),
    /// Drain the ring and both bitmaps now and route everything to the disk threads, then
    /// answer: every change recorded in the kernel before the request is then queued to its
    /// disk thread ahead of anything the caller sends it next.
    Sync(Sender<Result<()>>),
    /// A precise cut of one or more slots' logs at one instant (a consistency group's
    /// devices are cut together): note the time, drain everything, and send each slot's disk
    /// thread `Rotate` (answering on that slot's sender) before any later drain can reach it.
    /// Answers `(time, exact)`: every change whose completion was reported before `time` is
    /// in the sealed logs or earlier ones; `exact` when no change was recorded (on any
    /// device) while draining, so nothing that completed after `time` is in them either.
    Cut(Vec<CutSlot>, Sender<Result<(u64, bool)>>),
    /// Also record one slot's changes when they are queued (on) or only at completion (off).
    QueueMark(u16, bool, Sender<Result<()>>),
    /// Whether sitrep's own log writes can reach a tracked device (so `block_bio_queue` must
    /// run to recognise them).
    OwnLogs(bool, Sender<Result<()>>),
    Stop,
}
