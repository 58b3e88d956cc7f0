//! Scenario 2, the ublk disk: runs `benches/ublk/run.sh` (boots the Debian 6.12 kernel under
//! qemu, runs the same fio jobs against the kernel loop driver, rublk's loop target and a
//! tracked sitrep ublk disk in both modes) and reads its results.json.

use std::process::Command;

use anyhow::{Context, bail};

use super::Ctx;
use crate::results::{Metric, Scenario, TargetCheck};

/// Starts `cargo install rublk` (niced, in the background) when rublk is not built yet.
#[must_use]
pub fn prefetch_rublk(ctx: &Ctx) -> Option<std::process::Child> {
    let tools = ctx.root.join("target/bench-tools");
    if tools.join("bin/rublk").exists() {
        return None;
    }
    let log = std::fs::File::create(ctx.logs("ublk").ok()?.join("rublk-install.log")).ok()?;
    eprintln!("building rublk in the background (niced) for the ublk scenario");
    Command::new("nice")
        .args([
            "-n", "19", "cargo", "install", "rublk", "--locked", "--root",
        ])
        .arg(&tools)
        .current_dir(&ctx.root)
        .stdout(log.try_clone().ok()?)
        .stderr(log)
        .spawn()
        .ok()
}

/// Waits for [`prefetch_rublk`]'s build.
///
/// # Errors
/// The build failed.
pub fn wait_rublk(child: Option<std::process::Child>) -> anyhow::Result<()> {
    if let Some(mut c) = child {
        let st = c.wait()?;
        if !st.success() {
            bail!("cargo install rublk failed ({st}); see logs/ublk/rublk-install.log");
        }
    }
    Ok(())
}

/// Runs the scenario.
///
/// # Errors
/// The VM run fails.
pub fn run(ctx: &Ctx, sc: &mut Scenario) -> anyhow::Result<()> {
    // Rounds alternate the targets; inside one TCG VM a target's IOPS swing ±30 % between
    // adjacent rounds, so more, shorter rounds and per-round (paired) ratios resolve more
    // than two long ones.
    let (secs, rounds) = if ctx.quick { (2, 1) } else { (4, 4) };
    let logs = ctx.logs("ublk")?;
    let raw = logs.join("raw");
    sc.commands = vec![format!(
        "SITREP_BENCH_OUT=OUT/logs/ublk/raw benches/ublk/run.sh {secs} {rounds}"
    )];
    sc.description = format!(
        "Inside one VM (Debian 6.12 kernel, qemu without KVM: software emulation, so only \
         ratios inside the run mean anything): fio 4 KiB random write and read (QD 32) and 1 MiB \
         sequential write (QD 8), io_uring, O_DIRECT, {secs} s per job, {rounds} round(s) \
         alternating the targets, on the same 512 MiB backing file in the guest's tmpfs: the \
         kernel loop driver (direct I/O), rublk's loop target (1 queue, depth 128), and a \
         tracked sitrep ublk disk (1 queue, depth 128) in extents and journal mode with its log \
         on ext4 (default durability: the log is synced at the disk's flushes and FUA writes), \
         and in extents mode with `--durability write` (the log synced before every change). \
         Ratios are against rublk; the target's ratio is the median of the per-round ratios \
         (each round's sitrep result over the same round's rublk result)."
    );
    let out = Command::new(ctx.root.join("benches/ublk/run.sh"))
        .args([secs.to_string(), rounds.to_string()])
        .env("SITREP_BENCH_OUT", &raw)
        .current_dir(&ctx.root)
        .output()
        .context("running benches/ublk/run.sh")?;
    std::fs::write(
        logs.join("run.txt"),
        [&out.stdout[..], &out.stderr[..]].concat(),
    )?;
    sc.artifacts.push("logs/ublk/run.txt".into());
    sc.artifacts.push("logs/ublk/raw/vm.log".into());
    if !out.status.success() {
        bail!(
            "benches/ublk/run.sh failed ({}); see logs/ublk/run.txt",
            out.status
        );
    }
    let doc: serde_json::Value = serde_json::from_slice(&std::fs::read(raw.join("results.json"))?)?;
    let s = &doc["samples"];
    let get = |t: &str, j: &str| -> Vec<f64> {
        s[t][j]
            .as_array()
            .map(|a| a.iter().filter_map(serde_json::Value::as_f64).collect())
            .unwrap_or_default()
    };
    let names = [
        ("extents", "sitrep tracked, extents"),
        ("journal", "sitrep tracked, journal"),
        (
            "extents-write",
            "sitrep tracked, extents, --durability write",
        ),
        ("kloop", "kernel loop (direct I/O)"),
        ("rublk", "rublk loop target"),
    ];
    for (job, metric, unit, scale) in [
        ("randwrite4k", "4k randwrite IOPS", "IOPS", 1.0),
        ("randread4k", "4k randread IOPS", "IOPS", 1.0),
        ("seqwrite1m", "1M seq write", "MB/s", 1e-6),
    ] {
        for (t, label) in names {
            let v: Vec<f64> = get(t, job).iter().map(|x| x * scale).collect();
            sc.metrics.push(Metric::new(metric, label, unit, true, v));
        }
    }
    let paired = |t: &str, j: &str| paired_ratio(&get(t, j), &get("rublk", j));
    let ratio = paired("extents", "randwrite4k");
    let rread = paired("extents", "randread4k");
    sc.targets.push(TargetCheck {
        target: "A tracked ublk disk reaches ≥ 1.0× the IOPS of rublk's loop target (same backing file, same VM run)".into(),
        measured: format!(
            "extents mode: {ratio:.2}× rublk (4k randwrite), {rread:.2}× (4k randread); journal mode: {:.2}× (randwrite); extents with --durability write: {:.2}× (randwrite) — medians of per-round ratios",
            paired("journal", "randwrite4k"),
            paired("extents-write", "randwrite4k")
        ),
        value: ratio,
        met: (!ctx.quick).then_some(ratio >= 1.0 && rread >= 1.0),
    });
    Ok(())
}

/// The median of the per-round ratios `a[r] / b[r]` (rounds where both ran).
fn paired_ratio(a: &[f64], b: &[f64]) -> f64 {
    let ratios: Vec<f64> = a
        .iter()
        .zip(b)
        .filter(|(_, y)| **y > 0.0)
        .map(|(x, y)| x / y)
        .collect();
    crate::median(&ratios)
}

#[cfg(test)]
mod tests {
    #[test]
    fn paired_ratio_is_the_median_of_per_round_ratios() {
        // Round 2's baseline collapsed: the rounds say 0.5, 2.0 and 0.6.
        let a = [50.0, 20.0, 60.0];
        let b = [100.0, 10.0, 100.0];
        assert!((super::paired_ratio(&a, &b) - 0.6).abs() < 1e-9);
        assert!(super::paired_ratio(&[1.0], &[0.0]).is_nan());
    }
}
