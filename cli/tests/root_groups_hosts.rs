//! Root tier: one consistency group spanning two agents in two network namespaces (client
//! names `sitea` and `sitec`), its points coordinated by the server (`--group-points-every
//! 1s`) under a causally ordered workload over both disks. Every group point, exported,
//! passes the two-image check at its time; killing one agent stops the group's points (the
//! server's status names the member) while the other agent's disk keeps replicating.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use common::*;
use sitrep_tests::loopdev::{LoopDevice, LoopOptions};

fn newest_id(srv: &Path) -> u64 {
    group_points(srv, "xg")
        .last()
        .and_then(|p| p["id"].as_u64())
        .unwrap_or(0)
}

#[test]
fn a_group_across_two_agents_gets_coordinated_points_until_a_member_dies() {
    if !sitrep_tests::require!(needs: &NEEDS) {
        return;
    }
    let sites = Sites::with_server_args(&["--group-points-every", "1s"]);
    let _a = sitrep_tests_agent(&sites);
    let mut c = agent_c(&sites);
    let srv = sites.path("server.sock");
    // The secondary's operator lets sitec's disks join sitea's group.
    ctl(&srv, &["group", "allow", "xg", "sitea"]);
    ctl(&srv, &["group", "allow", "xg", "sitec"]);
    // Small disks (16 blocks each): the workload's first pass over every block is short.
    let small = || LoopDevice::new(64 << 10, LoopOptions::default()).unwrap();
    let (da, dc) = (small(), small());
    protect_in_group(&sites, &sites.sock("a"), da.path(), "a", "xg");
    protect_in_group(&sites, &sites.sock("c"), dc.path(), "c", "xg");

    // A causally ordered workload over both disks, ~4 writes/s: a round's window (from the
    // members' cuts to the release, tens of ms here) is often quiet. Group points are
    // exported as they appear (retention keeps only a few).
    let history = sites.path("ac.history");
    let started = base::now_ns();
    let mut w = sitrep()
        .args([
            "workload",
            &p(da.path()),
            &p(dc.path()),
            "--history",
            &p(&history),
        ])
        .args(["--duration", "10s", "--queue-depth", "1", "--rate", "16K"])
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out_dir = sites.path("export");
    std::fs::create_dir(&out_dir).unwrap();
    let mut exported: Vec<(PathBuf, u64)> = Vec::new();
    let mut seen = 0u64;
    loop {
        let done = w.try_wait().unwrap().is_some();
        exported.extend(export_new_group_points(&srv, "xg", &out_dir, &mut seen));
        if done {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let out = w.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ended = base::now_ns();
    let under_load = exported
        .iter()
        .filter(|(_, t)| *t > started && *t < ended)
        .count();
    eprintln!(
        "{} group points exported, {under_load} cut under the workload",
        exported.len()
    );
    assert!(
        under_load >= 2,
        "{under_load} group points under the workload: {:?}",
        ctl(&srv, &["status"])["groups"]
    );

    // Every exported group point is both disks at its time.
    for (dir, t) in &exported {
        let (a, c) = (p(&dir.join("a.img")), p(&dir.join("c.img")));
        let (code, v) = check_pair(&history, &a, &c, Some(*t));
        assert_eq!(
            code,
            Some(0),
            "group point {} is not both disks at {t}: {v}",
            dir.display()
        );
    }

    // One member's agent dies: no more group points, the status says which member, and the
    // other agent's disk keeps replicating.
    c.kill9();
    std::thread::sleep(Duration::from_secs(3));
    let frozen = newest_id(&srv);
    std::fs::OpenOptions::new()
        .write(true)
        .open(da.path())
        .and_then(|mut f| std::io::Write::write_all(&mut f, &[7u8; 4096]))
        .unwrap();
    wait_caught_up(&sites.sock("a"), "a");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(newest_id(&srv), frozen, "a group point without member c");
    let st = ctl(&srv, &["status"]);
    let why = st["groups"][0]["last_round"]
        .as_str()
        .unwrap_or("")
        .to_string();
    assert!(why.contains("disk c"), "{st}");
}
