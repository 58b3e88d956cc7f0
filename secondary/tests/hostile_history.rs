//! Hostile peer: the protected host cannot destroy its history on the secondary
//! (issue 19, item 13). The harness (`common`) runs the real server with real TLS.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::cast_possible_truncation
)]

mod common;

use common::{Client, Server, points, rt};
use proto::Frame;

const SIZE: u64 = 1 << 20;

/// An honest session: copy, two cycles judged consistent → two recovery points.
async fn replicate_two_points(server: &Server) {
    common::replicate_points(server, "alice", "d", 2).await;
}

#[test]
fn the_harness_replicates_and_offers_points() {
    let server = Server::start();
    rt().block_on(replicate_two_points(&server));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while points(&server, "d").len() < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "{:?}",
            points(&server, "d")
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Point `id` of `disk` (a disk or a retired copy `NAME@NS`) exported, as bytes.
fn export(server: &Server, disk: &str, id: u64, dir: &std::path::Path) -> Vec<u8> {
    let out = dir.join(format!("{}-{id}.img", disk.replace('@', "_")));
    let r = server.call(&base::control::Request::Export {
        name: disk.into(),
        point: base::points::PointSel::Id(id),
        out: out.display().to_string(),
        force: true,
    });
    assert!(r.ok, "{r:?}");
    std::fs::read(out).unwrap()
}

fn wait_points(server: &Server, disk: &str, n: usize) -> Vec<serde_json::Value> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let p = points(server, disk);
        if p.len() >= n {
            return p;
        }
        assert!(std::time::Instant::now() < deadline, "{p:?}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

fn retired(server: &Server) -> Vec<serde_json::Value> {
    let r = server.call(&base::control::Request::Retired { purge: None });
    assert!(r.ok, "{r:?}");
    r.data["retired"].as_array().cloned().unwrap_or_default()
}

#[test]
fn a_copy_restart_by_the_owner_keeps_every_point() {
    let server = Server::start();
    rt().block_on(replicate_two_points(&server));
    let pts = wait_points(&server, "d", 2);
    let out = tempfile::tempdir().unwrap();
    let before: Vec<(u64, Vec<u8>)> = pts
        .iter()
        .map(|p| p["id"].as_u64().unwrap())
        .map(|id| (id, export(&server, "d", id, out.path())))
        .collect();
    // The owning agent restarts the copy: a full copy from cycle 10 over the replica.
    rt().block_on(async {
        let (mut c, r) = Client::attach(&server, "alice", "d", 1, SIZE).await;
        r.unwrap();
        c.copy(&vec![9u8; SIZE as usize], 10, true).await;
        c.send(proto::Msg::Bye).await;
    });
    // The disk starts over from the new copy ...
    assert!(points(&server, "d").is_empty());
    // ... and its history is kept: listed, and exportable byte for byte.
    let copies = retired(&server);
    assert_eq!(copies.len(), 1, "{copies:?}");
    let id = copies[0]["id"].as_str().unwrap().to_string();
    assert_eq!(copies[0]["disk"], "d");
    assert_eq!(copies[0]["owner"], "alice");
    assert_eq!(points(&server, &id).len(), 2);
    for (p, bytes) in &before {
        assert!(
            export(&server, &id, *p, out.path()) == *bytes,
            "point {p} of the retired copy differs from its export before the restart"
        );
    }
    // Only this site's operator removes it.
    let r = server.call(&base::control::Request::Retired {
        purge: Some(id.clone()),
    });
    assert!(r.ok, "{r:?}");
    assert!(retired(&server).is_empty());
    let r = server.call(&base::control::Request::Points { name: id });
    assert!(!r.ok, "{r:?}");
}

#[test]
fn copy_restarts_past_the_retired_cap_are_refused_and_delete_nothing() {
    let server = Server::start();
    let cap = secondary::store::retired::MAX_RETIRED_PER_DISK as u64;
    // Round k: a (re)copy from cycle 10k, one cycle, one point. Rounds 1..=cap retire.
    for k in 0..=cap {
        let from = 10 * (k + 1);
        rt().block_on(async {
            let (mut c, r) = Client::attach(&server, "alice", "d", 1, SIZE).await;
            r.unwrap();
            c.copy(&vec![k as u8 + 1; SIZE as usize], from, true).await;
            c.cycle(
                from,
                &[Frame::Data {
                    offset: 0,
                    data: vec![0xC0 + k as u8; 4096],
                }],
            )
            .await
            .unwrap();
            c.consistent(from).await;
            c.send(proto::Msg::Bye).await;
        });
        wait_points(&server, "d", 1);
    }
    assert_eq!(retired(&server).len() as u64, cap);
    // One more restart would retire another: refused (retried by the agent), nothing lost.
    let live = points(&server, "d");
    let refusal = rt().block_on(async {
        let (mut c, r) = Client::attach(&server, "alice", "d", 1, SIZE).await;
        r.unwrap();
        c.send(proto::Msg::CopyBegin {
            from_seq: 999,
            restart: true,
        })
        .await;
        c.recv().await
    });
    match refusal {
        Err(base::net::ReplError::Refused { code, message, .. }) => {
            assert_eq!(code, proto::ErrorCode::NoSpace, "{message}");
            assert!(message.contains("sitrep retired purge"), "{message}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(points(&server, "d"), live);
    assert_eq!(retired(&server).len() as u64, cap);
}

/// A primary that keeps writing but never offers another point (what a compromised host
/// does: no more verdicts) cannot grow the disk's history past its budget: its cycles are
/// refused before the ack as `NoSpace` (retried), the points stay, and the disk says why.
#[test]
fn writing_without_new_points_stops_at_the_history_budget_and_keeps_the_points() {
    let server = Server::start_with(|o| {
        o.history_budget = secondary::store::HistoryBudget::Bytes(64 << 10);
    });
    let refused = rt().block_on(async {
        let (mut c, r) = Client::attach(&server, "mallory-host", "d", 1, SIZE).await;
        r.unwrap();
        c.copy(&vec![7u8; SIZE as usize], 1, false).await;
        c.cycle(
            1,
            &[Frame::Data {
                offset: 0,
                data: vec![1; 4096],
            }],
        )
        .await
        .unwrap();
        c.consistent(1).await;
        // Then only writes, each overwriting 16 KiB of allocated data: no more verdicts.
        for seq in 2..100u64 {
            let frame = Frame::Data {
                offset: (seq % 60) * 16384,
                data: vec![seq as u8; 16384],
            };
            if let Err(e) = c.cycle(seq, &[frame]).await {
                return (seq, e);
            }
        }
        panic!("never refused");
    });
    let (seq, e) = refused;
    match &e {
        base::net::ReplError::Refused { code, message, .. } => {
            assert_eq!(*code, proto::ErrorCode::NoSpace, "{message}");
            assert!(message.contains("--history-budget"), "{message}");
        }
        other => panic!("{other}"),
    }
    assert!(seq > 2, "refused at once: {e}");
    let pts = points(&server, "d");
    assert_eq!(pts.len(), 1, "{pts:?}");
    assert_eq!(pts[0]["id"], 1);
    let st = server.status();
    let disk = &st["disks"][0];
    assert!(disk["points_bytes"].as_u64().unwrap() <= 64 << 10, "{disk}");
    assert_eq!(disk["last_applied"]["seq"], seq - 1, "{disk}");
    // The point is still whole: exported, its first block is cycle 1's.
    let out = server.store.path().join("p1.img");
    let r = server.call(&base::control::Request::Export {
        name: "d".into(),
        point: base::points::PointSel::Id(1),
        out: out.display().to_string(),
        force: false,
    });
    assert!(r.ok, "{r:?}");
    let img = std::fs::read(&out).unwrap();
    assert_eq!(&img[..4096], &[1u8; 4096][..]);
    assert_eq!(&img[4096..16384], &[7u8; 12288][..]);
}
