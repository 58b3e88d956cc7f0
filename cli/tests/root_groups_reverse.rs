//! Root tier: a consistency group moved between two sites and back as a group. A planned
//! group failover A → B; writes on B; `sitrep reverse --group` on B (only what changed
//! crosses, and the reverse direction's points are group points that pass the two-disk
//! check); `sitrep failback --group` (each member activated in place on A's own device);
//! `sitrep reverse --group` on A restores the original direction with nothing to send, and B's
//! server gets new group points. Byte for byte at every hand-over.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// `sitrep CMD … --json` with these sockets; its JSON, or the test fails with its stderr.
fn run_json(args: &[&str]) -> Value {
    let out = sitrep().args(args).output().unwrap();
    assert!(
        out.status.success(),
        "sitrep {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// `sitrep reverse --group db --to TO` through this site's agent and server.
fn reverse_group(agent: &Path, server: &Path, to: &str) -> Vec<Value> {
    let v = reverse(agent, server, &["--group", "db"], to, &[]).unwrap();
    assert_eq!(v["group"], "db", "{v}");
    v["members"].as_array().cloned().unwrap()
}

/// Each member's `last_resync.data_bytes_sent`, by disk name.
fn sent(members: &[Value], disk: &str) -> u64 {
    let m = members.iter().find(|m| m["name"] == disk).unwrap();
    assert_eq!(m["state"], "protected", "{m}");
    m["last_resync"]["data_bytes_sent"]
        .as_u64()
        .unwrap_or(u64::MAX)
}

/// The device a member's planned failover activated, from the `--json` report list.
fn device_of(reports: &Value, disk: &str) -> PathBuf {
    let r = reports
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["disk"] == disk)
        .unwrap_or_else(|| panic!("no report for disk {disk}: {reports}"));
    PathBuf::from(r["device"].as_str().unwrap())
}

#[test]
fn a_group_reverses_and_fails_back_as_a_group() {
    if !sitrep_tests::require!(needs: &NEEDS) {
        return;
    }
    let (_state_b_dir, state_b, sites) = adopting_sites();
    let _agent_a = sitrep_tests_agent(&sites);
    let sa = sites.sock("a");
    let server_b = sites.path("server.sock");
    let (da, db) = (loop_dev(16), loop_dev(16));
    random_region(da.path(), 0, 12);
    random_region(db.path(), 0, 12);
    protect_in_group(&sites, &sa, da.path(), "a", "db");
    protect_in_group(&sites, &sa, db.path(), "b", "db");

    // Nothing failed over yet: reversing the group names the member and starts nothing.
    let rv = reverse_daemons(&sites, &state_b);
    let out = sitrep()
        .args(["reverse", "--group", "db", "--to", &to_a()])
        .args([
            "--socket",
            &p(&rv.agent_b),
            "--server-socket",
            &p(&server_b),
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("disk a did not fail over to this site"),
        "{err}"
    );
    assert_eq!(
        ctl(&rv.agent_b, &["status"])["disks"],
        serde_json::json!([])
    );

    // 1. Planned failover of the group A → B.
    let r = ctl(&sa, &["failover", "--group", "db", "--planned"]);
    let (ba, bb) = (device_of(&r, "a"), device_of(&r, "b"));
    let _detach = (Detach(p(&ba)), Detach(p(&bb)));
    assert_same(da.path(), &ba);
    assert_same(db.path(), &bb);

    // 2. The workload runs on B: 2 MiB changes on each member.
    random_region(&ba, 2, 4);
    random_region(&bb, 6, 8);

    // 3. Reverse the group B → A: only what differs crosses, and both members join group db
    // on B's agent.
    let members = reverse_group(&rv.agent_b, &server_b, &to_a());
    assert_eq!(members.len(), 2, "{members:?}");
    for m in ["a", "b"] {
        let s = sent(&members, m);
        assert!(
            (2 << 20..=3 << 20).contains(&s),
            "disk {m}: the comparison should send the 2 MiB that changed, sent {s}"
        );
    }
    let groups = ctl(&rv.agent_b, &["group", "list"]);
    assert_eq!(
        groups["groups"][0]["members"],
        serde_json::json!(["a", "b"]),
        "{groups}"
    );
    // Reversing again skips members already reversed: the same protections go on (a new
    // one would start its counters again, its comparison sending nothing).
    let again = reverse_group(&rv.agent_b, &server_b, &to_a());
    assert_eq!(again.len(), 2, "{again:?}");
    for m in &again {
        assert!(
            m["bytes_shipped"].as_u64().unwrap() >= 2 << 20,
            "a member was reversed again: {m}"
        );
    }

    // 4. The reverse direction has group points: a causal workload on B, then every member
    // caught up; A's server's group points pass the two-disk check.
    let history = sites.path("ab.history");
    causal_workload(&ba, &bb, &history, "3s", "4M");
    ctl(&rv.agent_b, &["wait", "a", "--timeout", "120"]);
    ctl(&rv.agent_b, &["wait", "b", "--timeout", "120"]);
    let pts = settled_group_points(&rv.server_a, "db", 1);
    let newest = &pts[pts.len() - 1];
    let id = newest["id"].as_u64().unwrap().to_string();
    let out_dir = sites.path("export");
    std::fs::create_dir(&out_dir).unwrap();
    ctl(
        &rv.server_a,
        &[
            "points",
            "export",
            "--group",
            "db",
            &id,
            "--out-dir",
            &p(&out_dir),
        ],
    );
    let (a_img, b_img) = (p(&out_dir.join("a.img")), p(&out_dir.join("b.img")));
    let (code, v) = check_pair(&history, &a_img, &b_img, newest["cut_time_ns"].as_u64());
    assert_eq!(code, Some(0), "A's group point {id} is not both disks: {v}");

    // 5. Fail the group back: each member activated in place on A's own device.
    let fb = run_json(&[
        "failback",
        "--group",
        "db",
        "--json",
        "--socket",
        &p(&rv.agent_b),
    ]);
    assert_eq!(device_of(&fb, "a"), da.path(), "{fb}");
    assert_eq!(device_of(&fb, "b"), db.path(), "{fb}");
    assert_same(da.path(), &ba);
    assert_same(db.path(), &bb);

    // 6. Reverse the group A → B: the original direction, nothing to send.
    let members = reverse_group(&sa, &rv.server_a, &sites.to());
    for m in ["a", "b"] {
        assert_eq!(sent(&members, m), 0, "disk {m}: the disks were equal");
    }
    // New writes on A make new group points on B's server.
    let since = base::now_ns();
    random_region(da.path(), 1, 2);
    random_region(db.path(), 1, 2);
    ctl(&sa, &["wait", "a", "--timeout", "120"]);
    ctl(&sa, &["wait", "b", "--timeout", "120"]);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let pts = group_points(&server_b, "db");
        if pts
            .iter()
            .any(|gp| gp["cut_time_ns"].as_u64().unwrap_or(0) > since)
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no group point on B's server after the writes: {pts:?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_same(da.path(), &ba);
    assert_same(db.path(), &bb);
}
