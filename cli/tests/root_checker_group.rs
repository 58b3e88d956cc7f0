//! Root tier: the multi-device checker on two loop devices. `sitrep workload A B` writes both
//! as one application's disks; `sitrep check` then proves the two devices after the run are
//! one consistent state (with and without a point time), and — the negative control — that
//! copies of A and B taken 300 ms apart while the workload runs are NOT: B's copy holds
//! writes that depend on A-writes newer than A's copy (the dependency rule), although each
//! copy alone is an intact image.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use sitrep_tests::io::{MIB, direct_read};
use sitrep_tests::loopdev::{LoopDevice, LoopOptions};
use sitrep_tests::{Need, require};

const NEEDS: [Need; 2] = [Need::Root, Need::LoopDevices];
const SIZE: u64 = 16 * MIB;
const BLOCKS: u64 = SIZE / 4096;

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

/// `sitrep check --history H --image I… [--point-time T] --json`: (exit code, report).
fn check(history: &Path, images: &[&Path], t: Option<u64>) -> (i32, Value) {
    let mut cmd = sitrep();
    cmd.args(["check", "--history", &p(history), "--json"]);
    for i in images {
        cmd.args(["--image", &p(i)]);
    }
    if let Some(t) = t {
        cmd.args(["--point-time", &t.to_string()]);
    }
    let out = cmd.output().unwrap();
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

/// Records in the version-2 history `h` so far (96-byte header for two devices, 48-byte
/// records), from its size alone: the workload is still appending to it.
fn records_so_far(h: &Path) -> u64 {
    std::fs::metadata(h).map_or(0, |m| m.len().saturating_sub(96) / 48)
}

/// Copies the whole of `dev` (O_DIRECT, the device's bytes) to `out`.
fn copy(dev: &Path, out: &Path) {
    let bytes = direct_read(dev, 0, usize::try_from(SIZE).unwrap());
    std::fs::write(out, &*bytes).unwrap();
}

#[test]
fn checker_proves_a_pair_of_disks_consistent_and_fails_a_pair_from_two_instants() {
    if !require!(needs: &NEEDS) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let a = LoopDevice::new(SIZE, LoopOptions::default()).unwrap();
    let b = LoopDevice::new(SIZE, LoopOptions::default()).unwrap();

    // (a) A run over both, then both devices checked together: consistent.
    let h = dir.path().join("history");
    let out = sitrep()
        .args(["workload", &p(a.path()), &p(b.path()), "--history", &p(&h)])
        .args(["--duration", "3s", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "workload failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let run: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(run["blocks"], 2 * BLOCKS, "{run}");
    assert_eq!(run["device_blocks"], serde_json::json!([BLOCKS, BLOCKS]));
    let writes = run["writes"].as_u64().unwrap();
    assert!(writes > 4 * BLOCKS, "few random writes in 3 s: {run}");

    let (code, r) = check(&h, &[a.path(), b.path()], None);
    assert_eq!(code, 0, "{r}");
    assert_eq!(
        (r["schema"].as_u64(), r["ok"].as_bool()),
        (Some(2), Some(true))
    );
    assert_eq!(r["counts"]["recorded"], 2 * BLOCKS, "{r}");
    assert_eq!(r["history"]["records"], writes);
    let with_deps = r["dependencies"]["checked"].as_u64().unwrap();
    assert!(with_deps > BLOCKS, "few writes with a dependency: {r}");
    assert_eq!(r["dependencies"]["violations"], 0);

    let (code, r) = check(&h, &[a.path(), b.path()], Some(now_ns()));
    assert_eq!(code, 0, "{r}");
    assert_eq!(r["counts"]["current"], 2 * BLOCKS, "{r}");
    assert_eq!(r["devices"][1]["counts"]["current"], BLOCKS, "{r}");

    // The images in the wrong order: every block is of the other device.
    let (code, r) = check(&h, &[b.path(), a.path()], None);
    assert_eq!(code, 3, "{r}");
    assert_eq!(r["counts"]["misplaced"], 2 * BLOCKS, "{r}");
    // One image for two devices: the check cannot run.
    let out = sitrep()
        .args(["check", "--history", &p(&h), "--image", &p(a.path())])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("1 images given for a history of 2 devices"),
        "{err}"
    );

    negative_control(dir.path(), a.path(), b.path());
}

/// (b) A new run at queue depth 1 (one causal chain through both devices), A copied, 300 ms
/// later B copied, while it runs: the pair must fail the dependency rule.
fn negative_control(dir: &Path, a: &Path, b: &Path) {
    let h2 = dir.join("history2");
    let child = sitrep()
        .args(["workload", &p(a), &p(b), "--history", &p(&h2)])
        .args(["--queue-depth", "1", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Past the initialization pass, well into the random phase.
    let deadline = Instant::now() + Duration::from_secs(60);
    while records_so_far(&h2) < 2 * BLOCKS + 2000 {
        assert!(Instant::now() < deadline, "the workload is not progressing");
        std::thread::sleep(Duration::from_millis(50));
    }
    let (img_a, img_b): (PathBuf, PathBuf) = (dir.join("a.img"), dir.join("b.img"));
    copy(a, &img_a);
    let before = records_so_far(&h2);
    std::thread::sleep(Duration::from_millis(300));
    copy(b, &img_b);
    let between = records_so_far(&h2) - before;
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "SIGINT is a clean stop: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(between > 50, "only {between} writes between the copies");

    let (code, r) = check(&h2, &[&img_a, &img_b], None);
    assert_eq!(code, 3, "the pair from two instants passed: {r}");
    let violated = r["dependencies"]["violations"].as_u64().unwrap();
    assert!(violated > 0, "{r}");
    let v = &r["dependency_violations"][0];
    assert_eq!(
        (
            v["kind"].as_str(),
            v["device"].as_u64(),
            v["depends_on_device"].as_u64()
        ),
        (Some("dependency"), Some(1), Some(0)),
        "a write on B whose dependency on A is missing: {v}"
    );
    assert!(
        v["found_seq"].as_u64() < v["depends_on_seq"].as_u64(),
        "{v}"
    );
    eprintln!(
        "negative control: {between} writes between the copies, {violated} dependency \
         violations, per-device violations {} and {}",
        r["devices"][0]["violations_total"], r["devices"][1]["violations_total"]
    );

    // Positive control for the same run: the devices themselves, after the clean stop.
    let (code, r) = check(&h2, &[a, b], None);
    assert_eq!(code, 0, "{r}");
}
