//! Root tier: history the primary cannot erase (issue 21, items 4 and 5). A peer's copy
//! restart and a re-protect (refused by the server: a new disk id under a used name) leave
//! every point listable and exportable byte for byte; only
//! `sitrep points delete` on the secondary removes them; the store quota retires the oldest
//! points while replication goes on.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;
use sitrep_tests::io::MIB;
use sitrep_tests::loopdev::{LoopDevice, LoopOptions};
use sitrep_tests::require;

fn server(sites: &Sites) -> std::path::PathBuf {
    sites.path("server.sock")
}

fn point_ids(sites: &Sites, name: &str) -> Vec<u64> {
    ctl(&server(sites), &["points", name])["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_u64().unwrap())
        .collect()
}

/// Waits until `name` lists at least `n` points; returns them.
fn wait_points(sites: &Sites, name: &str, n: usize) -> Vec<u64> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ids = point_ids(sites, name);
        if ids.len() >= n {
            return ids;
        }
        assert!(Instant::now() < deadline, "{name}: points {ids:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Point `id` of `name` (a disk or retired copy) exported: its bytes, or the error.
fn export(sites: &Sites, name: &str, id: u64) -> Result<Vec<u8>, String> {
    let out = sites.path("export.img");
    let _ = std::fs::remove_file(&out);
    try_ctl(
        &server(sites),
        &[
            "points",
            "export",
            name,
            &id.to_string(),
            "--out",
            &p(&out),
            "--force",
        ],
    )?;
    Ok(std::fs::read(&out).unwrap())
}

fn exports(sites: &Sites, name: &str, ids: &[u64]) -> BTreeMap<u64, Vec<u8>> {
    ids.iter()
        .map(|&id| (id, export(sites, name, id).unwrap()))
        .collect()
}

/// Retired copies of disk `name`: id → point ids.
fn retired(sites: &Sites, name: &str) -> BTreeMap<String, Vec<u64>> {
    let r = ctl(&server(sites), &["retired"]);
    r["retired"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["disk"] == name)
        .map(|c| {
            let id = c["id"].as_str().unwrap().to_string();
            let ids = point_ids(sites, &id);
            (id, ids)
        })
        .collect()
}

/// Finds where `points` went (the live disk or a retired copy) and checks each exports as
/// it did before.
fn assert_kept(sites: &Sites, name: &str, points: &BTreeMap<u64, Vec<u8>>) -> String {
    let ids: Vec<u64> = points.keys().copied().collect();
    let mut places: Vec<String> = retired(sites, name).into_keys().collect();
    places.push(name.to_string());
    let at = places
        .into_iter()
        .find(|pl| {
            let have = point_ids(sites, pl);
            ids.iter().all(|i| have.contains(i))
        })
        .unwrap_or_else(|| panic!("points {ids:?} of {name} are gone"));
    for (id, bytes) in points {
        assert!(
            export(sites, &at, *id).unwrap() == *bytes,
            "point {id} ({at}) differs from its export before"
        );
    }
    at
}

fn write_and_wait(sock: &Path, dev: &Path, name: &str, from_mib: u64) {
    random_region(dev, from_mib, from_mib + 1);
    wait_caught_up(sock, name);
}

#[test]
fn a_copy_restart_and_a_reprotect_keep_the_points_and_points_delete_removes_them() {
    if !require!(needs: &NEEDS) {
        return;
    }
    // Every point of the slot kept: a late cycle's point must not retire (by retention) a
    // point between its listing and its export — retention is not what is tested here.
    let sites = Sites::with_server_args(&["--keep-points", "1000"]);
    let _agent = sitrep_tests_agent(&sites);
    let s = sites.sock("a");
    let dev = LoopDevice::new(8 * MIB, LoopOptions::default()).unwrap();
    random_region(dev.path(), 0, 8);
    ctl(
        &s,
        &[
            "protect",
            &p(dev.path()),
            "--to",
            &sites.to(),
            "--name",
            "k",
        ],
    );
    wait_caught_up(&s, "k");
    write_and_wait(&s, dev.path(), "k", 1);
    write_and_wait(&s, dev.path(), "k", 3);
    let before = exports(&sites, "k", &wait_points(&sites, "k", 2));

    // A copy restart (the agent copies the whole disk again; the request `sitrep failback
    // --mode full-download` sends before its planned failover): the points stay.
    let r = base::control::call(
        &s,
        &base::control::Request::Recopy { name: "k".into() },
        Duration::from_secs(30),
    )
    .unwrap();
    assert!(r.ok, "{r:?}");
    let deadline = Instant::now() + Duration::from_secs(60);
    while retired(&sites, "k").is_empty() {
        assert!(
            Instant::now() < deadline,
            "no copy restart reached the server"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    wait_caught_up(&s, "k");
    let copy1 = assert_kept(&sites, "k", &before);
    assert_ne!(copy1, "k", "a copy restart over points retires the entry");

    // A re-protect of the same device under the same name: the newer points stay too.
    write_and_wait(&s, dev.path(), "k", 5);
    let newer = exports(&sites, "k", &wait_points(&sites, "k", 1));
    ctl(&s, &["unprotect", "k"]);
    ctl(
        &s,
        &[
            "protect",
            &p(dev.path()),
            "--to",
            &sites.to(),
            "--name",
            "k",
        ],
    );
    // The new protection is a new disk id under a used name: the server refuses it
    // (DiskMismatch) until this site's operator decides; whatever it does, nothing is lost.
    let deadline = Instant::now() + Duration::from_secs(30);
    while disk_status(&s, "k")["error"].is_null() {
        assert!(
            Instant::now() < deadline,
            "the re-protect never reached the server"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_kept(&sites, "k", &before);
    let at = assert_kept(&sites, "k", &newer);

    // Only `points delete` on the secondary removes them: a dry run first, then --yes.
    let sock = server(&sites);
    let kept = point_ids(&sites, &copy1);
    let dry = ctl(&sock, &["points", "delete", &copy1, "--all"]);
    assert_eq!(dry["deleted"], false, "{dry}");
    assert_eq!(dry["points"].as_array().unwrap().len(), kept.len(), "{dry}");
    assert_eq!(point_ids(&sites, &copy1), kept, "a dry run deletes nothing");
    let done = ctl(&sock, &["points", "delete", &copy1, "--all", "--yes"]);
    assert_eq!(done["deleted"], true, "{done}");
    assert!(done["freed_bytes"].as_u64().unwrap() > 0, "{done}");
    assert!(point_ids(&sites, &copy1).is_empty());
    let first = *before.keys().next().unwrap();
    assert!(export(&sites, &copy1, first).is_err());
    let undo = sites
        .path("store/retired")
        .join(copy1.replace('@', "-"))
        .join("undo");
    let left: Vec<_> = std::fs::read_dir(&undo)
        .map(|rd| rd.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(
        left.is_empty(),
        "undo files left in {}: {left:?}",
        undo.display()
    );
    let ids: Vec<u64> = newer.keys().copied().collect();
    let done = ctl(
        &sock,
        &["points", "delete", &at, &ids[0].to_string(), "--yes"],
    );
    assert_eq!(done["points"][0]["id"], ids[0], "{done}");
    assert!(!point_ids(&sites, &at).contains(&ids[0]));
    assert!(export(&sites, &at, ids[0]).is_err());
}

fn store_status(sites: &Sites) -> Value {
    ctl(&server(sites), &["status"])["store"].clone()
}

#[test]
fn the_quota_retires_the_oldest_points_and_replication_goes_on() {
    if !require!(needs: &NEEDS) {
        return;
    }
    // 16 MiB of replica, 4 MiB for history: a few 1 MiB rounds pass the quota.
    let quota = 20 * MIB;
    let sites = Sites::with_server_args(&["--max-store-bytes", "20M"]);
    let _agent = sitrep_tests_agent(&sites);
    let s = sites.sock("a");
    let dev = LoopDevice::new(16 * MIB, LoopOptions::default()).unwrap();
    random_region(dev.path(), 0, 16);
    ctl(
        &s,
        &[
            "protect",
            &p(dev.path()),
            "--to",
            &sites.to(),
            "--name",
            "q",
        ],
    );
    wait_caught_up(&s, "q");
    let mut seen = Vec::new();
    for round in 0..8 {
        write_and_wait(&s, dev.path(), "q", round * 2);
        seen.extend(point_ids(&sites, "q"));
    }
    seen.sort_unstable();
    seen.dedup();
    assert_same(dev.path(), &sites.replica("q"));
    let deadline = Instant::now() + Duration::from_secs(30);
    let st = loop {
        let st = store_status(&sites);
        if st["bytes"].as_u64().unwrap() <= quota {
            break st;
        }
        assert!(
            Instant::now() < deadline,
            "the store stays over its quota: {st}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(st["quota_bytes"], quota, "{st}");
    let q = st["disks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["name"] == "q")
        .unwrap();
    assert!(q["points_retired"]["quota"].as_u64().unwrap() > 0, "{st}");
    // Oldest first: what is left is the newest of what was made; the newest survives.
    let left = point_ids(&sites, "q");
    assert!(!left.is_empty());
    assert!(
        left.last() >= seen.last(),
        "the newest point survives: {left:?} of {seen:?}"
    );
    assert!(
        left.first() > seen.first(),
        "the oldest went: {left:?} of {seen:?}"
    );
    assert!(export(&sites, "q", *left.last().unwrap()).is_ok());
    // Replication goes on after the quota.
    write_and_wait(&s, dev.path(), "q", 15);
    assert_same(dev.path(), &sites.replica("q"));
}
