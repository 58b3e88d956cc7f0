//! In-process: a journal-mode disk (its log carries every write's data, as a ublk target's
//! `--mode journal` does) ships its cycles from the log — no read of the device — and every
//! cycle is a crash-consistent point, the logs its writer sealed by itself included.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{Agent, SimClock, Site, pattern};
use primary::source::fake::FakeSource;

const SIZE: usize = 8 << 20;

/// The replica of `d` is `want`, byte for byte (`what` names the moment).
fn same(site: &Site, want: &[u8], what: &str) {
    let got = site.replica("d");
    let first = got.iter().zip(want).position(|(a, b)| a != b);
    assert!(
        got.len() == want.len() && first.is_none(),
        "replica differs {what}: first at {first:?}"
    );
}

/// Sequential, overlapping changes of every kind the journal knows, at 512-byte offsets
/// that are not 4 KiB aligned, in round `r` (about 1.2 MiB of data: the fake's writer seals
/// a log by itself on the way).
fn round(agent: &Agent, dev: &std::path::Path, r: u64) {
    let base = (r % 6) << 20;
    let seed = 100 + r * 10;
    agent.write(dev, base, &pattern(64 << 10, seed));
    agent.write(dev, base + 1536, &pattern(2560, seed + 1));
    agent.write(dev, base + (60 << 10), &pattern(8 << 10, seed + 2));
    agent.fake.write_zeroes(dev, base + 4608, 1024).unwrap();
    agent.fake.discard(dev, base + 32768, 8192).unwrap();
    agent.write(dev, base + 33280, &pattern(512, seed + 3));
    agent.write(dev, base + 512, &pattern(1024, seed + 4));
    agent.write(dev, base + (128 << 10), &pattern(1 << 20, seed + 5));
    agent.write(dev, base + (200 << 10) + 512, &pattern(3584, seed + 6));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_journal_disk_ships_its_log_and_every_cycle_is_a_point() {
    let site = Site::new();
    // The "target" seals a log by itself every 512 KiB of log.
    let fake = FakeSource::journal(512 << 10);
    let agent = Agent::start(&site, "sitea", SimClock::auto(), fake).await;
    let dev = site.device("d", SIZE, 1);
    agent.protect(&dev, "d").await;
    agent.wait_applied("d").await;
    same(&site, &std::fs::read(&dev).unwrap(), "after the copy");

    // A small write first, cut by the agent: the cycles after it follow a point.
    agent.write(&dev, 4096 + 512, &pattern(1024, 2));
    agent.wait_applied("d").await;
    same(
        &site,
        &std::fs::read(&dev).unwrap(),
        "after the first cycle",
    );

    for r in 0..4 {
        round(&agent, &dev, r);
        agent.wait_applied("d").await;
        same(
            &site,
            &std::fs::read(&dev).unwrap(),
            &format!("after round {r}"),
        );
    }
    assert!(
        agent.fake.self_sealed(&dev) >= 4,
        "the fake sealed logs by itself: {}",
        agent.fake.self_sealed(&dev)
    );

    // Data the device never held reaches the replica: it came from the log, not a read.
    let ghost = pattern(8192, 99);
    let at: usize = (7 << 20) + 512;
    agent.fake.log_only_write(&dev, at as u64, &ghost).unwrap();
    agent.wait_applied("d").await;
    let mut want = std::fs::read(&dev).unwrap();
    assert_ne!(&want[at..at + 8192], &ghost[..]);
    want[at..at + 8192].copy_from_slice(&ghost);
    same(&site, &want, "after a write logged but not performed");
    // Performed for real (plus more): the replica is the device again.
    agent.write(&dev, at as u64, &ghost);
    round(&agent, &dev, 4);
    agent.wait_applied("d").await;
    same(&site, &std::fs::read(&dev).unwrap(), "at the end");

    // Every cycle was judged, and every one is a crash-consistent point.
    let st = agent
        .wait_status("d", "judged every applied cycle", |st| {
            st.cycles_judged >= st.cycles_applied
        })
        .await;
    assert!(st.cycles_judged >= 10, "{st:?}");
    assert_eq!(st.cycles_judged, st.cycles_consistent, "{st:?}");
    assert!(st.connected && st.error.is_none(), "{st:?}");
    let points = site.points("d").await;
    assert!(!points.points.is_empty(), "{points:?}");
}
