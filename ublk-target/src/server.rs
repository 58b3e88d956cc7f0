//! Creating (or recovering) one tracked disk and serving it until it is stopped.
//!
//! Order matters for "nothing half-created": everything that can be checked without the
//! kernel is checked first (numbers, backing size, backing lock, log directory, the
//! identity of existing logs); then the ublk device is added (or an orphaned one of the
//! same backing recovered); then the log writer is opened. A failure at any step undoes
//! the earlier ones (the device is deleted, a log directory we created is removed).
//!
//! **Crash and restart.** Devices are created with `UBLK_F_USER_RECOVERY |
//! UBLK_F_USER_RECOVERY_REISSUE`: when the server dies the kernel keeps `/dev/ublkbN`
//! (quiesced, I/O waiting), and the next server on the same backing finds it through its
//! json export and takes it over; in-flight I/O is reissued to the new server. Because every
//! change's record is written to the log before the change is performed, the new server
//! continues the log chain (`Resume::Recovered`) without a tracking gap. After a *host*
//! crash under [`Durability::Flush`] the records written since the last flush may be lost
//! while their data reached the backing: the run marker (`marker.rs`) tells the two
//! apart, and the new server then records a whole-disk gap (a checksum resync).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use hrl::chain::list_logs;
use hrl::{
    ChainSpec, DiskId, DiskIdentity, GapReason, GapScope, Generation, LogReader, LogWriter,
    RecordBody, RecordFlags, RecoveryMode, Resume, SyncPolicy, WriterConfig,
};
use libublk::ctrl::{UblkCtrl, UblkCtrlBuilder};
use libublk::io::UblkDev;
use libublk::{UblkError, UblkFlags, sys};

use crate::backing::Backing;
use crate::commit::SharedLog;
use crate::config::{DiskConfig, Durability, LogMode};
use crate::control::{self, ControlServer};
use crate::devices::{self, TargetData};
use crate::error::{Error, Result};
use crate::marker::{self, RunMarker};
use crate::queue::{TargetShared, run_queue};
use crate::{BLOCK_SIZE, signals};

/// The name libublk records as the target type.
pub const TARGET_NAME: &str = "sitrep";

/// Largest I/O the kernel sends us (and so the largest journal record's data).
const IO_BUF_BYTES: u32 = 512 << 10;
/// Each queue thread runs on one CPU of its queue's affinity mask (libublk picks it), as
/// rublk's targets do by default: no migrations between the CPUs the mask allows.
const QUEUE_AFFINITY: UblkFlags = UblkFlags::UBLK_DEV_F_SINGLE_CPU_AFFINITY;

/// What a started disk looks like; given to the caller once the device is live.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DiskInfo {
    /// The ublk id (N in `/dev/ublkbN`).
    pub id: u32,
    /// `/dev/ublkbN`.
    pub device: PathBuf,
    /// Size in bytes.
    pub size: u64,
    /// The canonical backing path.
    pub backing: PathBuf,
    /// The log directory.
    pub log_dir: PathBuf,
    /// What the log records.
    pub mode: LogMode,
    /// When the log is made durable.
    pub durability: Durability,
    /// The disk id in the log headers.
    pub disk_id: String,
    /// `fresh`, `clean` or `recovered`: how the log chain was found.
    pub log_resume: &'static str,
    /// Whether an existing (quiesced) device was taken over after a server crash.
    pub device_recovered: bool,
    /// Whether this start recorded a whole-disk tracking gap (the host crashed while the
    /// last server's log had unsynced records): the replica will be resynced.
    pub gap_recorded: bool,
    /// The serving process.
    pub pid: u32,
}

/// How serving ended.
#[derive(Debug, Clone)]
pub struct Stopped {
    /// The disk that was served.
    pub info: DiskInfo,
    /// The last log, sealed by the clean close.
    pub sealed_log: PathBuf,
}

/// Creates (or recovers) the disk described by `cfg` and serves it on this thread until it
/// is stopped: SIGINT/SIGTERM to this process, or `sitrep disk del`. Calls `on_ready` once
/// the device is live. On a clean stop the log is sealed and the device deleted.
///
/// # Errors
/// Bad input ([`Error::Config`], [`Error::Backing`], [`Error::Busy`]) before anything is
/// created; [`Error::NoUblk`]/[`Error::Ublk`] from the kernel; [`Error::Log`].
pub fn serve<F>(cfg: &DiskConfig, on_ready: F) -> Result<Stopped>
where
    F: FnOnce(&DiskInfo) + Send + Sync + 'static,
{
    let prepared = prepare(cfg)?;
    let (ctrl, recovered) = match open_device(cfg, &prepared) {
        Ok(v) => v,
        Err(e) => {
            prepared.undo_log_dir();
            return Err(e);
        }
    };
    let dev_id = ctrl.dev_info().dev_id;
    let opened = LogWriter::open(
        &prepared.log_dir,
        prepared.spec(cfg),
        log_writer_config(cfg.durability, cfg.log_cap),
    )
    .map_err(Error::from)
    .and_then(|(mut writer, resume)| {
        let gap = record_run(&prepared.log_dir, cfg.durability, &mut writer, &resume)?;
        Ok((writer, resume, gap))
    });
    let (writer, resume, gap_recorded) = match opened {
        Ok(v) => v,
        Err(e) => {
            delete_device(&ctrl);
            prepared.undo_log_dir();
            return Err(e);
        }
    };
    let info = DiskInfo {
        id: dev_id,
        device: PathBuf::from(format!("/dev/ublkb{dev_id}")),
        size: prepared.size,
        backing: prepared.canonical.clone(),
        log_dir: prepared.log_dir.clone(),
        mode: cfg.mode,
        durability: cfg.durability,
        disk_id: prepared.disk_id.to_string(),
        log_resume: match resume {
            Resume::Fresh => "fresh",
            Resume::Clean { .. } => "clean",
            Resume::Recovered { .. } => "recovered",
        },
        device_recovered: recovered,
        gap_recorded,
        pid: std::process::id(),
    };
    tracing::info!(device = %info.device.display(), log = info.log_resume,
        recovered, gap_recorded, "serving tracked disk");
    let journal = cfg.mode == LogMode::Journal;
    let log = match SharedLog::new(writer, journal, cfg.durability, cfg.log_cap) {
        Ok(l) => l,
        Err(e) => {
            // The writer is dropped unsealed; the next open recovers the (empty) log.
            delete_device(&ctrl);
            return Err(Error::io(&prepared.log_dir, "start the log thread for", e));
        }
    };
    let shared = Arc::new(TargetShared {
        backing: prepared.backing,
        log: Arc::clone(&log),
    });
    let control_path = control::socket_path(&info.disk_id);
    let target_json = target_json(&info, &control_path);
    let size = prepared.size;
    let fd = shared.backing.raw_fd();
    let q_shared = Arc::clone(&shared);
    let ready_info = info.clone();
    let control = Arc::new(Mutex::new(None));
    let (ready_control, ready_log) = (Arc::clone(&control), Arc::clone(&log));
    let run = ctrl.run_target(
        |dev: &mut UblkDev| init_target(dev, fd, size, target_json),
        move |qid, dev: &UblkDev| run_queue(qid, dev, &q_shared),
        move |_ctrl: &UblkCtrl| {
            signals::stop_device_on_signal(dev_id);
            // Before `on_ready`: once `disk add` returns, the agent can cut.
            *lock_control(&ready_control) = start_control(&control_path, ready_log);
            on_ready(&ready_info);
        },
    );
    // No cut or tag after this (a request being served finishes first).
    if let Some(c) = lock_control(&control).take() {
        c.stop();
    }
    // Whatever ended the queues, the log is sealed now: every record in it was written
    // before its I/O was performed, and the seal syncs it, so a clean seal is truthful.
    let sealed = log.take().map(LogWriter::close).transpose();
    delete_device(&ctrl);
    run.map_err(|e| Error::ublk("run device", &e))?;
    let sealed = sealed?.map(|s| s.path).unwrap_or_default();
    Ok(Stopped {
        info,
        sealed_log: sealed,
    })
}

/// What the device's libublk json export records about this target (`devices.rs`).
fn target_json(info: &DiskInfo, control: &Path) -> serde_json::Value {
    serde_json::json!({ "sitrep": TargetData {
        backing: info.backing.clone(),
        log_dir: info.log_dir.clone(),
        mode: info.mode,
        durability: info.durability,
        disk_id: info.disk_id.clone(),
        control: Some(control.to_owned()),
    }})
}

fn lock_control(m: &Mutex<Option<ControlServer>>) -> MutexGuard<'_, Option<ControlServer>> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Serves the control socket (the agent's cuts and tags). The disk works without it, so a
/// failure is logged, not fatal: the agent then finds no socket and says so.
fn start_control(path: &Path, log: Arc<SharedLog>) -> Option<ControlServer> {
    match ControlServer::start(path, log) {
        Ok(c) => Some(c),
        Err(e) => {
            tracing::error!(error = %e, socket = %path.display(),
                "cannot serve the control socket; the agent cannot cut this disk's logs");
            None
        }
    }
}

/// Everything checked and opened before the kernel is involved.
struct Prepared {
    backing: Backing,
    canonical: PathBuf,
    size: u64,
    log_dir: PathBuf,
    created_log_dir: bool,
    disk_id: DiskId,
    generation: Generation,
}

impl Prepared {
    fn spec(&self, cfg: &DiskConfig) -> ChainSpec {
        ChainSpec {
            disk: DiskIdentity {
                id: self.disk_id,
                size: self.size,
                logical_block_size: u32::try_from(BLOCK_SIZE).unwrap_or(512),
            },
            journal: cfg.mode == LogMode::Journal,
            generation: self.generation,
        }
    }

    /// Removes the log directory if this attempt created it (it is then still empty).
    fn undo_log_dir(&self) {
        if self.created_log_dir {
            let _ = std::fs::remove_dir_all(&self.log_dir);
        }
    }
}

fn prepare(cfg: &DiskConfig) -> Result<Prepared> {
    cfg.validate()?;
    let backing = Backing::open(&cfg.backing)?;
    let canonical = std::fs::canonicalize(&cfg.backing)
        .map_err(|e| Error::io(&cfg.backing, "canonicalize", e))?;
    let size = disk_size(cfg, &backing)?;
    let log_dir = cfg.effective_log_dir();
    let created_log_dir = ensure_log_dir(cfg, &log_dir)?;
    let existing = existing_identity(&log_dir);
    let (disk_id, generation) = match existing {
        Some((ident, gen_)) => {
            if ident.size != size {
                if created_log_dir {
                    let _ = std::fs::remove_dir(&log_dir);
                }
                return Err(Error::Config(format!(
                    "log directory {} belongs to a disk of {} bytes, but this disk is {size} \
                     bytes; use the same --size, or another --log-dir",
                    log_dir.display(),
                    ident.size
                )));
            }
            (ident.id, gen_)
        }
        None => (
            DiskId::random().map_err(|e| Error::io(&log_dir, "random disk id for", e))?,
            Generation(1),
        ),
    };
    Ok(Prepared {
        backing,
        canonical,
        size,
        log_dir,
        created_log_dir,
        disk_id,
        generation,
    })
}

fn disk_size(cfg: &DiskConfig, backing: &Backing) -> Result<u64> {
    let have = backing.size();
    let bad = |reason: String| Error::Backing {
        path: cfg.backing.clone(),
        reason,
    };
    match cfg.size {
        Some(want) if want > have => Err(bad(format!(
            "is {have} bytes, smaller than --size {want}; grow it first (e.g. truncate -s)"
        ))),
        Some(want) => Ok(want),
        None => {
            let usable = have - have % BLOCK_SIZE;
            if usable == 0 {
                Err(bad(format!(
                    "is {have} bytes; a disk needs at least {BLOCK_SIZE} (grow it, e.g. \
                     truncate -s 1G)"
                )))
            } else {
                Ok(usable)
            }
        }
    }
}

/// An explicit `--log-dir` must exist; the default one beside the backing is created.
/// Returns whether it was created.
fn ensure_log_dir(cfg: &DiskConfig, dir: &Path) -> Result<bool> {
    if dir.is_dir() {
        return Ok(false);
    }
    if cfg.log_dir.is_some() {
        return Err(Error::Config(format!(
            "log directory {} does not exist; create it, or omit --log-dir to use {}",
            dir.display(),
            crate::config::default_log_dir(&cfg.backing).display()
        )));
    }
    std::fs::create_dir(dir).map_err(|e| Error::io(dir, "create log directory", e))?;
    Ok(true)
}

fn existing_identity(dir: &Path) -> Option<(DiskIdentity, Generation)> {
    let logs = list_logs(dir).ok()?;
    logs.iter().rev().find_map(|(_, p)| {
        LogReader::open(p, RecoveryMode::TruncateTail)
            .ok()
            .map(|r| (r.header().disk, r.header().generation))
    })
}

/// Adds a new device, or takes over the quiesced device a crashed server left for this
/// backing. Returns the control handle and whether it was a takeover.
fn open_device(cfg: &DiskConfig, p: &Prepared) -> Result<(UblkCtrl, bool)> {
    if !Path::new("/dev/ublk-control").exists() {
        return Err(Error::NoUblk("/dev/ublk-control does not exist".into()));
    }
    if let Some(old) = devices::find_by_backing(&p.canonical)
        && let Some(ctrl) = take_over(old.id, old.pid)?
    {
        return Ok((ctrl, true));
    }
    let ctrl_flags = u64::from(sys::UBLK_F_USER_RECOVERY | sys::UBLK_F_USER_RECOVERY_REISSUE);
    let ctrl = UblkCtrlBuilder::default()
        .name(TARGET_NAME)
        .nr_queues(cfg.queues)
        .depth(cfg.depth)
        .io_buf_bytes(IO_BUF_BYTES)
        .ctrl_flags(ctrl_flags)
        .dev_flags(UblkFlags::UBLK_DEV_F_ADD_DEV | QUEUE_AFFINITY)
        .build()
        .map_err(|e| Error::ublk("add device", &e))?;
    Ok((ctrl, false))
}

/// If device `id` (serving our backing) is quiesced because its server died, starts user
/// recovery on it. A device left dead is deleted (None: add a new one).
fn take_over(id: u32, old_pid: i32) -> Result<Option<UblkCtrl>> {
    let sid = i32::try_from(id).map_err(|_| Error::Config(format!("ublk id {id}")))?;
    // The kernel notices the dead server asynchronously; give it a moment to quiesce.
    let deadline = Instant::now() + Duration::from_secs(15);
    let state = loop {
        let s = devices::dev_state(id).map(u32::from);
        let waiting = s == Some(sys::UBLK_S_DEV_LIVE) && !devices::process_alive(old_pid);
        if !waiting || Instant::now() >= deadline {
            break s;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    match state {
        None => Ok(None),
        Some(sys::UBLK_S_DEV_QUIESCED) => {
            let probe = UblkCtrl::new_simple(sid).map_err(|e| Error::ublk("open device", &e))?;
            probe
                .start_user_recover()
                .map_err(|e| Error::ublk("start user recovery", &e))?;
            // libublk sizes its per-queue tables from the builder's queue count, not from
            // the recovered device: without it, recovering a multi-queue device panics.
            let (nr_queues, depth) = {
                let info = probe.dev_info();
                (info.nr_hw_queues, info.queue_depth)
            };
            let ctrl = UblkCtrlBuilder::default()
                .name(TARGET_NAME)
                .id(sid)
                .nr_queues(nr_queues)
                .depth(depth)
                .dev_flags(UblkFlags::UBLK_DEV_F_RECOVER_DEV | QUEUE_AFFINITY)
                .build()
                .map_err(|e| Error::ublk("recover device", &e))?;
            Ok(Some(ctrl))
        }
        Some(sys::UBLK_S_DEV_LIVE) => Err(Error::Config(format!(
            "/dev/ublkb{id} for this backing is live, served by pid {old_pid}"
        ))),
        Some(_) => {
            let ctrl = UblkCtrl::new_simple(sid).map_err(|e| Error::ublk("open device", &e))?;
            ctrl.del_dev()
                .map_err(|e| Error::ublk("delete dead device", &e))?;
            Ok(None)
        }
    }
}

fn delete_device(ctrl: &UblkCtrl) {
    // ENOENT is normal: `sitrep disk del` or the add-mode Drop may have deleted it.
    if let Err(e) = ctrl.del_dev()
        && !matches!(e, UblkError::OtherError(c) if c == -libc::ENOENT)
    {
        tracing::debug!(error = %e, "deleting the device");
    }
}

fn init_target(
    dev: &mut UblkDev,
    backing_fd: i32,
    size: u64,
    json: serde_json::Value,
) -> Result<(), UblkError> {
    let tgt = &mut dev.tgt;
    let slot = usize::try_from(tgt.nr_fds).map_err(|_| UblkError::InvalidVal)?;
    *tgt.fds.get_mut(slot).ok_or(UblkError::InvalidVal)? = backing_fd;
    tgt.nr_fds += 1;
    tgt.dev_size = size;
    let max_sectors = dev.dev_info.max_io_buf_bytes >> 9;
    // Up to 1 GiB per discard/write-zeroes request, one range each.
    let max_trim_sectors = 1u32 << 21;
    tgt.params = sys::ublk_params {
        types: sys::UBLK_PARAM_TYPE_BASIC | sys::UBLK_PARAM_TYPE_DISCARD,
        basic: sys::ublk_param_basic {
            // A volatile cache makes the kernel send flushes; FUA makes it send FUA writes
            // rather than emulating them with a flush after the write.
            attrs: sys::UBLK_ATTR_VOLATILE_CACHE | sys::UBLK_ATTR_FUA,
            logical_bs_shift: 9,
            physical_bs_shift: 12,
            io_opt_shift: 12,
            io_min_shift: 9,
            max_sectors,
            dev_sectors: size >> 9,
            ..Default::default()
        },
        discard: sys::ublk_param_discard {
            discard_granularity: 4096,
            max_discard_sectors: max_trim_sectors,
            max_write_zeroes_sectors: max_trim_sectors,
            max_discard_segments: 1,
            ..Default::default()
        },
        ..Default::default()
    };
    dev.set_target_json(json);
    Ok(())
}

/// How a tracked disk's log is written.
///
/// `Write` durability: each group commit syncs (`SyncPolicy::Data`), and logs are
/// preallocated (zero-filled at creation) so that its fdatasync flushes data only and needs
/// no filesystem journal commit — measured in the VM benchmark (docs/benchmarks.md), that
/// is most of the cost of logging before performing a write. `Flush` durability: batches
/// are written without a sync (`SyncPolicy::Explicit`; the log thread syncs at flushes), and
/// logs are not preallocated: zero-filling 16 MiB at each rotation would cost more than the
/// rare flush-time metadata commit it saves. Instead each log's space is allocated
/// (`fallocate`) and mapped, and a queue's batch is a copy into the mapping — no system
/// call between receiving a write and performing it (`WriterConfig::map`).
///
/// Batches are written by the queues or the log thread (`commit.rs`), not by size: the
/// batch limits are only a memory backstop (an append that finds the batch that big while
/// no commit is in flight commits it itself, on the queue thread, under the writer's mutex
/// — which stalls every queue, so it must stay rare: 32 MiB is 64 journaled 512 KiB
/// writes). A batch is bounded anyway by the I/Os in flight, each of which waits for its
/// record.
///
/// `log_cap` is the space cap (`DiskConfig::log_cap`): past it changes are logged as
/// extents-only gaps (`commit.rs`), and `commit/space.rs` keeps the count true as the agent
/// deletes shipped logs.
fn log_writer_config(durability: Durability, log_cap: Option<u64>) -> WriterConfig {
    let (sync, preallocate) = match durability {
        Durability::Flush => (SyncPolicy::Explicit, false),
        Durability::Write => (SyncPolicy::Data, true),
    };
    WriterConfig {
        sync,
        preallocate,
        map: durability == Durability::Flush,
        max_log_bytes: 16 << 20,
        max_batch_bytes: 32 << 20,
        max_batch_records: 1 << 16,
        max_total_bytes: log_cap,
        ..WriterConfig::default()
    }
}

/// Before serving: if the log was found unsealed after a host crash that may have lost
/// records (see [`crate::marker`]), records a whole-disk gap, durably; then records this
/// run. Returns whether a gap was recorded.
fn record_run(
    dir: &Path,
    durability: Durability,
    writer: &mut LogWriter,
    resume: &Resume,
) -> Result<bool> {
    let boot_id = marker::current_boot_id()
        .map_err(|e| Error::io("/proc/sys/kernel/random/boot_id", "read", e))?;
    let prev = marker::read(dir);
    let gap = matches!(resume, Resume::Recovered { .. })
        && marker::unsealed_log_may_be_short(prev.as_ref(), &boot_id);
    if gap {
        tracing::warn!(log_dir = %dir.display(),
            "the host restarted while the log had unsynced records: recording a whole-disk \
             tracking gap (the replica will be resynced)");
        writer.append(
            RecordFlags::empty(),
            &RecordBody::TrackingGap {
                reason: GapReason::NoCleanPredecessor,
                scope: GapScope::WholeDisk,
            },
        )?;
        writer.commit()?;
        let (file, _) = writer.sync_handle()?;
        file.sync_data()
            .map_err(|e| Error::io(dir, "sync the change log in", e))?;
    }
    marker::write(
        dir,
        &RunMarker {
            boot_id,
            durability,
        },
    )
    .map_err(|e| Error::io(dir.join(marker::FILE_NAME), "write", e))?;
    Ok(gap)
}
