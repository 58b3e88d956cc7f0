//! The workload: Q threads writing self-describing blocks with synchronous O_DIRECT `pwrite`,
//! one block per write, and a history of every write.
//!
//! First an initialization pass writes every block once, in index order (so every block has
//! a known version), then random blocks until the duration ends or the caller's stop flag is
//! set (SIGINT/SIGTERM in the CLI). Writes in flight then finish, the history gets its end
//! record and is fsynced.
//!
//! Invariants the checker relies on, and how they are kept:
//! - **Never two writes to one block in flight**: a block is reserved in an in-flight bitmap
//!   when its write is chosen, and released only after the write completed *and* its record
//!   was queued for the history. So per block, seq order = issue order = completion order =
//!   history order.
//! - **Seqs in issue order**: the seq, the block and `issue_ns` are taken together under the
//!   scheduler lock, before `pwrite` is called; `complete_ns` is taken after it returns.
//!
//! Q synchronous threads rather than io_uring: simpler, and at the queue depths used to test
//! replication (1–32) the device, not the submission path, is the bottleneck.

use std::fs::File;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::block::{BlockHeader, BlockSize, encode};
use crate::buf::AlignedBuf;
use crate::history::{HistoryHeader, HistoryRecord, HistoryWriter, MAX_BLOCKS};
use crate::units::{RunId, UnixNs};
use crate::{Error, Result};

/// Most worker threads.
pub const MAX_QUEUE_DEPTH: usize = 256;
/// The history is written out at least this often.
const FLUSH_EVERY: Duration = Duration::from_millis(50);

/// What to run.
#[derive(Debug, Clone)]
pub struct WorkloadConfig {
    /// The device (or file) to write; every block of it is overwritten.
    pub device: PathBuf,
    /// The history file to create (must not exist).
    pub history: PathBuf,
    /// Bytes per block and per write.
    pub block_size: BlockSize,
    /// How long to write random blocks after the initialization pass (`None`: until stopped).
    pub duration: Option<Duration>,
    /// Bytes per second over all workers (`None`: as fast as the device goes).
    pub rate: Option<u64>,
    /// Writes in flight: worker threads.
    pub queue_depth: usize,
    /// Random writes only to the first this many bytes (a hot set; `None`: the whole device).
    /// The initialization pass still writes every block once.
    pub hot_set: Option<u64>,
}

/// What a run did.
#[derive(Debug, Clone)]
pub struct WorkloadStats {
    /// The run's id.
    pub run_id: RunId,
    /// Blocks on the device.
    pub blocks: u64,
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

struct Sched {
    next_seq: u64,
    init_next: u64,
    blocks: u64,
    /// Random writes pick among the first `hot` blocks.
    hot: u64,
    in_flight: Vec<u64>,
    rng: u64,
    random_until: Option<Instant>,
    pending: Vec<HistoryRecord>,
    writes: u64,
    error: Option<Error>,
}

impl Sched {
    /// The next write: (seq, block, issue time), or `None` when the run is over.
    fn next(&mut self, duration: Option<Duration>) -> Option<(u64, u64, UnixNs)> {
        if self.error.is_some() {
            return None;
        }
        let block = if self.init_next < self.blocks {
            self.init_next += 1;
            if self.init_next == self.blocks {
                self.random_until = duration.map(|d| Instant::now() + d);
            }
            self.init_next - 1
        } else {
            if self.random_until.is_some_and(|u| Instant::now() >= u) {
                return None;
            }
            self.pick_free()
        };
        self.in_flight[word(block)] |= bit(block);
        let seq = self.next_seq;
        self.next_seq += 1;
        Some((seq, block, UnixNs::now()))
    }

    /// A random block with no write in flight (one exists: blocks ≥ queue depth).
    fn pick_free(&mut self) -> u64 {
        loop {
            // xorshift64*: fast, and good enough to spread writes.
            self.rng ^= self.rng >> 12;
            self.rng ^= self.rng << 25;
            self.rng ^= self.rng >> 27;
            let b = self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D) % self.hot;
            if self.in_flight[word(b)] & bit(b) == 0 {
                return b;
            }
        }
    }

    fn done(&mut self, rec: HistoryRecord) {
        self.pending.push(rec);
        self.writes += 1;
        self.in_flight[word(rec.block)] &= !bit(rec.block);
    }
}

fn word(block: u64) -> usize {
    usize::try_from(block / 64).unwrap_or(usize::MAX)
}

fn bit(block: u64) -> u64 {
    1 << (block % 64)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A worker that panicked cannot have left the scheduler half-updated in a way that
    // matters more than stopping: keep going with what is there.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Runs the workload until `cfg.duration` after the initialization pass, or until `stop`.
///
/// # Errors
/// Bad configuration, the device cannot be opened with O_DIRECT or written, the history
/// cannot be created or written. Writes already done are in the history either way.
pub fn run_workload(cfg: &WorkloadConfig, stop: &AtomicBool) -> Result<WorkloadStats> {
    if !(1..=MAX_QUEUE_DEPTH).contains(&cfg.queue_depth) {
        return Err(Error::Invalid(format!(
            "queue depth {}: must be 1 to {MAX_QUEUE_DEPTH}",
            cfg.queue_depth
        )));
    }
    let (dev, size) = open_device(&cfg.device)?;
    let bs = cfg.block_size;
    let blocks = size / bs.as_u64();
    check_blocks(&cfg.device, blocks, size, cfg.queue_depth, bs)?;
    let run_id = RunId::random()?;
    let start_ns = UnixNs::now();
    let header = HistoryHeader {
        run_id,
        block_size: bs,
        block_count: blocks,
        device_size: size,
        start_ns,
    };
    let mut writer = HistoryWriter::create(&cfg.history, &header)?;
    let mut seed = [0u8; 8];
    seed.copy_from_slice(&run_id.0[..8]);
    let sched = Mutex::new(Sched {
        next_seq: 0,
        init_next: 0,
        blocks,
        // At least the queue depth, so a block with no write in flight always exists.
        hot: cfg.hot_set.map_or(blocks, |h| {
            (h / bs.as_u64()).clamp(cfg.queue_depth as u64, blocks)
        }),
        in_flight: vec![0u64; usize::try_from(blocks.div_ceil(64)).unwrap_or(0)],
        rng: u64::from_le_bytes(seed) | 1,
        random_until: None,
        pending: Vec::new(),
        writes: 0,
        error: None,
    });
    let pacer = cfg.rate.map(|r| Pacer::new(bs.as_u64(), r));
    let started = Instant::now();
    let workers_done = AtomicBool::new(false);
    let flushed = std::thread::scope(|s| {
        let flusher = s.spawn(|| flush_loop(&mut writer, &sched, &workers_done));
        let workers: Vec<_> = (0..cfg.queue_depth)
            .map(|_| s.spawn(|| worker(cfg, run_id, &dev, &sched, pacer.as_ref(), stop)))
            .collect();
        for w in workers {
            let _ = w.join();
        }
        workers_done.store(true, Ordering::SeqCst);
        flusher.join()
    });
    let synced = dev.sync_data().map_err(Error::io(&cfg.device, "fdatasync"));
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
        blocks,
        init_writes: st.init_next.min(st.writes),
        writes: st.writes,
        start_ns,
        end_ns,
        elapsed: started.elapsed(),
    })
}

fn open_device(path: &Path) -> Result<(File, u64)> {
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
    let size = {
        use std::io::Seek;
        let mut g = &f;
        g.seek(std::io::SeekFrom::End(0))
            .map_err(Error::io(path, "size"))?
    };
    Ok((f, size))
}

fn check_blocks(path: &Path, blocks: u64, size: u64, qd: usize, bs: BlockSize) -> Result<()> {
    if blocks > MAX_BLOCKS {
        return Err(Error::TooLarge {
            path: path.to_path_buf(),
            what: "the number of blocks",
            found: blocks,
            limit: MAX_BLOCKS,
        });
    }
    if blocks < qd as u64 {
        return Err(Error::Invalid(format!(
            "{}: {size} bytes hold {blocks} blocks of {} bytes, fewer than the queue depth {qd}",
            path.display(),
            bs.bytes()
        )));
    }
    Ok(())
}

fn worker(
    cfg: &WorkloadConfig,
    run_id: RunId,
    dev: &File,
    sched: &Mutex<Sched>,
    pacer: Option<&Pacer>,
    stop: &AtomicBool,
) {
    let bs = cfg.block_size;
    let mut buf = AlignedBuf::new(bs.as_usize());
    loop {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        if let Some(p) = pacer {
            p.wait(stop);
        }
        let Some((seq, index, issue_ns)) = lock(sched).next(cfg.duration) else {
            return;
        };
        let h = BlockHeader {
            run_id,
            index,
            seq,
            issue_ns,
        };
        encode(&h, buf.as_mut_slice());
        let written = dev.write_all_at(buf.as_slice(), index * bs.as_u64());
        let complete_ns = UnixNs::now();
        let mut st = lock(sched);
        if let Err(e) = written {
            // The block's content is now unknown; leave it reserved so nothing else writes
            // it, stop the run, and report (the history has every completed write).
            let what = format!("pwrite block {index} (seq {seq})");
            st.error.get_or_insert(Error::Io {
                path: cfg.device.clone(),
                op: "pwrite",
                err: std::io::Error::new(e.kind(), format!("{what}: {e}")),
            });
            return;
        }
        st.done(HistoryRecord {
            seq,
            block: index,
            issue_ns,
            complete_ns,
        });
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

/// Spaces writes `interval` apart over all workers (the `--rate` limit).
struct Pacer {
    interval: Duration,
    next: Mutex<Instant>,
}

impl Pacer {
    fn new(block_bytes: u64, rate: u64) -> Self {
        let nanos = u128::from(block_bytes) * 1_000_000_000 / u128::from(rate.max(1));
        Self {
            interval: Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX)),
            next: Mutex::new(Instant::now()),
        }
    }

    /// Sleeps until this worker's slot (waking every 100 ms to notice `stop`).
    fn wait(&self, stop: &AtomicBool) {
        let slot = {
            let mut next = lock(&self.next);
            let slot = (*next).max(Instant::now());
            *next = slot + self.interval;
            slot
        };
        loop {
            let now = Instant::now();
            if now >= slot || stop.load(Ordering::SeqCst) {
                return;
            }
            std::thread::sleep((slot - now).min(Duration::from_millis(100)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::decode;
    use crate::history::read_history;

    fn config(dir: &Path, device: &Path, duration_ms: u64, rate: Option<u64>) -> WorkloadConfig {
        WorkloadConfig {
            device: device.to_path_buf(),
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
}
