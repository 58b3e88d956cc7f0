//! `sitrep workload`: write self-describing blocks to one or more devices and record every
//! write, so `sitrep check` can later verify a replica or recovery point of them (see
//! docs/checker.md).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use base::units::{parse_duration, parse_rate};
use checker::{BlockSize, WorkloadConfig, run_workload};
use clap::Args;

use crate::Outcome;
use crate::human;

/// Arguments of `sitrep workload`.
#[derive(Args)]
pub(crate) struct WorkloadArgs {
    /// The block devices (or files) to write: one, or several written as one application's
    /// disks (each write records the write on another device it depends on). EVERY block of
    /// each is overwritten.
    #[arg(value_name = "DEVICE", required = true, num_args = 1..)]
    devices: Vec<PathBuf>,
    /// The history file to create (must not exist): every write's block, seq, issue and
    /// completion time.
    #[arg(long)]
    history: PathBuf,
    /// Bytes per block and per write: a power of two from 512 to 1M.
    #[arg(long, default_value = "4k", value_parser = block_size)]
    block_size: BlockSize,
    /// How long to write random blocks after the initialization pass (which writes every
    /// block once), e.g. 10s, 2m. Default: until SIGINT/SIGTERM.
    #[arg(long, value_parser = duration)]
    duration: Option<Duration>,
    /// Limit in bytes per second over all writers, e.g. 512K, 50M. Default: unlimited.
    #[arg(long, value_parser = rate)]
    rate: Option<u64>,
    /// Writes in flight (writer threads, synchronous O_DIRECT).
    #[arg(long, default_value_t = 4)]
    queue_depth: usize,
    /// Random writes go only to the first SIZE bytes of each device (a hot set, e.g. 32M), as
    /// a database's busy pages do; the initialization pass still writes every block once.
    /// Default: the whole device.
    #[arg(long, value_name = "SIZE", value_parser = hot_set)]
    hot_set: Option<u64>,
    /// Print the summary as one JSON object.
    #[arg(long)]
    json: bool,
}

fn block_size(s: &str) -> Result<BlockSize, String> {
    BlockSize::parse(s).map_err(|e| e.to_string())
}

fn duration(s: &str) -> Result<Duration, String> {
    parse_duration(s)
}

fn hot_set(s: &str) -> Result<u64, String> {
    base::units::parse_size(s).map_err(|e| e.to_string())
}

fn rate(s: &str) -> Result<u64, String> {
    parse_rate(s)
}

/// Runs `sitrep workload`.
pub(crate) fn run(a: &WorkloadArgs) -> anyhow::Result<Outcome> {
    crate::stop::install()?;
    let cfg = WorkloadConfig {
        devices: a.devices.clone(),
        history: a.history.clone(),
        block_size: a.block_size,
        duration: a.duration,
        rate: a.rate,
        queue_depth: a.queue_depth,
        hot_set: a.hot_set,
    };
    let names = a
        .devices
        .iter()
        .map(|d| d.display().to_string())
        .collect::<Vec<_>>()
        .join(", ");
    eprintln!(
        "sitrep workload: every block of {} on {names}, queue depth {}, {}; history {}",
        human::bytes(a.block_size.as_u64()),
        a.queue_depth,
        a.duration.map_or_else(
            || "until SIGINT/SIGTERM".to_owned(),
            |d| format!("{d:?} after the initialization pass")
        ),
        a.history.display()
    );
    let st =
        run_workload(&cfg, &crate::stop::STOP).with_context(|| format!("workload on {names}"))?;
    let secs = st.elapsed.as_secs_f64();
    let rate = if secs > 0.0 {
        st.writes as f64 / secs
    } else {
        0.0
    };
    if a.json {
        let mut v = serde_json::json!({
            "run_id": st.run_id.to_string(),
            "device": a.devices[0],
            "history": a.history,
            "block_size": a.block_size.bytes(),
            "blocks": st.blocks,
            "init_writes": st.init_writes,
            "writes": st.writes,
            "start_ns": st.start_ns.0,
            "end_ns": st.end_ns.0,
            "elapsed_s": secs,
            "writes_per_s": rate,
        });
        if a.devices.len() > 1 {
            // Only for several devices, so the single-device summary stays as it was.
            v["devices"] = serde_json::json!(a.devices);
            v["device_blocks"] = serde_json::json!(st.device_blocks);
        }
        crate::outln!("{v}");
    } else {
        crate::outln!("run        {}", st.run_id);
        crate::outln!(
            "writes     {} ({} initialization + {} random) to {} blocks of {}",
            st.writes,
            st.init_writes,
            st.writes - st.init_writes,
            st.blocks,
            human::bytes(a.block_size.as_u64())
        );
        if a.devices.len() > 1 {
            for (i, (d, b)) in a.devices.iter().zip(&st.device_blocks).enumerate() {
                crate::outln!("device {i:<3} {} ({b} blocks)", d.display());
            }
        }
        crate::outln!("time       {secs:.2} s, {rate:.0} writes/s");
        crate::outln!(
            "started    {} ({} ns)",
            human::timestamp(st.start_ns.0),
            st.start_ns.0
        );
        crate::outln!(
            "ended      {} ({} ns)",
            human::timestamp(st.end_ns.0),
            st.end_ns.0
        );
        crate::outln!("history    {} (closed cleanly)", a.history.display());
    }
    Ok(Outcome::Ok)
}
