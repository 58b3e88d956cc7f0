//! Tracking overhead: fio 4k random writes (io_uring, iodepth 32, O_DIRECT) on a loop device
//! over a tmpfs file, alternating untracked and tracked rounds in one run. Reports the ratio
//! of median IOPS, the event rate at that load, drops and unaccounted events, and checks
//! that every fio write produced an event (or a bitmap fallback).
//!
//!   cargo run --release -p sitrep-benches --bin tracker_overhead -- --rounds 5 --seconds 10

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};
use clap::Parser;
use sitrep_benches::{fio, median};
use tracker_bpf::{Tracker, TrackerConfig};

#[derive(Parser)]
struct Args {
    /// Record every write through the ring buffer (the tracker's `write_bitmap: false`).
    #[arg(long)]
    ring_only: bool,
    /// Record each change only when it completes (`mark_at_queue: false`): one program run
    /// per I/O instead of two.
    #[arg(long)]
    completion_only: bool,
    /// Attach the program but do not register the device: measures the floor (tracepoint
    /// trampoline + device lookup) that every tracked bio pays before any tracking work.
    #[arg(long)]
    attach_only: bool,
    /// Measure the program's own run time (kernel.bpf_stats_enabled=1). The measurement
    /// itself costs tens of ns per run, so it lowers the tracked IOPS a little.
    #[arg(long)]
    bpf_stats: bool,
    /// Pairs of (untracked, tracked) rounds.
    #[arg(long, default_value_t = 5)]
    rounds: u32,
    /// Seconds per round.
    #[arg(long, default_value_t = 10)]
    seconds: u32,
    /// Size of the loop device's backing file in /dev/shm, MiB.
    #[arg(long, default_value_t = 1024)]
    size_mib: u64,
    /// fio I/O engine.
    #[arg(long, default_value = "io_uring")]
    engine: String,
    /// Also write the raw samples and totals as JSON to this file (read by `sitrep-bench`).
    #[arg(long)]
    json: Option<PathBuf>,
}

struct Loop {
    dev: PathBuf,
    file: PathBuf,
}

impl Loop {
    fn new(size_mib: u64) -> anyhow::Result<Self> {
        let file = PathBuf::from(format!("/dev/shm/sitrep-bench-{}.img", std::process::id()));
        std::fs::File::create(&file)?.set_len(size_mib << 20)?;
        let out = Command::new("losetup")
            .args(["--find", "--show"])
            .arg(&file)
            .output()?;
        if !out.status.success() {
            bail!("losetup: {}", String::from_utf8_lossy(&out.stderr));
        }
        let dev = PathBuf::from(String::from_utf8(out.stdout)?.trim());
        Ok(Self { dev, file })
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.dev).status();
        let _ = std::fs::remove_file(&self.file);
    }
}

fn round(dev: &Path, a: &Args) -> anyhow::Result<fio::FioResult> {
    let engine = format!("--ioengine={}", a.engine);
    fio::run(
        dev,
        a.seconds,
        &[
            "--rw=randwrite",
            "--bs=4k",
            "--iodepth=32",
            "--direct=1",
            &engine,
            "--norandommap",
        ],
    )
}

/// Samples and counters gathered over the tracked rounds.
#[derive(Default)]
struct Totals {
    base: Vec<f64>,
    tracked: Vec<f64>,
    cpu_secs: Vec<f64>,
    ratios: Vec<f64>,
    bpf_ns: Vec<f64>,
    writes: u64,
    events: u64,
    drops: u64,
    unaccounted: u64,
    fallback: u64,
    bitmap: u64,
    missed: u64,
}

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let lo = Loop::new(a.size_mib)?;
    let logs = tempfile_dir()?;
    // Warm up (first touch of tmpfs pages is slower).
    round(
        &lo.dev,
        &Args {
            seconds: 2,
            ..a_clone(&a)
        },
    )?;
    let mut tot = Totals::default();
    // Per-run BPF cost is only measured while kernel.bpf_stats_enabled is 1.
    let stats_was = std::fs::read_to_string(BPF_STATS).unwrap_or_default();
    if a.bpf_stats {
        let _ = std::fs::write(BPF_STATS, "1");
    }
    for i in 0..a.rounds {
        measure_round(i, &lo, &logs, &a, &mut tot)?;
    }
    let _ = std::fs::write(BPF_STATS, stats_was.trim());
    print_report(&a, &tot);
    if let Some(p) = &a.json {
        write_json(p, &a, &tot)?;
    }
    let Totals {
        writes,
        events,
        drops,
        bitmap,
        ..
    } = tot;
    // Every write is a bio: events + drops must cover the writes fio counted (fio's count
    // excludes nothing; the kernel may see more, e.g. flushes or split bios).
    if events + drops + bitmap < writes && !a.attach_only {
        bail!(
            "LOST WRITES: {writes} fio writes but only {events} events + {drops} drops + \
             {bitmap} bitmap writes"
        );
    }
    Ok(())
}

/// Runs one (untracked, tracked) pair of rounds and adds its samples to `tot`.
fn measure_round(i: u32, lo: &Loop, logs: &Path, a: &Args, tot: &mut Totals) -> anyhow::Result<()> {
    let b = round(&lo.dev, a)?;
    tot.base.push(b.write_iops);
    let mut t = Tracker::start(TrackerConfig {
        write_bitmap: !a.ring_only,
        mark_at_queue: !a.completion_only,
        ..TrackerConfig::default()
    })?;
    let dir = logs.join(format!("r{i}"));
    std::fs::create_dir_all(&dir)?;
    if !a.attach_only {
        t.add_device(&lo.dev, &dir)?;
    }
    let cpu0 = self_cpu_seconds();
    let k0 = kernel_writes(&lo.dev);
    let r = round(&lo.dev, a)?;
    let cpu = self_cpu_seconds() - cpu0;
    tot.cpu_secs.push(cpu / f64::from(a.seconds));
    std::thread::sleep(std::time::Duration::from_millis(300));
    let s = t.stats();
    let kw = kernel_writes(&lo.dev) - k0;
    t.stop()?;
    std::fs::remove_dir_all(&dir)?;
    tot.tracked.push(r.write_iops);
    tot.ratios.push(r.write_iops / b.write_iops);
    if s.kernel.prog_runs > 0 {
        tot.bpf_ns
            .push(s.kernel.prog_run_ns as f64 / s.kernel.prog_runs as f64);
    }
    tot.writes += r.writes;
    tot.events += s.kernel.events;
    tot.bitmap += s.kernel.bitmap_writes;
    tot.drops += s.kernel.drops;
    tot.fallback += s.kernel.fallback_bits;
    tot.unaccounted += s.kernel.unaccounted;
    let round_missed = s.disks.first().map_or(0, |d| d.1.missed_sectors);
    tot.missed += round_missed;
    eprintln!(
        "round {i}: untracked {:.0} IOPS, tracked {:.0} IOPS ({:.3}), events {} + bitmap \
         writes {} for {} writes ({kw} write requests completed by the kernel; program runs: completion {}, queue {}), drops {}, missed completions noticed: {round_missed} sectors",
        b.write_iops,
        r.write_iops,
        r.write_iops / b.write_iops,
        s.kernel.events,
        s.kernel.bitmap_writes,
        r.writes,
        s.kernel.complete_runs,
        s.kernel.queue_runs,
        s.kernel.drops
    );
    Ok(())
}

/// Prints the results table (Markdown) to stdout.
fn print_report(a: &Args, tot: &Totals) {
    let Totals {
        base,
        tracked,
        cpu_secs,
        ratios,
        bpf_ns,
        writes,
        events,
        drops,
        unaccounted,
        fallback,
        bitmap,
        missed,
    } = tot;
    let (mb, mt) = (median(base), median(tracked));
    println!("| metric | value |");
    println!("|---|---|");
    println!("| untracked IOPS (median of {}) | {mb:.0} |", a.rounds);
    println!("| tracked IOPS (median of {}) | {mt:.0} |", a.rounds);
    println!("| tracked / untracked, ratio of medians | {:.3} |", mt / mb);
    println!(
        "| **tracked / untracked, median of per-round ratios** | **{:.3}** (rounds: {}) |",
        median(ratios),
        ratios
            .iter()
            .map(|r| format!("{r:.3}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "| BPF program cost per bio (median, bpf_stats) | {:.0} ns |",
        median(bpf_ns)
    );
    println!("| fio writes in tracked rounds | {writes} |");
    println!("| ring events received | {events} |");
    println!("| writes recorded in the fine write bitmap | {bitmap} |");
    println!("| ring drops (fell back to bitmap) | {drops} (bitmap words {fallback}) |");
    println!("| unaccounted events | {unaccounted} |");
    println!("| completions the kernel did not report (noticed, sectors) | {missed} |");
    println!(
        "| tracker CPU (userspace, % of one core, median) | {:.1} % |",
        median(cpu_secs) * 100.0
    );
}

/// Writes the raw samples and totals as JSON to `p` (read by `sitrep-bench`).
fn write_json(p: &Path, a: &Args, tot: &Totals) -> anyhow::Result<()> {
    let doc = serde_json::json!({
        "untracked_iops": tot.base,
        "tracked_iops": tot.tracked,
        "ratios": tot.ratios,
        "bpf_ns_per_bio": tot.bpf_ns,
        "tracker_cpu_fraction": tot.cpu_secs,
        "seconds": a.seconds,
        "rounds": a.rounds,
        "fio_writes": tot.writes,
        "events": tot.events,
        "bitmap_writes": tot.bitmap,
        "drops": tot.drops,
        "fallback_words": tot.fallback,
        "unaccounted": tot.unaccounted,
        "lost": (tot.events + tot.drops + tot.bitmap < tot.writes && !a.attach_only),
    });
    std::fs::write(p, serde_json::to_vec_pretty(&doc)?)?;
    Ok(())
}

/// CPU time (user + system) this process has used, in seconds: the tracker's userspace
/// threads (fio runs as a child and is not counted).
fn self_cpu_seconds() -> f64 {
    let mut ru = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes one rusage struct through the pointer, which points to one.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, ru.as_mut_ptr()) };
    if rc != 0 {
        return 0.0;
    }
    // SAFETY: initialised by the successful call above (and zeroed before it).
    let ru = unsafe { ru.assume_init() };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Write requests the kernel completed on `dev` (`/sys/block/NAME/stat`, field 5).
fn kernel_writes(dev: &Path) -> u64 {
    let name = dev
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    std::fs::read_to_string(format!("/sys/block/{name}/stat"))
        .ok()
        .and_then(|t| t.split_whitespace().nth(4).and_then(|v| v.parse().ok()))
        .unwrap_or(0)
}

const BPF_STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";

fn a_clone(a: &Args) -> Args {
    Args {
        ring_only: a.ring_only,
        completion_only: a.completion_only,
        attach_only: a.attach_only,
        bpf_stats: a.bpf_stats,
        rounds: a.rounds,
        seconds: a.seconds,
        size_mib: a.size_mib,
        engine: a.engine.clone(),
        json: None,
    }
}

fn tempfile_dir() -> anyhow::Result<PathBuf> {
    let d = std::env::temp_dir().join(format!("sitrep-bench-logs-{}", std::process::id()));
    std::fs::create_dir_all(&d).context("creating the bench log directory")?;
    Ok(d)
}
