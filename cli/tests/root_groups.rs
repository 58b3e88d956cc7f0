//! Root tier: a consistency group of two loop devices under a causally ordered two-disk
//! workload (`sitrep workload A B --queue-depth 1`: every write issued after the previous one,
//! on either disk, completed). Every group point, exported, passes the two-image check at its
//! cut time; the same disks' points taken from *different* group points (what pairing per-disk
//! points gives) fail the dependency rule — the negative control; a group test failover
//! activates both disks at one point.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;

use common::*;

#[test]
fn group_points_pass_the_two_disk_check_and_mixed_points_fail_it() {
    if !sitrep_tests::require!(needs: &NEEDS) {
        return;
    }
    let sites = Sites::new();
    let _agent = sitrep_tests_agent(&sites);
    let (da, db) = (loop_dev(16), loop_dev(16));
    let s = sites.sock("a");
    let srv = sites.path("server.sock");
    protect_in_group(&sites, &s, da.path(), "a", "db");
    protect_in_group(&sites, &s, db.path(), "b", "db");
    let groups = ctl(&s, &["group", "list"]);
    assert_eq!(
        groups["groups"][0]["members"],
        serde_json::json!(["a", "b"]),
        "{groups}"
    );

    // The causal two-disk workload: ~2,000 writes/s, each issued after the previous one
    // completed, on either disk.
    let history = sites.path("ab.history");
    causal_workload(da.path(), db.path(), &history, "6s", "8M");
    wait_caught_up(&s, "a");
    wait_caught_up(&s, "b");

    // Group points: each passes the two-image check at its cut time. The last cycles' verdicts
    // follow their `Applied`, and each new group point thins older ones: wait until the list
    // stands still.
    let pts = settled_group_points(&srv, "db", 3);
    let out_dir = sites.path("export");
    std::fs::create_dir(&out_dir).unwrap();
    let mut member_points = Vec::new();
    for gp in &pts {
        let id = gp["id"].as_u64().unwrap().to_string();
        let t = gp["cut_time_ns"].as_u64().unwrap();
        let dir = out_dir.join(&id);
        std::fs::create_dir(&dir).unwrap();
        let r = ctl(
            &srv,
            &[
                "points",
                "export",
                "--group",
                "db",
                &id,
                "--out-dir",
                &p(&dir),
            ],
        );
        assert_eq!(r["images"].as_array().map(Vec::len), Some(2), "{r}");
        let (a, b) = (p(&dir.join("a.img")), p(&dir.join("b.img")));
        let (code, v) = check_pair(&history, &a, &b, Some(t));
        assert_eq!(
            code,
            Some(0),
            "group point {id} is not both disks at {t}: {v}"
        );
        member_points.push((a, b));
    }

    // The negative control: disk a from the oldest group point with disk b from the newest
    // (seconds of causally ordered writes apart) — per-disk points paired by hand.
    let (old_a, _) = &member_points[0];
    let (_, new_b) = &member_points[member_points.len() - 1];
    let (code, v) = check_pair(&history, old_a, new_b, None);
    assert_eq!(code, Some(3), "mixed points passed: {v}");
    assert!(
        v["dependencies"]["violations"].as_u64().unwrap_or(0) > 0,
        "mixed points passed the dependency rule: {v}"
    );

    // A group test failover: both disks at one group point, as loop devices.
    let newest = &pts[pts.len() - 1];
    let id = newest["id"].as_u64().unwrap().to_string();
    let r = ctl(
        &srv,
        &["failover", "--group", "db", "--test", "--point", &id],
    );
    let members = r["members"].as_array().unwrap().clone();
    assert_eq!(members.len(), 2, "{r}");
    let dev = |disk: &str| {
        members
            .iter()
            .find(|m| m["disk"] == disk)
            .and_then(|m| m["device"].as_str())
            .unwrap()
            .to_string()
    };
    let (code, v) = check_pair(
        &history,
        &dev("a"),
        &dev("b"),
        newest["cut_time_ns"].as_u64(),
    );
    assert_eq!(
        code,
        Some(0),
        "the group test failover is not the group point: {v}"
    );
    let r = ctl(&srv, &["failover", "--group", "db", "--test", "--cleanup"]);
    assert_eq!(r["cleaned"].as_array().map(Vec::len), Some(2), "{r}");

    // The server's status names the group.
    let st = ctl(&srv, &["status"]);
    assert_eq!(st["groups"][0]["name"], "db", "{st}");

    // A planned failover of the whole group (on the primary), then its commit (secondary):
    // each member active on the secondary, equal to its source.
    let r = ctl(&s, &["failover", "--group", "db", "--planned"]);
    let done = r.as_array().cloned().unwrap_or_default();
    assert_eq!(done.len(), 2, "{r}");
    for (m, src) in [("a", &da), ("b", &db)] {
        let rep = done.iter().find(|x| x["disk"] == m).unwrap();
        assert_same(src.path(), Path::new(rep["device"].as_str().unwrap()));
    }
    let r = ctl(&srv, &["commit", "--group", "db"]);
    assert_eq!(r["committed"].as_array().map(Vec::len), Some(2), "{r}");
}
