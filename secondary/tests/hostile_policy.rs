//! Hostile peer: the recovery-point policy a peer sends (`PointPolicy`, protocol 3) is
//! clamped by the server — a peer cannot shorten the retention below the server's
//! `--min-retain` — and kept with the disk in `policy.json`; likewise its point storage cap
//! (`PointStorage`, protocol 4), which retires nothing younger than that floor. The harness (`common`) runs the
//! real server with real TLS.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{Client, Server, rt};
use proto::Msg;

const S: u64 = 1_000_000_000;

/// `d` of alice: attached, copied, the policy sent, one point; returns the points report.
fn replicate_with(server: &Server, policy: Option<(u64, u64)>) -> serde_json::Value {
    rt().block_on(async {
        let (mut c, r) = Client::attach(server, "alice", "d", 1, 1 << 20).await;
        r.unwrap();
        if let Some((crash_points_every_ns, retain_ns)) = policy {
            c.send(Msg::PointPolicy {
                crash_points_every_ns,
                retain_ns,
            })
            .await;
        }
        c.copy(&vec![7u8; 1 << 20], 1, false).await;
        c.write_points(1..=1, 4096).await;
        c.send(Msg::Bye).await;
    });
    // The verdict is not answered: wait for its point.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let r = server.call(&base::control::Request::Points { name: "d".into() });
        assert!(r.ok, "{r:?}");
        if r.data["points"].as_array().is_some_and(|a| !a.is_empty()) {
            return r.data;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no point: {:?}",
            r.data
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn a_peer_asking_for_a_short_retention_gets_the_servers_floor() {
    let server = Server::start();
    let pts = replicate_with(&server, Some((1, 1)));
    // The slot clamped to 1 s, the span to the server's floor (24 h by default).
    assert_eq!(pts["policy"]["every_ns"], S, "{pts}");
    assert_eq!(pts["policy"]["retain_ns"], 86_400 * S, "{pts}");
    let file = server.store_dir().join("disks/d/policy.json");
    let asked: serde_json::Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    assert_eq!(
        asked["version"],
        secondary::store::POLICY_VERSION,
        "version 2 since the cap"
    );
    assert_eq!(asked["crash_points_every_ns"], S, "{asked}");
    assert_eq!(
        asked["retain_ns"], 1,
        "what was asked is kept, the floor applied on use"
    );
    let st = server.status();
    let d = &st["disks"][0];
    assert_eq!(d["point_policy"]["crash_points_every_secs"], 1, "{d}");
    assert_eq!(d["point_policy"]["retain_secs"], 86_400, "{d}");
    assert_eq!(d["newest_point"]["id"], 1, "{d}");
    assert_eq!(d["oldest_point"]["id"], 1, "{d}");
}

#[test]
fn without_the_floor_the_peers_policy_holds_within_the_caps() {
    let server = Server::start_with(|o| o.retention.min_retain_ns = 0);
    let pts = replicate_with(&server, Some((7200 * S, u64::MAX)));
    assert_eq!(pts["policy"]["every_ns"], 3600 * S, "{pts}");
    assert_eq!(
        pts["policy"]["retain_ns"],
        base::points::MAX_RETAIN_NS,
        "{pts}"
    );
    let server = Server::start_with(|o| o.retention.min_retain_ns = 0);
    let pts = replicate_with(&server, Some((10 * S, 40 * S)));
    assert_eq!(pts["policy"]["every_ns"], 10 * S, "{pts}");
    assert_eq!(pts["policy"]["retain_ns"], 40 * S, "{pts}");
}

#[test]
fn a_disk_whose_agent_sends_no_policy_gets_the_servers_defaults() {
    let server = Server::start();
    let pts = replicate_with(&server, None);
    assert_eq!(pts["policy"]["every_ns"], 300 * S, "{pts}");
    assert_eq!(pts["policy"]["retain_ns"], 86_400 * S, "{pts}");
    assert!(!server.store_dir().join("disks/d/policy.json").exists());
}

/// `d` of alice: attached, the cap `max_bytes` sent, copied, `n` points (the harness's cut
/// times: all within a second, so all younger than the server's 24 h floor); the status once
/// the cap's task is done with the disk.
fn replicate_capped(server: &Server, max_bytes: u64, n: u64) -> serde_json::Value {
    rt().block_on(async {
        let (mut c, r) = Client::attach(server, "alice", "d", 1, 1 << 20).await;
        r.unwrap();
        c.send(Msg::PointStorage { max_bytes }).await;
        c.copy(&vec![7u8; 1 << 20], 1, false).await;
        c.write_points(1..=n, 16 << 10).await;
        c.send(Msg::Bye).await;
    });
    common::wait_for_status(server, "every point kept", |s| {
        s["disks"][0]["newest_point"]["id"] == n
    })
}

#[test]
fn a_one_byte_cap_from_a_peer_retires_nothing_younger_than_the_floor() {
    let server = Server::start_with(|o| o.retention.keep = 100);
    replicate_capped(&server, 1, 6);
    // Each verdict woke the cap's task; it found nothing older than the floor and said so.
    let st = common::wait_for_status(&server, "d over its cap", |s| {
        s["store"]["disks"][0]["over_point_cap"] == true
    });
    let ids: Vec<u64> = common::points(&server, "d")
        .iter()
        .map(|p| p["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, (1..=6).collect::<Vec<_>>());
    let d = &st["store"]["disks"][0];
    assert_eq!(d["points_retired"]["disk_cap"], 0, "{d}");
    assert_eq!(d["max_point_storage_bytes"], 1, "{d}");
    assert!(d["point_bytes"].as_u64().unwrap() > 1, "{d}");
    let file = server.store_dir().join("disks/d/policy.json");
    let asked: serde_json::Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    assert_eq!(asked["max_point_storage_bytes"], 1, "{asked}");
}

#[test]
fn a_huge_cap_is_kept_as_asked_and_retires_nothing() {
    let server = Server::start_with(|o| o.retention.keep = 100);
    let st = replicate_capped(&server, u64::MAX, 3);
    let d = &st["store"]["disks"][0];
    assert_eq!(d["max_point_storage_bytes"], u64::MAX, "{d}");
    assert_eq!(d["over_point_cap"], false, "{d}");
    assert_eq!(d["points_retired"]["disk_cap"], 0, "{d}");
    assert_eq!(st["disks"][0]["points"], 3, "{st}");
}

#[test]
fn a_point_storage_before_attach_is_refused() {
    let server = Server::start();
    rt().block_on(async {
        let mut c = Client::hello(&server, "alice").await;
        c.send(Msg::PointStorage { max_bytes: 1 }).await;
        assert!(c.recv().await.is_err(), "no session starts with a cap");
    });
    assert!(!server.store_dir().join("disks/d").exists());
}

/// A v3 agent (no `PointStorage`) still negotiates 3 and replicates; its disk has no cap.
#[test]
fn a_version_3_peer_still_replicates_without_a_cap() {
    let server = Server::start();
    rt().block_on(async {
        let mut c = Client::tls(&server, "alice").await;
        c.send(Msg::Hello {
            versions: vec![1, 2, 3],
            agent: "sitrep 3".into(),
        })
        .await;
        match c.recv().await.unwrap() {
            Msg::Welcome { version, .. } => assert_eq!(version, 3),
            m => panic!("Hello answered with {}", m.name()),
        }
        c.send(Msg::Attach {
            disk: "d".into(),
            disk_id: common::disk_id(1),
            size: 1 << 20,
            block_size: 512,
        })
        .await;
        assert!(matches!(c.recv().await.unwrap(), Msg::Attached { .. }));
        c.send(Msg::PointPolicy {
            crash_points_every_ns: 10 * S,
            retain_ns: 3600 * S,
        })
        .await;
        c.copy(&vec![7u8; 1 << 20], 1, false).await;
        c.write_points(1..=2, 4096).await;
        c.send(Msg::Bye).await;
    });
    let st = common::wait_for_status(&server, "both points", |s| {
        s["disks"][0]["newest_point"]["id"] == 2
    });
    assert_eq!(
        st["disks"][0]["point_policy"]["max_point_storage_bytes"],
        serde_json::Value::Null
    );
    assert_eq!(st["store"]["disks"][0]["over_point_cap"], false);
}
