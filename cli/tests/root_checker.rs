//! Root tier: the real `sitrep workload` on loop devices, and `sitrep check` proving it can
//! both pass and fail — the device after the run is consistent; the same device claimed at a
//! point in the middle of the run is not (future versions); a flipped byte is a torn block;
//! a block of another run is foreign; a killed workload's history (no end record, a torn
//! last record) is still read and the device still checks out.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use sitrep_tests::io::{MIB, direct_read};
use sitrep_tests::loopdev::{LoopDevice, LoopOptions};
use sitrep_tests::{Need, require};

const NEEDS: [Need; 2] = [Need::Root, Need::LoopDevices];
const BS: usize = 4096;

fn sitrep() -> Command {
    Command::new(env!("CARGO_BIN_EXE_sitrep"))
}

fn now_ns() -> u64 {
    u64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos(),
    )
    .unwrap()
}

fn p(path: &Path) -> String {
    path.to_str().unwrap().to_owned()
}

/// `sitrep workload DEVICE --history H ARGS… --json`, which must succeed; its summary.
fn workload(dev: &Path, history: &Path, args: &[&str]) -> Value {
    let out = sitrep()
        .args(["workload", &p(dev), "--history", &p(history), "--json"])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "workload failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// `sitrep check --json`: (exit code, report).
fn check(history: &Path, image: &Path, t: u64) -> (i32, Value) {
    let out = sitrep()
        .args(["check", "--history", &p(history), "--image", &p(image)])
        .args(["--point-time", &t.to_string(), "--json"])
        .output()
        .unwrap();
    let code = out.status.code().unwrap();
    let report = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "check exit {code}, no JSON ({e}): {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (code, report)
}

fn kinds(r: &Value) -> Vec<(u64, String)> {
    r["violations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["block"].as_u64().unwrap(),
                v["kind"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[test]
fn checker_passes_the_real_device_and_catches_future_torn_and_foreign_blocks() {
    if !require!(needs: &NEEDS) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let dev = LoopDevice::new(32 * MIB, LoopOptions::default()).unwrap();
    let blocks = 32 * MIB / BS as u64;
    let h = dir.path().join("history");
    let run = workload(dev.path(), &h, &["--duration", "3s", "--queue-depth", "4"]);
    assert_eq!(run["blocks"], blocks);
    assert_eq!(run["init_writes"], blocks);
    let writes = run["writes"].as_u64().unwrap();
    assert!(writes > 2 * blocks, "few random writes in 3 s: {run}");

    // (a) The device itself, after the run: every block holds its last write.
    let (code, r) = check(&h, dev.path(), now_ns());
    assert_eq!(code, 0, "{r}");
    assert_eq!(
        (r["ok"].as_bool(), r["checked"].as_u64()),
        (Some(true), Some(blocks))
    );
    assert_eq!(r["counts"]["current"], blocks);
    assert_eq!(r["history"]["records"], writes);

    // (b) The same bytes claimed as the state in the middle of the random phase: blocks
    // rewritten after that point hold versions from its future.
    let hist = checker::read_history(&h).unwrap();
    let init_done = hist
        .records
        .iter()
        .filter(|w| w.seq < blocks)
        .map(|w| w.complete_ns.0)
        .max()
        .unwrap();
    let end = run["end_ns"].as_u64().unwrap();
    let mid = init_done + (end - init_done) / 2;
    let (code, r) = check(&h, dev.path(), mid);
    assert_eq!(code, 3, "{r}");
    let future = r["counts"]["future"].as_u64().unwrap();
    assert!(future > 0 && r["violations_total"] == future, "{r}");
    assert_eq!(
        r["violations"].as_array().unwrap().len() as u64,
        future.min(100)
    );
    let v = &r["violations"][0];
    assert_eq!(v["kind"], "future");
    assert!(
        v["found_seq"].as_u64() > v["allowed_to_seq"].as_u64(),
        "{v}"
    );

    // (c) A copy with one flipped byte in block 1234: torn, that block only.
    let len = usize::try_from(blocks).unwrap() * BS;
    let mut bytes = direct_read(dev.path(), 0, len).to_vec();
    let pristine = bytes.clone();
    bytes[1234 * BS + 777] ^= 0x01;
    let img = dir.path().join("image");
    std::fs::write(&img, &bytes).unwrap();
    let t = now_ns();
    let (code, r) = check(&h, &img, t);
    assert_eq!(code, 3, "{r}");
    assert_eq!(kinds(&r), [(1234, "torn".to_owned())]);
    assert!(
        r["violations"][0]["detail"]
            .as_str()
            .unwrap()
            .contains("checksum"),
        "{r}"
    );

    // (d) A block written by another run (stopped by SIGTERM, which closes its history
    // cleanly) in place of block 4321: foreign.
    let other = LoopDevice::new(MIB, LoopOptions::default()).unwrap();
    let h2 = dir.path().join("history2");
    let child = sitrep()
        .args(["workload", &p(other.path()), "--history", &p(&h2), "--json"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(700));
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "SIGTERM is a clean stop");
    let run2: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_ne!(run2["run_id"], run["run_id"]);
    let (code, r2) = check(&h2, other.path(), now_ns());
    assert_eq!(
        (code, &r2["history"]["clean"]),
        (0, &Value::Bool(true)),
        "{r2}"
    );
    let foreign = direct_read(other.path(), 7 * BS as u64, BS);
    let mut bytes = pristine;
    bytes[4321 * BS..4322 * BS].copy_from_slice(&foreign);
    std::fs::write(&img, &bytes).unwrap();
    let (code, r) = check(&h, &img, t);
    assert_eq!(code, 3, "{r}");
    assert_eq!(kinds(&r), [(4321, "foreign".to_owned())]);
    let detail = r["violations"][0]["detail"].as_str().unwrap();
    assert!(
        detail.contains(run2["run_id"].as_str().unwrap()),
        "{detail}"
    );
}

#[test]
fn a_killed_workload_leaves_a_readable_history_and_a_consistent_device() {
    if !require!(needs: &NEEDS) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let dev = LoopDevice::new(8 * MIB, LoopOptions::default()).unwrap();
    let h = dir.path().join("history");
    let mut child = sitrep()
        .args(["workload", &p(dev.path()), "--history", &p(&h)])
        .args(["--queue-depth", "8"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1200));
    child.kill().unwrap();
    child.wait().unwrap();
    // A kill in the middle of a history write leaves part of a record: simulate the worst
    // case on top of whatever the kill left.
    let mut f = std::fs::OpenOptions::new().append(true).open(&h).unwrap();
    std::io::Write::write_all(&mut f, &[0x5a; 17]).unwrap();
    drop(f);
    let (code, r) = check(&h, dev.path(), now_ns());
    assert_eq!(code, 0, "{r}");
    assert_eq!(r["history"]["clean"], false);
    let torn = r["history"]["torn_tail_bytes"].as_u64().unwrap();
    assert!(torn >= 17, "{r}");
    assert!(r["history"]["records"].as_u64().unwrap() > 2048, "{r}");
    assert!(
        r["notes"][0]
            .as_str()
            .unwrap()
            .contains("not closed cleanly"),
        "{r}"
    );
}
