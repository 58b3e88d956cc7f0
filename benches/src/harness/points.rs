//! Scenario 9: recovery points under churn. `sitrep workload` writes 4 KiB blocks over a
//! 32 MiB hot set of a 128 MiB protected loop device at 1 k, 5 k and the most writes/s it
//! reaches; per step: crash-consistent points offered per minute, undo bytes kept per byte
//! the workload wrote, and bytes the server wrote to storage per byte shipped.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::Context;

use super::Ctx;
use super::initial::RemoveOnDrop;
use super::sites::{Sites, run};
use crate::results::{Metric, Scenario};

const NAME: &str = "points";
const SIZE: u64 = 128 << 20;
const BLOCK: u64 = 4096;

/// One step's figures.
struct Step {
    label: &'static str,
    writes_per_s: f64,
    points_per_min: f64,
    undo_per_changed: f64,
    durable_per_shipped: f64,
}

/// Runs the scenario.
///
/// # Errors
/// Setup or a step fails.
pub fn run_points(ctx: &Ctx, sc: &mut Scenario) -> anyhow::Result<()> {
    let secs: u32 = if ctx.quick { 8 } else { 60 };
    let logs = ctx.logs("points")?;
    let src = PathBuf::from(format!(
        "/dev/shm/sitrep-bench-points-{}.img",
        std::process::id()
    ));
    let _src = RemoveOnDrop(src.clone());
    let work = ctx
        .tmp
        .join(format!("sitrep-bench-points-{}", std::process::id()));
    let sitrep = ctx.root.join("target/release/sitrep");
    let mut sites = Sites::up(&sitrep, &work, &logs, "points")?;
    let dev = sites.loop_device(&src, SIZE)?;
    sites.protect_with(&dev, NAME, &["--crash-points-every", "30s"])?;
    sites.wait(NAME, 600)?;
    sc.description = format!(
        "`sitrep workload` (4 KiB O_DIRECT writes, queue depth 4) over a 32 MiB hot set of a \
         128 MiB protected loop device (backed in RAM; the replica on disk), continuous mode, \
         `--crash-points-every 30s`, {secs} s per step after the initialization pass. Points \
         per minute: cycles the agent proved crash-consistent (offered as recovery points). \
         Undo per changed byte: growth of the server's undo data ÷ bytes the workload wrote. \
         Durable bytes per shipped byte: the server's /proc/PID/io write_bytes ÷ data bytes \
         the agent shipped (staging, undo, replica; three before undo compaction)."
    );
    let mut steps = Vec::new();
    for (label, rate) in [("1 k/s", Some(1000)), ("5 k/s", Some(5000)), ("max", None)] {
        let st = step(&sites, &sitrep, &dev, &logs, label, rate, secs)?;
        eprintln!(
            "points {label}: {:.0} writes/s, {:.1} points/min, {:.3} undo/changed, {:.2} durable/shipped",
            st.writes_per_s, st.points_per_min, st.undo_per_changed, st.durable_per_shipped
        );
        steps.push(st);
    }
    report(sc, &steps, secs);
    Ok(())
}

fn step(
    sites: &Sites,
    sitrep: &Path,
    dev: &Path,
    logs: &Path,
    label: &'static str,
    rate: Option<u64>,
    secs: u32,
) -> anyhow::Result<Step> {
    let server = sites.server.as_ref().context("server")?;
    let a0 = sites.agent_disk(NAME)?;
    let s0 = sites.server_disk(NAME)?;
    let w0 = server.io_write_bytes()?;
    let history = logs.join(format!("history-{}", label.replace([' ', '/'], "")));
    let _ = std::fs::remove_file(&history);
    let mut cmd = Command::new(sitrep);
    cmd.arg("workload")
        .arg(dev)
        .arg("--history")
        .arg(&history)
        .args([
            "--duration",
            &format!("{secs}s"),
            "--hot-set",
            "32M",
            "--json",
        ]);
    if let Some(r) = rate {
        cmd.args(["--rate", &(r * BLOCK).to_string()]);
    }
    let t0 = Instant::now();
    let out: serde_json::Value = serde_json::from_str(&run(&mut cmd)?)?;
    let elapsed = t0.elapsed().as_secs_f64();
    sites.wait(NAME, 900)?;
    let a1 = sites.agent_disk(NAME)?;
    let s1 = sites.server_disk(NAME)?;
    let w1 = server.io_write_bytes()?;
    let _ = std::fs::remove_file(&history);
    let d = |a: &serde_json::Value, b: &serde_json::Value, k: &str| {
        b[k].as_f64().unwrap_or(0.0) - a[k].as_f64().unwrap_or(0.0)
    };
    let writes = out["writes"].as_f64().unwrap_or(f64::NAN);
    let init = out["init_writes"].as_f64().unwrap_or(0.0);
    let random_s = f64::from(secs);
    #[allow(clippy::cast_precision_loss, reason = "byte counts far below 2^53")]
    let written = writes * BLOCK as f64;
    #[allow(clippy::cast_precision_loss, reason = "byte counts far below 2^53")]
    Ok(Step {
        label,
        writes_per_s: (writes - init) / random_s,
        points_per_min: d(&a0, &a1, "cycles_consistent") / (elapsed / 60.0),
        undo_per_changed: d(&s0, &s1, "points_bytes") / written,
        durable_per_shipped: (w1.saturating_sub(w0)) as f64 / d(&a0, &a1, "bytes_shipped"),
    })
}

fn report(sc: &mut Scenario, steps: &[Step], secs: u32) {
    for s in steps {
        let v = format!("sitrep, {}", s.label);
        sc.metrics.push(Metric::new(
            "4 KiB writes/s reached",
            &v,
            "writes/s",
            true,
            vec![s.writes_per_s],
        ));
        sc.metrics.push(Metric::new(
            "crash-consistent points offered per minute",
            &v,
            "points/min",
            true,
            vec![s.points_per_min],
        ));
        sc.metrics.push(Metric::new(
            "undo bytes kept per byte written",
            &v,
            "ratio",
            false,
            vec![s.undo_per_changed],
        ));
        sc.metrics.push(Metric::new(
            "bytes written durably on the secondary per byte shipped",
            &v,
            "ratio",
            false,
            vec![s.durable_per_shipped],
        ));
    }
    sc.notes.push(format!(
        "{secs} s per step; the points-per-minute figure counts every offered point, the \
         retention (one per 30 s slot, the newest always) decides which stay"
    ));
    sc.commands.push(
        "target/release/sitrep-bench run points   # (scripts/bench.sh builds it first)".into(),
    );
}
