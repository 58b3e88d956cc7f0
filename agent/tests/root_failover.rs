//! Root tier: failover on the secondary. `sitrep workload` writes self-describing blocks to
//! a protected loop device in site A; the recovery point a failover activates on site B (as
//! a loop device) must pass `sitrep check` at its cut time — for a test failover while
//! replication goes on, and for an unplanned failover after the primary died, to the
//! latest processed point and to an older one before the commit.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

fn workload(dev: &Path, history: &Path, seconds: u32) -> Child {
    sitrep()
        .args(["workload", &p(dev), "--history", &p(history)])
        .args(["--duration", &format!("{seconds}s"), "--queue-depth", "4"])
        .args(["--rate", "2M"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// `sitrep check` of `image` at `t` must pass.
fn assert_checks(history: &Path, image: &str, t: u64) {
    let out = sitrep()
        .args(["check", "--history", &p(history), "--image", image])
        .args(["--point-time", &t.to_string(), "--json"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{image} is not the disk at {t}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn points(sites: &Sites, name: &str) -> Vec<Value> {
    ctl(&sites.path("server.sock"), &["points", name])["points"]
        .as_array()
        .unwrap()
        .clone()
}

fn wait_points(sites: &Sites, name: &str, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while points(sites, name).len() < n {
        assert!(Instant::now() < deadline, "fewer than {n} points appeared");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn attached(image: &str) -> bool {
    let out = std::process::Command::new("losetup")
        .args(["-j", image])
        .output()
        .unwrap();
    !String::from_utf8_lossy(&out.stdout).trim().is_empty()
}

#[test]
fn a_test_failover_is_the_point_while_replication_goes_on_and_cleans_up() {
    if !sitrep_tests::require!(needs: &NEEDS) {
        return;
    }
    let sites = Sites::new();
    let _agent = sitrep_tests_agent(&sites);
    let d = loop_dev(32);
    let s = sites.sock("a");
    let srv = sites.path("server.sock");
    ctl(
        &s,
        &["protect", &p(d.path()), "--to", &sites.to(), "--name", "t"],
    );
    wait_caught_up(&s, "t");
    let history = sites.path("t.history");
    let w = workload(d.path(), &history, 8);
    wait_points(&sites, "t", 2);
    let r = ctl(&srv, &["failover", "t", "--test", "--point", "latest"]);
    let dev = r["device"].as_str().unwrap().to_string();
    let image = r["image"].as_str().unwrap().to_string();
    assert_eq!(r["kind"], "test", "{r}");
    assert!(dev.starts_with("/dev/loop"), "{r}");
    // One test failover per disk.
    let again = try_ctl(&srv, &["failover", "t", "--test"]).unwrap_err();
    assert!(again.contains("already has a test failover"), "{again}");
    let out = w.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_checks(&history, &dev, r["point"]["cut_time_ns"].as_u64().unwrap());
    // The copy is writable and isolated: replication went on and the replica is the source.
    std::fs::write(&dev, vec![0xa5u8; 4096]).unwrap();
    wait_caught_up(&s, "t");
    assert_same(d.path(), &sites.replica("t"));
    // Cleanup leaves nothing behind.
    ctl(&srv, &["failover", "t", "--test", "--cleanup"]);
    assert!(!attached(&image), "{image} is still attached");
    assert!(!Path::new(&image).exists(), "{image} still exists");
    let none = try_ctl(&srv, &["failover", "t", "--test", "--cleanup"]).unwrap_err();
    assert!(none.contains("no test failover"), "{none}");
}

#[test]
fn an_unplanned_failover_activates_the_chosen_point_until_commit() {
    if !sitrep_tests::require!(needs: &NEEDS) {
        return;
    }
    let sites = Sites::new();
    let mut agent = sitrep_tests_agent(&sites);
    let d = loop_dev(32);
    let s = sites.sock("a");
    let srv = sites.path("server.sock");
    ctl(
        &s,
        &["protect", &p(d.path()), "--to", &sites.to(), "--name", "u"],
    );
    wait_caught_up(&s, "u");
    let history = sites.path("u.history");
    let w = workload(d.path(), &history, 6);
    wait_points(&sites, "u", 3);
    // The primary dies mid-workload.
    agent.kill9();
    let out = w.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pts = points(&sites, "u");
    let r = ctl(&srv, &["failover", "u", "--point", "latest-processed"]);
    assert_eq!(r["kind"], "unplanned", "{r}");
    assert_eq!(r["point"]["id"], pts.last().unwrap()["id"], "{r}");
    let dev = r["device"].as_str().unwrap().to_string();
    let image = r["image"].as_str().unwrap().to_string();
    assert_checks(&history, &dev, r["point"]["cut_time_ns"].as_u64().unwrap());
    let st = ctl(&srv, &["status"]);
    assert_eq!(st["disks"][0]["state"], "failed-over", "{st}");
    // Before the commit another point can be chosen: the oldest.
    let first = pts[0]["id"].as_u64().unwrap().to_string();
    let r2 = ctl(&srv, &["failover", "u", "--point", &first]);
    let dev2 = r2["device"].as_str().unwrap().to_string();
    assert_eq!(r2["point"]["id"].as_u64().unwrap().to_string(), first);
    assert!(
        !attached(&image) || dev2 == dev,
        "the first activation is still attached"
    );
    assert_checks(
        &history,
        &dev2,
        r2["point"]["cut_time_ns"].as_u64().unwrap(),
    );
    // Commit: the points go, the activated disk stays.
    ctl(&srv, &["commit", "u"]);
    assert!(points(&sites, "u").is_empty());
    assert!(attached(r2["image"].as_str().unwrap()));
    let again = try_ctl(&srv, &["failover", "u"]).unwrap_err();
    assert!(again.contains("committed"), "{again}");
    // The old primary comes back: refused, not retried, and told why.
    agent.restart();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let st = disk_status(&s, "u");
        if st["health"] == "critical" {
            assert!(
                st["error"].as_str().unwrap().contains("failed over"),
                "{st}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "the agent was not refused: {st}");
        std::thread::sleep(Duration::from_millis(200));
    }
    // Tidy: the activated disk is the test's to detach.
    let _ = std::process::Command::new("losetup")
        .args(["-d", &dev2])
        .status();
}
