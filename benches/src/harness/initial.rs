//! Scenario 5, initial replication: a disk that is half zero regions, first copied by a raw
//! TCP stream (`cat | nc`), then replicated by `sitrep protect` until the replica applied
//! it; alternating, on fresh sites each repetition. Time, bytes on the link, zero bytes
//! never sent, replica == source.

use std::path::Path;
use std::time::Instant;

use super::Ctx;
use super::data::{half_zero_image, raw_copy, same_bytes};
use super::sites::{Sites, drop_caches};
use crate::results::{Metric, Scenario, TargetCheck};

const CHUNK: u64 = 8 << 20;

/// Timings and byte counts collected over the repetitions.
#[derive(Default)]
struct Samples {
    t_sitrep: Vec<f64>,
    t_raw: Vec<f64>,
    w_sitrep: Vec<f64>,
    w_raw: Vec<f64>,
    zero_reported: Vec<f64>,
}

/// Runs the scenario.
///
/// # Errors
/// Setup fails, a copy fails, or a replica differs from its source.
pub fn run(ctx: &Ctx, sc: &mut Scenario) -> anyhow::Result<()> {
    let (size, reps) = if ctx.quick {
        (512u64 << 20, 1)
    } else {
        (4u64 << 30, 2)
    };
    describe(ctx, sc, size, reps);
    let logs = ctx.logs("initial")?;
    let src = ctx
        .tmp
        .join(format!("sitrep-bench-initial-{}.img", std::process::id()));
    let zero_bytes = half_zero_image(&src, size, CHUNK, 0x5eed)?;
    let _cleanup = RemoveOnDrop(src.clone());
    let mut sm = Samples::default();
    for rep in 1..=reps {
        run_rep(ctx, &logs, &src, size, rep, &mut sm)?;
    }
    report(ctx, sc, size, zero_bytes, sm);
    Ok(())
}

/// Sets the scenario's description for a `size`-byte disk and `reps` repetitions.
fn describe(ctx: &Ctx, sc: &mut Scenario, size: u64, reps: u32) {
    sc.description = format!(
        "A {} MiB disk (loop device, direct I/O, over a file in {}) whose {} MiB chunks \
         alternate between random (incompressible) data and zeros, so half of it is zero \
         regions. Baseline: the raw copy `cat DEVICE | nc` (a 1 MiB-buffer TCP stream from \
         site A into a file in site B, fsynced). sitrep: `sitrep protect` + `sitrep wait` on \
         fresh sites (TLS + zstd) until the replica applied the copy. Page cache dropped \
         before each; {reps} alternating repetition(s). Time ratio = raw copy time / sitrep \
         time (≥ 0.9 is the target). Bytes on the link are site A's veth rx+tx.",
        size >> 20,
        ctx.tmp.display(),
        CHUNK >> 20
    );
}

/// Runs one repetition on fresh sites: the raw copy, then sitrep; adds its samples to `sm`.
fn run_rep(
    ctx: &Ctx,
    logs: &Path,
    src: &Path,
    size: u64,
    rep: u32,
    sm: &mut Samples,
) -> anyhow::Result<()> {
    let Samples {
        t_sitrep,
        t_raw,
        w_sitrep,
        w_raw,
        zero_reported,
    } = sm;
    let work = ctx.tmp.join(format!(
        "sitrep-bench-initial-r{rep}-{}",
        std::process::id()
    ));
    let rlogs = logs.join(format!("r{rep}"));
    std::fs::create_dir_all(&rlogs)?;
    let mut sites = Sites::up(
        &ctx.root.join("target/release/sitrep"),
        &work,
        &rlogs,
        "init",
    )?;
    let dev = sites.attach_loop(src)?;
    // Baseline.
    let copy = work.join("raw-copy.img");
    drop_caches();
    let (secs, wire) = raw_copy(&sites, &dev, &copy, None, &rlogs)?;
    anyhow::ensure!(
        same_bytes(src, &copy, size)?,
        "the raw copy differs from the source"
    );
    std::fs::remove_file(&copy)?;
    t_raw.push(secs);
    w_raw.push(wire as f64);
    // sitrep.
    drop_caches();
    let (r0, x0) = sites.link_bytes()?;
    let t0 = Instant::now();
    sites.protect(&dev, "init")?;
    sites.wait("init", 3600)?;
    let secs = t0.elapsed().as_secs_f64();
    let (r1, x1) = sites.link_bytes()?;
    let st = sites.agent_disk("init")?;
    zero_reported.push(st["zero_bytes"].as_f64().unwrap_or(f64::NAN));
    t_sitrep.push(secs);
    w_sitrep.push(((r1 - r0) + (x1 - x0)) as f64);
    anyhow::ensure!(
        same_bytes(&dev, &sites.replica("init"), size)?,
        "rep {rep}: the replica differs from the source after the initial copy"
    );
    eprintln!(
        "initial r{rep}: raw {:.1} s, sitrep {secs:.1} s",
        t_raw[t_raw.len() - 1]
    );
    Ok(())
}

/// Fills the scenario's metrics, targets, notes and commands from the samples.
fn report(ctx: &Ctx, sc: &mut Scenario, size: u64, zero_bytes: u64, sm: Samples) {
    let Samples {
        t_sitrep,
        t_raw,
        w_sitrep,
        w_raw,
        zero_reported,
    } = sm;
    let t_raw_all = t_raw.clone();
    let ratios: Vec<f64> = t_raw.iter().zip(&t_sitrep).map(|(r, s)| r / s).collect();
    let ratio = crate::median(&ratios);
    let data = (size - zero_bytes) as f64;
    let wire_ratio = crate::median(&w_sitrep) / data;
    sc.metrics = vec![
        Metric::new("time", "sitrep", "s", false, t_sitrep.clone()),
        Metric::new("time", "cat | nc", "s", false, t_raw),
        Metric::new(
            "effective rate (disk size / time)",
            "sitrep",
            "MB/s",
            true,
            t_sitrep.iter().map(|t| size as f64 / t / 1e6).collect(),
        ),
        Metric::new(
            "link throughput (bytes on the link / time)",
            "sitrep",
            "MB/s",
            true,
            w_sitrep
                .iter()
                .zip(&t_sitrep)
                .map(|(w, t)| w / t / 1e6)
                .collect(),
        ),
        Metric::new(
            "link throughput (bytes on the link / time)",
            "cat | nc",
            "MB/s",
            true,
            w_raw
                .iter()
                .zip(&t_raw_all)
                .map(|(w, t)| w / t / 1e6)
                .collect(),
        ),
        Metric::new("bytes on the link", "sitrep", "bytes", false, w_sitrep),
        Metric::new("bytes on the link", "cat | nc", "bytes", false, w_raw),
        Metric::new(
            "zero bytes described, not sent",
            "sitrep",
            "bytes",
            true,
            zero_reported.clone(),
        ),
        Metric::new("raw copy time / sitrep time", "sitrep", "×", true, ratios),
    ];
    sc.targets.push(TargetCheck {
        target: "Initial replication ≥ 0.9× a raw `cat | nc` copy over the same link".into(),
        measured: format!("{ratio:.2}× (raw copy time / sitrep time, median)"),
        value: ratio,
        met: (!ctx.quick).then_some(ratio >= 0.9),
    });
    let zeros_ok = zero_reported
        .iter()
        .all(|z| (*z - zero_bytes as f64).abs() < 1.0);
    sc.targets.push(TargetCheck {
        target: "Initial replication: zero blocks never sent".into(),
        measured: format!(
            "{} of {} zero bytes described as zero ranges; link bytes {:.3}× the non-zero data",
            crate::median(&zero_reported),
            zero_bytes,
            wire_ratio
        ),
        value: wire_ratio,
        met: Some(zeros_ok && wire_ratio < 1.1),
    });
    sc.notes.push(
        "sitrep's time advantage comes mostly from not sending the zero half; the link \
         throughput row compares the two pipes on the bytes each actually moved (the raw \
         copy also writes the zeros into its file, sitrep's replica leaves them as holes)."
            .into(),
    );
    sc.commands = vec![
        "sitrep-bench pipe recv --listen 10.78.0.2:9601 --to COPY   # in site B (ip netns exec)".into(),
        "sitrep-bench pipe send --from /dev/loopN --to 10.78.0.2:9601 # in site A".into(),
        "sitrep protect /dev/loopN --to 10.78.0.2:9543 --name init --frequency continuous && sitrep wait init".into(),
    ];
}

/// Removes a file when dropped.
pub(crate) struct RemoveOnDrop(pub(crate) std::path::PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
