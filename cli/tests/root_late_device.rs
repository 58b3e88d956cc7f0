//! Root tier: a protected device missing when the agent starts (the agent unit starts early in
//! boot; a ublk disk over a file, an iSCSI volume come up later) is resumed when it appears —
//! not dropped until the next restart.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

fn losetup(args: &[&str]) {
    let st = Command::new("losetup").args(args).status().unwrap();
    assert!(st.success(), "losetup {args:?}");
}

fn listed(sock: &std::path::Path, name: &str) -> bool {
    ctl(sock, &["status"])["disks"]
        .as_array()
        .unwrap()
        .iter()
        .any(|d| d["name"] == name)
}

#[test]
fn a_device_missing_at_start_is_resumed_when_it_appears() {
    if !sitrep_tests::require!(needs: &NEEDS) {
        return;
    }
    let sites = Sites::new();
    let mut agent = sitrep_tests_agent(&sites);
    let d = loop_dev(16);
    let s = sites.sock("a");
    ctl(
        &s,
        &[
            "protect",
            &p(d.path()),
            "--to",
            &sites.to(),
            "--name",
            "late",
        ],
    );
    wait_caught_up(&s, "late");
    agent.stop();
    // The device goes away while the agent is down, and the agent starts without it.
    losetup(&["-d", &p(d.path())]);
    agent.spawn();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !agent.log_text().contains("device missing at start") {
        assert!(Instant::now() < deadline, "{}", agent.log_text());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        !listed(&s, "late"),
        "a disk without its device is not running"
    );
    // The same backing comes back at the same node: the protection resumes by itself.
    losetup(&[&p(d.path()), &p(d.backing())]);
    random_region(d.path(), 2, 4);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !listed(&s, "late") {
        assert!(Instant::now() < deadline, "{}", agent.log_text());
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        agent
            .log_text()
            .contains("device appeared; protection resumed")
    );
    // Whatever happened while it was away and since, the replica ends up as the source.
    wait_caught_up(&s, "late");
    // Re-attached, the device is not the one the crash sentinel watched (its backing file
    // could have been written while detached, where no tracepoint sees): not trusted.
    assert!(
        !agent.log_text().contains("crash sentinel kept tracking"),
        "{}",
        agent.log_text()
    );
    assert!(disk_status(&s, "late")["resyncs_completed"].as_u64() >= Some(1));
    agent.stop();
    assert_same(d.path(), &sites.replica("late"));
}
