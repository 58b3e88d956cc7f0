//! In-process: what the server (or the link) refuses at attach is critical, attempted
//! exactly once, never retried — and names the cause in the status.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use base::net::ReplError;
use base::status::{Health, ReplState};
use common::{Agent, Fault, SimClock, Site};
use proto::ErrorCode;

/// The refusal's code of a server session's end.
fn code(r: &Result<(), ReplError>) -> Option<ErrorCode> {
    match r {
        Err(ReplError::Refused { code, .. }) => Some(*code),
        _ => None,
    }
}

/// Waits until disk `name` is critical, then proves there was one attempt (after the
/// `before` the agent's network saw earlier) and no retry: the retry loop sleeps on the
/// manual clock, so a retry would be a sleeper waiting there, and after the agent stops (its
/// disk tasks joined) the attempts are final.
async fn critical_after_one_attempt(
    agent: &mut Agent,
    name: &str,
    before: usize,
) -> base::status::DiskStatus {
    let st = agent
        .wait_status(name, "critical", |s| s.health == Health::Critical)
        .await;
    assert_eq!(st.state, ReplState::Critical, "{st:?}");
    assert!(!st.connected, "{st:?}");
    assert_eq!(st.next_retry_unix_ns, None, "{st:?}");
    assert_eq!(st.retries, 0, "{st:?}");
    assert!(
        st.error.as_deref().is_some_and(|e| e.contains(name)),
        "{st:?}"
    );
    assert_eq!(agent.clock.sleeping(), 0, "a retry is scheduled");
    agent.stop().await;
    assert_eq!(agent.net.attempts().len(), before + 1, "attempts");
    st
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disk_owned_by_another_client_is_refused_unauthorized() {
    let site = Site::new();
    let owner = site.agent("sitea", SimClock::auto()).await;
    let d0 = site.device("d0", 1 << 20, 1);
    owner.protect(&d0, "owned").await;
    owner.wait_applied("owned").await;

    let mut rogue = site.agent("rogue", SimClock::manual()).await;
    let d1 = site.device("d1", 1 << 20, 2);
    rogue.protect(&d1, "owned").await;
    critical_after_one_attempt(&mut rogue, "owned", 0).await;
    let ends = rogue.net.session_results().await;
    assert_eq!(
        ends.iter().map(code).collect::<Vec<_>>(),
        [Some(ErrorCode::Unauthorized)]
    );
    // The owner's replica is untouched.
    assert!(site.replica("owned") == std::fs::read(&d0).unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_disk_under_the_same_name_is_a_disk_mismatch() {
    let site = Site::new();
    let mut agent = site.agent("sitea", SimClock::manual()).await;
    let d0 = site.device("d0", 1 << 20, 1);
    agent.protect(&d0, "d").await;
    agent.wait_applied("d").await;
    let r = agent
        .request(base::control::Request::Unprotect { name: "d".into() })
        .await;
    assert!(r.ok, "{r:?}");
    agent.restart().await;

    // Same name, same size, another disk (a new disk id).
    let d1 = site.device("d1", 1 << 20, 2);
    agent.protect(&d1, "d").await;
    critical_after_one_attempt(&mut agent, "d", 1).await;
    let ends = agent.net.session_results().await;
    assert_eq!(
        ends.iter().map(code).collect::<Vec<_>>(),
        [None, Some(ErrorCode::DiskMismatch)]
    );
    assert!(site.replica("d") == std::fs::read(&d0).unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disk_that_changed_size_is_a_disk_mismatch() {
    let site = Site::new();
    let mut agent = site.agent("sitea", SimClock::manual()).await;
    let dev = site.device("d", 1 << 20, 1);
    agent.protect(&dev, "d").await;
    agent.wait_applied("d").await;
    agent.stop().await;
    // The disk grows while the agent is down.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&dev)
        .unwrap()
        .set_len(2 << 20)
        .unwrap();
    // The fake refuses to continue a log chain of another size: like a tracker that lost
    // its logs, it starts a new chain (a gap, so a resync would follow the attach).
    std::fs::remove_dir_all(agent.state.join("disks/d/logs")).unwrap();
    std::fs::create_dir(agent.state.join("disks/d/logs")).unwrap();
    let mut agent = Agent::start(&site, "sitea", SimClock::manual(), agent.fake.clone()).await;
    critical_after_one_attempt(&mut agent, "d", 0).await;
    let ends = agent.net.session_results().await;
    assert_eq!(
        ends.iter().map(code).collect::<Vec<_>>(),
        [Some(ErrorCode::DiskMismatch)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_certificate_is_critical_and_never_retried() {
    let site = Site::new();
    let mut agent = site.agent("sitea", SimClock::manual()).await;
    agent.net.fault(Fault::Auth);
    let dev = site.device("d", 1 << 20, 1);
    agent.protect(&dev, "d").await;
    let st = critical_after_one_attempt(&mut agent, "d", 0).await;
    assert!(st.action.is_some(), "{st:?}");
    // Nothing reached the server.
    assert!(agent.net.session_results().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disk_failed_over_on_the_secondary_is_refused_and_recorded_never_retried() {
    let site = Site::new();
    let mut agent = site.agent("sitea", SimClock::manual()).await;
    let dev = site.device("d", 1 << 20, 1);
    agent.protect(&dev, "d").await;
    agent.wait_applied("d").await;
    // An unplanned failover activates the disk on the secondary: replication must stop, and
    // the agent must learn it (so a reverse replication can later adopt this disk).
    site.server.mark_failed_over("d").unwrap();
    agent.write(&dev, 0, &[7u8; 4096]);
    // The running session ends at its next frame; if the agent must reconnect to hear the
    // refusal, that one retry is woken here.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let st = loop {
        let st = agent.status("d").await;
        if st.state == ReplState::FailedOverToPeer {
            break st;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never failed over: {st:?}"
        );
        if agent.clock.sleeping() > 0 {
            agent.clock.wake_next();
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert!(!st.connected, "{st:?}");
    assert_eq!(st.next_retry_unix_ns, None, "{st:?}");
    assert_eq!(agent.clock.sleeping(), 0, "a retry is scheduled");
    agent.stop().await;
    let ends = agent.net.session_results().await;
    assert_eq!(
        ends.last().map(code),
        Some(Some(ErrorCode::FailedOver)),
        "{ends:?}"
    );
    assert!(
        agent.net.attempts().len() <= 2,
        "{:?}",
        agent.net.attempts()
    );
    // Nothing of the post-failover write reached the replica.
    assert!(site.replica("d") != std::fs::read(&dev).unwrap());
}
