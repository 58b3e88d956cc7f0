//! `sitrep track DEVICE --log-dir DIR`: run the eBPF tracker in the foreground.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use tracker_bpf::{AttachMode, Tracker, TrackerConfig, TrackerStats};

use crate::Outcome;
use crate::human;

/// Arguments of `sitrep track`.
#[derive(Args)]
pub(crate) struct TrackArgs {
    /// The block device to track (`/dev/vdb`, `/dev/loop3`, a partition, a dm volume).
    device: PathBuf,
    /// The device's log directory (must exist). Logs continue the chain already there.
    #[arg(long)]
    log_dir: PathBuf,
    /// Seconds between counter lines.
    #[arg(long, default_value_t = 1.0)]
    interval: f64,
    /// Print counters as JSON lines instead of text.
    #[arg(long)]
    json: bool,
    /// Ring buffer size in bytes (power of two, ≥ 4096). When it is full, changes fall
    /// back to an in-kernel bitmap: coarser, never lost.
    #[arg(long, default_value_t = 16 << 20)]
    ring_size: u32,
    /// Which tracepoint to attach to.
    #[arg(long, value_enum, default_value_t = Attach::Auto)]
    attach: Attach,
    /// Seal the current log and start the next every this many seconds (0: never).
    #[arg(long, default_value_t = 0.0)]
    rotate_every: f64,
}

#[derive(Clone, Copy, ValueEnum)]
enum Attach {
    /// tp_btf, falling back to the raw tracepoint.
    Auto,
    /// tp_btf/block_bio_queue only.
    TpBtf,
    /// raw_tp/block_bio_queue only.
    RawTp,
}

/// Runs `sitrep track`.
pub(crate) fn run(a: &TrackArgs) -> anyhow::Result<Outcome> {
    crate::stop::install()?;
    let cfg = TrackerConfig {
        ring_bytes: a.ring_size,
        attach: match a.attach {
            Attach::Auto => AttachMode::Auto,
            Attach::TpBtf => AttachMode::TpBtf,
            Attach::RawTp => AttachMode::RawTp,
        },
        ..TrackerConfig::default()
    };
    let mut t = Tracker::start(cfg)?;
    let add = t.add_device(&a.device, &a.log_dir)?;
    let info = &add.info;
    let continuity = add.gap.as_deref().map_or_else(
        || "continues the previous chain: nothing missed, no resync".to_owned(),
        |why| format!("starts with a WHOLE-DISK GAP (resync needed): {why}"),
    );
    if a.json {
        let v = serde_json::json!({
            "event": "started",
            "device": info.path,
            "major": info.major, "minor": info.minor,
            "size": info.size, "logical_block_size": info.logical_block_size,
            "partition_start_sector": info.start_sect,
            "attached": format!("{:?}", t.attached()),
            "disk_id": add.disk_id.to_string(),
            "gap": add.gap,
        });
        crate::outln!("{v}");
    } else {
        crate::outln!(
            "tracking {} ({}:{}, {}, block {}) into {}; attached via {:?}",
            info.path.display(),
            info.major,
            info.minor,
            human::bytes(info.size),
            info.logical_block_size,
            a.log_dir.display(),
            t.attached()
        );
        crate::outln!("log: {continuity}");
        crate::outln!("Ctrl-C seals the log cleanly.");
    }
    let interval = Duration::from_secs_f64(a.interval.max(0.05));
    let rotate = (a.rotate_every > 0.0).then(|| Duration::from_secs_f64(a.rotate_every));
    let mut last = (Instant::now(), t.stats());
    let mut last_rotate = Instant::now();
    while !crate::stop::STOP.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(50));
        if rotate.is_some_and(|r| last_rotate.elapsed() >= r) {
            let sealed = t.rotate(&a.device)?;
            last_rotate = Instant::now();
            if !a.json {
                crate::outln!("sealed {}", sealed.path.display());
            }
        }
        if last.0.elapsed() >= interval {
            let now = (Instant::now(), t.stats());
            print_counters(&last, &now, a.json);
            last = now;
        }
    }
    let reports = t.stop()?;
    for r in reports {
        if a.json {
            let v = serde_json::json!({
                "event": "stopped",
                "device": r.device,
                "sealed": r.sealed.path,
                "clean": r.clean,
                "stats": r.stats,
            });
            crate::outln!("{v}");
        } else {
            crate::outln!(
                "stopped: sealed {} ({} records); {}",
                r.sealed.path.display(),
                r.sealed.seal.record_count,
                if r.clean {
                    "clean stop recorded: a restart continues without a resync if nothing \
                     writes the device meanwhile"
                } else {
                    "device was busy: the next start will record a gap"
                }
            );
        }
    }
    Ok(Outcome::Ok)
}

fn print_counters(prev: &(Instant, TrackerStats), now: &(Instant, TrackerStats), json: bool) {
    let secs = now.0.duration_since(prev.0).as_secs_f64().max(1e-3);
    let k = &now.1.kernel;
    let (events, extents, log_bytes, gaps) = now.1.disks.iter().fold((0, 0, 0, 0), |a, (_, d)| {
        (
            a.0 + d.events,
            a.1 + d.extents,
            a.2 + d.log_bytes,
            a.3 + d.gaps,
        )
    });
    let missed: u64 = now.1.disks.iter().map(|(_, d)| d.missed_sectors).sum();
    let prev_events: u64 = prev.1.disks.iter().map(|(_, d)| d.events).sum();
    let prev_bytes = prev.1.kernel.bytes;
    #[allow(clippy::cast_precision_loss)]
    let rate = (events - prev_events.min(events)) as f64 / secs;
    #[allow(clippy::cast_precision_loss)]
    let mbps = (k.bytes - prev_bytes.min(k.bytes)) as f64 / secs / 1e6;
    if json {
        crate::outln!(
            "{}",
            serde_json::json!({"event": "counters", "kernel": k, "disks": now.1.disks})
        );
    } else {
        #[allow(clippy::cast_precision_loss)]
        let ratio = if extents == 0 {
            0.0
        } else {
            events as f64 / extents as f64
        };
        crate::outln!(
            "events {events} ({rate:.0}/s, {mbps:.1} MB/s)  drops {}  fallback words {}  \
             unaccounted {}  missed completions {}  coalescing {ratio:.1}x  gaps {gaps}  logs {}",
            k.drops,
            k.fallback_bits,
            k.unaccounted,
            human::bytes(missed * 512),
            human::bytes(log_bytes)
        );
    }
}
