//! Root tier: a crash-consistent point in every `crash_points_every` slot under a full-rate
//! workload (the agent's quick cuts, primary/src/quick_cuts.rs). `sitrep workload` writes
//! 4 KiB blocks at full rate over a 32 MiB disk for 60 s; with slots of 10 s the server must
//! hold a point cut in every slot that lies wholly inside the run. The same run with a slot
//! of a day (quick cuts then all but idle) is the baseline the test prints beside it.
//!
//! The slot width is set in `protection.json` while the agent is stopped (the protect flag
//! is another change's).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;
use std::process::{Child, Stdio};

use common::*;
use sitrep_tests::io::MIB;
use sitrep_tests::loopdev::{LoopDevice, LoopOptions};
use sitrep_tests::{Need, require};

const RUN_SECS: u64 = 60;

fn workload(dev: &Path, history: &Path) -> Child {
    sitrep()
        .args(["workload", &p(dev), "--history", &p(history)])
        .args(["--duration", &format!("{RUN_SECS}s"), "--queue-depth", "4"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// Sets the disk's slot width in its protection.json (the agent is stopped).
fn set_every(state: &Path, name: &str, secs: u64) {
    let f = state.join("disks").join(name).join("protection.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&f).unwrap()).unwrap();
    v["points"]["crash_points_every_secs"] = secs.into();
    std::fs::write(&f, serde_json::to_string_pretty(&v).unwrap()).unwrap();
}

/// Runs the workload once with slots `every` s wide; returns the cut times of the points
/// offered during it and the run's span.
fn run(
    sites: &Sites,
    agent: &mut Daemon,
    name: &str,
    dev: &Path,
    every: u64,
) -> (Vec<u64>, u64, u64) {
    agent.stop();
    set_every(&sites.path("state-a"), name, every);
    agent.restart();
    let s = sites.sock("a");
    wait_caught_up(&s, name);
    let history = sites.path(&format!("{name}-{every}.history"));
    let started = base::now_ns();
    let mut child = workload(dev, &history);
    assert!(child.wait().unwrap().success(), "workload failed");
    let ended = base::now_ns();
    let st = wait_caught_up(&s, name);
    assert_eq!(st["crash_points"]["every_seconds"], every, "{st}");
    let pts = ctl(&sites.path("server.sock"), &["points", name]);
    let cuts = pts["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["cut_time_ns"].as_u64().unwrap())
        .filter(|t| (started..ended).contains(t))
        .collect();
    (cuts, started, ended)
}

#[test]
fn a_point_in_every_slot_at_full_write_rate() {
    if !require!(Need::Root, Need::LoopDevices, Need::Bpf, Need::Netns) {
        return;
    }
    let sites = Sites::with_server_args(&["--keep-points", "100000"]);
    let mut agent = sitrep_tests_agent(&sites);
    let s = sites.sock("a");
    let dev = LoopDevice::new(32 * MIB, LoopOptions::default()).unwrap();
    ctl(
        &s,
        &[
            "protect",
            &p(dev.path()),
            "--to",
            &sites.to(),
            "--name",
            "q",
        ],
    );
    wait_caught_up(&s, "q");
    let (base_cuts, b0, b1) = run(&sites, &mut agent, "q", dev.path(), 86_400);
    let (cuts, t0, t1) = run(&sites, &mut agent, "q", dev.path(), 10);
    let per_min = |n: usize, a: u64, b: u64| n as f64 * 60e9 / (b - a) as f64;
    eprintln!(
        "points offered per minute at full rate: {:.1} with a 1-day slot (baseline), {:.1} with 10 s slots",
        per_min(base_cuts.len(), b0, b1),
        per_min(cuts.len(), t0, t1)
    );
    let slot = 10_000_000_000u64;
    let empty: Vec<u64> = (t0 / slot + 1..t1 / slot)
        .filter(|k| !cuts.iter().any(|c| c / slot == *k))
        .collect();
    if !empty.is_empty() {
        for l in agent
            .log_text()
            .lines()
            .filter(|l| l.contains("quick") || l.contains("WARN"))
        {
            eprintln!("agent: {l}");
        }
    }
    assert!(
        empty.is_empty(),
        "10 s slots without a point: {empty:?} of {}..{} ({} points)",
        t0 / slot + 1,
        t1 / slot,
        cuts.len()
    );
}
