//! `sitrep log …` end to end through the real binary: exit codes, text and JSON output.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failures should panic

use std::path::Path;
use std::process::{Command, Output};

fn sitrep(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sitrep"))
        .args(args)
        .output()
        .unwrap()
}

fn demo(dir: &Path) {
    let out = sitrep(&["log", "demo", dir.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn log(dir: &Path, n: u64) -> String {
    dir.join(format!("{n:020}.hrl"))
        .to_str()
        .unwrap()
        .to_owned()
}

#[test]
fn demo_chain_verifies_and_inspects() {
    let d = tempfile::tempdir().unwrap();
    demo(d.path());
    let out = sitrep(&["log", "verify", d.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("chain OK"));

    let out = sitrep(&["log", "inspect", "--json", &log(d.path(), 1)]);
    assert_eq!(out.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["state"], "sealed");
    assert_eq!(v["records"], 103);
    assert_eq!(v["kinds"]["write"]["count"], 100);
    assert_eq!(v["kinds"]["write"]["bytes"], 100 * 4096);
    assert_eq!(v["header"]["log_seq"], 1);
    assert_eq!(v["first_seq"], 105);
}

#[test]
fn a_missing_log_breaks_the_chain_with_exit_3() {
    let d = tempfile::tempdir().unwrap();
    demo(d.path());
    std::fs::remove_file(log(d.path(), 1)).unwrap();
    let out = sitrep(&["log", "verify", "--json", d.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(3));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ok"], false);
    let err = v["links"][0]["error"].as_str().unwrap();
    assert!(err.contains("a log is missing"), "{err}");
}

#[test]
fn a_corrupt_record_is_reported_with_file_and_offset() {
    let d = tempfile::tempdir().unwrap();
    demo(d.path());
    let path = log(d.path(), 2);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[4096 + 100] ^= 1;
    std::fs::write(&path, bytes).unwrap();
    let out = sitrep(&["log", "inspect", &path]);
    assert_eq!(out.status.code(), Some(3));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("ERROR") && text.contains("crc mismatch"),
        "{text}"
    );
    assert!(text.contains(&path), "{text}");
    let out = sitrep(&["log", "verify", d.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(3));
}

#[test]
fn a_missing_file_is_an_error_with_exit_1() {
    let out = sitrep(&["log", "inspect", "/nonexistent.hrl"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent.hrl"));
}

#[test]
fn demo_refuses_a_directory_with_logs() {
    let d = tempfile::tempdir().unwrap();
    demo(d.path());
    let out = sitrep(&["log", "demo", d.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("already holds logs"));
}
