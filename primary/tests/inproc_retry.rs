//! In-process: the retry schedule of recoverable failures, on the simulated clock — attempts
//! 1, 2, 4, 8, 10, then 30 units apart (plus at most 10 % jitter), and a session that made
//! progress starts the schedule over; before a disk's first attach, network errors are
//! retried every 2 s for two minutes (an agent started before the network). Nothing sleeps:
//! the test wakes each retry.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::{Fault, SimClock, Site, UNIT};

/// Whether `waited` is `units` of the schedule plus at most 10 % jitter.
fn on_schedule(waited: u64, units: u32) -> bool {
    let step = u64::try_from((UNIT * units).as_nanos()).unwrap();
    (step..=step + step / 10).contains(&waited)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_lost_after_the_first_attach_is_retried_on_the_schedule() {
    let site = Site::new();
    let agent = site.agent("sitea", SimClock::manual()).await;
    let schedule = [1, 2, 4, 8, 10, 30, 30];
    let dev = site.device("d", 1 << 20, 1);
    agent.protect(&dev, "d").await;
    agent.wait_applied("d").await;
    // The live session is cut at its next write; every dial after it fails but the last.
    agent.net.cut_live();
    for _ in 1..schedule.len() {
        agent.net.fault(Fault::Down);
    }
    agent.write(&dev, 0, &common::pattern(4096, 3));
    for (i, _) in schedule.iter().enumerate() {
        let due = agent.clock.next_sleep().await;
        // The status says when the next attempt is due, on the agent's clock.
        let st = agent.status("d").await;
        assert_eq!(st.next_retry_unix_ns, Some(due), "{st:?}");
        assert!(st.error.is_some() && !st.connected, "{st:?}");
        assert_eq!(st.retries, i as u64, "{st:?}");
        agent.clock.wake_next();
    }
    agent.wait_applied("d").await;
    assert!(site.replica("d") == std::fs::read(&dev).unwrap());
    // at[0] is the first attach (its session took no simulated time).
    let at = agent.net.attempts();
    assert_eq!(at.len(), schedule.len() + 1, "attempts");
    for (i, units) in schedule.iter().enumerate() {
        let waited = at[i + 1] - at[i];
        assert!(
            on_schedule(waited, *units),
            "attempt {}: waited {:?}, the step is {units} units",
            i + 1,
            Duration::from_nanos(waited)
        );
    }
    let st = agent.status("d").await;
    assert_eq!(st.retries, schedule.len() as u64, "{st:?}");
    assert!(
        st.error.is_none() && st.next_retry_unix_ns.is_none(),
        "{st:?}"
    );
    assert_eq!(agent.clock.sleeping(), 0);
}

/// Before its first attach a disk's network errors are retried every 2 s (plus jitter) for
/// two minutes after it started — an agent started at boot before the network — then on the
/// schedule; the copy runs once the server is reached.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_server_is_retried_quickly_at_start_then_on_the_schedule() {
    let site = Site::new();
    let agent = site.agent("sitea", SimClock::manual()).await;
    const FAULTS: usize = 64;
    for _ in 0..FAULTS {
        agent.net.fault(Fault::Down);
    }
    let dev = site.device("d", 1 << 20, 1);
    agent.protect(&dev, "d").await;
    for _ in 0..FAULTS {
        agent.clock.next_sleep().await;
        agent.clock.wake_next();
    }
    agent.wait_applied("d").await;
    assert!(site.replica("d") == std::fs::read(&dev).unwrap());
    let at = agent.net.attempts();
    assert_eq!(at.len(), FAULTS + 1, "attempts");
    let quick = |w: u64| (2_000_000_000..=2_200_000_000).contains(&w);
    let waits: Vec<u64> = at.windows(2).map(|w| w[1] - w[0]).collect();
    let n_quick = waits.iter().take_while(|w| quick(**w)).count();
    // Two minutes of 2–2.2 s waits, then the schedule from its first step.
    assert!(
        (54..=61).contains(&n_quick),
        "{n_quick} quick retries: {waits:?}"
    );
    assert!(at[n_quick] - at[0] >= 118_000_000_000, "{waits:?}");
    assert!(on_schedule(waits[n_quick], 1), "{waits:?}");
    assert!(on_schedule(waits[n_quick + 1], 2), "{waits:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_that_made_progress_starts_the_schedule_over() {
    let site = Site::new();
    let agent = site.agent("sitea", SimClock::manual()).await;
    let dev = site.device("d", 1 << 20, 1);
    // After the first attach: a lost session, a failed dial (1, 2 units), then a session
    // that ships cycles and breaks, then another failed dial: it waits 1 unit again, not 4.
    agent.protect(&dev, "d").await;
    agent.wait_applied("d").await;
    agent.net.cut_live();
    agent.net.fault(Fault::Down);
    agent.write(&dev, 0, &common::pattern(4096, 5));
    for _ in 0..2 {
        agent.clock.next_sleep().await;
        agent.clock.wake_next();
    }
    agent.wait_applied("d").await;
    // The live session is cut at its next write; the dial after it fails.
    agent.net.cut_live();
    agent.net.fault(Fault::Down);
    agent.write(&dev, 0, &common::pattern(4096, 7));
    for _ in 0..2 {
        agent.clock.next_sleep().await;
        agent.clock.wake_next();
    }
    agent.wait_applied("d").await;
    assert!(site.replica("d") == std::fs::read(&dev).unwrap());
    let at = agent.net.attempts();
    assert_eq!(at.len(), 5, "attempts");
    assert!(on_schedule(at[1] - at[0], 1));
    assert!(on_schedule(at[2] - at[1], 2));
    // at[2] is the session the test cut (no simulated time passes while it runs): the
    // schedule starts over at 1 unit, where it would have been 4.
    let waited = |i: usize| Duration::from_nanos(at[i + 1] - at[i]);
    assert!(on_schedule(at[3] - at[2], 1), "{:?}", waited(2));
    assert!(on_schedule(at[4] - at[3], 2), "{:?}", waited(3));
}
