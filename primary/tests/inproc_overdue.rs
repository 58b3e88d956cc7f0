//! In-process: a disk whose cycles are never crash-consistent turns Warning once its point is
//! overdue — `status` says for how long and what the operator can do — and turns Normal again
//! at the next crash-consistent cycle (issue 21, item 3).
//!
//! The fake source reports every cut inexact, as the tracker's cycles are judged when writes
//! race every read: the agent's verdicts are all "not consistent". The slot is 1 s, so the
//! Warning is due after the slot and its 30 s grace: this test takes ~32 s of real time (the
//! grace is the product's, not shortened for the test).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use base::status::{Health, ReplState};
use common::{PointOpts, SimClock, Site, pattern};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_crash_consistent_point_for_a_slot_and_its_grace_is_a_warning_until_the_next() {
    let site = Site::new();
    let agent = site.agent("sitea", SimClock::auto()).await;
    let dev = site.device("d", 1 << 20, 1);
    agent.fake.set_exact(false);
    let r = agent
        .try_protect_with(
            &dev,
            "d",
            PointOpts {
                crash_points_every: Some("1s"),
                ..PointOpts::default()
            },
        )
        .await;
    assert!(r.ok, "{r:?}");
    agent.wait_applied("d").await;
    agent.write(&dev, 4096, &pattern(8192, 3));
    agent.wait_applied("d").await;

    let st = agent.status("d").await;
    assert_eq!(st.state, ReplState::Protected, "{st:?}");
    let cp = st.crash_points.clone().unwrap();
    assert_eq!(cp.every_seconds, 1);
    assert!(
        cp.last_cut_unix_ns.is_none(),
        "no cycle was consistent: {cp:?}"
    );

    // Changes wait for a point: Warning once a slot (1 s) and its grace (30 s) have passed.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    let st = loop {
        let st = agent.status("d").await;
        if st
            .crash_points
            .as_ref()
            .is_some_and(|c| c.overdue.is_some())
        {
            break st;
        }
        assert_eq!(st.health, Health::Normal, "not overdue yet: {st:?}");
        assert!(
            tokio::time::Instant::now() < deadline,
            "never overdue: {st:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let cp = st.crash_points.clone().unwrap();
    assert_eq!(st.health, Health::Warning, "{st:?}");
    assert!(cp.age_seconds > 31.0, "{cp:?}");
    let msg = cp.overdue.unwrap();
    assert!(
        msg.starts_with("disk d: no crash-consistent point for "),
        "{msg}"
    );
    assert!(msg.contains("--app-consistent"), "names the options: {msg}");
    // The replica is still current: the Warning is about points, not about lag.
    assert!(site.replica("d") == std::fs::read(&dev).unwrap());

    // Exact cuts again: the next cycle is a point and the Warning clears.
    agent.fake.set_exact(true);
    agent.write(&dev, 0, &pattern(4096, 4));
    agent.wait_applied("d").await;
    let st = agent
        .wait_status("d", "a crash-consistent point", |s| {
            s.crash_points
                .as_ref()
                .is_some_and(|c| c.last_cut_unix_ns.is_some() && c.overdue.is_none())
        })
        .await;
    assert_eq!(st.health, Health::Normal, "{st:?}");
    // The verdict reaches the server after the agent has judged the cycle: wait for it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let points = site.points("d").await;
        if !points.points.is_empty() {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{points:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
