//! Scenario 6, checksum resync: runs `benches/resync/run.sh` (sitrep resync vs
//! `rsync --inplace --no-whole-file` between two network namespaces, on an image pair where
//! 1 % / 10 % of the 4 KiB blocks differ) and reads its results.json.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, bail};

use super::Ctx;
use crate::results::{Metric, Scenario, TargetCheck};

/// Runs the scenario.
///
/// # Errors
/// The script fails (it also fails when a destination differs from its source).
pub fn run(ctx: &Ctx, sc: &mut Scenario) -> anyhow::Result<()> {
    let logs = ctx.logs("resync")?;
    let raw = logs.join("raw");
    let mut args = vec![
        "--out".to_owned(),
        raw.display().to_string(),
        "--tmp".to_owned(),
        ctx.tmp.display().to_string(),
    ];
    if ctx.quick {
        args.push("--quick".into());
    } else {
        args.extend(["--reps".into(), "2".into()]);
    }
    sc.commands = vec![format!(
        "benches/resync/run.sh {}",
        args.join(" ")
            .replace(&raw.display().to_string(), "OUT/logs/resync/raw")
    )];
    sc.description = format!(
        "A {} image pair between two network namespaces where 1 % and 10 % of the 4 KiB blocks \
         differ (scattered, seeded; the same blocks for both tools). Baseline: `rsync --inplace \
         --no-whole-file --ignore-times` to an rsync daemon on site B. sitrep: the source is a \
         loop device, replicated, then the agent is killed (a tracking gap), the same blocks \
         change, and `sitrep resync NAME --now` is timed. Page cache dropped before each run; \
         destination == source checked after every run. Wire bytes are site A's veth rx+tx.",
        if ctx.quick { "512 MiB" } else { "4 GiB" }
    );
    let out = Command::new(ctx.root.join("benches/resync/run.sh"))
        .args(&args)
        .current_dir(&ctx.root)
        .output()
        .context("running benches/resync/run.sh")?;
    std::fs::write(
        logs.join("run.txt"),
        [&out.stdout[..], &out.stderr[..]].concat(),
    )?;
    sc.artifacts.push("logs/resync/run.txt".into());
    sc.artifacts.push("logs/resync/raw/report.md".into());
    if !out.status.success() {
        bail!(
            "benches/resync/run.sh failed ({}); see logs/resync/run.txt",
            out.status
        );
    }
    report(sc, ctx, &raw)
}

/// Reads the script's results.json under `raw` into the scenario's metrics and targets.
fn report(sc: &mut Scenario, ctx: &Ctx, raw: &Path) -> anyhow::Result<()> {
    let doc: serde_json::Value = serde_json::from_slice(&std::fs::read(raw.join("results.json"))?)?;
    let cases = doc["cases"].as_array().context("results.json: no cases")?;
    let pick = |tool: &str, pct: f64, key: &str| -> Vec<f64> {
        cases
            .iter()
            .filter(|c| c["tool"] == tool && c["percent"].as_f64() == Some(pct))
            .filter_map(|c| c[key].as_f64())
            .collect()
    };
    for pct in [1.0, 10.0] {
        let p = format!("{pct} % differing");
        sc.metrics.push(Metric::new(
            &format!("time, {p}"),
            "sitrep",
            "s",
            false,
            pick("sitrep", pct, "seconds"),
        ));
        sc.metrics.push(Metric::new(
            &format!("time, {p}"),
            "rsync",
            "s",
            false,
            pick("rsync", pct, "seconds"),
        ));
        sc.metrics.push(Metric::new(
            &format!("bytes on the link, {p}"),
            "sitrep",
            "bytes",
            false,
            pick("sitrep", pct, "wire_bytes"),
        ));
        sc.metrics.push(Metric::new(
            &format!("bytes on the link, {p}"),
            "rsync",
            "bytes",
            false,
            pick("rsync", pct, "wire_bytes"),
        ));
        sc.metrics.push(Metric::new(
            &format!("wire ÷ (differing + digests), {p}"),
            "sitrep",
            "×",
            false,
            pick("sitrep", pct, "wire_per_needed"),
        ));
    }
    let t = crate::median(&pick("sitrep", 1.0, "time_vs_rsync"));
    let w = crate::median(&pick("sitrep", 1.0, "wire_per_needed"));
    sc.targets.push(TargetCheck {
        target: "Resync of a 4 GiB disk with 1 % differing blocks: ≤ 1/3 of the time of `rsync --inplace --no-whole-file`".into(),
        measured: format!("{t:.2}× rsync's time"),
        value: t,
        met: (!ctx.quick).then_some(t <= 1.0 / 3.0),
    });
    sc.targets.push(TargetCheck {
        target: "Resync: wire bytes ≤ 1.1 × (differing bytes + digests)".into(),
        measured: format!("{w:.2}×"),
        value: w,
        met: (!ctx.quick).then_some(w <= 1.1),
    });
    Ok(())
}
