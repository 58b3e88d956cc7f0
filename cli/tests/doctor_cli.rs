//! `sitrep doctor` through the real binary on this machine: valid JSON with every check id
//! and a known status, the exit code following the failures, certificates near or past
//! their end reported.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failures should panic

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use serde_json::Value;

const ALL_IDS: [&str; 24] = [
    "root",
    "kernel-version",
    "kernel-btf",
    "tracepoints",
    "bpf-capability",
    "bpffs",
    "bpf-load",
    "ublk",
    "fsfreeze",
    "loop-devices",
    "clock-sync",
    "pki-ca",
    "pki-cert",
    "pki-identity",
    "state-space",
    "state-mode",
    "store-space",
    "store-mode",
    "agent-config",
    "server-config",
    "agent-socket",
    "agent-unit",
    "server-socket",
    "server-unit",
];

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Runs `sitrep doctor --json` with the sockets in `dir` (no daemon there) and `args`;
/// returns the exit code and the report.
fn doctor(dir: &Path, args: &[&str]) -> (i32, Value) {
    let out = Command::new(env!("CARGO_BIN_EXE_sitrep"))
        .args(["doctor", "--json"])
        .args(["--agent-socket", s(&dir.join("agent.sock"))])
        .args(["--server-socket", s(&dir.join("server.sock"))])
        .args(args)
        .output()
        .unwrap();
    let code = out.status.code().unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (code, v)
}

fn status<'a>(v: &'a Value, id: &str) -> &'a str {
    v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == id)
        .unwrap_or_else(|| panic!("no check {id}: {v:#}"))["status"]
        .as_str()
        .unwrap()
}

#[test]
fn every_check_reports_with_a_known_status() {
    let d = tempfile::tempdir().unwrap();
    let (state, store, pki_dir) = (
        d.path().join("state"),
        d.path().join("store"),
        d.path().join("pki"),
    );
    std::fs::create_dir(&state).unwrap();
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::create_dir(&store).unwrap();
    std::fs::set_permissions(&store, std::fs::Permissions::from_mode(0o755)).unwrap();
    pki::init(&pki_dir, "siteb", &[], 400).unwrap();

    let (code, v) = doctor(
        d.path(),
        &[
            "--state",
            s(&state),
            "--store",
            s(&store),
            "--pki",
            s(&pki_dir),
        ],
    );
    assert_eq!(v["schema"], 1);
    let checks = v["checks"].as_array().unwrap();
    let ids: Vec<&str> = checks.iter().map(|c| c["id"].as_str().unwrap()).collect();
    assert_eq!(
        ids, ALL_IDS,
        "the default role runs every check, in this order"
    );
    let mut failed = false;
    for c in checks {
        let st = c["status"].as_str().unwrap();
        assert!(["ok", "warn", "fail", "skip"].contains(&st), "{c}");
        assert!(c["title"].is_string() && c["detail"].is_string(), "{c}");
        assert_eq!(
            c["fix"].is_string(),
            st == "warn" || st == "fail",
            "a fix exactly for problems: {c}"
        );
        failed |= st == "fail";
    }
    assert_eq!(v["ok"], !failed);
    assert_eq!(code, if failed { 3 } else { 0 }, "{v:#}");

    // What this test set up.
    for id in ["pki-ca", "pki-cert", "pki-identity"] {
        assert_eq!(status(&v, id), "ok", "{id}: {v:#}");
    }
    // Measured (the verdict depends on this machine's disk).
    assert_ne!(status(&v, "state-space"), "skip");
    assert_eq!(
        status(&v, "store-mode"),
        "warn",
        "0755 is readable by others"
    );
    if is_root() {
        assert_eq!(status(&v, "agent-socket"), "warn", "no agent there");
        assert_eq!(status(&v, "root"), "ok");
        assert_eq!(status(&v, "state-mode"), "ok");
        // The root tier runs on kernels with BTF (the tracker needs it).
        assert_eq!(status(&v, "kernel-btf"), "ok");
    } else {
        assert_eq!(status(&v, "bpf-load"), "skip");
    }
}

#[test]
fn certificates_near_or_past_their_end() {
    let d = tempfile::tempdir().unwrap();
    let soon = d.path().join("soon");
    pki::init(&soon, "siteb", &[], 10).unwrap();
    let (_, v) = doctor(d.path(), &["--role", "server", "--pki", s(&soon)]);
    assert_eq!(status(&v, "pki-cert"), "warn", "{v:#}");
    assert_eq!(status(&v, "pki-ca"), "ok");

    let expired = d.path().join("expired");
    let opts = pki::CertOptions {
        expired: true,
        ..pki::CertOptions::new(&[], 30)
    };
    pki::init_with(&expired, "siteb", &opts).unwrap();
    let (code, v) = doctor(d.path(), &["--role", "server", "--pki", s(&expired)]);
    assert_eq!(status(&v, "pki-cert"), "fail", "{v:#}");
    assert_eq!(v["ok"], false);
    assert_eq!(code, 3);
}

#[test]
fn a_role_runs_only_its_checks() {
    let d = tempfile::tempdir().unwrap();
    let (_, v) = doctor(d.path(), &["--role", "server"]);
    let ids: Vec<&str> = v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    for id in [
        "kernel-btf",
        "bpf-load",
        "fsfreeze",
        "state-space",
        "agent-socket",
    ] {
        assert!(!ids.contains(&id), "{id} is the agent's");
    }
    for id in [
        "loop-devices",
        "clock-sync",
        "store-space",
        "server-socket",
        "server-unit",
    ] {
        assert!(ids.contains(&id), "{id} is the server's");
    }
}
