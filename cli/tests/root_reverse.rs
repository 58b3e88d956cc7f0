//! Root tier: reverse replication and failback between two network namespaces. Each site
//! runs both daemons: site A's agent protects a loop device to site B's server, as usual;
//! site B's agent and site A's server (with `--adopt-from` its agent's state) carry the
//! reverse direction.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

fn sha(path: &Path) -> String {
    let out = std::process::Command::new("sha256sum")
        .arg(path)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// Planned failover A → B, writes on B, reverse B → A (only the changed blocks cross),
/// failback (planned B → A, activated in place on A's own device), reverse A → B: the
/// original direction, again without a copy. Byte-for-byte at every hand-over.
#[test]
fn reverse_and_failback_round_trip_sends_only_changes() {
    if !sitrep_tests::require!(needs: &NEEDS) {
        return;
    }
    let (_state_b_dir, state_b, sites) = adopting_sites();
    let _agent_a = sitrep_tests_agent(&sites);
    let sa = sites.sock("a");
    let server_b = sites.path("server.sock");
    let d = loop_dev(64);
    random_region(d.path(), 0, 48);
    ctl(
        &sa,
        &["protect", &p(d.path()), "--to", &sites.to(), "--name", "rv"],
    );
    wait_caught_up(&sa, "rv");
    // 1. Planned failover A → B (no filesystem: nothing writes A's disk).
    let r = ctl(&sa, &["failover", "rv", "--planned"]);
    let dev_b = r["device"].as_str().unwrap().to_string();
    let _detach = Detach(dev_b.clone());
    let dev_b = PathBuf::from(dev_b);
    assert_same(d.path(), &dev_b);
    // 2. The workload runs on B: 2 MiB change.
    random_region(&dev_b, 8, 10);
    // 3. Reverse B → A: only what differs crosses.
    let rv = reverse_daemons(&sites, &state_b);
    let st = reverse(&rv.agent_b, &server_b, &["rv"], &to_a(), &[]).unwrap();
    assert_eq!(st["state"], "protected", "{st}");
    let sent = st["last_resync"]["data_bytes_sent"]
        .as_u64()
        .unwrap_or(u64::MAX);
    assert!(
        (2 << 20..=3 << 20).contains(&sent),
        "the comparison should send the 2 MiB that changed: {st}"
    );
    assert!(
        st["wire_bytes"].as_u64().unwrap() < 8 << 20,
        "reverse put more than the changes on the wire: {st}"
    );
    ctl(&rv.agent_b, &["wait", "rv", "--timeout", "120"]);
    assert_same(&dev_b, d.path());
    // Later writes on B flow as cycles.
    random_region(&dev_b, 20, 21);
    ctl(&rv.agent_b, &["wait", "rv", "--timeout", "120"]);
    assert_same(&dev_b, d.path());
    // 4. Failback (full-download: the whole disk is copied again first), then a planned
    // failover B → A, activated in place on A's own device.
    let out = sitrep()
        .args([
            "failback",
            "rv",
            "--mode",
            "full-download",
            "--json",
            "--timeout",
            "300",
        ])
        .args(["--socket", &p(&rv.agent_b)])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let fb: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(fb["device"].as_str().unwrap(), p(d.path()), "{fb}");
    assert_same(d.path(), &dev_b);
    let st_a = ctl(&rv.server_a, &["status"]);
    assert_eq!(st_a["disks"][0]["state"], "failed-over", "{st_a}");
    // 5. Reverse A → B: the original direction, nothing to send.
    let st = reverse(&sa, &rv.server_a, &["rv"], &sites.to(), &[]).unwrap();
    assert_eq!(
        st["last_resync"]["data_bytes_sent"].as_u64(),
        Some(0),
        "the disks were equal: {st}"
    );
    // B's original replica of the disk was retired by that adoption, not deleted.
    let r = ctl(&server_b, &["retired"]);
    assert!(
        r["retired"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["disk"] == "rv" && c["replica_kept"] == true),
        "{r}"
    );
    random_region(d.path(), 30, 31);
    ctl(&sa, &["wait", "rv", "--timeout", "120"]);
    assert_same(d.path(), &dev_b);
}

/// A partition, an unplanned failover on B, writes on both sites: reverse reports a split
/// brain and overwrites nothing — whatever flag B sends — until A's operator, whose changes
/// are lost, chooses B's disk on site A (`sitrep reverse-accept --discard-local-changes`).
#[test]
fn a_split_brain_is_reported_and_nothing_is_overwritten() {
    if !sitrep_tests::require!(needs: &NEEDS) {
        return;
    }
    let state_b_dir = tempfile::tempdir().unwrap();
    let state_b = state_b_dir.path().join("state-b");
    let sites = Sites::new();
    let _agent_a = sitrep_tests_agent(&sites);
    let sa = sites.sock("a");
    let server_b = sites.path("server.sock");
    let d = loop_dev(32);
    random_region(d.path(), 0, 16);
    ctl(
        &sa,
        &["protect", &p(d.path()), "--to", &sites.to(), "--name", "sb"],
    );
    wait_caught_up(&sa, "sb");
    // The partition: A keeps writing, B fails over and writes too.
    sites.net.a.ip(&["link", "set", "veth0", "down"]).unwrap();
    random_region(d.path(), 4, 5);
    let r = ctl(&server_b, &["failover", "sb"]);
    let dev_b = r["device"].as_str().unwrap().to_string();
    let _detach = Detach(dev_b.clone());
    let dev_b = PathBuf::from(dev_b);
    random_region(&dev_b, 10, 11);
    sites.net.a.ip(&["link", "set", "veth0", "up"]).unwrap();
    // A's agent learns of the failover when it reconnects.
    let deadline = Instant::now() + Duration::from_secs(60);
    while disk_status(&sa, "sb")["state"] != "failed-over-to-peer" {
        assert!(Instant::now() < deadline, "{}", disk_status(&sa, "sb"));
        std::thread::sleep(Duration::from_millis(200));
    }
    let before = sha(d.path());
    let rv = reverse_daemons(&sites, &state_b);
    let err = reverse(&rv.agent_b, &server_b, &["sb"], &to_a(), &[]).unwrap_err();
    assert!(err.contains("split brain"), "{err}");
    assert!(
        err.contains("sitrep reverse-accept sb --discard-local-changes"),
        "{err}"
    );
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(sha(d.path()), before, "the old primary's disk was written");
    // B cannot decide what A loses: the old flag fails and says who decides.
    let err = reverse(
        &rv.agent_b,
        &server_b,
        &["sb"],
        &to_a(),
        &["--discard-target-changes"],
    )
    .unwrap_err();
    assert!(
        err.contains("reverse-accept sb --discard-local-changes"),
        "{err}"
    );
    assert_eq!(sha(d.path()), before, "the old primary's disk was written");
    // Site A's operator chooses B's disk, on site A; B reverses again.
    let g = ctl(
        &rv.server_a,
        &["reverse-accept", "sb", "--discard-local-changes"],
    );
    assert!(
        g["local_changes"].is_string(),
        "the operator is shown what A wrote: {g}"
    );
    let st = reverse(&rv.agent_b, &server_b, &["sb"], &to_a(), &[]).unwrap();
    assert_eq!(st["state"], "protected", "{st}");
    ctl(&rv.agent_b, &["wait", "sb", "--timeout", "120"]);
    assert_same(&dev_b, d.path());
}
