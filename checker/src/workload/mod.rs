//! The workload: Q threads writing self-describing blocks with synchronous O_DIRECT `pwrite`,
//! one block per write, to one or more devices, and a history of every write.
//!
//! First an initialization pass writes every block once, device after device, in index
//! order (so every block has a known version), then random blocks of random devices (each
//! hot block equally likely) until the duration ends or the caller's stop flag is set
//! (SIGINT/SIGTERM in the CLI). Writes in flight then finish, the devices are fdatasynced,
//! the history gets its end record and is fsynced.
//!
//! Invariants the checker relies on, and how they are kept (`sched.rs`):
//! - **Never two writes to one block of one device in flight**: a block is reserved in an
//!   in-flight bitmap when its write is chosen, and released only after the write completed
//!   *and* its record was queued for the history. So per block, seq order = issue order =
//!   completion order = history order.
//! - **Seqs in issue order**: the seq, the device, the block and `issue_ns` are taken
//!   together under the scheduler lock, before `pwrite` is called; `complete_ns` is taken
//!   after it returns.
//! - **Dependencies are happens-before**: a write's `depends_on` is the write on another
//!   device whose completion was the latest one reported to the scheduler when this write
//!   was chosen — both under the one lock, so that write had completed before this one was
//!   issued; and its record was queued first, so the history has it whenever it has this one.
//!
//! Q synchronous threads rather than io_uring: simpler, and at the queue depths used to test
//! replication (1–32) the device, not the submission path, is the bottleneck. One scheduler
//! lock over all devices rather than one per device: the dependency *is* a cross-device
//! order, which one lock gives for free; at these rates the lock is not the bottleneck.

mod pacer;
mod sched;

use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::block::{BlockHeader, BlockSize, encode};
use crate::buf::AlignedBuf;
use crate::history::{
    DeviceGeometry, HistoryHeader, HistoryRecord, HistoryWriter, MAX_BLOCKS, MAX_DEVICES,
};
use crate::units::{RunId, UnixNs};
use crate::{Error, Result};
use pacer::Pacer;
use sched::{Issue, Sched};

/// Most worker threads.
pub const MAX_QUEUE_DEPTH: usize = 256;
/// The history is written out at least this often.
const FLUSH_EVERY: Duration = Duration::from_millis(50);

/// What to run.
#[derive(Debug, Clone)]
pub struct WorkloadConfig {
    /// The devices (or files) to write, 1 to [`MAX_DEVICES`]; every block of each is
    /// overwritten. Their order is their index in the history and in every block.
    pub devices: Vec<PathBuf>,
    /// The history file to create (must not exist).
    pub history: PathBuf,
    /// Bytes per block and per write, on every device.
    pub block_size: BlockSize,
    /// How long to write random blocks after the initialization pass (`None`: until stopped).
    pub duration: Option<Duration>,
    /// Bytes per second over all workers (`None`: as fast as the devices go).
    pub rate: Option<u64>,
    /// Writes in flight: worker threads.
    pub queue_depth: usize,
    /// Random writes only to the first this many bytes of each device (a hot set; `None`:
    /// the whole device). The initialization pass still writes every block once.
    pub hot_set: Option<u64>,
}

/// What a run did.
#[derive(Debug, Clone)]
pub struct WorkloadStats {
    /// The run's id.
    pub run_id: RunId,
    /// Blocks over all devices.
    pub blocks: u64,
    /// Blocks per device, in device order.
    pub device_blocks: Vec<u64>,
    /// Writes of the initialization pass (= `blocks` unless stopped during it).
    pub init_writes: u64,
    /// Writes in all.
    pub writes: u64,
    /// When the run started and ended (the history's start and end record).
    pub start_ns: UnixNs,
    /// See `start_ns`.
    pub end_ns: UnixNs,
    /// Wall time.
    pub elapsed: Duration,
}

/// An open device of the run.
struct Device {
    path: PathBuf,
    file: File,
    blocks: u64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A worker that panicked cannot have left the scheduler half-updated in a way that
    // matters more than stopping: keep going with what is there.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Runs the workload until `cfg.duration` after the initialization pass, or until `stop`.
///
/// # Errors
/// Bad configuration, a device cannot be opened with O_DIRECT or written, the history
/// cannot be created or written. Writes already done are in the history either way.
pub fn run_workload(cfg: &WorkloadConfig, stop: &AtomicBool) -> Result<WorkloadStats> {
    if !(1..=MAX_QUEUE_DEPTH).contains(&cfg.queue_depth) {
        return Err(Error::Invalid(format!(
            "queue depth {}: must be 1 to {MAX_QUEUE_DEPTH}",
            cfg.queue_depth
        )));
    }
    let bs = cfg.block_size;
    let (devs, geometry) = open_devices(cfg)?;
    let blocks: Vec<u64> = devs.iter().map(|d| d.blocks).collect();
    let run_id = RunId::random()?;
    let start_ns = UnixNs::now();
    let header = HistoryHeader {
        run_id,
        block_size: bs,
        devices: geometry,
        start_ns,
    };
    let mut writer = HistoryWriter::create(&cfg.history, &header)?;
    let mut seed = [0u8; 8];
    seed.copy_from_slice(&run_id.0[..8]);
    // At least min(queue depth, blocks) per device, so a free hot block always exists.
    let hot = blocks
        .iter()
        .map(|&b| {
            cfg.hot_set.map_or(b, |h| {
                (h / bs.as_u64()).clamp((cfg.queue_depth as u64).min(b), b)
            })
        })
        .collect();
    let sched = Mutex::new(Sched::new(&blocks, hot, u64::from_le_bytes(seed)));
    let pacer = cfg.rate.map(|r| Pacer::new(bs.as_u64(), r));
    let started = Instant::now();
    let workers_done = AtomicBool::new(false);
    let multi = devs.len() > 1;
    let pacer = pacer.as_ref();
    let flushed = std::thread::scope(|s| {
        let flusher = s.spawn(|| flush_loop(&mut writer, &sched, &workers_done));
        let workers: Vec<_> = (0..cfg.queue_depth)
            .map(|_| {
                let w = Worker {
                    cfg,
                    run_id,
                    devs: &devs,
                    multi,
                    sched: &sched,
                };
                s.spawn(move || w.run(pacer, stop))
            })
            .collect();
        for w in workers {
            let _ = w.join();
        }
        workers_done.store(true, Ordering::SeqCst);
        flusher.join()
    });
    let synced = devs
        .iter()
        .try_for_each(|d| d.file.sync_data().map_err(Error::io(&d.path, "fdatasync")));
    let end_ns = UnixNs::now();
    let mut st = lock(&sched);
    if let Some(e) = st.error.take() {
        return Err(e);
    }
    flushed.unwrap_or_else(|_| Err(Error::Invalid("history flusher panicked".into())))?;
    synced?;
    writer.finish(end_ns)?;
    Ok(WorkloadStats {
        run_id,
        blocks: blocks.iter().sum(),
        device_blocks: blocks,
        init_writes: st.init_next.min(st.writes),
        writes: st.writes,
        start_ns,
        end_ns,
        elapsed: started.elapsed(),
    })
}

/// Opens every device, checks the set (count, no device twice, block counts), and returns
/// them with their geometry.
fn open_devices(cfg: &WorkloadConfig) -> Result<(Vec<Device>, Vec<DeviceGeometry>)> {
    let n = cfg.devices.len();
    if !(1..=MAX_DEVICES).contains(&n) {
        return Err(Error::Invalid(format!(
            "{n} devices: a run writes 1 to {MAX_DEVICES}"
        )));
    }
    let bs = cfg.block_size;
    let mut devs = Vec::with_capacity(n);
    let mut ids = Vec::with_capacity(n);
    let mut geometry = Vec::with_capacity(n);
    for path in &cfg.devices {
        let (file, size, id) = open_device(path)?;
        if let Some(i) = ids.iter().position(|&x| x == id) {
            return Err(Error::Invalid(format!(
                "{} and {} are the same device: each device may be given once",
                cfg.devices[i].display(),
                path.display()
            )));
        }
        ids.push(id);
        let blocks = size / bs.as_u64();
        if n > 1 && blocks == 0 {
            return Err(Error::Invalid(format!(
                "{}: {size} bytes, smaller than one block of {} bytes",
                path.display(),
                bs.bytes()
            )));
        }
        geometry.push(DeviceGeometry {
            block_count: blocks,
            device_size: size,
        });
        devs.push(Device {
            path: path.clone(),
            file,
            blocks,
        });
    }
    check_blocks(&devs, &geometry, cfg.queue_depth, bs)?;
    Ok((devs, geometry))
}

/// Opens `path` for O_DIRECT writes: the file, its size, and its identity (the device
/// number for a block device, else file system and inode), to refuse one device given twice.
fn open_device(path: &Path) -> Result<(File, u64, (u64, u64))> {
    let f = File::options()
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .map_err(|e| Error::Io {
            path: path.to_path_buf(),
            op: if e.raw_os_error() == Some(libc::EINVAL) {
                "open with O_DIRECT (not supported here: tmpfs?)"
            } else {
                "open for writing"
            },
            err: e,
        })?;
    let meta = f.metadata().map_err(Error::io(path, "stat"))?;
    let id = if meta.rdev() != 0 {
        (0, meta.rdev())
    } else {
        (meta.dev(), meta.ino())
    };
    let size = {
        use std::io::Seek;
        let mut g = &f;
        g.seek(std::io::SeekFrom::End(0))
            .map_err(Error::io(path, "size"))?
    };
    Ok((f, size, id))
}

fn check_blocks(devs: &[Device], g: &[DeviceGeometry], qd: usize, bs: BlockSize) -> Result<()> {
    let total: u64 = devs.iter().map(|d| d.blocks).sum();
    let what = if devs.len() == 1 {
        format!(
            "{}: {} bytes hold {total} blocks",
            devs[0].path.display(),
            g[0].device_size
        )
    } else {
        format!("the {} devices hold {total} blocks in all", devs.len())
    };
    if total > MAX_BLOCKS {
        return Err(Error::TooLarge {
            path: devs[0].path.clone(),
            what: "the number of blocks",
            found: total,
            limit: MAX_BLOCKS,
        });
    }
    if total < qd as u64 {
        return Err(Error::Invalid(format!(
            "{what} of {} bytes, fewer than the queue depth {qd}",
            bs.bytes()
        )));
    }
    Ok(())
}

/// One writer thread's view of the run.
struct Worker<'a> {
    cfg: &'a WorkloadConfig,
    run_id: RunId,
    devs: &'a [Device],
    /// Blocks name their device (format version 2) only in a multi-device run.
    multi: bool,
    sched: &'a Mutex<Sched>,
}

impl Worker<'_> {
    fn run(&self, pacer: Option<&Pacer>, stop: &AtomicBool) {
        let bs = self.cfg.block_size;
        let mut buf = AlignedBuf::new(bs.as_usize());
        loop {
            if stop.load(Ordering::SeqCst) {
                return;
            }
            if let Some(p) = pacer {
                p.wait(stop);
            }
            let Some(w) = lock(self.sched).next(self.cfg.duration) else {
                return;
            };
            let h = BlockHeader {
                run_id: self.run_id,
                index: w.block,
                seq: w.seq,
                issue_ns: w.issue_ns,
                device: self.multi.then_some(w.device),
            };
            encode(&h, buf.as_mut_slice());
            let dev = &self.devs[usize::from(w.device)];
            let written = dev.file.write_all_at(buf.as_slice(), w.block * bs.as_u64());
            let complete_ns = UnixNs::now();
            let mut st = lock(self.sched);
            if let Err(e) = written {
                // The block's content is now unknown; leave it reserved so nothing else
                // writes it, stop the run, and report (the history has every completed
                // write).
                st.error.get_or_insert(pwrite_error(dev, &w, &e));
                return;
            }
            st.done(HistoryRecord {
                seq: w.seq,
                device: w.device,
                block: w.block,
                issue_ns: w.issue_ns,
                complete_ns,
                depends_on: w.depends_on,
            });
        }
    }
}

fn pwrite_error(dev: &Device, w: &Issue, e: &std::io::Error) -> Error {
    let what = format!("pwrite block {} (seq {})", w.block, w.seq);
    Error::Io {
        path: dev.path.clone(),
        op: "pwrite",
        err: std::io::Error::new(e.kind(), format!("{what}: {e}")),
    }
}

/// Moves completed records to the history file every [`FLUSH_EVERY`] until the workers are
/// done, then once more.
fn flush_loop(
    w: &mut HistoryWriter,
    sched: &Mutex<Sched>,
    workers_done: &AtomicBool,
) -> Result<()> {
    let mut batch = Vec::new();
    loop {
        let last = workers_done.load(Ordering::SeqCst);
        std::mem::swap(&mut batch, &mut lock(sched).pending);
        for r in &batch {
            w.push(r);
        }
        batch.clear();
        if let Err(e) = w.flush() {
            lock(sched)
                .error
                .get_or_insert(Error::Invalid(format!("history: {e}")));
            return Err(e);
        }
        if last {
            return Ok(());
        }
        std::thread::sleep(FLUSH_EVERY);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::decode;
    use crate::history::read_history;

    fn config(dir: &Path, device: &Path, duration_ms: u64, rate: Option<u64>) -> WorkloadConfig {
        WorkloadConfig {
            devices: vec![device.to_path_buf()],
            history: dir.join("history"),
            block_size: BlockSize::DEFAULT,
            duration: Some(Duration::from_millis(duration_ms)),
            rate,
            queue_depth: 4,
            hot_set: None,
        }
    }

    /// A temporary directory on a filesystem that takes O_DIRECT (skips if /tmp is tmpfs).
    fn scratch() -> Option<tempfile::TempDir> {
        let d = tempfile::tempdir().ok()?;
        let probe = d.path().join("probe");
        std::fs::write(&probe, [0u8; 4096]).ok()?;
        let ok = File::options()
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(&probe)
            .is_ok();
        if !ok {
            eprintln!("SKIP: no O_DIRECT on {}", d.path().display());
        }
        ok.then_some(d)
    }

    #[test]
    fn writes_every_block_then_random_ones_and_records_them() {
        let Some(d) = scratch() else { return };
        let dev = d.path().join("dev");
        std::fs::write(&dev, vec![0u8; 64 * 4096 + 1000]).unwrap();
        let cfg = config(d.path(), &dev, 200, None);
        let st = run_workload(&cfg, &AtomicBool::new(false)).unwrap();
        assert_eq!((st.blocks, st.init_writes), (64, 64));
        assert!(st.writes > 64, "no random writes in 200 ms: {st:?}");
        let h = read_history(&cfg.history).unwrap();
        assert!(h.clean());
        assert_eq!(h.records.len() as u64, st.writes);
        assert_eq!(h.header.run_id, st.run_id);
        let image = std::fs::read(&dev).unwrap();
        let mut last = vec![None; 64];
        for r in &h.records {
            let prev = last[usize::try_from(r.block).unwrap()].replace(*r);
            if let Some(p) = prev {
                assert!(
                    r.seq > p.seq && r.issue_ns >= p.complete_ns,
                    "{p:?} then {r:?}"
                );
            }
        }
        for (i, b) in image[..64 * 4096].chunks(4096).enumerate() {
            let got = decode(b).unwrap();
            let want = last[i].unwrap();
            assert_eq!(
                (got.index, got.seq, got.issue_ns),
                (i as u64, want.seq, want.issue_ns)
            );
        }
    }

    #[test]
    fn rate_limit_and_stop_flag() {
        let Some(d) = scratch() else { return };
        let dev = d.path().join("dev");
        std::fs::write(&dev, vec![0u8; 16 * 4096]).unwrap();
        // 40 blocks/s: 16 init writes take ~400 ms, then ~12 more in 300 ms.
        let cfg = config(d.path(), &dev, 300, Some(40 * 4096));
        let st = run_workload(&cfg, &AtomicBool::new(false)).unwrap();
        assert!((24..=34).contains(&st.writes), "{st:?}");
        let stop = AtomicBool::new(true);
        let cfg = WorkloadConfig {
            history: d.path().join("h2"),
            ..cfg
        };
        let st = run_workload(&cfg, &stop).unwrap();
        assert_eq!(st.writes, 0);
        assert!(read_history(&cfg.history).unwrap().clean());
    }

    #[test]
    fn a_hot_set_confines_the_random_writes() {
        let Some(d) = scratch() else { return };
        let dev = d.path().join("dev");
        std::fs::write(&dev, vec![0u8; 64 * 4096]).unwrap();
        let cfg = WorkloadConfig {
            hot_set: Some(8 * 4096),
            ..config(d.path(), &dev, 200, None)
        };
        let st = run_workload(&cfg, &AtomicBool::new(false)).unwrap();
        assert_eq!(st.init_writes, 64);
        assert!(st.writes > 64, "no random writes in 200 ms: {st:?}");
        let h = read_history(&cfg.history).unwrap();
        // Sequence numbers are in issue order: the first 64 are the initialization pass.
        let random: Vec<_> = h.records.iter().filter(|r| r.seq >= 64).collect();
        assert!(!random.is_empty());
        assert!(
            random.iter().all(|r| r.block < 8),
            "a random write outside the hot set"
        );
    }

    #[test]
    fn refuses_bad_configurations() {
        let Some(d) = scratch() else { return };
        let dev = d.path().join("dev");
        std::fs::write(&dev, vec![0u8; 2 * 4096]).unwrap();
        let cfg = config(d.path(), &dev, 0, None);
        let e = run_workload(&cfg, &AtomicBool::new(false))
            .unwrap_err()
            .to_string();
        assert!(e.contains("fewer than the queue depth 4"), "{e}");
        let cfg = WorkloadConfig {
            queue_depth: 0,
            ..cfg
        };
        assert!(run_workload(&cfg, &AtomicBool::new(false)).is_err());
    }

    /// Two devices of different sizes: every block of each written for its device (format
    /// version 2), a version-2 history, and every dependency a completed write on the other
    /// device, completed before its dependent was issued and recorded before it.
    #[test]
    fn two_devices_record_their_dependencies() {
        let Some(d) = scratch() else { return };
        let (a, b) = (d.path().join("a"), d.path().join("b"));
        std::fs::write(&a, vec![0u8; 32 * 4096]).unwrap();
        std::fs::write(&b, vec![0u8; 16 * 4096 + 100]).unwrap();
        let cfg = WorkloadConfig {
            devices: vec![a.clone(), b.clone()],
            queue_depth: 3,
            ..config(d.path(), &a, 200, None)
        };
        let st = run_workload(&cfg, &AtomicBool::new(false)).unwrap();
        assert_eq!((st.blocks, st.device_blocks.clone()), (48, vec![32, 16]));
        let h = read_history(&cfg.history).unwrap();
        assert_eq!(h.header.version(), 2);
        assert_eq!(h.header.devices[1].device_size, 16 * 4096 + 100);
        assert_eq!(h.records.len() as u64, st.writes);
        let mut position = std::collections::HashMap::new();
        for (i, r) in h.records.iter().enumerate() {
            position.insert(r.seq, (i, *r));
        }
        let mut with_dep = [0u64; 2];
        for (i, w) in h.records.iter().enumerate() {
            let Some(dep) = w.depends_on else {
                assert!(w.device == 0 && w.seq < 32, "{w:?} has no dependency");
                continue;
            };
            with_dep[usize::from(w.device)] += 1;
            let (j, dr) = position[&dep];
            assert!(j < i, "{dr:?} recorded after its dependent {w:?}");
            assert_ne!(dr.device, w.device, "{w:?} depends on {dr:?}");
            assert!(dr.complete_ns <= w.issue_ns, "{w:?} depends on {dr:?}");
        }
        assert!(with_dep[0] > 10 && with_dep[1] > 10, "{with_dep:?}");
        for (dev, path, blocks) in [(0u16, &a, 32usize), (1, &b, 16)] {
            let image = std::fs::read(path).unwrap();
            for (i, blk) in image[..blocks * 4096].chunks(4096).enumerate() {
                let got = decode(blk).unwrap();
                assert_eq!((got.device, got.index), (Some(dev), i as u64));
            }
        }
        // One device given twice is refused before anything is written.
        let cfg = WorkloadConfig {
            devices: vec![a.clone(), a],
            history: d.path().join("h2"),
            ..cfg
        };
        let e = run_workload(&cfg, &AtomicBool::new(false))
            .unwrap_err()
            .to_string();
        assert!(e.contains("are the same device"), "{e}");
        assert!(!cfg.history.exists());
    }
}
