//! The CLI when its output or input misbehaves (issue 19, items 11 and 12): a closed pipe
//! ends it quietly, a full disk is an error with a message, never a panic; a FIFO is not
//! waited on; out-of-range options are refused; an error's cause is printed once.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn sitrep() -> Command {
    Command::new(env!("CARGO_BIN_EXE_sitrep"))
}

fn demo(dir: &Path) {
    let out = sitrep()
        .args(["log", "demo", dir.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success());
}

/// Runs `args` with stdout a pipe whose read end is already closed.
fn with_closed_stdout(args: &[&str]) -> std::process::Output {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let child = sitrep()
        .args(args)
        .stdout(Stdio::from(writer))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn a_closed_pipe_ends_the_cli_quietly() {
    let d = tempfile::tempdir().unwrap();
    demo(d.path());
    let log = d.path().join(format!("{:020}.hrl", 1));
    for args in [
        vec!["log", "verify", d.path().to_str().unwrap()],
        vec!["log", "inspect", "--records", log.to_str().unwrap()],
        vec!["--help"],
    ] {
        let out = with_closed_stdout(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert!(err.is_empty(), "{args:?}: {err}");
    }
}

#[test]
fn a_full_stdout_is_an_error_with_a_message_not_a_panic() {
    let d = tempfile::tempdir().unwrap();
    demo(d.path());
    for args in [
        vec!["log", "verify", d.path().to_str().unwrap()],
        vec!["log", "--help"],
    ] {
        let full = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .unwrap();
        let out = sitrep().args(&args).stdout(full).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(
            err.contains("writing to standard output"),
            "{args:?}: {err}"
        );
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
}

#[test]
fn log_inspect_on_a_fifo_fails_at_once() {
    let d = tempfile::tempdir().unwrap();
    let fifo = d.path().join("x.hrl");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let mut child = sitrep()
        .args(["log", "inspect", fifo.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("`log inspect` on a FIFO is still waiting after 20 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = child.wait_with_output().unwrap();
    assert_eq!(status.code(), Some(3));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("not a regular file"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn an_out_of_range_compress_level_is_a_usage_error() {
    let out = sitrep()
        .args([
            "agent",
            "--state",
            "/nonexistent/state",
            "--pki",
            "/nonexistent/pki",
            "--compress-level",
            "999999",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("-100..=22"));
}

#[test]
fn an_error_names_its_os_cause_once() {
    let out = sitrep()
        .args(["log", "verify", "/nonexistent/logs"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(err.matches("os error 2").count(), 1, "{err}");
}
