//! Scenarios 3 (shipping throughput), 4 (RPO lag) and 7 (memory): one pair of sites, one
//! protected disk, fio writing at fixed rates while the agent's status is sampled.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;

use super::Ctx;
use super::data::raw_copy;
use super::initial::RemoveOnDrop;
use super::sites::{Sites, drop_caches};
use crate::results::{Metric, Scenario, Series, TargetCheck};

/// The disk's name on both sites.
const NAME: &str = "ship";

/// One status sample.
#[derive(Debug, Clone, Copy)]
struct Sample {
    t: f64,
    lag: f64,
    backlog: f64,
}

/// The shared setup: sites, the protected device, the RSS trace for the memory scenario.
pub struct Bench {
    sites: Sites,
    dev: PathBuf,
    size: u64,
    logs: PathBuf,
    t0: Instant,
    /// Wire bytes per data byte shipped in the last [`Bench::load`] (compression, framing).
    wire_per_data: f64,
    /// (t, agent RSS, server RSS) over every run, for the memory scenario.
    rss: Vec<(f64, f64, f64)>,
    _src: RemoveOnDrop,
}

impl Bench {
    /// Brings up the sites and protects a disk whose backing file is in /dev/shm (the
    /// source's own disk speed is not what these scenarios measure; the replica is on disk).
    ///
    /// # Errors
    /// Setup or the initial copy fails.
    pub fn up(ctx: &Ctx) -> anyhow::Result<Self> {
        let size: u64 = if ctx.quick { 1 << 30 } else { 4 << 30 };
        let logs = ctx.logs("shipping")?;
        let src = PathBuf::from(format!(
            "/dev/shm/sitrep-bench-ship-{}.img",
            std::process::id()
        ));
        let work = ctx
            .tmp
            .join(format!("sitrep-bench-ship-{}", std::process::id()));
        let mut sites = Sites::up(
            &ctx.root.join("target/release/sitrep"),
            &work,
            &logs,
            "ship",
        )?;
        let dev = sites.loop_device(&src, size)?;
        sites.protect(&dev, NAME)?;
        sites.wait(NAME, 600)?;
        Ok(Self {
            sites,
            dev,
            size,
            logs,
            t0: Instant::now(),
            wire_per_data: f64::NAN,
            rss: Vec::new(),
            _src: RemoveOnDrop(src),
        })
    }

    fn sample(&mut self) -> anyhow::Result<Sample> {
        let st = self.sites.agent_disk(NAME)?;
        let (_, a) = self.sites.agent.as_ref().context("agent")?.rss()?;
        let (_, s) = self.sites.server.as_ref().context("server")?.rss()?;
        let t = self.t0.elapsed().as_secs_f64();
        self.rss.push((t, a as f64, s as f64));
        Ok(Sample {
            t,
            lag: st["lag_seconds"].as_f64().unwrap_or(f64::NAN),
            backlog: st["backlog_bytes"].as_f64().unwrap_or(f64::NAN),
        })
    }

    /// fio random writes of `bs` at `mb_s` MB/s for `secs`, sampling every `every`. Returns
    /// the samples, fio's achieved MB/s, and the seconds until the replica applied
    /// everything after fio stopped.
    fn load(
        &mut self,
        mb_s: u32,
        bs: &str,
        secs: u32,
        tag: &str,
    ) -> anyhow::Result<(Vec<Sample>, f64, f64)> {
        let out = self.logs.join(format!("fio-{tag}.json"));
        let before = self.sites.agent_disk(NAME)?;
        let mut fio = fio_child(&self.dev, mb_s, bs, secs, &out)?;
        let start = Instant::now();
        let mut samples = Vec::new();
        while fio.try_wait()?.is_none() {
            let mut s = self.sample()?;
            s.t = start.elapsed().as_secs_f64();
            samples.push(s);
            std::thread::sleep(Duration::from_millis(200));
        }
        let achieved = crate::fio::parse(&std::fs::read(&out)?)?.write_bw / 1e6;
        let c0 = Instant::now();
        self.sites.wait(NAME, 900)?;
        let catchup = c0.elapsed().as_secs_f64();
        let after = self.sites.agent_disk(NAME)?;
        let delta = |k: &str| after[k].as_f64().unwrap_or(0.0) - before[k].as_f64().unwrap_or(0.0);
        self.wire_per_data = delta("wire_bytes") / delta("bytes_shipped");
        Ok((samples, achieved, catchup))
    }

    /// Peak RSS (VmHWM) of the agent and the server so far.
    fn peaks(&self) -> anyhow::Result<(u64, u64)> {
        let (a, _) = self.sites.agent.as_ref().context("agent")?.rss()?;
        let (s, _) = self.sites.server.as_ref().context("server")?.rss()?;
        Ok((a, s))
    }
}

fn fio_child(dev: &Path, mb_s: u32, bs: &str, secs: u32, out: &Path) -> anyhow::Result<Child> {
    Command::new("fio")
        .args([
            "--name=load",
            "--rw=randwrite",
            "--direct=1",
            "--ioengine=libaio",
            "--iodepth=16",
        ])
        .arg(format!("--bs={bs}"))
        .arg(format!("--rate={mb_s}m"))
        .arg(format!("--filename={}", dev.display()))
        .args([
            "--time_based",
            "--randrepeat=0",
            "--norandommap",
            "--output-format=json",
        ])
        .arg(format!("--runtime={secs}"))
        .arg(format!("--output={}", out.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .context("starting fio")
}

fn pct(v: &[f64], p: f64) -> f64 {
    let mut s: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if s.is_empty() {
        return f64::NAN;
    }
    s.sort_by(f64::total_cmp);
    // Nearest rank: p/100 of the way from the first to the last sample.
    let i = (p / 100.0 * (s.len() - 1) as f64).round();
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        reason = "0 <= i < len"
    )]
    s[(i as usize).min(s.len() - 1)]
}

fn max(v: impl Iterator<Item = f64>) -> f64 {
    v.fold(0.0, f64::max)
}

/// Scenario 3: the rate ladder.
///
/// # Errors
/// A step fails.
pub fn shipping(ctx: &Ctx, b: &mut Bench, sc: &mut Scenario) -> anyhow::Result<()> {
    let (ladder, secs): (&[u32], u32) = if ctx.quick {
        (&[50, 100, 200], 8)
    } else {
        (&[50, 100, 150, 200, 250, 300, 400, 500], 20)
    };
    let ladder = rates_from_env("SITREP_BENCH_SHIP_RATES", ladder);
    sc.description = format!(
        "fio random writes (64 KiB, direct, incompressible data) on a protected {} GiB loop \
         device at fixed rates ({} s per step), continuous mode, TLS + zstd, between two network \
         namespaces; the agent's lag and backlog sampled every 200 ms. A rate is **sustained** \
         when fio reached ≥ 95 % of it and the lag did not grow: the maximum lag in the second \
         half of the step ≤ max(3 s, 1.5 × the first half's). The ladder stops at the first \
         rate not sustained. Baseline: a raw TCP copy (`cat | nc`) of as many bytes as the \
         highest sustained step wrote, from the same device over the same link.",
        b.size >> 30,
        secs
    );
    let (best, best_bytes) = climb_ladder(b, sc, &ladder, secs)?;
    let (bytes, raw) = baseline(b, best_bytes)?;
    report(ctx, sc, best, raw, bytes, secs);
    Ok(())
}

/// Runs the ladder up to the first rate not sustained; returns the highest sustained rate
/// (MB/s) and the bytes that step wrote.
fn climb_ladder(
    b: &mut Bench,
    sc: &mut Scenario,
    ladder: &[u32],
    secs: u32,
) -> anyhow::Result<(f64, u64)> {
    let (mut best, mut best_bytes) = (0.0f64, 0u64);
    let mut achieved_all = Vec::new();
    for &rate in ladder {
        let (s, achieved, catchup) = b.load(rate, "64k", secs, &format!("ship-{rate}"))?;
        let half = s.iter().map(|x| x.t).fold(0.0, f64::max) / 2.0;
        let first = max(s.iter().filter(|x| x.t <= half).map(|x| x.lag));
        let second = max(s.iter().filter(|x| x.t > half).map(|x| x.lag));
        let sustained = achieved >= 0.95 * f64::from(rate) && second <= (1.5 * first).max(3.0);
        eprintln!(
            "shipping {rate} MB/s: fio {achieved:.0} MB/s, lag max {first:.1} / {second:.1} s, \
             catch-up {catchup:.1} s, sustained {sustained}"
        );
        sc.series.push(Series {
            plot: "lag by offered rate".into(),
            label: format!("{rate} MB/s"),
            x_label: "seconds into the step".into(),
            y_label: "replication lag (s)".into(),
            points: s.iter().map(|x| (x.t, x.lag)).collect(),
        });
        sc.series.push(Series {
            plot: "backlog by offered rate".into(),
            label: format!("{rate} MB/s"),
            x_label: "seconds into the step".into(),
            y_label: "backlog (MiB)".into(),
            points: s
                .iter()
                .map(|x| (x.t, x.backlog / f64::from(1u32 << 20)))
                .collect(),
        });
        achieved_all.push((rate, achieved, first.max(second), catchup, sustained));
        sc.notes.push(format!(
            "step {rate} MB/s: {:.2} wire bytes per data byte (zstd while the link limits, \
             `--compression auto`)",
            b.wire_per_data
        ));
        if !sustained {
            sc.notes.push(format!(
                "{rate} MB/s not sustained: fio reached {achieved:.0} MB/s, lag max {first:.1} s \
                 (first half) → {second:.1} s (second half), {catchup:.1} s to catch up afterwards"
            ));
            break;
        }
        best = achieved;
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            reason = "a positive byte count far below 2^53"
        )]
        let bytes = (achieved * 1e6 * f64::from(secs)) as u64;
        best_bytes = bytes;
    }
    for (rate, achieved, lag, catchup, ok) in &achieved_all {
        sc.notes.push(format!(
            "step {rate} MB/s: fio {achieved:.0} MB/s, max lag {lag:.1} s, catch-up {catchup:.1} s, {}",
            if *ok { "sustained" } else { "NOT sustained" }
        ));
    }
    Ok((best, best_bytes))
}

/// Times a raw TCP copy of `best_bytes` (clamped) over the same link; returns the bytes and MB/s.
fn baseline(b: &Bench, best_bytes: u64) -> anyhow::Result<(u64, f64)> {
    // Baseline over the same link.
    let bytes = best_bytes.clamp(256 << 20, b.size);
    let copy = b.sites.work.join("raw-copy.img");
    drop_caches();
    let (t, _) = raw_copy(&b.sites, &b.dev, &copy, Some(bytes), &b.logs)?;
    let _ = std::fs::remove_file(&copy);
    let raw = bytes as f64 / t / 1e6;
    Ok((bytes, raw))
}

/// Fills the scenario's metrics, target and commands.
fn report(ctx: &Ctx, sc: &mut Scenario, best: f64, raw: f64, bytes: u64, secs: u32) {
    sc.metrics = vec![
        Metric::new(
            "highest sustained change rate",
            "sitrep",
            "MB/s",
            true,
            vec![best],
        ),
        Metric::new(
            "highest sustained change rate",
            "raw TCP copy (cat | nc)",
            "MB/s",
            true,
            vec![raw],
        ),
    ];
    sc.targets.push(TargetCheck {
        target: "≥ 200 MB/s sustained change rate shipped per disk with TLS + zstd on 2 cores"
            .into(),
        measured: format!(
            "{best:.0} MB/s sustained ({:.2}× the raw copy's {raw:.0} MB/s)",
            best / raw
        ),
        value: best,
        met: (!ctx.quick).then_some(best >= 200.0),
    });
    sc.commands = vec![
        format!(
            "fio --name=load --rw=randwrite --direct=1 --ioengine=libaio --iodepth=16 --bs=64k --rate=RATEm --filename=/dev/loopN --time_based --runtime={secs}"
        ),
        "sitrep status --json   # every 200 ms: lag_seconds, backlog_bytes".into(),
        format!(
            "sitrep-bench pipe send --from /dev/loopN --limit {bytes} --to 10.78.0.2:9601  # baseline"
        ),
    ];
}

/// The rates (MB/s) a scenario runs: `default`, or for experiments the comma-separated list
/// in the environment variable `var` (e.g. `SITREP_BENCH_RPO_RATES=50`).
fn rates_from_env(var: &str, default: &[u32]) -> Vec<u32> {
    std::env::var(var).map_or_else(
        |_| default.to_vec(),
        |v| v.split(',').filter_map(|r| r.trim().parse().ok()).collect(),
    )
}

/// Scenario 4: lag percentiles at 10, 50 and 100 MB/s.
///
/// # Errors
/// A step fails.
pub fn rpo(ctx: &Ctx, b: &mut Bench, sc: &mut Scenario) -> anyhow::Result<()> {
    let secs = if ctx.quick { 10 } else { 60 };
    sc.description = format!(
        "Continuous mode: fio 4 KiB random writes (direct, libaio, QD 16) at 10, 50 and 100 MB/s \
         for {secs} s each on the protected disk; the agent's replication lag (seconds since \
         the cut of the newest applied cycle while changes are pending, else 0) sampled every \
         200 ms from `sitrep status --json`. Percentiles are over the samples."
    );
    let mut p99_at_50 = f64::NAN;
    for rate in rates_from_env("SITREP_BENCH_RPO_RATES", &[10, 50, 100]) {
        let (s, achieved, catchup) = b.load(rate, "4k", secs, &format!("rpo-{rate}"))?;
        let lags: Vec<f64> = s.iter().map(|x| x.lag).collect();
        let (p50, p99, mx) = (
            pct(&lags, 50.0),
            pct(&lags, 99.0),
            max(lags.iter().copied()),
        );
        if rate == 50 {
            p99_at_50 = p99;
        }
        eprintln!(
            "rpo {rate} MB/s: fio {achieved:.0} MB/s, lag p50 {p50:.2} p99 {p99:.2} max {mx:.2} s"
        );
        let v = format!("{rate} MB/s");
        sc.metrics
            .push(Metric::new("lag p50", &v, "s", false, vec![p50]));
        sc.metrics
            .push(Metric::new("lag p99", &v, "s", false, vec![p99]));
        sc.metrics
            .push(Metric::new("lag max", &v, "s", false, vec![mx]));
        sc.metrics.push(Metric::new(
            "fio achieved",
            &v,
            "MB/s",
            true,
            vec![achieved],
        ));
        sc.metrics.push(Metric::new(
            "wire bytes per data byte",
            &v,
            "×",
            false,
            vec![b.wire_per_data],
        ));
        sc.notes.push(format!(
            "{rate} MB/s: fio reached {achieved:.1} MB/s; {} samples; catch-up after fio {catchup:.1} s",
            s.len()
        ));
        sc.series.push(Series {
            plot: "replication lag over time".into(),
            label: v,
            x_label: "seconds".into(),
            y_label: "lag (s)".into(),
            points: s.iter().map(|x| (x.t, x.lag)).collect(),
        });
    }
    sc.targets.push(TargetCheck {
        target: "Continuous mode: p99 replication lag < 1 s at 50 MB/s of writes".into(),
        measured: format!("p99 {p99_at_50:.2} s"),
        value: p99_at_50,
        met: (!ctx.quick).then_some(p99_at_50 < 1.0),
    });
    sc.commands = vec![
        format!(
            "fio --name=load --rw=randwrite --direct=1 --ioengine=libaio --iodepth=16 --bs=4k --rate={{10,50,100}}m --filename=/dev/loopN --time_based --runtime={secs}"
        ),
        "sitrep status --json   # every 200 ms".into(),
    ];
    Ok(())
}

/// Scenario 7: peak RSS of both daemons over the runs of scenarios 3 and 4.
///
/// # Errors
/// The daemons are gone.
pub fn memory(b: &Bench, sc: &mut Scenario) -> anyhow::Result<()> {
    let (a, s) = b.peaks()?;
    sc.description = "Resident memory of the agent and the server, sampled every 200 ms during \
        the shipping and RPO scenarios (including the overload step where the lag grows), and \
        their peaks (VmHWM). **Bounded** means the agent's peak during the overload is within \
        1.1 × + 16 MiB of its peak before it — more churn does not mean more memory."
        .into();
    let mib = f64::from(1u32 << 20);
    sc.metrics = vec![
        Metric::new(
            "peak RSS (VmHWM)",
            "agent",
            "MiB",
            false,
            vec![a as f64 / mib],
        ),
        Metric::new(
            "peak RSS (VmHWM)",
            "server",
            "MiB",
            false,
            vec![s as f64 / mib],
        ),
    ];
    for (label, i) in [("agent", 1), ("server", 2)] {
        sc.series.push(Series {
            plot: "resident memory".into(),
            label: label.into(),
            x_label: "seconds since setup".into(),
            y_label: "RSS (MiB)".into(),
            points: b
                .rss
                .iter()
                .map(|r| (r.0, if i == 1 { r.1 } else { r.2 } / mib))
                .collect(),
        });
    }
    // Bounded: the last quarter's agent RSS vs the peak before it.
    let n = b.rss.len();
    if n >= 8 {
        let before = max(b.rss[..n * 3 / 4].iter().map(|r| r.1));
        let after = max(b.rss[n * 3 / 4..].iter().map(|r| r.1));
        let bound = 1.1 * before + 16.0 * mib;
        sc.targets.push(TargetCheck {
            target: "Agent memory bounded under any churn".into(),
            measured: format!(
                "agent RSS peak {:.0} MiB in the last quarter of the runs vs {:.0} MiB before (peak {:.0} MiB)",
                after / mib, before / mib, a as f64 / mib
            ),
            value: after / before.max(1.0),
            met: Some(after <= bound),
        });
    }
    sc.commands = vec!["grep -E 'VmRSS|VmHWM' /proc/PID/status   # agent and server".into()];
    Ok(())
}
