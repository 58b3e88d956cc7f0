//! Root tier: a consistency group spanning two agents (two network namespaces) whose members
//! carry mounted ext4 filesystems written steadily by a causally ordered application: record
//! k is written (and `fdatasync`ed) to a file on disk a when k is odd and on disk c when k is
//! even, each only after the previous one completed. Without `freeze` a round has a point only
//! if no member was written while it ran (rare under this load; counted, not asserted). With
//! `sitrep group set xg --freeze on` on both agents the members' filesystems are frozen from
//! each round's prepare to its release: rounds have points under the load, and every exported
//! group point holds a prefix of the records (no record without its predecessor), mounts and
//! fscks clean. Two member images from different group points fail the same check — the
//! negative control. The writes' latency with and without freezing is printed (what a round
//! costs the application; docs/benchmarks.md).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;

const BLOCK: usize = 4096;

/// A loop device with ext4, mounted at `dir`.
fn ext4(dir: &Path) -> (sitrep_tests::loopdev::LoopDevice, Mounted) {
    let d = loop_dev(32);
    run_ok("mkfs.ext4", &["-q", &p(d.path())]);
    std::fs::create_dir(dir).unwrap();
    run_ok("mount", &[&p(d.path()), &p(dir)]);
    (d, Mounted(dir.to_path_buf()))
}

/// The causal writer: records `first..` alternately on `fa` (odd k) and `fc` (even k) for
/// `dur`, each written and `fdatasync`ed after the previous one completed. Returns the next
/// record number and each write's latency.
fn write_records(fa: &File, fc: &File, first: u64, dur: Duration) -> (u64, Vec<Duration>) {
    let mut lat = Vec::new();
    let until = Instant::now() + dur;
    let mut k = first;
    let mut buf = vec![0u8; BLOCK];
    while Instant::now() < until {
        let (f, slot) = if k % 2 == 1 {
            (fa, (k - 1) / 2)
        } else {
            (fc, (k - 2) / 2)
        };
        buf.fill((k % 251) as u8);
        buf[..8].copy_from_slice(&k.to_le_bytes());
        let t = Instant::now();
        f.write_all_at(&buf, slot * BLOCK as u64).unwrap();
        f.sync_data().unwrap();
        lat.push(t.elapsed());
        k += 1;
    }
    (k, lat)
}

/// The records in a member's file: every block must hold its own record (odd k on disk a,
/// even on c); returns how many.
fn records(file: &Path, odd: bool) -> u64 {
    let bytes = std::fs::read(file).unwrap_or_default();
    let n = (bytes.len() / BLOCK) as u64;
    for (i, b) in bytes.chunks(BLOCK).enumerate() {
        let want = if odd {
            2 * i as u64 + 1
        } else {
            2 * i as u64 + 2
        };
        let got = u64::from_le_bytes(b[..8].try_into().unwrap());
        assert_eq!(got, want, "{}: block {i}", file.display());
    }
    n
}

/// Mounts member image `img` read-only and counts its records.
fn image_records(img: &str, mnt: &Path, odd: bool) -> u64 {
    run_ok("e2fsck", &["-fn", img]);
    std::fs::create_dir_all(mnt).unwrap();
    run_ok("mount", &["-o", "ro,noload,loop", img, &p(mnt)]);
    let _m = Mounted(mnt.to_path_buf());
    records(&mnt.join("records"), odd)
}

/// A group point's two member images hold a prefix of the records: record k present only
/// with every record before it (a holds the odd ones, c the even ones).
fn is_prefix(na: u64, nc: u64) -> bool {
    na == nc || na == nc + 1
}

/// The `per_mille`/1000 quantile of `lat`, in ms.
fn percentile(lat: &mut [Duration], per_mille: usize) -> f64 {
    lat.sort();
    let i = lat.len().saturating_sub(1) * per_mille / 1000;
    lat.get(i).map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

/// Group points of `xg` cut after `since` (ns), by id.
fn points_since(srv: &Path, since: u64) -> Vec<(u64, u64)> {
    group_points(srv, "xg")
        .iter()
        .filter_map(|gp| Some((gp["id"].as_u64()?, gp["cut_time_ns"].as_u64()?)))
        .filter(|(_, t)| *t > since)
        .collect()
}

#[test]
fn frozen_rounds_give_group_points_under_steady_writes() {
    if !sitrep_tests::require!(
        sitrep_tests::Need::Root,
        sitrep_tests::Need::LoopDevices,
        sitrep_tests::Need::Bpf,
        sitrep_tests::Need::Netns,
        sitrep_tests::Need::Command("mkfs.ext4"),
        sitrep_tests::Need::Command("e2fsck"),
        sitrep_tests::Need::Command("fsfreeze"),
    ) {
        return;
    }
    let sites = Sites::with_server_args(&["--group-points-every", "1s"]);
    let srv = sites.path("server.sock");
    // Mounted before the agents start: `ip netns exec` gives each a copy of the mounts.
    let (da, _ma) = ext4(&sites.path("mnt-a"));
    let (dc, _mc) = ext4(&sites.path("mnt-c"));
    let open = |m: &str| {
        File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(sites.path(m).join("records"))
            .unwrap()
    };
    let (fa, fc) = (open("mnt-a"), open("mnt-c"));
    let _a = sitrep_tests_agent(&sites);
    let _c = agent_c(&sites);
    ctl(&srv, &["group", "allow", "xg", "sitea"]);
    ctl(&srv, &["group", "allow", "xg", "sitec"]);
    protect_in_group(&sites, &sites.sock("a"), da.path(), "a", "xg");
    protect_in_group(&sites, &sites.sock("c"), dc.path(), "c", "xg");

    // Without freezing: rounds need a moment with no write on any member.
    let t0 = base::now_ns();
    let (next, mut lat_plain) = write_records(&fa, &fc, 1, Duration::from_secs(5));
    let plain = points_since(&srv, t0).len();

    // With freezing on both agents.
    for tag in ["a", "c"] {
        let r = ctl(&sites.sock(tag), &["group", "set", "xg", "--freeze", "on"]);
        assert_eq!(r["groups"][0]["freeze"], true, "{r}");
    }
    // The writer runs in a thread; group points are exported as they appear (retention
    // thins them as newer ones come).
    let t1 = base::now_ns();
    let writer = std::thread::spawn(move || write_records(&fa, &fc, next, Duration::from_secs(8)));
    let mut exported: Vec<(PathBuf, u64)> = Vec::new();
    let mut seen = 0;
    let out = sites.path("export");
    loop {
        let done = writer.is_finished();
        exported.extend(
            export_new_group_points(&srv, "xg", &out, &mut seen)
                .into_iter()
                .filter(|(_, t)| *t > t1),
        );
        if done {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let (_, mut lat_frozen) = writer.join().unwrap();
    let t2 = base::now_ns();
    let frozen: Vec<(PathBuf, u64)> = exported.into_iter().filter(|(_, t)| *t < t2).collect();
    let freeze_ms: Vec<f64> = ["a", "c"]
        .iter()
        .map(|tag| {
            disk_status(&sites.sock(tag), tag)["round_freeze_ms"]
                .as_f64()
                .unwrap_or(0.0)
        })
        .collect();
    eprintln!(
        "group points under steady writes: {plain} in 5 s unfrozen, {} in 8 s frozen; \
         writes {} + {}; write latency ms p50/p99/max: unfrozen {:.1}/{:.1}/{:.1}, frozen \
         {:.1}/{:.1}/{:.1}; last freeze a {:.0} ms, c {:.0} ms",
        frozen.len(),
        lat_plain.len(),
        lat_frozen.len(),
        percentile(&mut lat_plain, 500),
        percentile(&mut lat_plain, 990),
        percentile(&mut lat_plain, 1000),
        percentile(&mut lat_frozen, 500),
        percentile(&mut lat_frozen, 990),
        percentile(&mut lat_frozen, 1000),
        freeze_ms[0],
        freeze_ms[1],
    );
    assert!(
        frozen.len() >= 2,
        "{} group points exported under steady writes with freezing: {:?}",
        frozen.len(),
        ctl(&srv, &["status"])["groups"]
    );
    assert!(
        freeze_ms.iter().all(|ms| *ms > 0.0),
        "a member reports no round freeze: {freeze_ms:?}"
    );

    // Every group point cut under the load holds a prefix of the records on both members.
    let mut counts = Vec::new();
    for (dir, _) in &frozen {
        let na = image_records(&p(&dir.join("a.img")), &sites.path("chk"), true);
        let nc = image_records(&p(&dir.join("c.img")), &sites.path("chk"), false);
        assert!(
            is_prefix(na, nc),
            "group point {}: {na} records on a, {nc} on c — not one instant",
            dir.display()
        );
        counts.push((dir, na, nc));
    }
    assert!(counts.len() >= 2, "fewer than 2 group points exported");
    // The negative control: disk a from the oldest exported point, c from the newest.
    let (old, new) = (&counts[0], &counts[counts.len() - 1]);
    assert!(
        new.2 > old.1 + 1 && !is_prefix(old.1, new.2),
        "mixing points {} and {} should break the prefix: a {} c {}",
        old.0.display(),
        new.0.display(),
        old.1,
        new.2
    );
}
