//! Scenario 1, tracking overhead: runs the `tracker_overhead` bench binary (fio 4k random
//! writes, QD 32, io_uring, O_DIRECT on a loop device over tmpfs; untracked and tracked
//! rounds alternating) and turns its JSON into metrics.

use std::process::Command;

use anyhow::{Context, bail};

use super::Ctx;
use crate::results::{Metric, Scenario, TargetCheck};

fn f64s(v: &serde_json::Value) -> Vec<f64> {
    v.as_array()
        .map(|a| a.iter().filter_map(serde_json::Value::as_f64).collect())
        .unwrap_or_default()
}

/// Runs the scenario.
///
/// # Errors
/// The bench binary fails (including when it detects a lost write).
pub fn run(ctx: &Ctx, sc: &mut Scenario) -> anyhow::Result<()> {
    let (rounds, secs, mib) = if ctx.quick {
        (2, 3, 256)
    } else {
        (5, 10, 1024)
    };
    let logs = ctx.logs("tracking")?;
    let json = logs.join("tracker_overhead.json");
    let bin = ctx.root.join("target/release/tracker_overhead");
    let args = [
        "--rounds".to_owned(),
        rounds.to_string(),
        "--seconds".to_owned(),
        secs.to_string(),
        "--size-mib".to_owned(),
        mib.to_string(),
        "--json".to_owned(),
        json.display().to_string(),
    ];
    sc.commands = vec![format!(
        "target/release/tracker_overhead {}",
        args.join(" ")
    )];
    sc.description = format!(
        "fio 4 KiB random writes, QD 32, io_uring, O_DIRECT on a loop device over a {mib} MiB \
         file in /dev/shm (the cheapest I/O there is, so the tracker's share is as large as it \
         gets); {rounds} pairs of rounds of {secs} s, untracked then tracked (the eBPF tracker \
         in its default configuration, logging to a temp dir). Ratio = median of the per-round \
         tracked / untracked IOPS. Events/s = ring events received per second of tracked fio."
    );
    let out = Command::new(&bin)
        .args(&args)
        .output()
        .with_context(|| format!("running {}", bin.display()))?;
    std::fs::write(
        logs.join("tracker_overhead.txt"),
        [&out.stdout[..], &out.stderr[..]].concat(),
    )?;
    sc.artifacts
        .push("logs/tracking/tracker_overhead.txt".into());
    sc.artifacts
        .push("logs/tracking/tracker_overhead.json".into());
    let doc: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json).with_context(|| {
            format!(
                "tracker_overhead wrote no JSON ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            )
        })?)?;
    report(ctx, sc, &doc, rounds, secs);
    if !out.status.success() {
        bail!(
            "tracker_overhead failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .last()
                .unwrap_or("")
        );
    }
    Ok(())
}

/// Turns the bench binary's JSON into the scenario's metrics, notes and targets.
fn report(ctx: &Ctx, sc: &mut Scenario, doc: &serde_json::Value, rounds: i32, secs: i32) {
    let ratios = f64s(&doc["ratios"]);
    let ratio = crate::median(&ratios);
    let events = doc["events"].as_f64().unwrap_or(f64::NAN);
    let writes = doc["fio_writes"].as_f64().unwrap_or(f64::NAN);
    let lost = doc["lost"].as_bool().unwrap_or(true);
    let per_s = events / (f64::from(rounds) * f64::from(secs));
    sc.metrics = vec![
        Metric::new(
            "4k randwrite IOPS",
            "tracked",
            "IOPS",
            true,
            f64s(&doc["tracked_iops"]),
        ),
        Metric::new(
            "4k randwrite IOPS",
            "untracked",
            "IOPS",
            true,
            f64s(&doc["untracked_iops"]),
        ),
        Metric::new(
            "tracked / untracked (per round)",
            "sitrep",
            "×",
            true,
            ratios,
        ),
        Metric::new(
            "ring events per second (tracked rounds)",
            "sitrep",
            "events/s",
            true,
            vec![per_s],
        ),
        Metric::new(
            "tracker userspace CPU",
            "sitrep",
            "% of a core",
            false,
            f64s(&doc["tracker_cpu_fraction"])
                .iter()
                .map(|c| c * 100.0)
                .collect(),
        ),
    ];
    sc.notes.push(format!(
        "fio writes {writes:.0}; ring events {events:.0}; fine-bitmap writes {}; ring drops {} \
         (fell back to the bitmap); unaccounted {}",
        doc["bitmap_writes"], doc["drops"], doc["unaccounted"]
    ));
    sc.targets.push(TargetCheck {
        target: "eBPF tracking costs ≤ 1 % of 4k random-write IOPS on a loop device".into(),
        measured: format!("{ratio:.3} × untracked IOPS"),
        value: ratio,
        met: (!ctx.quick).then_some(ratio >= 0.99),
    });
    sc.targets.push(TargetCheck {
        target: "eBPF tracking loses 0 writes at the device's maximum rate".into(),
        measured: format!(
            "{} lost (events + bitmap + drops vs fio's writes)",
            if lost { "some" } else { "0" }
        ),
        value: if lost { 1.0 } else { 0.0 },
        met: Some(!lost),
    });
}
