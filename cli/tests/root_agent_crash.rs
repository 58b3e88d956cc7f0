//! Root tier: an agent crash (kill -9) in the middle of a workload, or writes while the agent
//! is stopped, cost no resync. The crash
//! sentinel — BPF programs and maps pinned in bpffs — keeps marking changes while no agent
//! runs; the next agent adopts it and re-ships only the granules it marked (docs/tracking.md,
//! "Agent crash"). Replica == source afterwards, and the disk was never copied again.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use sitrep_tests::replay::fio_engine;

const DISK_MIB: u64 = 64;

#[test]
fn a_kill_9_under_writes_costs_no_resync() {
    if !sitrep_tests::require!(needs: &NEEDS) {
        return;
    }
    let sites = Sites::new();
    let mut agent = sitrep_tests_agent(&sites);
    let d = loop_dev(DISK_MIB);
    let s = sites.sock("a");
    ctl(
        &s,
        &["protect", &p(d.path()), "--to", &sites.to(), "--name", "c"],
    );
    wait_caught_up(&s, "c");
    // 4 KiB random writes over the first 16 MiB; the agent dies in the middle of them.
    let engine = format!("--ioengine={}", fio_engine());
    crash_costs_no_resync(
        &sites,
        &mut agent,
        d.path(),
        "c",
        &[
            "--rw=randwrite",
            "--bs=4k",
            "--direct=1",
            &engine,
            "--iodepth=8",
            "--size=16m",
            "--time_based",
            "--runtime=4",
            "--rate=8m",
        ],
        DISK_MIB << 20,
    );
}

#[test]
fn writes_while_the_agent_is_stopped_are_re_shipped_not_resynced() {
    if !sitrep_tests::require!(needs: &NEEDS) {
        return;
    }
    let sites = Sites::new();
    let mut agent = sitrep_tests_agent(&sites);
    let d = loop_dev(DISK_MIB);
    let s = sites.sock("a");
    ctl(
        &s,
        &["protect", &p(d.path()), "--to", &sites.to(), "--name", "u"],
    );
    wait_caught_up(&s, "u");
    // A clean stop (an upgrade, `systemctl restart`), and the disk is written meanwhile:
    // the counters say so, the sentinel says where.
    agent.stop();
    random_region(d.path(), 8, 10);
    agent.spawn();
    wait_caught_up(&s, "u");
    let st = disk_status(&s, "u");
    let log = agent.log_text();
    assert!(log.contains("while untracked"), "{log}");
    assert!(log.contains("crash sentinel kept tracking"), "{log}");
    assert_eq!(st["resyncs_completed"], 0, "{st}");
    assert!(st["resync"].is_null(), "{st}");
    let shipped = st["bytes_shipped"].as_u64().unwrap();
    assert!(
        shipped < 8 << 20,
        "re-shipped {shipped} bytes for 2 MiB written: {st}"
    );
    agent.stop();
    assert_same(d.path(), &sites.replica("u"));
}
