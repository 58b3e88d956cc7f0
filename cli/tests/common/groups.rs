//! Consistency-group helpers for the root and VM tests: protecting into a group, a group's
//! points on a server, the causal two-disk workload and the two-image check.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{Daemon, Sites, ctl, p, sitrep, sitrep_ok, test_bpffs, try_ctl, wait_caught_up};

/// Protects `dev` as disk `name` in consistency group `group`, through the agent at `sock`,
/// and waits until its initial copy is replicated.
pub fn protect_in_group(sites: &Sites, sock: &Path, dev: &Path, name: &str, group: &str) {
    ctl(
        sock,
        &[
            "protect",
            &p(dev),
            "--to",
            &sites.to(),
            "--name",
            name,
            "--group",
            group,
        ],
    );
    wait_caught_up(sock, name);
}

/// Group `group`'s points on the server at `srv` (`sitrep points --group`).
pub fn group_points(srv: &Path, group: &str) -> Vec<Value> {
    ctl(srv, &["points", "--group", group])["points"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// Waits until group `group` has at least `min` points and the list stands still between
/// two looks a second apart (the last cycles' verdicts follow their `Applied`, and each new
/// group point thins older ones); returns it.
pub fn settled_group_points(srv: &Path, group: &str, min: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = Vec::new();
    loop {
        let pts = group_points(srv, group);
        if pts.len() >= min && pts == last {
            return pts;
        }
        assert!(
            Instant::now() < deadline,
            "group {group}: fewer than {min} group points, or never still: {pts:?}"
        );
        last = pts;
        std::thread::sleep(Duration::from_millis(1000));
    }
}

/// The causally ordered two-disk workload (`sitrep workload A B --queue-depth 1`: every
/// write issued after the previous one, on either disk, completed), its history in `history`.
pub fn causal_workload(a: &Path, b: &Path, history: &Path, duration: &str, rate: &str) {
    let out = sitrep()
        .args(["workload", &p(a), &p(b), "--history", &p(history)])
        .args(["--duration", duration, "--queue-depth", "1", "--rate", rate])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `sitrep check` of the two images (in device order) against `history`, at `t` if given:
/// its exit code and JSON.
pub fn check_pair(history: &Path, a: &str, b: &str, t: Option<u64>) -> (Option<i32>, Value) {
    let mut cmd = sitrep();
    cmd.args([
        "check",
        "--history",
        &p(history),
        "--image",
        a,
        "--image",
        b,
        "--json",
    ]);
    if let Some(t) = t {
        cmd.args(["--point-time", &t.to_string()]);
    }
    let out = cmd.output().unwrap();
    let v = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
        panic!(
            "check printed no JSON: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code(), v)
}

/// Agent `sitec`, in site B's namespace (beside the server).
pub fn agent_c(sites: &Sites) -> Daemon {
    sitrep_ok(&[
        "certs",
        "issue",
        "--ca",
        &p(&sites.path("pki-b")),
        "--name",
        "sitec",
        "--out",
        &p(&sites.path("pki-c")),
    ]);
    Daemon::start(
        &sites.net.b,
        &sites.path("agent-c.log"),
        &[
            "agent",
            "--state",
            &p(&sites.path("state-c")),
            "--pki",
            &p(&sites.path("pki-c")),
            "--socket",
            &p(&sites.sock("c")),
            "--retry-unit",
            "0.2",
            "--bpffs",
            &p(&test_bpffs()),
            "--resync-window",
            "always",
        ]
        .map(String::from),
    )
}

/// Exports every point of `group` newer than `*seen` into `out/ID/` (`DISK.img` per member),
/// skipping one retention thinned meanwhile; returns each export's directory and cut time.
pub fn export_new_group_points(
    srv: &Path,
    group: &str,
    out: &Path,
    seen: &mut u64,
) -> Vec<(PathBuf, u64)> {
    let mut done = Vec::new();
    for gp in group_points(srv, group) {
        let (Some(id), Some(t)) = (gp["id"].as_u64(), gp["cut_time_ns"].as_u64()) else {
            continue;
        };
        if id <= *seen {
            continue;
        }
        *seen = id;
        let dir = out.join(id.to_string());
        std::fs::create_dir_all(&dir).unwrap();
        let id = id.to_string();
        let args = [
            "points",
            "export",
            "--group",
            group,
            &id,
            "--out-dir",
            &p(&dir),
        ];
        if try_ctl(srv, &args).is_ok() {
            done.push((dir, t));
        }
    }
    done
}
