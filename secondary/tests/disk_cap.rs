//! A disk's own point storage cap (`PointStorage`, protocol 4; `server/disk_cap.rs`) and
//! the disks no space limit touches (issue 21, items 4 and 5): past its cap a disk loses
//! its oldest points older than the server's `--min-retain`, never a younger one and never
//! its newest; a disk without a cap is untouched; the store quota skips a disk in failover.
//! The real server runs in-process with real TLS (`common`).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::cast_possible_truncation
)]

mod common;

use common::{Client, Server, can_attach_loop_devices, points, rt, wait_for_status};
use proto::{Frame, Msg};

const S: u64 = 1_000_000_000;
const H: u64 = 3600 * S;
const MIN: u64 = 60 * S;

fn ids(server: &Server, disk: &str) -> Vec<u64> {
    points(server, disk)
        .iter()
        .map(|p| p["id"].as_u64().unwrap())
        .collect()
}

fn space(status: &serde_json::Value, disk: &str) -> serde_json::Value {
    status["store"]["disks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["name"] == disk)
        .unwrap()
        .clone()
}

/// Cycle `seq` cut at `cut_time_ns`, writing 16 KiB of the byte `seq` at `16 KiB × seq`,
/// judged consistent: one point.
async fn point_at(c: &mut Client, seq: u64, cut_time_ns: u64) {
    let len = 16u64 << 10;
    c.send(Msg::CycleBegin {
        seq,
        log_id: [seq as u8; 16],
        cut_time_ns,
        extents: 1,
        data_bytes: len,
    })
    .await;
    c.frame(&Frame::Data {
        offset: len * seq,
        data: vec![seq as u8; len as usize],
    })
    .await
    .unwrap();
    c.send(Msg::CycleEnd {
        seq,
        frames: 1,
        data_bytes: len,
    })
    .await;
    assert!(matches!(c.recv().await.unwrap(), Msg::CycleAck { .. }));
    assert!(matches!(c.recv().await.unwrap(), Msg::Applied { .. }));
    c.consistent(seq).await;
}

/// Disk `disk` (id `id`, 1 MiB): copied, then one point per cut in `cuts`, ids 1.. .
fn replicate_at(server: &Server, disk: &str, id: u8, cuts: &[u64]) {
    rt().block_on(async {
        let (mut c, r) = Client::attach(server, "alice", disk, id, 1 << 20).await;
        r.unwrap();
        c.copy(&vec![7u8; 1 << 20], 1, false).await;
        for (i, cut) in cuts.iter().enumerate() {
            point_at(&mut c, i as u64 + 1, *cut).await;
        }
        c.send(Msg::Bye).await;
    });
    let n = cuts.len() as u64;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while ids(server, disk).last() != Some(&n) {
        assert!(
            std::time::Instant::now() < deadline,
            "{:?}",
            ids(server, disk)
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// A later session of disk `disk` that only sends its cap.
fn send_cap(server: &Server, disk: &str, id: u8, max_bytes: u64) {
    rt().block_on(async {
        let (mut c, r) = Client::attach(server, "alice", disk, id, 1 << 20).await;
        r.unwrap();
        c.send(Msg::PointStorage { max_bytes }).await;
        c.send(Msg::Bye).await;
    });
}

/// Seven points, the newest cut a minute ago: 5 h, 4 h, 3 h, 2 h, 30 min and 10 min older.
fn cuts() -> Vec<u64> {
    let newest = base::now_ns() - MIN;
    [5 * H, 4 * H, 3 * H, 2 * H, 30 * MIN, 10 * MIN, 0]
        .iter()
        .map(|age| newest - age)
        .collect()
}

#[test]
fn a_disks_cap_retires_its_oldest_points_past_the_floor_never_younger_nor_the_newest() {
    let server = Server::start_with(|o| {
        o.retention.min_retain_ns = H;
        o.retention.keep = 100;
    });
    replicate_at(&server, "a", 1, &cuts());
    replicate_at(&server, "b", 2, &cuts());
    assert_eq!(ids(&server, "a"), (1..=7).collect::<Vec<_>>());
    let before = space(&server.status(), "a");
    let point_bytes = before["point_bytes"].as_u64().unwrap();
    assert!(point_bytes > 0, "{before}");
    assert_eq!(before["max_point_storage_bytes"], serde_json::Value::Null);

    // Just under what the points take: the oldest goes, and that is enough.
    send_cap(&server, "a", 1, point_bytes - 1);
    let st = wait_for_status(&server, "a under its cap", |s| {
        space(s, "a")["point_bytes"].as_u64().unwrap() < point_bytes
    });
    let a = space(&st, "a");
    assert_eq!(a["max_point_storage_bytes"], point_bytes - 1, "{a}");
    assert_eq!(a["points_retired"]["disk_cap"], 1, "{a}");
    assert_eq!(a["over_point_cap"], false, "{a}");
    assert_eq!(ids(&server, "a"), (2..=7).collect::<Vec<_>>());
    let disk = st["disks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["name"] == "a")
        .unwrap();
    assert_eq!(
        disk["point_policy"]["max_point_storage_bytes"],
        point_bytes - 1
    );
    let file = server.store_dir().join("disks/a/policy.json");
    let asked: serde_json::Value = serde_json::from_slice(&std::fs::read(file).unwrap()).unwrap();
    assert_eq!(asked["version"], 2);
    assert_eq!(asked["max_point_storage_bytes"], point_bytes - 1, "{asked}");

    // One byte: every point older than the floor (1 h) goes; the 30- and 10-minute-old
    // ones and the newest stay, and the disk shows itself over its cap.
    send_cap(&server, "a", 1, 1);
    let st = wait_for_status(&server, "a stuck over its cap", |s| {
        space(s, "a")["over_point_cap"] == true
    });
    assert_eq!(ids(&server, "a"), vec![5, 6, 7]);
    assert_eq!(space(&st, "a")["points_retired"]["disk_cap"], 4, "{st}");
    assert!(space(&st, "a")["point_bytes"].as_u64().unwrap() > 1);

    // b asked for no cap: untouched.
    assert_eq!(ids(&server, "b"), (1..=7).collect::<Vec<_>>());
    let b = space(&st, "b");
    assert_eq!(b["points_retired"]["disk_cap"], 0, "{b}");
    assert_eq!(b["max_point_storage_bytes"], serde_json::Value::Null, "{b}");

    // No cap again (0): nothing more goes, the disk is no longer over anything.
    send_cap(&server, "a", 1, 0);
    let st = wait_for_status(&server, "a without a cap", |s| {
        space(s, "a")["max_point_storage_bytes"].is_null()
    });
    assert_eq!(space(&st, "a")["over_point_cap"], false, "{st}");
    assert_eq!(ids(&server, "a"), vec![5, 6, 7]);
}

#[test]
fn without_a_floor_a_one_byte_cap_still_keeps_the_newest() {
    let server = Server::start_with(|o| {
        o.retention.min_retain_ns = 0;
        o.retention.keep = 100;
    });
    replicate_at(&server, "a", 1, &cuts());
    send_cap(&server, "a", 1, 1);
    let st = wait_for_status(&server, "a under or stuck over its cap", |s| {
        let a = space(s, "a");
        a["over_point_cap"] == true || a["point_bytes"].as_u64().unwrap() <= 1
    });
    // Oldest first, as far as the cap asks (the newest interval may hold no undo data at
    // all), and never the newest.
    let left = ids(&server, "a");
    assert_eq!(left, (8 - left.len() as u64..=7).collect::<Vec<_>>());
    assert!(left.len() < 7, "{left:?}");
    let retired = space(&st, "a")["points_retired"]["disk_cap"]
        .as_u64()
        .unwrap();
    assert_eq!(retired, 7 - left.len() as u64, "{st}");
}

/// Disk a (older points) failed over while the server was down; past the store quota, only
/// b loses points (down to its newest), though a's are older.
/// A store with disk `a` (five points 5 h to 4 h 20 min before `newest`) and disk `b` (five
/// points in the last hour); `then` runs on that server before it stops. Returns the server
/// reopened on the same store with a store quota nothing fits in, once the quota has taken
/// `b` down to its newest point while `a` (held by a failover) kept all five.
fn quota_past_a_held_disk(
    store: &std::path::Path,
    newest: u64,
    then: impl FnOnce(&Server),
    hold: impl FnOnce(),
) -> Server {
    {
        let s = store.to_path_buf();
        let server = Server::start_with(move |o| {
            o.store = s;
            o.retention.keep = 100;
        });
        let old: Vec<u64> = (0..5).map(|i| newest - 5 * H + i * 10 * MIN).collect();
        let new: Vec<u64> = (0..5).map(|i| newest - H + i * 10 * MIN).collect();
        replicate_at(&server, "a", 1, &old);
        replicate_at(&server, "b", 2, &new);
        then(&server);
    }
    hold();
    let s = store.to_path_buf();
    let server = Server::start_with(move |o| {
        o.store = s;
        o.retention.keep = 100;
        o.max_store_bytes = Some(1);
    });
    let st = wait_for_status(&server, "b down to its newest point", |s| {
        space(s, "b")["points_retired"]["quota"] == 4
    });
    assert_eq!(ids(&server, "b"), vec![5]);
    assert_eq!(ids(&server, "a"), (1..=5).collect::<Vec<_>>());
    assert_eq!(space(&st, "a")["points_retired"]["quota"], 0, "{st}");
    server
}

#[test]
fn the_store_quota_skips_a_disk_in_failover() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    quota_past_a_held_disk(
        &store,
        base::now_ns() - MIN,
        |_| {},
        || {
            let mut a = secondary::store::Disk::open(&store, "a").unwrap();
            a.set_failed_over("unplanned failover to point 3 (test)".into())
                .unwrap();
        },
    );
}

/// A running test failover holds its disk's points against the store quota (its loop device
/// reads the point's image); once it is cleaned up, the quota may retire them again.
#[test]
fn the_store_quota_skips_a_disk_backing_a_test_failover() {
    if !can_attach_loop_devices() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let newest = base::now_ns() - MIN;
    let server = quota_past_a_held_disk(
        &store,
        newest,
        |server| {
            let r = server.call(&base::control::Request::Failover {
                name: "a".into(),
                point: base::points::PointSel::Id(2),
                test: true,
                cleanup: false,
            });
            assert!(r.ok, "{r:?}");
        },
        || {},
    );

    // Cleaned up: the next wake of the quota (a's cleanup, or any cycle) takes a's too.
    let r = server.call(&base::control::Request::Failover {
        name: "a".into(),
        point: base::points::PointSel::Id(2),
        test: true,
        cleanup: true,
    });
    assert!(r.ok, "{r:?}");
    rt().block_on(async {
        let (mut c, r) = Client::attach(&server, "alice", "b", 2, 1 << 20).await;
        r.unwrap();
        point_at(&mut c, 6, newest + MIN / 2).await;
        c.send(Msg::Bye).await;
    });
    wait_for_status(&server, "a down to its newest point", |s| {
        space(s, "a")["points_retired"]["quota"] == 4
    });
    assert_eq!(ids(&server, "a"), vec![5]);
}
