//! Hostile peer: the recovery-point policy a peer sends (`PointPolicy`, protocol 3) is
//! clamped by the server — a peer cannot shorten the retention below the server's
//! `--min-retain` — and kept with the disk in `policy.json`. The harness (`common`) runs the
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
