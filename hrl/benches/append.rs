//! Throughput of [`LogWriter`]: appending records and making them durable with group commit,
//! to a log on disk with the real `pwrite` + `fdatasync` per commit.
//!
//! Run: `cargo bench -p sitrep-hrl --bench append`. Logs go to a fresh directory under
//! `$SITREP_BENCH_TMP`, or `/var/tmp` when it is unset — on disk, not tmpfs, where
//! `fdatasync` is free and would flatter every number here.
//!
//! The writer is configured like the trackers' (`tracker-bpf`'s and `ublk-target`'s):
//! preallocated 16 MiB logs, so rotation — sealing, creating and zero-filling the next log —
//! happens inside the measured commits at its real rate. Batch caps are raised so that the
//! bench alone decides when to commit.
//!
//! - `hrl_append_extents/commit_every/N`: extents-mode `Write` records of one random 4 KiB
//!   extent of a 1 GiB disk, one [`LogWriter::commit`] every N records; records/s.
//! - `hrl_append_extents/pipelined`: the split commit as `ublk-target` drives it — a log
//!   thread runs [`PendingCommit::write`] while the appender keeps appending, taking the next
//!   batch as soon as the previous one is durable; [`PIPELINE_RECORDS`] records per iteration,
//!   all durable at its end; records/s.
//! - `hrl_append_journal/commit_every/N`: journal-mode records carrying 4 KiB of data each,
//!   one commit every N records; bytes/s of data.

// criterion_group! expands to an undocumented `pub fn benches()`.
#![allow(missing_docs)]
// A bench that cannot open its log has nothing to measure: failing loudly is right.
#![allow(clippy::expect_used)]

use std::path::PathBuf;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use hrl::writer::PendingCommit;
use hrl::{
    ChainSpec, DiskId, DiskIdentity, Extent, Generation, LogWriter, RecordBody, RecordFlags,
    WriterConfig,
};

/// Size of the simulated disk.
const DISK: u64 = 1 << 30;
/// Size of one write.
const BLOCK: u64 = 4096;
/// Records per iteration of the pipelined bench.
const PIPELINE_RECORDS: u64 = 1 << 16;
/// Appends between two looks at the log thread in the pipelined bench (a queue's batch of
/// io_uring completions).
const KICK_EVERY: u64 = 32;

/// Where the logs go.
fn bench_dir() -> tempfile::TempDir {
    let base = std::env::var_os("SITREP_BENCH_TMP")
        .map_or_else(|| PathBuf::from("/var/tmp"), PathBuf::from);
    tempfile::Builder::new()
        .prefix("sitrep-hrl-bench-")
        .tempdir_in(&base)
        .expect("temporary log directory (set SITREP_BENCH_TMP to a writable on-disk directory)")
}

/// A writer over a fresh directory; deleting sealed logs keeps the disk footprint flat.
struct Log {
    w: LogWriter,
    rotations: u64,
    _dir: tempfile::TempDir,
}

impl Log {
    fn open(journal: bool) -> Self {
        let dir = bench_dir();
        let spec = ChainSpec {
            disk: DiskIdentity {
                id: DiskId([7; 16]),
                size: DISK,
                logical_block_size: 512,
            },
            journal,
            generation: Generation(1),
        };
        // The trackers' configuration (tracker-bpf TrackerConfig, ublk-target server.rs),
        // with batch caps out of the way.
        let cfg = WriterConfig {
            preallocate: true,
            max_log_bytes: 16 << 20,
            max_batch_bytes: 256 << 20,
            max_batch_records: u64::MAX,
            ..WriterConfig::default()
        };
        let (w, _) = LogWriter::open(dir.path(), spec, cfg).expect("open log writer");
        Self {
            w,
            rotations: 0,
            _dir: dir,
        }
    }

    /// Deletes the logs sealed by rotation since the last call (outside the measured time).
    fn release_sealed(&mut self) {
        let rotations = self.w.stats().rotations;
        if rotations == self.rotations {
            return;
        }
        self.rotations = rotations;
        let current = self.w.current_path().map(ToOwned::to_owned);
        for (_, path) in hrl::chain::list_logs(self.w.dir()).expect("list logs") {
            if Some(&path) != current.as_ref() {
                self.w.release(&path).expect("release sealed log");
            }
        }
    }
}

/// xorshift64: a deterministic, cheap stream of random 4 KiB-aligned extents of the disk.
struct Offsets(u64);

impl Offsets {
    fn next_offset(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        (x % (DISK / BLOCK)) * BLOCK
    }

    fn next_extent(&mut self) -> Extent {
        Extent::new(self.next_offset(), BLOCK).expect("a 4 KiB extent inside the disk")
    }
}

fn bench_extents(c: &mut Criterion) {
    let mut group = c.benchmark_group("hrl_append_extents");
    group.sample_size(20);
    for n in [1u64, 16, 256, 4096] {
        group.throughput(Throughput::Elements(n));
        group.bench_function(BenchmarkId::new("commit_every", n), |b| {
            let mut log = Log::open(false);
            let mut offsets = Offsets(0x9E37_79B9_7F4A_7C15);
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let t = Instant::now();
                    for _ in 0..n {
                        let body = RecordBody::Write(vec![offsets.next_extent()]);
                        log.w.append(RecordFlags::empty(), &body).expect("append");
                    }
                    log.w.commit().expect("commit");
                    total += t.elapsed();
                    log.release_sealed();
                }
                total
            });
        });
    }

    group.throughput(Throughput::Elements(PIPELINE_RECORDS));
    group.bench_function("pipelined", |b| {
        let mut log = Log::open(false);
        let mut offsets = Offsets(0x2545_F491_4F6C_DD1D);
        // The log thread: writes and syncs each batch it is handed, hands it back.
        let (to_log, jobs) = mpsc::channel::<PendingCommit>();
        let (done_tx, done) = mpsc::channel::<PendingCommit>();
        let log_thread = std::thread::spawn(move || {
            for mut p in jobs {
                p.write().expect("write batch");
                if done_tx.send(p).is_err() {
                    break;
                }
            }
        });
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let t = Instant::now();
                let mut in_flight = false;
                for i in 1..=PIPELINE_RECORDS {
                    let body = RecordBody::Write(vec![offsets.next_extent()]);
                    log.w.append(RecordFlags::empty(), &body).expect("append");
                    if i % KICK_EVERY == 0 {
                        if in_flight && let Ok(p) = done.try_recv() {
                            log.w.finish_commit(p).expect("finish commit");
                            in_flight = false;
                        }
                        if !in_flight && let Some(p) = log.w.take_commit().expect("take commit") {
                            to_log.send(p).expect("log thread alive");
                            in_flight = true;
                        }
                    }
                }
                // Everything appended is durable before the iteration ends.
                loop {
                    if in_flight {
                        let p = done.recv().expect("log thread alive");
                        log.w.finish_commit(p).expect("finish commit");
                    }
                    match log.w.take_commit().expect("take commit") {
                        Some(p) => {
                            to_log.send(p).expect("log thread alive");
                            in_flight = true;
                        }
                        None => break,
                    }
                }
                total += t.elapsed();
                log.release_sealed();
            }
            total
        });
        drop(to_log);
        log_thread.join().expect("log thread");
    });
    group.finish();
}

fn bench_journal(c: &mut Criterion) {
    let mut group = c.benchmark_group("hrl_append_journal");
    group.sample_size(20);
    // Incompressible-looking data; the writer copies and checksums it whatever it holds.
    let data: Vec<u8> = (0..BLOCK)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13).to_le_bytes()[0])
        .collect();
    for n in [1u64, 16, 256] {
        group.throughput(Throughput::Bytes(n * BLOCK));
        group.bench_function(BenchmarkId::new("commit_every", n), |b| {
            let mut log = Log::open(true);
            let mut offsets = Offsets(0xD1B5_4A32_D192_ED03);
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let t = Instant::now();
                    for _ in 0..n {
                        log.w
                            .append_write_data(RecordFlags::empty(), offsets.next_offset(), &data)
                            .expect("append");
                    }
                    log.w.commit().expect("commit");
                    total += t.elapsed();
                    log.release_sealed();
                }
                total
            });
        });
    }
    group.finish();
}

criterion_group!(benches, bench_extents, bench_journal);
criterion_main!(benches);
