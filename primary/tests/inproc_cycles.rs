//! In-process: the initial copy, then cycles — the replica equals the device after each.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use base::status::{JobState, ReplState};
use common::{SimClock, Site, pattern};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_initial_copy_then_cycles_keep_the_replica_equal_to_the_device() {
    let site = Site::new();
    let agent = site.agent("sitea", SimClock::auto()).await;
    let dev = site.device("d", 8 << 20, 1);
    let job = agent.protect(&dev, "d").await;
    assert_eq!(job.kind, "enable-protection");

    agent.wait_applied("d").await;
    assert!(
        site.replica("d") == std::fs::read(&dev).unwrap(),
        "replica after the copy"
    );
    let st = agent.status("d").await;
    assert_eq!(st.state, ReplState::Protected, "{st:?}");
    assert!(st.copy.as_ref().is_some_and(|c| c.done), "{st:?}");

    // Three rounds of writes, each shipped as cycles.
    let mut applied = st.cycles_applied;
    for round in 0..3u64 {
        agent.write(&dev, (round * 3) << 20, &pattern(64 << 10, 10 + round));
        agent.write(&dev, (8 << 20) - 4096, &pattern(4096, 20 + round));
        agent.wait_applied("d").await;
        assert!(
            site.replica("d") == std::fs::read(&dev).unwrap(),
            "replica after round {round}"
        );
        let st = agent.status("d").await;
        assert!(st.cycles_applied > applied, "round {round}: {st:?}");
        applied = st.cycles_applied;
        assert!(st.connected && st.error.is_none(), "{st:?}");
    }

    let jobs = agent.jobs().await;
    let j = jobs.iter().find(|j| j.id == job.id).unwrap();
    assert_eq!(j.state, JobState::Succeeded, "{j:?}");
    // The server keeps points of the cycles, none past what the agent saw applied (the
    // newest cycle's point may follow its verdict, after `wait` returned).
    let points = site.points("d").await;
    assert!(!points.points.is_empty(), "{points:?}");
    let last = agent.status("d").await.last_applied.unwrap().seq;
    assert!(points.points.last().unwrap().id <= last, "{points:?}");
    assert_eq!(site.disk_status("d").await.cycles_applied, applied);
}
