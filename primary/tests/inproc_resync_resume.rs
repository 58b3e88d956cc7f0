//! In-process: a tracking gap makes a checksum resync; a connection cut mid-resync resumes
//! at the server's cursor, and the replica ends equal to the device.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::os::unix::fs::FileExt;

use base::status::{ReplState, ResyncPhase};
use common::{Fault, SimClock, Site, pattern};
use primary::resync::COMMIT_DATA;

const MIB: u64 = 1 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resync_cut_midway_resumes_at_the_servers_cursor() {
    let site = Site::new();
    let agent = site.agent("sitea", SimClock::manual()).await;
    let size = 64 * MIB;
    let dev = site.device("d", usize::try_from(size).unwrap(), 1);
    agent.protect(&dev, "d").await;
    agent.wait_applied("d").await;

    // Changes the tracker never saw (the replica now differs in the first 40 MiB), then the
    // tracker reports lost events: the next cycle carries a whole-disk gap.
    let f = std::fs::OpenOptions::new().write(true).open(&dev).unwrap();
    f.write_all_at(&pattern(40 << 20, 2), 0).unwrap();
    drop(f);
    agent.fake.lose_track(&dev).unwrap();
    // The live session breaks at its next write; the next one past the first repair commit.
    let cut = COMMIT_DATA + 8 * MIB;
    agent.net.cut_live();
    agent.net.fault(Fault::CutAfter(cut));
    agent.write(&dev, 50 * MIB, &pattern(4096, 3));

    // Retry 1: the session that starts the resync, cut midway.
    agent.clock.next_sleep().await;
    agent.clock.wake_next();
    agent.clock.next_sleep().await;
    let st = agent.status("d").await;
    let r = st.resync.clone().expect("a resync is under way");
    assert_eq!(r.phase, ResyncPhase::CompareAndRepair, "{st:?}");
    assert_eq!(r.scope_bytes, size, "{st:?}");
    assert!(r.data_bytes_sent >= COMMIT_DATA, "{st:?}");
    let compared_at_cut = r.compared_bytes;
    // Retry 2: resumes and finishes.
    agent.clock.wake_next();

    agent.wait_applied("d").await;
    assert!(site.replica("d") == std::fs::read(&dev).unwrap());
    let st = agent.status("d").await;
    assert_eq!(st.state, ReplState::Protected, "{st:?}");
    assert_eq!(st.resyncs_completed, 1, "{st:?}");
    let done = st.last_resync.clone().unwrap();
    assert_eq!(done.phase, ResyncPhase::Done, "{st:?}");
    // Starting over would compare everything compared before the cut again, then the scope
    // twice (repair and confirmation); resuming skips up to the server's cursor.
    assert!(
        done.compared_bytes < compared_at_cut + 2 * size,
        "compared {} ({compared_at_cut} before the cut) of a {size}-byte scope",
        done.compared_bytes
    );
    assert_eq!(agent.net.attempts().len(), 3);
    assert!(agent.net.session_end(1).await.is_err());
}
