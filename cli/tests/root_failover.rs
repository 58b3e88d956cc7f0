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
    !devices_of(image).is_empty()
}

/// The loop devices attached to `image` (`losetup -j`).
fn devices_of(image: &str) -> Vec<String> {
    let out = std::process::Command::new("losetup")
        .args(["-j", image])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split(':').next().map(str::to_string))
        .collect()
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
    // Replication went on meanwhile: the lag stays bounded (the workload is over).
    let lag = disk_status(&s, "t")["lag_seconds"].as_f64().unwrap();
    assert!(lag < 60.0, "lag {lag} s during a test failover");
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
    // The same image path holds the new point: only the new device shows it, and the first
    // device no longer serves the first image (a parallel test may have taken its number).
    assert_eq!(r2["image"].as_str(), Some(image.as_str()), "{r2}");
    assert_eq!(
        devices_of(&image),
        vec![dev2.clone()],
        "the first activation ({dev}) is still attached"
    );
    if dev2 != dev {
        // A device left on the replaced image shows it as `… (deleted)`.
        let back = std::process::Command::new("losetup")
            .args(["--list", "--noheadings", "--output", "BACK-FILE", &dev])
            .output()
            .unwrap();
        let back = String::from_utf8_lossy(&back.stdout).into_owned();
        assert!(!back.contains(&image), "{dev} still serves {back}");
    }
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

struct Kill(Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Planned failover of a mounted, busy ext4: the filesystem is frozen, everything shipped and
/// compared, and the activated disk on the secondary is the source byte for byte (while the
/// source stays frozen) and passes `e2fsck -fn`. The agent stops replicating the disk.
#[test]
fn a_planned_failover_of_a_busy_ext4_loses_nothing() {
    if !sitrep_tests::require!(
        sitrep_tests::Need::Root,
        sitrep_tests::Need::LoopDevices,
        sitrep_tests::Need::Bpf,
        sitrep_tests::Need::Netns,
        sitrep_tests::Need::Command("fio"),
        sitrep_tests::Need::Command("mkfs.ext4"),
        sitrep_tests::Need::Command("e2fsck"),
        sitrep_tests::Need::Command("fsfreeze"),
    ) {
        return;
    }
    let sites = Sites::new();
    let d = loop_dev(64);
    run_ok("mkfs.ext4", &["-q", &p(d.path())]);
    let mnt = sites.path("mnt");
    std::fs::create_dir(&mnt).unwrap();
    run_ok("mount", &[&p(d.path()), &p(&mnt)]);
    let _mounted = Mounted(mnt.clone());
    // Started after the mount: `ip netns exec` gives the agent a copy of the mounts then.
    let mut agent = sitrep_tests_agent(&sites);
    let s = sites.sock("a");
    let srv = sites.path("server.sock");
    ctl(
        &s,
        &["protect", &p(d.path()), "--to", &sites.to(), "--name", "pf"],
    );
    wait_caught_up(&s, "pf");
    let writer = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "i=0; while true; do dd if=/dev/urandom of={}/f$((i % 20)) bs=64k count=4 status=none; i=$((i+1)); done",
            p(&mnt)
        ))
        .spawn()
        .unwrap();
    let _writer = Kill(writer);
    std::thread::sleep(Duration::from_secs(2));
    let r = ctl(&s, &["failover", "pf", "--planned"]);
    assert_eq!(r["kind"], "planned", "{r}");
    assert_eq!(r["frozen"], true, "{r}");
    assert_eq!(r["point_kind"], "app-consistent", "{r}");
    let dev = r["device"].as_str().unwrap().to_string();
    let _detach = Detach(dev.clone());
    assert!(dev.starts_with("/dev/loop"), "{r}");
    // Zero data loss: the activated disk is the (still frozen) source, byte for byte.
    assert_same(d.path(), Path::new(&dev));
    let st = disk_status(&s, "pf");
    assert_eq!(st["state"], "failed-over-to-peer", "{st}");
    let srv_st = ctl(&srv, &["status"]);
    assert_eq!(srv_st["disks"][0]["state"], "failed-over", "{srv_st}");
    // The point activated is the source's last cycle, listed on the secondary.
    let pts = points(&sites, "pf");
    let last = pts.last().unwrap();
    assert_eq!(last["id"], r["point"], "{pts:?}");
    assert_eq!(last["kind"], "app-consistent", "{pts:?}");
    // Both sides show it as a finished job.
    for sock in [&s, &srv] {
        let jobs = ctl(sock, &["jobs"]);
        assert!(
            jobs["jobs"]
                .as_array()
                .unwrap()
                .iter()
                .any(|j| j["kind"] == "planned-failover" && j["state"] == "succeeded"),
            "{jobs}"
        );
    }
    // A second planned failover is refused, and a restarted agent does not replicate it.
    let again = try_ctl(&s, &["failover", "pf", "--planned"]).unwrap_err();
    assert!(again.contains("already failed over"), "{again}");
    agent.restart();
    std::thread::sleep(Duration::from_secs(2));
    let st = disk_status(&s, "pf");
    assert_eq!(st["state"], "failed-over-to-peer", "{st}");
    assert_ne!(st["health"], "critical", "{st}");
    // The activated replica is a clean filesystem.
    run_ok("e2fsck", &["-fn", &dev]);
    // And it mounts, with the files the writer made.
    let chk = sites.path("chk");
    std::fs::create_dir(&chk).unwrap();
    run_ok("mount", &["-o", "ro,noload", &dev, &p(&chk)]);
    let _chk = Mounted(chk.clone());
    let files = std::fs::read_dir(&chk).unwrap().count();
    assert!(files > 1, "the activated filesystem holds {files} entries");
}

/// Without a filesystem to freeze, a planned failover while something writes the disk is
/// aborted — nothing is activated and replication goes on.
#[test]
fn a_planned_failover_of_a_disk_being_written_is_refused() {
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
        &["protect", &p(d.path()), "--to", &sites.to(), "--name", "pw"],
    );
    wait_caught_up(&s, "pw");
    let dev = d.path().to_path_buf();
    let w = std::thread::spawn(move || randwrite(&dev, 20));
    std::thread::sleep(Duration::from_secs(2));
    let err = try_ctl(&s, &["failover", "pw", "--planned"]).unwrap_err();
    assert!(err.contains("planned failover aborted"), "{err}");
    w.join().unwrap();
    let st = ctl(&srv, &["status"]);
    assert_ne!(st["disks"][0]["state"], "failed-over", "{st}");
    wait_caught_up(&s, "pw");
    assert_same(d.path(), &sites.replica("pw"));
    assert_eq!(disk_status(&s, "pw")["state"], "protected");
}
