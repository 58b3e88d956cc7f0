//! In-process: a connection cut mid-copy resumes at the server's last checkpoint, not at
//! zero, and changes made meanwhile reach the replica through the cycles after the copy.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use base::status::{JobState, ReplState};
use common::{Fault, SimClock, Site, pattern};
use primary::worker::CHECKPOINT_BYTES;

const MIB: u64 = 1 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_cut_midway_resumes_at_the_last_checkpoint() {
    let site = Site::new();
    let agent = site.agent("sitea", SimClock::manual()).await;
    let size = 2 * CHECKPOINT_BYTES + 16 * MIB;
    let dev = site.device("d", usize::try_from(size).unwrap(), 1);
    // Past the first checkpoint, before the second.
    let cut = CHECKPOINT_BYTES + 40 * MIB;
    agent.net.fault(Fault::CutAfter(cut));
    let job = agent.protect(&dev, "d").await;

    // The retry waits on the simulated clock: write while the agent is disconnected, into
    // the part already copied and the part not yet copied.
    agent.clock.next_sleep().await;
    let st = agent.status("d").await;
    assert_eq!(st.state, ReplState::InitialReplication, "{st:?}");
    let copied = st.copy.as_ref().unwrap().bytes_done;
    assert!(copied >= CHECKPOINT_BYTES && copied < cut, "{st:?}");
    agent.write(&dev, 4096, &pattern(8192, 2));
    agent.write(&dev, size - 3 * MIB, &pattern(8192, 3));
    agent.clock.wake_next();

    agent.wait_applied("d").await;
    assert!(site.replica("d") == std::fs::read(&dev).unwrap());
    let st = agent.status("d").await;
    // Resumed, not restarted: the second session sent the rest from the checkpoint, not the
    // whole disk again (it would have shipped at least `cut + size`).
    assert!(st.bytes_shipped >= size, "{st:?}");
    assert!(
        st.bytes_shipped <= cut + (size - copied) + MIB,
        "shipped {} of a {size}-byte disk cut after {cut} with {copied} checkpointed",
        st.bytes_shipped
    );
    assert_eq!(st.retries, 1, "{st:?}");
    assert_eq!(agent.net.attempts().len(), 2);
    // The server saw the first session end in a network error.
    let end = agent.net.session_end(0).await;
    assert!(matches!(end, Err(base::net::ReplError::Net(_))), "{end:?}");
    let jobs = agent.jobs().await;
    let j = jobs.iter().find(|j| j.id == job.id).unwrap();
    assert_eq!(j.state, JobState::Succeeded, "{j:?}");
}
