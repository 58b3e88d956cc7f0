//! Root tier: replication between two "sites" — two network namespaces joined by a veth pair
//! — with the real `sitrep agent` (eBPF tracking a loop device) in site A and the real
//! `sitrep server` in site B, mutual TLS with certificates from `sitrep certs`.
//!
//! Every test ends by comparing the replica with the source byte for byte after `sitrep
//! wait` (every change made before it is applied on the replica), and checks the counters
//! its scenario is about (zero regions never sent as bytes, a resumed copy not restarted).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;
use sitrep_tests::io::MIB;
use sitrep_tests::netns::NetNsPair;
use sitrep_tests::replay::fio_spawn;
use sitrep_tests::require;

#[test]
fn initial_copy_skips_zeros_and_cycles_converge_at_two_frequencies() {
    if !require!(needs: &NEEDS) {
        return;
    }
    let sites = Sites::new();
    let agent = sitrep_tests_agent(&sites);
    let d1 = loop_dev(256);
    let d2 = loop_dev(64);
    // 96 MiB of data in two regions, 160 MiB of zeros.
    random_region(d1.path(), 0, 64);
    random_region(d1.path(), 160, 192);
    random_region(d2.path(), 8, 24);
    let s = sites.sock("a");
    let job = ctl(
        &s,
        &[
            "protect",
            &p(d1.path()),
            "--to",
            &sites.to(),
            "--name",
            "one",
        ],
    );
    assert_eq!(job["kind"], "enable-protection");
    ctl(
        &s,
        &[
            "protect",
            &p(d2.path()),
            "--to",
            &sites.to(),
            "--name",
            "two",
            "--frequency",
            "30s",
        ],
    );
    let st = wait_caught_up(&s, "one");
    assert_eq!(st["state"], "protected", "{st}");
    // 0 unless something was recorded after the wait's cut (seen once: 0.2 s under CI load).
    assert!(st["lag_seconds"].as_f64().unwrap() < 10.0, "{st}");
    assert_same(d1.path(), &sites.replica("one"));
    // Zero regions crossed the wire as zero extents, never as bytes.
    let shipped = st["bytes_shipped"].as_u64().unwrap();
    assert!(
        shipped <= 96 * MIB + 4 * MIB,
        "shipped {shipped} bytes for 96 MiB of data"
    );
    assert!(st["zero_bytes"].as_u64().unwrap() >= 160 * MIB, "{st}");
    let jobs = ctl(&s, &["jobs"]);
    assert!(
        jobs["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .any(|j| j["disk"] == "one" && j["state"] == "succeeded"),
        "{jobs}"
    );
    // Delta cycles: continuous for "one", 30 s for "two" (wait forces the cut).
    let bg = fio_spawn(
        d2.path(),
        &[
            "--rw=randwrite",
            "--bs=4k",
            "--direct=1",
            "--time_based",
            "--runtime=4",
            "--rate=5m",
        ],
    );
    randwrite(d1.path(), 4);
    bg.wait();
    for (name, dev) in [("one", &d1), ("two", &d2)] {
        let st = wait_caught_up(&s, name);
        assert_same(dev.path(), &sites.replica(name));
        assert!(st["cycles_applied"].as_u64().unwrap() >= 1, "{st}");
        assert!(st["last_applied"]["seq"].as_u64().is_some(), "{st}");
    }
    // The server's view agrees.
    let srv = ctl(&sites.path("server.sock"), &["status"]);
    assert_eq!(srv["role"], "server");
    assert_eq!(srv["disks"].as_array().unwrap().len(), 2, "{srv}");
    drop(agent);
}

#[test]
fn kill9_of_server_and_agent_at_random_moments_converges() {
    if !require!(needs: &NEEDS) {
        return;
    }
    let mut sites = Sites::new();
    let mut agent = sitrep_tests_agent(&sites);
    let d = loop_dev(64);
    random_region(d.path(), 0, 32);
    let s = sites.sock("a");
    ctl(
        &s,
        &["protect", &p(d.path()), "--to", &sites.to(), "--name", "k"],
    );
    wait_caught_up(&s, "k");
    let bg = fio_spawn(
        d.path(),
        &[
            "--rw=randwrite",
            "--bsrange=4k-128k",
            "--direct=1",
            "--time_based",
            "--runtime=14",
            "--rate=10m",
        ],
    );
    let mut seed = std::process::id();
    let mut rand_ms = |lo: u32, hi: u32| {
        seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
        u64::from(lo + (seed >> 8) % (hi - lo))
    };
    for round in 0..3 {
        std::thread::sleep(Duration::from_millis(rand_ms(500, 1500)));
        sites.server.kill9();
        std::thread::sleep(Duration::from_millis(rand_ms(100, 600)));
        sites.server.restart();
        std::thread::sleep(Duration::from_millis(rand_ms(500, 1500)));
        agent.kill9();
        std::thread::sleep(Duration::from_millis(rand_ms(100, 600)));
        agent.restart();
        eprintln!("round {round}: killed and restarted both");
    }
    bg.wait();
    let st = wait_caught_up(&s, "k");
    assert_eq!(st["state"], "protected", "{st}");
    assert_same(d.path(), &sites.replica("k"));
    // The server recovered whatever it had staged and applied cycles in order.
    assert!(
        sites.server.log_text().contains("replica open"),
        "the restarted server reopened the replica"
    );
    // A clean stop (SIGTERM) and restart continues without a re-copy.
    agent.stop();
    let before = disk_status_after_restart(&mut agent, &s, "k");
    assert_eq!(before["resync_reason"], Value::Null, "{before}");
    randwrite(d.path(), 2);
    wait_caught_up(&s, "k");
    assert_same(d.path(), &sites.replica("k"));
}

fn disk_status_after_restart(agent: &mut Daemon, sock: &Path, name: &str) -> Value {
    agent.spawn();
    disk_status(sock, name)
}

#[test]
fn network_cut_resumes_the_copy_and_a_cycle() {
    if !require!(needs: &NEEDS) {
        return;
    }
    let sites = Sites::new();
    // Slow the copy down so the cut lands in the middle of it.
    let mut agent = Daemon::start(
        &sites.net.a,
        &sites.path("agent-a.log"),
        &[
            "agent".into(),
            "--state".into(),
            p(&sites.path("state-a")),
            "--pki".into(),
            p(&sites.path("pki-a")),
            "--socket".into(),
            p(&sites.sock("a")),
            "--retry-unit".into(),
            "0.2".into(),
            "--max-rate".into(),
            "24M".into(),
        ],
    );
    let d = loop_dev(160);
    random_region(d.path(), 0, 160);
    let s = sites.sock("a");
    ctl(
        &s,
        &["protect", &p(d.path()), "--to", &sites.to(), "--name", "n"],
    );
    // Wait until the first checkpoint (64 MiB) is durable, then cut the link.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let st = disk_status(&s, "n");
        if st["copy"]["bytes_done"].as_u64().unwrap_or(0) >= 64 * MIB {
            assert_eq!(
                st["copy"]["done"], false,
                "the cut must land mid-copy: {st}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "copy did not progress: {st}");
        std::thread::sleep(Duration::from_millis(100));
    }
    cut_link(&sites, Duration::from_secs(2));
    let st = wait_caught_up(&s, "n");
    assert_same(d.path(), &sites.replica("n"));
    let shipped = st["bytes_shipped"].as_u64().unwrap();
    // A restarted copy would have sent ≥ 64 MiB + 160 MiB.
    assert!(
        shipped < 160 * MIB + 64 * MIB,
        "the copy restarted from zero: {shipped} bytes shipped for a 160 MiB disk"
    );
    assert!(
        agent.log_text().contains("retrying"),
        "the agent noticed the cut"
    );
    // Mid-cycle: a big cycle at 24 MB/s, cut while it ships.
    random_region(d.path(), 16, 112);
    std::thread::sleep(Duration::from_millis(1500));
    cut_link(&sites, Duration::from_secs(2));
    wait_caught_up(&s, "n");
    assert_same(d.path(), &sites.replica("n"));
    agent.stop();
}

/// Takes site A's link down, destroys its TCP connections (a real outage times them out;
/// this one is short), and brings it back after `down`.
fn cut_link(sites: &Sites, down: Duration) {
    sites.net.a.ip(&["link", "set", "veth0", "down"]).unwrap();
    let _ = sites
        .net
        .a
        .exec("ss", &["-K", "dst", &NetNsPair::ADDR_B.to_string()]);
    std::thread::sleep(down);
    sites.net.a.ip(&["link", "set", "veth0", "up"]).unwrap();
}

#[test]
fn refuses_wrong_ca_expired_cert_and_foreign_client() {
    if !require!(needs: &NEEDS) {
        return;
    }
    let sites = Sites::new();
    let good = sitrep_tests_agent(&sites);
    let d = loop_dev(32);
    random_region(d.path(), 0, 8);
    let s = sites.sock("a");
    ctl(
        &s,
        &[
            "protect",
            &p(d.path()),
            "--to",
            &sites.to(),
            "--name",
            "owned",
        ],
    );
    wait_caught_up(&s, "owned");
    let replica_before = std::fs::read(sites.replica("owned")).unwrap();
    // Another CA entirely.
    sitrep_ok(&[
        "certs",
        "init",
        "--dir",
        &p(&sites.path("pki-evil")),
        "--name",
        "sitea",
    ]);
    // Our CA, but expired.
    sitrep_ok(&[
        "certs",
        "issue",
        "--ca",
        &p(&sites.path("pki-b")),
        "--name",
        "old",
        "--out",
        &p(&sites.path("pki-old")),
        "--expired",
    ]);
    // Our CA, another host, trying to write "owned".
    sitrep_ok(&[
        "certs",
        "issue",
        "--ca",
        &p(&sites.path("pki-b")),
        "--name",
        "rogue",
        "--out",
        &p(&sites.path("pki-rogue")),
    ]);
    for (tag, pki, name, expect) in [
        ("evil", "pki-evil", "evil", "authentication failed"),
        ("old", "pki-old", "old", "authentication failed"),
        ("rogue", "pki-rogue", "owned", "may not write"),
    ] {
        let agent = sites.agent(tag, pki);
        let dev = loop_dev(16);
        random_region(dev.path(), 0, 4);
        ctl(
            &sites.sock(tag),
            &[
                "protect",
                &p(dev.path()),
                "--to",
                &sites.to(),
                "--name",
                name,
            ],
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        let st = loop {
            let st = disk_status(&sites.sock(tag), name);
            if st["health"] == "critical" {
                break st;
            }
            assert!(Instant::now() < deadline, "{tag}: never refused: {st}");
            std::thread::sleep(Duration::from_millis(100));
        };
        let err = st["error"].as_str().unwrap_or_default().to_string();
        assert!(
            err.contains(expect),
            "{tag}: error {err:?} should say {expect:?}"
        );
        assert!(
            err.contains(name),
            "{tag}: error {err:?} should name the disk"
        );
        // `wait` reports the failure instead of hanging.
        let w = try_ctl(&sites.sock(tag), &["wait", name, "--timeout", "5"]);
        assert!(w.is_err(), "{tag}: wait succeeded on a refused disk");
        drop(agent);
        if name != "owned" {
            assert!(
                !sites.path("store").join("disks").join(name).exists(),
                "{tag}: the server created a replica for a refused client"
            );
        }
    }
    assert_eq!(
        std::fs::read(sites.replica("owned")).unwrap(),
        replica_before,
        "a refused client changed the replica"
    );
    drop(good);
}
