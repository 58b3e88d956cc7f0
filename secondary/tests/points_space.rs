//! Points leaving the store on this site's say only (issue 21, items 4 and 5): `sitrep points
//! delete` (a local control request; dry run without `yes`) and the store quota (oldest
//! points first across disks, never a disk's newest, replication never refused). The real
//! server runs in-process with real TLS (`common`).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::cast_possible_truncation
)]

mod common;

use base::control::Request;
use common::{Client, Server, points, rt, wait_for_status};
use proto::Msg;

fn ids(server: &Server, disk: &str) -> Vec<u64> {
    points(server, disk)
        .iter()
        .map(|p| p["id"].as_u64().unwrap())
        .collect()
}

fn wait_ids(server: &Server, disk: &str, n: usize) -> Vec<u64> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let p = ids(server, disk);
        if p.len() >= n {
            return p;
        }
        assert!(std::time::Instant::now() < deadline, "{p:?}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

fn delete(
    server: &Server,
    name: &str,
    point: Option<u64>,
    all: bool,
    yes: bool,
) -> base::control::Response {
    server.call(&Request::DeletePoints {
        name: name.into(),
        point,
        all,
        yes,
    })
}

fn export(server: &Server, disk: &str, id: u64, out: &std::path::Path) -> base::control::Response {
    server.call(&Request::Export {
        name: disk.into(),
        point: base::points::PointSel::Id(id),
        out: out.display().to_string(),
        force: true,
    })
}

/// Undo files of `disk`, by file name.
fn undo_files(server: &Server, disk: &str) -> Vec<String> {
    let dir = server.store_dir().join("disks").join(disk).join("undo");
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn retired_counts(status: &serde_json::Value, disk: &str) -> serde_json::Value {
    status["store"]["disks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["name"] == disk)
        .unwrap()["points_retired"]
        .clone()
}

#[test]
fn points_delete_says_what_it_would_free_then_deletes_through_retire_points() {
    // Five points in one retention slot: keep them all (retention is not under test).
    let server = Server::start_with(|o| o.retention.keep = 100);
    rt().block_on(common::replicate_points(&server, "alice", "d", 5));
    assert_eq!(wait_ids(&server, "d", 5), vec![1, 2, 3, 4, 5]);
    let undo_before = undo_files(&server, "d");
    let out = server.store.path().join("p.img");

    // Without yes: nothing changes, the answer says what would go.
    let dry = delete(&server, "d", Some(1), false, false);
    assert!(dry.ok, "{dry:?}");
    assert_eq!(dry.data["deleted"], false);
    assert_eq!(dry.data["points"][0]["id"], 1);
    assert_eq!(dry.data["remaining"], 4);
    let would_free = dry.data["freed_bytes"].as_u64().unwrap();
    assert!(would_free > 0, "{dry:?}");
    assert_eq!(ids(&server, "d"), vec![1, 2, 3, 4, 5]);
    assert_eq!(undo_files(&server, "d"), undo_before);
    assert!(export(&server, "d", 1, &out).ok);

    // With yes: gone, unexportable, its undo data freed as predicted.
    let done = delete(&server, "d", Some(1), false, true);
    assert!(done.ok, "{done:?}");
    assert_eq!(done.data["deleted"], true);
    assert_eq!(done.data["freed_bytes"].as_u64().unwrap(), would_free);
    assert_eq!(ids(&server, "d"), vec![2, 3, 4, 5]);
    let e = export(&server, "d", 1, &out);
    assert!(!e.ok, "{e:?}");
    assert!(undo_files(&server, "d").len() < undo_before.len());

    // A middle point: gone; its interval merges into point 3's (what point 3's interval
    // already saved is trimmed), and every other point still exports.
    let mid = delete(&server, "d", Some(4), false, true);
    assert!(mid.ok, "{mid:?}");
    assert_eq!(ids(&server, "d"), vec![2, 3, 5]);
    for id in [2, 3, 5] {
        assert!(export(&server, "d", id, &out).ok, "point {id}");
    }

    // Unknown point, unknown disk, neither id nor --all: clear errors, nothing deleted.
    let e = delete(&server, "d", Some(9), false, true);
    let msg = e.error.unwrap_or_default();
    assert!(msg.contains("disk d") && msg.contains('9'), "{msg}");
    let e = delete(&server, "nosuch", None, true, true);
    assert!(e.error.unwrap_or_default().contains("nosuch"));
    assert!(!delete(&server, "d", None, false, true).ok);
    assert_eq!(ids(&server, "d"), vec![2, 3, 5]);

    // All: no point, no undo data.
    let all = delete(&server, "d", None, true, true);
    assert!(all.ok, "{all:?}");
    assert_eq!(all.data["remaining"], 0);
    assert!(ids(&server, "d").is_empty());
    assert!(
        undo_files(&server, "d").is_empty(),
        "{:?}",
        undo_files(&server, "d")
    );
    let counts = retired_counts(&server.status(), "d");
    assert_eq!(counts["operator"], 5, "{counts}");
    assert_eq!(counts["quota"], 0, "{counts}");
}

/// Disk a's points are all older (by cut time) than disk b's: past the quota, a loses every
/// point but its newest before b loses any; b then loses its oldest. Every cycle is applied.
#[test]
fn the_quota_retires_the_oldest_points_across_disks_never_a_newest_and_never_refuses() {
    let quota = (2 << 20) + (40 << 10);
    let server = Server::start_with(|o| {
        o.max_store_bytes = Some(quota);
        o.retention.keep = 100;
    });
    rt().block_on(async {
        // a: 1 MiB allocated, 20 points of 16 KiB over data (about 320 KiB of undo): fits.
        let (mut a, r) = Client::attach(&server, "alice", "a", 1, 1 << 20).await;
        r.unwrap();
        a.copy(&vec![7u8; 1 << 20], 1, false).await;
        a.write_points(1..=20, 16 << 10).await;
        a.send(Msg::Bye).await;
    });
    assert_eq!(wait_ids(&server, "a", 20).len(), 20);
    rt().block_on(async {
        // b: another MiB, then 20 points of 4 KiB cut after all of a's.
        let (mut b, r) = Client::attach(&server, "alice", "b", 2, 1 << 20).await;
        r.unwrap();
        b.copy(&vec![7u8; 1 << 20], 101, false).await;
        b.write_points(101..=120, 4096).await;
        b.send(Msg::Bye).await;
    });
    // Every cycle applied (none refused), b's last verdict taken, then the quota caught up.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while ids(&server, "b").last() != Some(&120) {
        assert!(
            std::time::Instant::now() < deadline,
            "{:?}",
            ids(&server, "b")
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let st = wait_for_status(&server, "the store back under its quota", |s| {
        s["store"]["bytes"].as_u64().unwrap() <= quota
    });
    for d in st["disks"].as_array().unwrap() {
        let want = if d["name"] == "a" { 20 } else { 120 };
        assert_eq!(d["last_applied"]["seq"], want, "{d}");
    }
    assert_eq!(st["store"]["quota_bytes"], quota);
    assert_eq!(ids(&server, "a"), vec![20], "a keeps only its newest");
    let b = ids(&server, "b");
    assert_eq!(b.last(), Some(&120), "{b:?}");
    assert!(b.len() < 20, "b lost its oldest too: {b:?}");
    assert_eq!(
        b,
        (121 - b.len() as u64..=120).collect::<Vec<_>>(),
        "oldest first"
    );
    assert_eq!(retired_counts(&st, "a")["quota"], 19, "{st}");
    assert_eq!(
        retired_counts(&st, "b")["quota"],
        20 - b.len() as u64,
        "{st}"
    );
    // What is kept is whole: a's point 20 is the copy plus its 20 cycles.
    let out = server.store.path().join("a20.img");
    assert!(export(&server, "a", 20, &out).ok);
    let mut want = vec![7u8; 1 << 20];
    for seq in 1..=20usize {
        want[seq * (16 << 10)..(seq + 1) * (16 << 10)].fill(seq as u8);
    }
    assert!(
        std::fs::read(&out).unwrap() == want,
        "point 20 of a differs"
    );
}

/// A retired copy (`NAME@NS`, kept when the owner restarted its copy) loses points only to
/// `points delete` on this site; what remains still exports.
#[test]
fn points_delete_works_on_a_retired_copy() {
    let server = Server::start();
    rt().block_on(common::replicate_points(&server, "alice", "d", 3));
    assert_eq!(wait_ids(&server, "d", 3), vec![1, 2, 3]);
    rt().block_on(async {
        let (mut c, r) = Client::attach(&server, "alice", "d", 1, 1 << 20).await;
        r.unwrap();
        c.copy(&vec![9u8; 1 << 20], 10, true).await;
        c.send(Msg::Bye).await;
    });
    let r = server.call(&Request::Retired { purge: None });
    let id = r.data["retired"][0]["id"].as_str().unwrap().to_string();
    assert_eq!(ids(&server, &id), vec![1, 2, 3]);
    let out = server.store.path().join("r.img");
    let dry = delete(&server, &id, Some(1), false, false);
    assert!(dry.ok && dry.data["deleted"] == false, "{dry:?}");
    assert_eq!(ids(&server, &id), vec![1, 2, 3]);
    let done = delete(&server, &id, Some(1), false, true);
    assert!(done.ok, "{done:?}");
    assert_eq!(ids(&server, &id), vec![2, 3]);
    assert!(!export(&server, &id, 1, &out).ok);
    assert!(export(&server, &id, 2, &out).ok);
    let img = std::fs::read(&out).unwrap();
    assert_eq!(&img[4096..8192], &[1u8; 4096][..]);
    assert_eq!(&img[8192..12288], &[2u8; 4096][..]);
    assert_eq!(&img[12288..16384], &[7u8; 4096][..]);
}
