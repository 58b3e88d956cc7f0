//! In-process: a planned failover runs its steps on the primary — ship what is pending,
//! quiesce (no filesystem mounted from the fake's device: nothing to freeze), ship the last
//! cycle and prove it consistent, compare source and replica by digests — and aborts on a
//! difference, replication going on. The activation itself (step 6) attaches a loop device
//! on the server, which needs root: the root tier (`cli/tests/root_*`) covers it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::os::unix::fs::FileExt;

use base::control::Request;
use base::status::{JobState, ReplState};
use common::{SimClock, Site, pattern};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_planned_failover_aborts_at_the_compare_when_the_replica_differs() {
    let site = Site::new();
    let agent = site.agent("sitea", SimClock::manual()).await;
    let dev = site.device("d", 4 << 20, 1);
    agent.protect(&dev, "d").await;
    agent.wait_applied("d").await;
    // A change pending when the failover starts (shipped by its first step), and one the
    // tracker never saw (only the digest comparison can find it).
    agent.write(&dev, 1 << 20, &pattern(4096, 2));
    let f = std::fs::OpenOptions::new().write(true).open(&dev).unwrap();
    f.write_all_at(&pattern(4096, 3), 3 << 20).unwrap();
    drop(f);

    let r = agent
        .request(Request::PlannedFailover { name: "d".into() })
        .await;
    assert!(!r.ok, "{r:?}");
    let jobs = agent.jobs().await;
    let j = jobs.iter().find(|j| j.kind == "planned-failover").unwrap();
    assert_eq!(j.state, JobState::Failed, "{j:?}");
    // Stopped at the comparison, never at the activation (the shared scan used to relabel
    // the step with the resync's `compare-and-repair`).
    assert_eq!(j.step, "compare", "{j:?}");
    assert_eq!(r.error, j.error, "the request says what the job says");

    // Not failed over: replication goes on, and the last cycle (the tracked write) was
    // applied before the comparison.
    let st = agent.status("d").await;
    assert_eq!(st.state, ReplState::Protected, "{st:?}");
    let replica = site.replica("d");
    let device = std::fs::read(&dev).unwrap();
    assert!(replica[1 << 20..(1 << 20) + 4096] == device[1 << 20..(1 << 20) + 4096]);
    assert!(replica[3 << 20..(3 << 20) + 4096] != device[3 << 20..(3 << 20) + 4096]);
    let applied = st.cycles_applied;
    agent.write(&dev, 2 << 20, &pattern(4096, 4));
    agent.wait_applied("d").await;
    assert!(agent.status("d").await.cycles_applied > applied);
    assert!(site.replica("d")[2 << 20..(2 << 20) + 4096] == pattern(4096, 4)[..]);
    assert_eq!(agent.net.attempts().len(), 1, "one session throughout");
}
