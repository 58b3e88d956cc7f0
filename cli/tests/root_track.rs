//! Root tier: `sitrep track` as a real process on a real loop device — killed with SIGKILL
//! mid-workload, its log chain must show the unclean log and the restart must begin with a
//! whole-disk gap; stopped with SIGTERM, it must seal cleanly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::Duration;

use hrl::chain::list_logs;
use hrl::{GapReason, GapScope, LogReader, RecordBody, RecoveryMode};
use sitrep_tests::io::MIB;
use sitrep_tests::loopdev::{LoopDevice, LoopOptions};
use sitrep_tests::{Need, require};

/// What the `sitrep track` process tests need.
const TRACK_FIO: &[Need] = &[
    Need::Root,
    Need::LoopDevices,
    Need::Bpf,
    Need::Command("fio"),
];

fn track(dev: &Path, logs: &Path) -> (Child, serde_json::Value, BufReader<ChildStdout>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_sitrep"))
        .args([
            "track",
            dev.to_str().unwrap(),
            "--log-dir",
            logs.to_str().unwrap(),
        ])
        .args(["--json", "--interval", "0.2"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    let started: serde_json::Value = serde_json::from_str(&line)
        .unwrap_or_else(|e| panic!("first line of sitrep track is JSON ({e}): {line:?}"));
    assert_eq!(started["event"], "started", "{line}");
    (child, started, out)
}

fn fio(dev: &Path, seconds: u32) -> Child {
    Command::new("fio")
        .args([
            "--name=w",
            "--rw=randwrite",
            "--bs=4k",
            "--direct=1",
            "--ioengine=psync",
        ])
        .arg(format!("--filename={}", dev.display()))
        .args(["--size=32M", "--time_based"])
        .arg(format!("--runtime={seconds}"))
        .stdout(Stdio::null())
        .spawn()
        .unwrap()
}

fn first_record(path: &Path) -> RecordBody {
    let mut r = LogReader::open(path, RecoveryMode::Strict).unwrap();
    r.next_record()
        .unwrap()
        .expect("log has a first record")
        .body
}

#[test]
fn sigkill_mid_workload_leaves_an_unclean_log_and_the_restart_records_a_gap() {
    if !require!(needs: TRACK_FIO) {
        return;
    }
    let dev = LoopDevice::new(64 * MIB, LoopOptions::default()).unwrap();
    let logs = tempfile::tempdir().unwrap();

    let (mut tracker, started, _out) = track(dev.path(), logs.path());
    assert!(
        started["gap"].is_string(),
        "first start must record a gap: {started}"
    );
    let mut load = fio(dev.path(), 3);
    std::thread::sleep(Duration::from_millis(1200));
    tracker.kill().unwrap(); // SIGKILL
    tracker.wait().unwrap();
    assert!(load.wait().unwrap().success());

    let before = list_logs(logs.path()).unwrap();
    assert_eq!(before.len(), 1);
    let r = LogReader::open(&before[0].1, RecoveryMode::TruncateTail).unwrap();
    assert!(
        r.seal().is_none(),
        "a SIGKILLed tracker cannot have sealed its log"
    );

    // Restart: the chain continues, but the new log must begin with a whole-disk gap.
    let (mut tracker, started, _out) = track(dev.path(), logs.path());
    let why = started["gap"]
        .as_str()
        .expect("restart after a crash records a gap");
    assert!(why.contains("no cleanly closed previous log"), "{why}");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(tracker.id()).unwrap()),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert!(tracker.wait().unwrap().success());

    let after = list_logs(logs.path()).unwrap();
    assert_eq!(after.len(), 2);
    let old = LogReader::open(&after[0].1, RecoveryMode::Strict).unwrap();
    assert!(
        old.seal().unwrap().recovered,
        "the crashed log is sealed as RECOVERED"
    );
    assert_eq!(
        first_record(&after[1].1),
        RecordBody::TrackingGap {
            reason: GapReason::NoCleanPredecessor,
            scope: GapScope::WholeDisk
        }
    );
    let verify = Command::new(env!("CARGO_BIN_EXE_sitrep"))
        .args(["log", "verify", logs.path().to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stdout)
    );
    let text = String::from_utf8_lossy(&verify.stdout);
    assert!(text.contains("sealed-recovered"), "{text}");
}

#[test]
fn sigterm_seals_cleanly_and_an_idle_restart_needs_no_resync() {
    if !require!(needs: TRACK_FIO) {
        return;
    }
    let dev = LoopDevice::new(32 * MIB, LoopOptions::default()).unwrap();
    let logs = tempfile::tempdir().unwrap();
    let (tracker, _, out) = track(dev.path(), logs.path());
    assert!(fio(dev.path(), 1).wait().unwrap().success());
    let stopped = stop(tracker, out);
    assert_eq!(stopped["clean"], true, "{stopped}");

    let (tracker, started, out) = track(dev.path(), logs.path());
    assert!(
        started["gap"].is_null(),
        "idle restart must continue: {started}"
    );
    stop(tracker, out);

    // Written while untracked: the next start must not trust the chain.
    assert!(fio(dev.path(), 1).wait().unwrap().success());
    let (tracker, started, out) = track(dev.path(), logs.path());
    let why = started["gap"]
        .as_str()
        .expect("untracked writes force a gap");
    assert!(why.contains("while untracked"), "{why}");
    stop(tracker, out);
}

/// SIGTERM, then the `stopped` JSON line.
fn stop(mut child: Child, out: BufReader<ChildStdout>) -> serde_json::Value {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap()),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let stopped = out
        .lines()
        .map(Result::unwrap)
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(&l).ok())
        .find(|v| v["event"] == "stopped")
        .expect("a stopped line");
    assert!(child.wait().unwrap().success());
    stopped
}
