//! `sitrep disk add` refuses bad input with a clear error and leaves nothing behind. These
//! checks run before the kernel is involved, so they run anywhere (no ublk needed); the
//! disk itself is tested in the VM tier (tests/tests/vm_ublk.rs).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failures should panic

use std::path::Path;
use std::process::Command;

/// Runs `sitrep disk add ARGS` in `dir`; returns (exit code, stderr).
fn add(dir: &Path, args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_sitrep"))
        .current_dir(dir)
        .args(["disk", "add"])
        .args(args)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    (out.status.code().unwrap_or(-1), err)
}

fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn bad_input_is_refused_clearly_and_creates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::File::create(d.join("small.img"))
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    std::fs::File::create(d.join("empty.img")).unwrap();
    let cases: &[(&[&str], &str)] = &[
        (&["--backing", "missing.img"], "No such file"),
        (
            &["--backing", "small.img", "--size", "2M"],
            "smaller than --size",
        ),
        (&["--backing", "empty.img"], "is 0 bytes"),
        (
            &["--backing", "small.img", "--log-dir", "no-such-dir"],
            "no-such-dir does not exist",
        ),
        (&["--backing", "small.img", "--queues", "0"], "--queues 0"),
        (&["--backing", "small.img", "--size", "12Q"], "size \"12Q\""),
    ];
    for (args, expect) in cases {
        let (code, err) = add(d, args);
        assert_eq!(code, 1, "{args:?}: {err}");
        assert!(
            err.contains(expect),
            "{args:?}: expected {expect:?} in {err}"
        );
    }
    assert_eq!(entries(d), ["empty.img", "small.img"], "nothing created");
}

#[test]
fn a_backing_locked_by_another_server_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("disk.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    let held = std::fs::File::open(&img).unwrap();
    let _lock = nix::fcntl::Flock::lock(held, nix::fcntl::FlockArg::LockExclusiveNonblock)
        .map_err(|(_, e)| e)
        .unwrap();
    let (code, err) = add(dir.path(), &["--backing", "disk.img"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("already served by another sitrep process"),
        "{err}"
    );
    assert_eq!(entries(dir.path()), ["disk.img"], "nothing created");
}
