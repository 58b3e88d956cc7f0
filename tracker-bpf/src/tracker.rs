//! The public face of the tracker: start it, add and remove devices while it is attached,
//! read counters, rotate logs, stop cleanly.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Sender, bounded};
use hrl::chain::list_logs;
use hrl::{
    ChainSpec, DiskId, DiskIdentity, Generation, LogReader, LogWriter, RecoveryMode, Resume,
    SealedLog, WriterConfig,
};

use crate::completions::{MissCheck, RecentRanges};
use crate::continuity;
use crate::device::DeviceInfo;
use crate::disk::{DiskMsg, DiskStats, DiskThread, StopReport};
use crate::error::{Error, Result};
use crate::kernel_stats::KernelStats;
use crate::poller::{
    self, AttachMode, Attached, CompletionCheck, Ctrl, MAX_DEVICES, PollerConfig, SlotCfg,
    granule_shift_for,
};

/// How to run the tracker.
#[derive(Debug, Clone)]
pub struct TrackerConfig {
    /// Ring buffer size in bytes (a power of two, ≥ 4096; default 16 MiB ≈ 512 k events).
    pub ring_bytes: u32,
    /// Which tracepoint attachment to use.
    pub attach: AttachMode,
    /// Do not track bios issued by this process (its own log writes, when the log
    /// directory lives on a tracked device). Default true.
    pub exclude_self: bool,
    /// How the disks' logs are written (default: preallocated 16 MiB logs, group commit).
    pub writer: WriterConfig,
    /// How long events are coalesced before they are logged (default 5 ms).
    pub coalesce: Duration,
    /// Record plain writes in a fine in-kernel bitmap (4 KiB granules) instead of one ring
    /// event each: a few atomic ORs per bio instead of a ring reservation and userspace
    /// work per write. Discards, write-zeroes, secure erases and flushes still go through
    /// the ring with their own records. Default true.
    pub write_bitmap: bool,
    /// Size of the fine write bitmap shared by all devices (default 8 MiB: 4 KiB granules
    /// for 256 GiB of devices; larger devices get coarser granules).
    pub write_bitmap_bytes: u32,
    /// Also record every change when it is *queued* (`block_bio_queue`), as well as when it
    /// completes. The invariant (docs/tracking.md) needs only the completion record, but on
    /// the 6.18 host kernel the `block_rq_complete` tracepoint does not fire for a few dozen
    /// completed write requests per million (loop device, io_uring, QD 32): the program is
    /// not called (no recursion miss), and a bpftrace counter with no sitrep loaded misses
    /// the same ones (docs/benchmarks.md, *Tracking*). So the default is **true**: every
    /// change is recorded at queue time too, at about 1.5x the per-write cost. False gives
    /// completion-only tracking (one hook per I/O), which loses those writes.
    pub mark_at_queue: bool,
    /// Whether a clean stop in an earlier boot continues the chain with no resync, when the
    /// device is the same and nothing changed it in this boot before tracking began
    /// (`continuity.rs`). Default true (the agent's `--trust-clean-reboot`).
    pub trust_clean_reboot: bool,
    /// Where to pin the crash sentinel (a directory of bpffs, one per agent: see
    /// [`crate::sentinel::dir_for`]); `None`: no sentinel, a crash costs a whole-disk gap.
    pub sentinel: Option<PathBuf>,
    /// Test seam: while set, the poller stops draining the ring buffer (a stalled
    /// consumer), so the kernel falls back to the bitmap.
    pub pause: Option<Arc<AtomicBool>>,
    /// Test seam: completions of tracked changes for the program to ignore entirely, as if
    /// the kernel had not reported them (what the missed-completion check must catch). The
    /// poller moves the count into the program at each poll. `Some` loads the program with
    /// its test seams on.
    pub skip_completions: Option<Arc<AtomicI64>>,
}

impl Default for TrackerConfig {
    fn default() -> Self {
        Self {
            ring_bytes: 16 << 20,
            attach: AttachMode::Auto,
            exclude_self: true,
            // Preallocated logs: appends need no filesystem journal commit, so a log
            // directory on a tracked device does not feed back (see hrl's file.rs).
            writer: WriterConfig {
                preallocate: true,
                max_log_bytes: 16 << 20,
                ..WriterConfig::default()
            },
            coalesce: Duration::from_millis(5),
            write_bitmap: true,
            write_bitmap_bytes: 8 << 20,
            mark_at_queue: true,
            trust_clean_reboot: true,
            sentinel: None,
            pause: None,
            skip_completions: None,
        }
    }
}

/// What `add_device` found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddReport {
    /// The device.
    pub info: DeviceInfo,
    /// Its slot in the BPF maps.
    pub slot: u16,
    /// The disk id its logs carry.
    pub disk_id: DiskId,
    /// How the log directory looked.
    pub resume: Resume,
    /// `None` if tracking continues the previous chain with nothing missed; otherwise why
    /// the log starts with a whole-disk gap.
    pub gap: Option<String>,
    /// After a crash, when the crash sentinel knew what may be unlogged: why the log starts
    /// with a gap over those ranges only (shipped like any change; no resync).
    pub scoped_gap: Option<String>,
}

/// What [`Tracker::cut`] did.
#[derive(Debug, Clone)]
pub struct Cut {
    /// The sealed log.
    pub sealed: SealedLog,
    /// The cut's instant (ns since the epoch, realtime clock): every change whose completion
    /// was reported before it is in `sealed` or an earlier log.
    pub time_ns: u64,
    /// No change was recorded while the kernel's buffers were drained for the cut, so the
    /// logs up to `sealed` hold exactly the changes reported complete before `time_ns` (plus
    /// changes still in flight then). Only an exact cut can be a crash-consistent point.
    pub exact: bool,
}

/// Counters of the whole tracker.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct TrackerStats {
    /// Kernel-side counters and loss accounting.
    pub kernel: KernelStats,
    /// Per device.
    pub disks: Vec<(PathBuf, DiskStats)>,
}

struct Disk {
    info: DeviceInfo,
    /// The device holding the filesystem of this disk's log directory.
    log_fs: Option<(u32, u32)>,
    tx: Sender<DiskMsg>,
    thread: JoinHandle<()>,
    stats: Arc<Mutex<DiskStats>>,
}

/// A running eBPF change tracker. See the crate docs.
pub struct Tracker {
    cfg: TrackerConfig,
    ctrl: Sender<Ctrl>,
    poller: Option<JoinHandle<()>>,
    kernel: Arc<Mutex<KernelStats>>,
    attached: Attached,
    disks: BTreeMap<u16, Disk>,
    /// The crash sentinel and its round (`crash.rs`), if configured and available.
    guard: Option<crate::crash::Guard>,
}

impl Tracker {
    /// Loads and attaches the BPF program.
    ///
    /// # Errors
    /// [`Error::Bpf`] if the program cannot be loaded or attached (not root, no BTF, ...).
    pub fn start(cfg: TrackerConfig) -> Result<Self> {
        if cfg.ring_bytes < 4096 || !cfg.ring_bytes.is_power_of_two() {
            return Err(Error::Invalid(format!(
                "ring buffer size {} must be a power of two of at least 4096",
                cfg.ring_bytes
            )));
        }
        let (ctrl, ctrl_rx) = bounded(16);
        let (ready_tx, ready_rx) = bounded(1);
        let kernel = Arc::new(Mutex::new(KernelStats::default()));
        let pcfg = PollerConfig {
            ring_bytes: cfg.ring_bytes,
            fine_words: if cfg.write_bitmap {
                cfg.write_bitmap_bytes / 8
            } else {
                0
            },
            attach: cfg.attach,
            exclude_tgid: if cfg.exclude_self {
                std::process::id()
            } else {
                0
            },
            mark_at_queue: cfg.mark_at_queue,
            pause: cfg.pause.clone(),
            skip_completions: cfg.skip_completions.clone(),
            poll: Duration::from_millis(10),
        };
        let k = kernel.clone();
        let poller = std::thread::Builder::new()
            .name("sitrep-bpf-poll".into())
            .spawn(move || poller::run(pcfg, ctrl_rx, ready_tx, k))
            .map_err(|e| Error::Bpf(format!("spawning the poller thread: {e}")))?;
        let attached = ready_rx
            .recv()
            .map_err(|_| Error::Bpf("poller thread exited during load".into()))??;
        let guard = cfg
            .sentinel
            .as_deref()
            .and_then(|dir| crate::crash::Guard::start(dir, ctrl.clone()));
        Ok(Self {
            cfg,
            ctrl,
            poller: Some(poller),
            kernel,
            attached,
            disks: BTreeMap::new(),
            guard,
        })
    }

    /// The attachment in use.
    #[must_use]
    pub fn attached(&self) -> Attached {
        self.attached
    }

    /// Starts tracking `device`, logging into `log_dir` (which must exist). Works while the
    /// tracker is attached and other devices are tracked.
    ///
    /// # Errors
    /// The device is missing or already tracked, no slot is free, the log directory is
    /// unusable (missing, locked, holds another disk's logs), or BPF refused the update.
    pub fn add_device(&mut self, device: &Path, log_dir: &Path) -> Result<AddReport> {
        let info = DeviceInfo::probe(device)?;
        let slot = self.free_slot(device, &info)?;
        let (disk_id, writer, resume) = self.open_log(device, log_dir, &info)?;
        // Read after the writer holds the directory lock: the record is ours alone.
        let saved = continuity::take(log_dir);
        let prev_clean_id = match &resume {
            Resume::Clean { prev } => LogReader::open(prev, RecoveryMode::Strict)
                .ok()
                .map(|r| r.header().log_id.to_string()),
            _ => None,
        };
        let (tx, rx) = bounded(64);
        let check = completion_check(&info);
        let stats = Arc::new(Mutex::new(DiskStats {
            completion_check: check.is_some(),
            ..DiskStats::default()
        }));
        let t = DiskThread {
            device: device.to_owned(),
            writer,
            rx,
            stats: stats.clone(),
            delay: self.cfg.coalesce,
            disk_size: info.size,
            recent: RecentRanges::new(info.size),
        };
        let thread = std::thread::Builder::new()
            .name(format!("sitrep-log-{slot}"))
            .spawn(move || t.run())
            .map_err(|e| Error::Invalid(format!("spawning a log thread: {e}")))?;
        let nr_sects = info.size / hrl::SECTOR_SIZE;
        let slot_cfg = SlotCfg {
            dev: info.kernel_dev(),
            start_sect: info.start_sect,
            nr_sects,
            granule_shift: granule_shift_for(nr_sects),
            bio_based: info.bio_based,
            queue_mark: false,
            tx: tx.clone(),
            fine: None,
            check,
            marked_since: None,
            marked_from_add: false,
        };
        let watch = self.guard.as_ref().and_then(|g| g.watch(&info, disk_id.0));
        let log_fs = fs_device(log_dir);
        // The queue hook must run before the device is registered if sitrep's own log
        // writes can reach it.
        let own_logs = self.own_logs_tracked(Some((&info, log_fs)));
        let registered = self
            .control(|reply| Ctrl::OwnLogs(own_logs, reply))
            .and_then(|()| self.control(|reply| Ctrl::Add(slot, slot_cfg, reply)));
        if let Err(e) = registered {
            drop(tx);
            let _ = thread.join();
            return Err(e);
        }
        // Tracking is live: only now may the counters vouch for the untracked interval.
        let start = crate::restart::start_gap(&crate::restart::StartCtx {
            saved: saved.as_ref(),
            prev: prev_clean_id.as_deref(),
            info: &info,
            trust_clean_reboot: self.cfg.trust_clean_reboot,
            resume: &resume,
            guard: self.guard.as_ref(),
            watch: watch.as_ref(),
        });
        if let Some(msg) = start.msg {
            let _ = tx.send(msg);
        }
        if let (Some(g), Some(w)) = (&self.guard, watch) {
            g.track(slot, w, tx.clone());
        }
        self.disks.insert(
            slot,
            Disk {
                info: info.clone(),
                log_fs,
                tx,
                thread,
                stats,
            },
        );
        Ok(AddReport {
            info,
            slot,
            disk_id,
            resume,
            gap: start.gap,
            scoped_gap: start.scoped,
        })
    }

    /// A slot for `device`, which must not be tracked already.
    fn free_slot(&self, device: &Path, info: &DeviceInfo) -> Result<u16> {
        if self
            .disks
            .values()
            .any(|d| d.info.kernel_dev() == info.kernel_dev())
        {
            return Err(Error::Invalid(format!(
                "{} ({}:{}) is already tracked",
                device.display(),
                info.major,
                info.minor
            )));
        }
        (0..MAX_DEVICES)
            .filter_map(|s| u16::try_from(s).ok())
            .find(|s| !self.disks.contains_key(s))
            .ok_or_else(|| Error::Invalid(format!("already tracking {MAX_DEVICES} devices")))
    }

    /// Opens (or continues) the device's log chain in `log_dir`, under the disk id the
    /// directory already has (a new one for a new directory).
    fn open_log(
        &self,
        device: &Path,
        log_dir: &Path,
        info: &DeviceInfo,
    ) -> Result<(DiskId, LogWriter, Resume)> {
        let log_err = |e| Error::Log {
            device: device.to_owned(),
            source: e,
        };
        let disk_id = existing_disk_id(log_dir)
            .map_or_else(DiskId::random, Ok)
            .map_err(|e| {
                log_err(hrl::Error::Io {
                    path: log_dir.to_owned(),
                    op: "random disk id for",
                    source: e,
                })
            })?;
        let spec = ChainSpec {
            disk: DiskIdentity {
                id: disk_id,
                size: info.size,
                logical_block_size: info.logical_block_size,
            },
            journal: false,
            generation: Generation(1),
        };
        let (writer, resume) =
            LogWriter::open(log_dir, spec, self.cfg.writer.clone()).map_err(log_err)?;
        Ok((disk_id, writer, resume))
    }

    fn control(&self, msg: impl FnOnce(Sender<Result<()>>) -> Ctrl) -> Result<()> {
        let (tx, rx) = bounded(1);
        self.ctrl
            .send(msg(tx))
            .map_err(|_| Error::Stopped("poller thread is gone".into()))?;
        rx.recv()
            .map_err(|_| Error::Stopped("poller thread is gone".into()))?
    }

    fn slot_of(&self, device: &Path) -> Result<u16> {
        let dev = DeviceInfo::probe(device).map(|i| i.kernel_dev()).ok();
        self.disks
            .iter()
            .find(|(_, d)| d.info.path == device || Some(d.info.kernel_dev()) == dev)
            .map(|(s, _)| *s)
            .ok_or_else(|| Error::Invalid(format!("{} is not tracked", device.display())))
    }

    /// Stops tracking `device` cleanly: its log is sealed, and if the device was quiet a
    /// clean-stop record lets the next start continue without a resync.
    ///
    /// # Errors
    /// The device is not tracked, or its log could not be sealed.
    pub fn remove_device(&mut self, device: &Path) -> Result<StopReport> {
        let slot = self.slot_of(device)?;
        self.stop_slot(slot, true)
    }

    /// Stops tracking the device in `slot`; `unwatch`: the crash sentinel stops watching it
    /// too (its protection ends). A whole tracker's stop keeps the sentinel watching, so a
    /// restart that finds the device written meanwhile re-ships those ranges, not the disk.
    fn stop_slot(&mut self, slot: u16, unwatch: bool) -> Result<StopReport> {
        let Some(disk) = self.disks.remove(&slot) else {
            return Err(Error::Invalid(format!("slot {slot} is not tracked")));
        };
        // Counters first, while still tracked: see continuity.rs for why this order.
        let quiet = crate::restart::quiet_counters(&disk.info);
        if let Some(g) = &self.guard {
            if unwatch {
                g.unwatch(slot, &disk.info);
            } else {
                g.untrack(slot);
            }
        }
        let removed = self.control(|reply| Ctrl::Remove(slot, reply));
        let own_logs = self.own_logs_tracked(None);
        let _ = self.control(|reply| Ctrl::OwnLogs(own_logs, reply));
        let clean = match (quiet, &removed) {
            (Some(c), Ok(())) => crate::restart::clean_stop(&disk.info, c),
            _ => None,
        };
        let (tx, rx) = bounded(1);
        disk.tx
            .send(DiskMsg::Stop(clean, tx))
            .map_err(|_| Error::Stopped("log thread is gone".into()))?;
        let report = rx
            .recv()
            .map_err(|_| Error::Stopped("log thread is gone".into()))?;
        let _ = disk.thread.join();
        removed?;
        report
    }

    /// Drains the kernel's ring buffer and bitmaps now: every change recorded before the
    /// call is queued to its disk's log thread before anything sent to it afterwards (so a
    /// following [`rotate`](Self::rotate) or [`mark`](Self::mark) comes after it in the log).
    ///
    /// # Errors
    /// The poller thread is gone.
    pub fn sync(&self) -> Result<()> {
        self.control(Ctrl::Sync)
    }

    /// Appends a consistency tag `tag` to the device's current log, after every change that
    /// completed before the call ([`sync`](Self::sync) first), and commits it.
    ///
    /// # Errors
    /// The device is not tracked, or the log failed.
    pub fn mark(&self, device: &Path, tag: u64) -> Result<()> {
        self.synced_ask(device, |tx| DiskMsg::Tag(tag, tx))
    }

    /// Drains the kernel ([`sync`](Self::sync)), then sends the device's log thread `msg`
    /// and waits for its answer.
    fn synced_ask<T>(
        &self,
        device: &Path,
        msg: impl FnOnce(Sender<Result<T>>) -> DiskMsg,
    ) -> Result<T> {
        let slot = self.slot_of(device)?;
        self.sync()?;
        let disk = self
            .disks
            .get(&slot)
            .ok_or_else(|| Error::Invalid(format!("{} is not tracked", device.display())))?;
        let (tx, rx) = bounded(1);
        disk.tx
            .send(msg(tx))
            .map_err(|_| Error::Stopped("log thread is gone".into()))?;
        rx.recv()
            .map_err(|_| Error::Stopped("log thread is gone".into()))?
    }

    /// Also records the device's changes when they are *queued* (on), or only when they
    /// complete (off, the default). While on, a change is in the log current at its
    /// submission too — what proving a cycle crash-consistent needs: a write queued after a
    /// cut can land on the device before the cycle's data is read, and must then be seen
    /// before the cycle's consistency tag. Costs one more program run per write.
    ///
    /// # Errors
    /// The device is not tracked, or BPF refused the update.
    pub fn queue_marks(&self, device: &Path, on: bool) -> Result<()> {
        let slot = self.slot_of(device)?;
        self.control(|reply| Ctrl::QueueMark(slot, on, reply))
    }

    /// A precise cut: seals the device's current log like [`rotate`](Self::rotate), and says
    /// at which instant it cut. See [`Cut`].
    ///
    /// # Errors
    /// The device is not tracked, or the log failed.
    pub fn cut(&self, device: &Path) -> Result<Cut> {
        self.cut_together(&[device])?
            .pop()
            .unwrap_or_else(|| Err(Error::Stopped("poller thread is gone".into())))
    }

    /// One precise cut of several devices at one instant (a consistency group): every log
    /// sealed at the same `time_ns` with one `exact` — together they hold the changes reported
    /// complete before it on every device. One result per device, in order.
    ///
    /// # Errors
    /// A device is not tracked (nothing is cut), or the poller thread is gone.
    pub fn cut_together(&self, devices: &[&Path]) -> Result<Vec<Result<Cut>>> {
        let mut slots = Vec::with_capacity(devices.len());
        let mut rxs = Vec::with_capacity(devices.len());
        for d in devices {
            let (stx, srx) = bounded(1);
            slots.push((self.slot_of(d)?, stx));
            rxs.push(srx);
        }
        let (itx, irx) = bounded(1);
        self.ctrl
            .send(Ctrl::Cut(slots, itx))
            .map_err(|_| Error::Stopped("poller thread is gone".into()))?;
        let (time_ns, exact) = irx
            .recv()
            .map_err(|_| Error::Stopped("poller thread is gone".into()))??;
        Ok(rxs
            .into_iter()
            .map(|srx| {
                let sealed = srx
                    .recv()
                    .map_err(|_| Error::Stopped("log thread is gone".into()))??;
                Ok(Cut {
                    sealed,
                    time_ns,
                    exact,
                })
            })
            .collect())
    }

    /// Seals the device's current log and opens the next (the sealed one can be shipped).
    /// Every change that completed before the call is in the sealed log or an earlier one.
    ///
    /// # Errors
    /// The device is not tracked, or the log failed.
    pub fn rotate(&self, device: &Path) -> Result<SealedLog> {
        self.synced_ask(device, DiskMsg::Rotate)
    }

    /// Counters now.
    #[must_use]
    pub fn stats(&self) -> TrackerStats {
        TrackerStats {
            kernel: self.kernel.lock().map(|k| *k).unwrap_or_default(),
            disks: self
                .disks
                .values()
                .map(|d| {
                    (
                        d.info.path.clone(),
                        d.stats.lock().map(|s| s.clone()).unwrap_or_default(),
                    )
                })
                .collect(),
        }
    }

    /// The tracked devices.
    #[must_use]
    pub fn devices(&self) -> Vec<DeviceInfo> {
        self.disks.values().map(|d| d.info.clone()).collect()
    }

    /// Stops every device cleanly, then detaches.
    ///
    /// # Errors
    /// The first device that could not be stopped cleanly (the others are still stopped).
    pub fn stop(mut self) -> Result<Vec<StopReport>> {
        let slots: Vec<u16> = self.disks.keys().copied().collect();
        let mut reports = Vec::new();
        let mut first_err = None;
        for s in slots {
            match self.stop_slot(s, false) {
                Ok(r) => reports.push(r),
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        if let Some(g) = self.guard.take() {
            g.finish();
        }
        self.shutdown();
        first_err.map_or(Ok(reports), Err)
    }

    fn shutdown(&mut self) {
        let _ = self.ctrl.send(Ctrl::Stop);
        if let Some(p) = self.poller.take() {
            let _ = p.join();
        }
    }
}

impl Drop for Tracker {
    /// Without `stop`, logs are left unsealed — as after a crash — and the next start
    /// records a gap. Threads are still shut down.
    fn drop(&mut self) {
        self.shutdown();
        for (_, d) in std::mem::take(&mut self.disks) {
            drop(d.tx);
            let _ = d.thread.join();
        }
    }
}

impl Tracker {
    /// Whether sitrep's own log writes can reach a tracked device (counting `extra`, a disk
    /// being added): a log directory on a tracked device, or on a stacked one (device-mapper,
    /// md: it may sit on a tracked device, and its writes to it are submitted in our
    /// context). Only then must `block_bio_queue` run to recognise them.
    fn own_logs_tracked(&self, extra: Option<(&DeviceInfo, Option<(u32, u32)>)>) -> bool {
        if !self.cfg.exclude_self {
            return false;
        }
        let tracked = |dev: (u32, u32)| {
            self.disks
                .values()
                .map(|d| &d.info)
                .chain(extra.map(|(i, _)| i))
                .any(|i| (i.major, i.minor) == dev)
        };
        self.disks
            .values()
            .map(|d| d.log_fs)
            .chain(extra.map(|(_, fs)| fs))
            .any(|fs| fs.is_none_or(|dev| tracked(dev) || is_stacked(dev)))
    }
}

/// The missed-completion check for a device, if it can have one (see
/// [`crate::completions`]); says why not, or what limits it.
fn completion_check(info: &DeviceInfo) -> Option<CompletionCheck> {
    if info.bio_based {
        // Completions come from block_bio_complete; the counts are not comparable.
        return None;
    }
    if !info.iostats() {
        tracing::warn!(
            device = %info.path.display(),
            "iostats is off for this device (queue/iostats = 0): completions the kernel does \
             not report to the tracker cannot be noticed; `echo 1 > /sys/block/DISK/queue/iostats` \
             turns the check on"
        );
        return None;
    }
    let partitions = info.has_partitions();
    if partitions {
        tracing::warn!(
            device = %info.path.display(),
            "this disk has partitions: writes through a partition's own node are not seen when \
             the whole disk is tracked, and each one found in the disk's counters records a \
             whole-disk gap; track the partitions instead"
        );
    }
    Some(CompletionCheck {
        stat: info.stat_path(),
        partitions,
        miss: MissCheck::default(),
    })
}

/// The device of the filesystem holding `dir` (`st_dev`), if it can be read.
fn fs_device(dir: &Path) -> Option<(u32, u32)> {
    use std::os::unix::fs::MetadataExt;
    let dev = std::fs::metadata(dir).ok()?.dev();
    Some((libc::major(dev), libc::minor(dev)))
}

/// Whether a block device is built on others (`/sys/dev/block/M:m/slaves` is not empty).
fn is_stacked((major, minor): (u32, u32)) -> bool {
    std::fs::read_dir(format!("/sys/dev/block/{major}:{minor}/slaves"))
        .is_ok_and(|mut d| d.next().is_some())
}

/// The disk id of the newest readable log in `dir`, so a restart keeps the disk's identity.
fn existing_disk_id(dir: &Path) -> Option<DiskId> {
    let logs = list_logs(dir).ok()?;
    logs.iter().rev().find_map(|(_, p)| {
        LogReader::open(p, RecoveryMode::TruncateTail)
            .ok()
            .map(|r| r.header().disk.id)
    })
}
