//! Scenario 8, micro benchmarks: runs the workspace's criterion benches of sitrep's hot paths
//! (`cargo bench -p <package> --bench <name>`) and turns criterion's JSON results into
//! metrics.
//!
//! Each bench writes into its own fresh `CRITERION_HOME` (`OUT/criterion/<bench>/`), so only
//! this run's results are read (no stale benchmark from an earlier run or a renamed function)
//! and the raw JSON is kept beside `results.json`. For every benchmark criterion leaves
//! `<group>/<function>[/<value>]/new/{benchmark,estimates,sample}.json`: `benchmark.json`
//! names it and holds its throughput per iteration, `sample.json` the measured
//! (iterations, nanoseconds) pairs, `estimates.json` the summary statistics.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, bail};
use serde_json::Value;

use super::Ctx;
use crate::results::{Metric, Scenario, Series};

/// The benches run, in order: (package, bench target).
const BENCHES: [(&str, &str); 4] = [
    ("sitrep-hrl", "append"),
    ("sitrep-hrl", "dirty"),
    ("sitrep-tracker-bpf", "coalesce"),
    ("sitrep-base", "digest"),
];

const DESCRIPTION: &str = "Criterion benches of the hot paths, each run with `cargo bench` \
(release profile). **hrl append** (`hrl/benches/append.rs`): the HRL `LogWriter` configured as \
the trackers configure it (preallocated 16 MiB logs, so rotation happens inside the measured \
commits), writing to a log directory on disk (`SITREP_BENCH_TMP`) with the real `pwrite` + \
`fdatasync` per commit: `hrl_append_extents/commit_every/N` appends extents-mode records of one \
random 4 KiB extent of a 1 GiB disk and commits every N records (records/s); \
`hrl_append_extents/pipelined` drives the split commit as the ublk target does (a log thread \
writes and syncs one batch while appends continue; 65 536 records per iteration, all durable \
at its end); `hrl_append_journal/commit_every/N` appends journal-mode records carrying 4 KiB of \
data each (data MB/s). **Dirty map** (`hrl/benches/dirty.rs`): inserts of 65 536 write extents \
into a fresh `DirtyMap` of a 1 GiB disk — random 4 KiB writes with the default budget (exact \
mode), the same with a 1 024-extent budget (bitmap mode after the fallback), sequential 4 KiB \
writes (events/s). **Coalescer** (`tracker-bpf/benches/coalesce.rs`): the eBPF tracker's \
window of 65 536 write events pushed and drained into records, random and sequential 4 KiB \
writes (events/s). **Digest** (`base/benches/digest.rs`): fine and coarse resync digests of \
64 MiB with xxh3 and keyed BLAKE3 (MB/s). Each value is a throughput computed from \
criterion's per-sample time per iteration; the median is criterion's.";

/// Runs the scenario.
///
/// # Errors
/// A bench fails to build or run (the error names its log), or its results cannot be read.
pub fn run(ctx: &Ctx) -> anyhow::Result<Scenario> {
    let mut sc = Scenario::default();
    run_into(ctx, &mut sc)?;
    Ok(sc)
}

/// Runs the scenario into `sc` (like the other scenarios), which keeps what was measured
/// before an error; an id and title already set are kept.
///
/// # Errors
/// As [`run`].
pub fn run_into(ctx: &Ctx, sc: &mut Scenario) -> anyhow::Result<()> {
    let started = Instant::now();
    if sc.id.is_empty() {
        sc.id = "micro".into();
    }
    if sc.title.is_empty() {
        sc.title = "Micro benchmarks (criterion)".into();
    }
    sc.description = DESCRIPTION.into();
    sc.notes.push(
        "No baselines: these are sitrep's own hot paths, measured for regressions and to show \
         what bounds the end-to-end numbers; the comparisons with other tools are in the other \
         scenarios."
            .into(),
    );
    sc.notes.push(
        "MB/s are 10^6 bytes/s; criterion's own output (the logs) prints MiB/s. \
         Melem/s = 10^6 records or events per second."
            .into(),
    );
    sc.notes.push(format!(
        "The append benches' commits are fdatasyncs on the disk holding {}: their numbers are \
         that disk's (and its other users') as much as the writer's. Small N is sync-bound, \
         large N and the pipelined bench are bound by encoding.",
        ctx.tmp.display()
    ));
    if ctx.quick {
        sc.notes.push(
            "--quick: criterion's quick mode (two measurements per benchmark, n and 2n \
             iterations, until they agree within 5 % or 5 s pass): indicative only."
                .into(),
        );
    }
    let logs = ctx.logs("micro")?;
    // Absolute: cargo runs each bench binary in its package's directory.
    let home = std::path::absolute(ctx.out.join("criterion"))?;
    let tmp = std::path::absolute(&ctx.tmp)?;
    if home.exists() {
        std::fs::remove_dir_all(&home).with_context(|| format!("clearing {}", home.display()))?;
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut walls = Vec::new();
    for (package, bench) in BENCHES {
        let bench_started = Instant::now();
        let bench_home = home.join(bench);
        std::fs::create_dir_all(&bench_home)?;
        let args = bench_args(package, bench, ctx.quick);
        sc.commands.push(format!(
            "CRITERION_HOME={} SITREP_BENCH_TMP={} cargo {}",
            bench_home.display(),
            tmp.display(),
            args.join(" ")
        ));
        let log_path = logs.join(format!("{bench}.txt"));
        let log = std::fs::File::create(&log_path)
            .with_context(|| format!("creating {}", log_path.display()))?;
        let status = Command::new(&cargo)
            .args(&args)
            .current_dir(&ctx.root)
            .env("CRITERION_HOME", &bench_home)
            .env("SITREP_BENCH_TMP", &tmp)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .status()
            .with_context(|| format!("running cargo bench -p {package} --bench {bench}"))?;
        sc.artifacts.push(format!("logs/micro/{bench}.txt"));
        if !status.success() {
            bail!(
                "cargo bench -p {package} --bench {bench} failed ({status}); see {}",
                log_path.display()
            );
        }
        let metrics = read_criterion(&bench_home)
            .with_context(|| format!("reading the results of bench {bench}"))?;
        if metrics.is_empty() {
            bail!(
                "cargo bench -p {package} --bench {bench} left no results in {}; see {}",
                bench_home.display(),
                log_path.display()
            );
        }
        sc.metrics.extend(metrics);
        sc.artifacts.push(format!("criterion/{bench}/"));
        walls.push(format!(
            "{bench} {:.0} s",
            bench_started.elapsed().as_secs_f64()
        ));
    }
    sc.notes.push(format!(
        "Wall time per bench (its build included): {}.",
        walls.join(", ")
    ));
    sc.series = commit_series(&sc.metrics);
    sc.seconds = started.elapsed().as_secs_f64();
    Ok(())
}

/// `cargo` arguments running one bench: criterion's quick mode for `--quick`, its defaults
/// (3 s warm-up, 5 s of measurement, the sample size each bench sets) otherwise.
fn bench_args(package: &str, bench: &str, quick: bool) -> Vec<String> {
    let mut args: Vec<String> = ["bench", "-p", package, "--bench", bench, "--", "--noplot"]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
    if quick {
        args.push("--quick".into());
    }
    args
}

/// One metric per benchmark criterion left under `home`, sorted by name (numbers in names
/// compare as numbers).
///
/// # Errors
/// A directory cannot be read, or a JSON file is missing or malformed.
pub fn read_criterion(home: &Path) -> anyhow::Result<Vec<Metric>> {
    let mut dirs = Vec::new();
    find_new_dirs(home, &mut dirs)?;
    let mut metrics = Vec::new();
    for dir in dirs {
        let read = |name: &str| {
            let p = dir.join(name);
            std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))
        };
        let sample = read("sample.json").ok();
        let metric = metric_from_json(
            &read("benchmark.json")?,
            &read("estimates.json")?,
            sample.as_deref(),
        )
        .with_context(|| format!("in {}", dir.display()))?;
        metrics.push(metric);
    }
    metrics.sort_by_key(|m| natural_key(&m.name));
    Ok(metrics)
}

/// Every `new/` directory holding a `benchmark.json` below `dir`.
fn find_new_dirs(dir: &Path, out: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let path = entry?.path();
        if !path.is_dir() {
            continue;
        }
        if path.file_name().is_some_and(|n| n == "new") && path.join("benchmark.json").is_file() {
            out.push(path);
        } else {
            find_new_dirs(&path, out)?;
        }
    }
    Ok(())
}

/// A metric from one benchmark's criterion files: named `group/function[/value]`, variant
/// `sitrep`, in Melem/s or MB/s (or ns per iteration when the bench sets no throughput).
/// Samples are the per-sample throughputs of `sample.json`; without it, criterion's median.
///
/// # Errors
/// Malformed JSON or missing fields.
pub fn metric_from_json(
    benchmark: &str,
    estimates: &str,
    sample: Option<&str>,
) -> anyhow::Result<Metric> {
    let bench: Value = serde_json::from_str(benchmark).context("benchmark.json")?;
    let est: Value = serde_json::from_str(estimates).context("estimates.json")?;
    let name = [
        &bench["group_id"],
        &bench["function_id"],
        &bench["value_str"],
    ]
    .iter()
    .filter_map(|v| v.as_str())
    .collect::<Vec<_>>()
    .join("/");
    if name.is_empty() {
        bail!("benchmark.json names no benchmark");
    }
    let median_ns = est["median"]["point_estimate"]
        .as_f64()
        .context("estimates.json has no median.point_estimate")?;
    // Per-sample time per iteration, ns.
    let mut per_iter: Vec<f64> = Vec::new();
    if let Some(s) = sample {
        let s: Value = serde_json::from_str(s).context("sample.json")?;
        let nums = |k: &str| -> Vec<f64> {
            s[k].as_array()
                .map(|a| a.iter().filter_map(Value::as_f64).collect())
                .unwrap_or_default()
        };
        let (iters, times) = (nums("iters"), nums("times"));
        if iters.len() == times.len() {
            per_iter = iters
                .iter()
                .zip(&times)
                .filter(|&(&i, &t)| i > 0.0 && t > 0.0)
                .map(|(&i, &t)| t / i)
                .collect();
        }
    }
    if per_iter.is_empty() {
        per_iter.push(median_ns);
    }
    // Throughput is {"Elements": n}, {"Bytes": n} or {"BytesDecimal": n}; per ns × 1e3 is
    // millions per second.
    let thr = &bench["throughput"];
    let (unit, per) = if let Some(n) = thr["Elements"].as_f64() {
        ("Melem/s", n)
    } else if let Some(n) = thr["Bytes"]
        .as_f64()
        .or_else(|| thr["BytesDecimal"].as_f64())
    {
        ("MB/s", n)
    } else {
        return Ok(Metric::new(&name, "sitrep", "ns", false, per_iter));
    };
    let samples = per_iter.iter().map(|ns| per * 1e3 / ns).collect();
    Ok(Metric::new(&name, "sitrep", unit, true, samples))
}

/// Sort key splitting `s` at `/`, numbers comparing as numbers (`…/16` before `…/256`).
fn natural_key(s: &str) -> Vec<(u8, u64, String)> {
    s.split('/')
        .map(|p| match p.parse::<u64>() {
            Ok(n) => (0, n, String::new()),
            Err(_) => (1, 0, p.to_owned()),
        })
        .collect()
}

/// Throughput against records per commit, one line per `…/commit_every/N` group.
fn commit_series(metrics: &[Metric]) -> Vec<Series> {
    let mut series: Vec<Series> = Vec::new();
    for m in metrics {
        let Some((group, n)) = m.name.rsplit_once("/commit_every/") else {
            continue;
        };
        let Ok(n) = n.parse::<u32>() else { continue };
        let label = group.trim_start_matches("hrl_append_").to_owned();
        match series.iter_mut().find(|s| s.label == label) {
            Some(s) => s.points.push((f64::from(n), m.median)),
            None => series.push(Series {
                plot: format!("hrl append: {} vs records per commit", m.unit),
                label,
                x_label: "records per commit (one fdatasync each)".into(),
                y_label: m.unit.clone(),
                points: vec![(f64::from(n), m.median)],
            }),
        }
    }
    for s in &mut series {
        s.points.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    series
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const BENCHMARK: &str = r#"{"group_id":"hrl_append_extents","function_id":"commit_every",
        "value_str":"16","throughput":{"Elements":16},
        "full_id":"hrl_append_extents/commit_every/16",
        "directory_name":"hrl_append_extents/commit_every/16",
        "title":"hrl_append_extents/commit_every/16"}"#;
    const ESTIMATES: &str = r#"{"mean":{"confidence_interval":{"confidence_level":0.95,
        "lower_bound":3900.0,"upper_bound":4100.0},"point_estimate":4000.0,"standard_error":50.0},
        "median":{"confidence_interval":{"confidence_level":0.95,"lower_bound":3950.0,
        "upper_bound":4050.0},"point_estimate":4000.0,"standard_error":20.0},
        "median_abs_dev":{"confidence_interval":{"confidence_level":0.95,"lower_bound":1.0,
        "upper_bound":2.0},"point_estimate":1.5,"standard_error":0.1},"slope":null,
        "std_dev":{"confidence_interval":{"confidence_level":0.95,"lower_bound":1.0,
        "upper_bound":2.0},"point_estimate":1.5,"standard_error":0.1}}"#;
    const SAMPLE: &str =
        r#"{"sampling_mode":"Linear","iters":[1.0,2.0,3.0],"times":[4000.0,8000.0,16000.0]}"#;

    #[test]
    fn elements_from_samples() {
        let m = metric_from_json(BENCHMARK, ESTIMATES, Some(SAMPLE)).unwrap();
        assert_eq!(m.name, "hrl_append_extents/commit_every/16");
        assert_eq!((m.variant.as_str(), m.unit.as_str()), ("sitrep", "Melem/s"));
        assert!(m.higher_is_better);
        // 16 records in 4000 ns = 4 Melem/s; the third sample took 16000/3 ns per iteration.
        assert_eq!(m.samples.len(), 3);
        assert!((m.samples[0] - 4.0).abs() < 1e-12);
        assert!((m.samples[2] - 3.0).abs() < 1e-12);
        assert!((m.median - 4.0).abs() < 1e-12);
    }

    #[test]
    fn bytes_from_the_median_without_samples() {
        let bench = r#"{"group_id":"digest_64MiB","function_id":"xxh3","value_str":null,
            "throughput":{"Bytes":67108864}}"#;
        let m = metric_from_json(bench, ESTIMATES, None).unwrap();
        assert_eq!(m.name, "digest_64MiB/xxh3");
        assert_eq!(m.unit, "MB/s");
        assert_eq!(m.samples.len(), 1);
        // 67 108 864 bytes in 4 µs.
        assert!((m.median - 16_777_216.0).abs() < 1e-6);
    }

    #[test]
    fn no_throughput_is_time_per_iteration() {
        let bench = r#"{"group_id":"g","function_id":null,"value_str":null,"throughput":null}"#;
        let m = metric_from_json(bench, ESTIMATES, None).unwrap();
        assert_eq!((m.name.as_str(), m.unit.as_str()), ("g", "ns"));
        assert!(!m.higher_is_better);
        assert!(metric_from_json("{}", ESTIMATES, None).is_err());
        assert!(metric_from_json(bench, "{}", None).is_err());
    }

    #[test]
    fn reads_a_criterion_tree_in_natural_order() {
        let home = std::env::temp_dir().join(format!("sitrep-micro-test-{}", std::process::id()));
        for n in ["256", "16"] {
            let d = home
                .join("hrl_append_extents/commit_every")
                .join(n)
                .join("new");
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("benchmark.json"), BENCHMARK.replace("16", n)).unwrap();
            std::fs::write(d.join("estimates.json"), ESTIMATES).unwrap();
        }
        // criterion's report/ and base/ siblings are not results of this run.
        std::fs::create_dir_all(home.join("hrl_append_extents/commit_every/16/base")).unwrap();
        let metrics = read_criterion(&home);
        std::fs::remove_dir_all(&home).unwrap();
        let metrics = metrics.unwrap();
        let names: Vec<_> = metrics.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "hrl_append_extents/commit_every/16",
                "hrl_append_extents/commit_every/256"
            ]
        );
        let series = commit_series(&metrics);
        assert_eq!(series.len(), 1);
        assert_eq!(series[0].label, "extents");
        assert_eq!(series[0].points.len(), 2);
        assert!((series[0].points[1].0 - 256.0).abs() < 1e-12);
    }
}
