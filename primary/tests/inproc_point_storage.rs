//! In-process: `protect --max-point-storage` reaches the server (protocol 4 `PointStorage`):
//! its `policy.json` records the cap and its status shows it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{PointOpts, SimClock, Site};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_sends_the_disks_point_storage_cap_and_the_server_records_it() {
    let site = Site::new();
    let agent = site.agent("sitea", SimClock::auto()).await;
    let dev = site.device("d", 4 << 20, 1);
    let r = agent
        .try_protect_with(
            &dev,
            "d",
            PointOpts {
                max_point_storage: Some("3M"),
                ..PointOpts::default()
            },
        )
        .await;
    assert!(r.ok, "{r:?}");
    // `PointStorage` goes right after `Attached`, before the copy: once the copy is applied
    // the server has it.
    agent.wait_applied("d").await;
    let file = site.dir.path().join("store/disks/d/policy.json");
    let asked: serde_json::Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    assert_eq!(asked["version"], 2, "{asked}");
    assert_eq!(asked["max_point_storage_bytes"], 3 << 20, "{asked}");
    let st = site.disk_status("d").await;
    let policy = st.point_policy.unwrap();
    assert_eq!(policy.max_point_storage_bytes, Some(3 << 20), "{policy:?}");
    // The agent keeps it with the disk's protection too.
    let mine = agent.status("d").await;
    assert_eq!(
        mine.point_policy.and_then(|p| p.max_point_storage_bytes),
        Some(3 << 20)
    );

    // A bad size is refused before anything is protected.
    let bad = agent
        .try_protect_with(
            &dev,
            "e",
            PointOpts {
                max_point_storage: Some("lots"),
                ..PointOpts::default()
            },
        )
        .await;
    assert!(!bad.ok, "{bad:?}");
    assert!(
        bad.error
            .unwrap_or_default()
            .contains("--max-point-storage"),
        "names the flag"
    );
}
