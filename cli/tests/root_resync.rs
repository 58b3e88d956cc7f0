//! Root tier: the checksum resync and online verify between two network namespaces, with
//! the real agent (eBPF tracking a loop device) and server.
//!
//! Every test ends with the replica byte-identical to the source, and checks the counters
//! its scenario is about: only differing blocks sent, zero blocks as zero ranges, a resumed
//! resync continuing at the server's cursor, recovery points intact throughout.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::cast_possible_truncation
)]

mod common;

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;
use sitrep_tests::io::MIB;
use sitrep_tests::netns::NetNsPair;
use sitrep_tests::require;

const BLOCK: u64 = 4096;

/// A deterministic generator (tests must be reproducible from their seed).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 17
    }

    fn fill(&mut self, b: &mut [u8]) {
        for c in b.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            c.copy_from_slice(&v[..c.len()]);
        }
    }
}

/// Writes (buffered, then synced) to a device nobody tracks right now.
fn write_at(dev: &Path, offset: u64, data: &[u8]) {
    let f = File::options().write(true).open(dev).unwrap();
    f.write_all_at(data, offset).unwrap();
    f.sync_all().unwrap();
}

/// 4 KiB blocks of `a` and `b` that differ: (total bytes, bytes whose `a` side is zero).
fn differing_blocks(a: &Path, b: &Path) -> (u64, u64) {
    let _ = std::process::Command::new("blockdev")
        .args(["--flushbufs", &p(a)])
        .status();
    let mut fa = File::open(a).unwrap();
    let mut fb = File::open(b).unwrap();
    let mut ba = vec![0u8; 1 << 20];
    let mut bb = vec![0u8; 1 << 20];
    let (mut diff, mut zero) = (0, 0);
    loop {
        let na = read_full(&mut fa, &mut ba);
        let nb = read_full(&mut fb, &mut bb);
        assert_eq!(na, nb);
        if na == 0 {
            return (diff, zero);
        }
        for (x, y) in ba[..na].chunks(4096).zip(bb[..nb].chunks(4096)) {
            if x != y {
                diff += x.len() as u64;
                if x.iter().all(|&v| v == 0) {
                    zero += x.len() as u64;
                }
            }
        }
    }
}

fn server_sock(sites: &Sites) -> PathBuf {
    sites.path("server.sock")
}

fn latest_point(sites: &Sites, name: &str) -> u64 {
    let pts = ctl(&server_sock(sites), &["points", name]);
    pts["points"]
        .as_array()
        .unwrap()
        .last()
        .unwrap_or_else(|| panic!("disk {name} has no recovery point: {pts}"))["id"]
        .as_u64()
        .unwrap()
}

fn export(sites: &Sites, name: &str, id: u64, tag: &str) -> PathBuf {
    let out = sites.path(&format!("{name}-{id}-{tag}.img"));
    ctl(
        &server_sock(sites),
        &["points", "export", name, &id.to_string(), "--out", &p(&out)],
    );
    out
}

/// Protects `dev` as `name`, waits for the copy, then makes some cycles so points exist.
fn protect_with_points(sites: &Sites, dev: &Path, name: &str) -> u64 {
    let s = sites.sock("a");
    ctl(
        &s,
        &["protect", &p(dev), "--to", &sites.to(), "--name", name],
    );
    wait_caught_up(&s, name);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        randwrite(dev, 1);
        wait_caught_up(&s, name);
        let pts = ctl(&server_sock(sites), &["points", name]);
        if !pts["points"].as_array().unwrap().is_empty() {
            return latest_point(sites, name);
        }
        assert!(
            Instant::now() < deadline,
            "no recovery point appeared: {pts}"
        );
    }
}

/// The resync cursor the server has persisted.
fn server_cursor(sites: &Sites, name: &str) -> Option<u64> {
    let st = std::fs::read(
        sites
            .path("store")
            .join("disks")
            .join(name)
            .join("state.json"),
    )
    .ok()?;
    let v: Value = serde_json::from_slice(&st).ok()?;
    v["resync"]["cursor"].as_u64()
}

fn wait_for(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_tracking_gap_is_repaired_by_sending_only_the_differing_blocks() {
    if !require!(needs: &NEEDS) {
        return;
    }
    // The point kept across the repair is mid-slot: keep every point (retention is not
    // what is tested).
    let sites = Sites::with_server_args(&["--keep-points", "1000"]);
    // No crash sentinel: the kill below must cost a whole-disk gap, which is what is tested.
    let mut agent = sites.agent_with("a", "pki-a", &["--crash-sentinel", "false"]);
    let d = loop_dev(128);
    random_region(d.path(), 0, 96);
    let s = sites.sock("a");
    let point = protect_with_points(&sites, d.path(), "g");
    let before = export(&sites, "g", point, "before");
    // The agent dies: nothing tracks the disk while it is down.
    agent.kill9();
    let mut rng = Lcg(0x5eed);
    let mut block = vec![0u8; BLOCK as usize];
    // 1 % of the blocks, scattered over the data region.
    for _ in 0..(128 * MIB / BLOCK / 100) {
        let at = rng.next() % (96 * MIB / BLOCK) * BLOCK;
        rng.fill(&mut block);
        write_at(d.path(), at, &block);
    }
    // One large range where zeros were, and a data region zeroed.
    let mut big = vec![0u8; (8 * MIB) as usize];
    rng.fill(&mut big);
    write_at(d.path(), 100 * MIB, &big);
    write_at(d.path(), 40 * MIB, &vec![0u8; (16 * MIB) as usize]);
    let (differing, zeroed) = differing_blocks(d.path(), &sites.replica("g"));
    assert!(zeroed >= 15 * MIB, "the zeroed region differs: {zeroed}");
    agent.restart();
    let r = ctl(&s, &["resync", "g", "--now"]);
    eprintln!("resync: {r}");
    assert!(r["reason"].as_str().unwrap().contains("tracking"), "{r}");
    assert_eq!(
        r["scope_bytes"],
        128 * MIB,
        "a crash is a whole-disk gap: {r}"
    );
    assert_eq!(r["differing_bytes"], differing, "{r}");
    let data = differing - zeroed;
    let sent = r["data_bytes_sent"].as_u64().unwrap();
    assert!(
        sent >= data && sent <= data + data / 10,
        "sent {sent} data bytes for {data} differing non-zero bytes"
    );
    // Wire: repairs plus digests, far from the disk's size.
    let wire = r["wire_bytes"].as_u64().unwrap();
    assert!(
        wire < data + data / 10 + 2 * MIB,
        "{wire} bytes on the wire for {data} differing bytes"
    );
    let st = wait_caught_up(&s, "g");
    assert_eq!(st["state"], "protected", "{st}");
    assert_eq!(st["resyncs_completed"], 1, "{st}");
    assert_same(d.path(), &sites.replica("g"));
    // The point from before the resync is still exactly what it was.
    let after = export(&sites, "g", point, "after");
    assert_eq!(first_difference(&before, &after), None);
    // Replication goes on, and new points come again.
    randwrite(d.path(), 1);
    wait_caught_up(&s, "g");
    assert_same(d.path(), &sites.replica("g"));
}

#[test]
fn a_resync_resumes_after_a_network_cut_and_a_server_kill_and_keeps_its_point() {
    if !require!(needs: &NEEDS) {
        return;
    }
    // The point under test is the newest of several in one 5-minute slot: retention (the
    // slot's oldest and the newest 3) would retire it as later cycles make points. Keep them
    // all: what is tested is that the resyncs keep it.
    let mut sites = Sites::with_server_args(&["--keep-points", "1000"]);
    let mut agent = sites.agent_with("a", "pki-a", &["--max-rate", "16M"]);
    let d = loop_dev(128);
    random_region(d.path(), 0, 128);
    let s = sites.sock("a");
    let point = protect_with_points(&sites, d.path(), "r");
    let before = export(&sites, "r", point, "before");
    agent.kill9();
    random_region(d.path(), 16, 112);
    agent.restart();
    ctl(&s, &["resync", "r", "--now", "--no-wait"]);
    // Mid-resync: cut the link.
    wait_for("the first resync commit", 120, || {
        server_cursor(&sites, "r").is_some_and(|c| c >= 24 * MIB)
    });
    let c1 = server_cursor(&sites, "r").unwrap();
    sites.net.a.ip(&["link", "set", "veth0", "down"]).unwrap();
    let _ = sites
        .net
        .a
        .exec("ss", &["-K", "dst", &NetNsPair::ADDR_B.to_string()]);
    std::thread::sleep(Duration::from_secs(2));
    sites.net.a.ip(&["link", "set", "veth0", "up"]).unwrap();
    // The agent reconnected and resumed, then made progress past where it resumed.
    wait_for("the resume after the cut", 120, || {
        !resumes(&agent).is_empty()
    });
    let r1 = resumes(&agent)[0];
    wait_for("progress after the cut", 120, || {
        server_cursor(&sites, "r").is_some_and(|c| c > r1)
    });
    let c2 = server_cursor(&sites, "r").unwrap();
    // Kill -9 the server mid-resync; the point is exportable from the restarted server.
    sites.server.kill9();
    sites.server.restart();
    let during = export(&sites, "r", point, "during");
    assert_eq!(
        first_difference(&before, &during),
        None,
        "the point changed during the resync"
    );
    let r = ctl(&s, &["resync", "r", "--now"]);
    eprintln!("resync: {r}");
    // Each resume continued at (or after) the cursor acknowledged before the interruption.
    let resumed = resumes(&agent);
    assert!(resumed.len() >= 2, "two resumes expected: {resumed:?}");
    assert!(resumed[0] >= c1, "resumed at {} < {c1}", resumed[0]);
    assert!(resumed[1] >= c2, "resumed at {} < {c2}", resumed[1]);
    // Bytes compared again are bounded by the windows in flight at each interruption.
    let compared = r["compared_bytes"].as_u64().unwrap();
    assert!(
        compared <= 2 * 128 * MIB + 2 * (64 + 48) * MIB,
        "compared {compared} bytes"
    );
    wait_caught_up(&s, "r");
    assert_same(d.path(), &sites.replica("r"));
    let after = export(&sites, "r", point, "after");
    assert_eq!(first_difference(&before, &after), None);

    // Kill -9 of the agent mid-resync: the next start finds a new gap and starts over, and
    // still converges; the old point survives that too.
    agent.kill9();
    random_region(d.path(), 0, 48);
    agent.restart();
    ctl(&s, &["resync", "r", "--now", "--no-wait"]);
    wait_for("a commit of the second resync", 120, || {
        server_cursor(&sites, "r").is_some_and(|c| c >= 8 * MIB)
    });
    agent.kill9();
    agent.restart();
    ctl(&s, &["resync", "r", "--now"]);
    wait_caught_up(&s, "r");
    assert_same(d.path(), &sites.replica("r"));
    let last = export(&sites, "r", point, "last");
    assert_eq!(first_difference(&before, &last), None);
}

/// The cursors the agent resumed its resync at, in order.
fn resumes(agent: &Daemon) -> Vec<u64> {
    strip_ansi(&agent.log_text())
        .lines()
        .filter(|l| l.contains("resync resumes at the server's cursor"))
        .filter_map(|l| {
            l.split("cursor=")
                .nth(1)?
                .split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse()
                .ok()
        })
        .collect()
}

/// The daemons' logs carry colour escapes.
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut esc = false;
    for c in s.chars() {
        match (esc, c) {
            (false, '\u{1b}') => esc = true,
            (false, c) => out.push(c),
            (true, 'm') => esc = false,
            (true, _) => {}
        }
    }
    out
}

/// A daily window that is closed now and for the next hours.
fn closed_window() -> String {
    let out = std::process::Command::new("date")
        .args(["+%H %M"])
        .output()
        .unwrap();
    let t = String::from_utf8_lossy(&out.stdout);
    let mut it = t.split_whitespace().map(|x| x.parse::<u32>().unwrap());
    let now = it.next().unwrap() * 60 + it.next().unwrap();
    let start = (now + 180) % 1440;
    let end = (now + 240) % 1440;
    format!(
        "{:02}:{:02}-{:02}:{:02}",
        start / 60,
        start % 60,
        end / 60,
        end % 60
    )
}

#[test]
fn verify_reports_exactly_the_corrupted_ranges_and_the_resync_waits_for_its_window() {
    if !require!(needs: &NEEDS) {
        return;
    }
    let sites = Sites::new();
    let window = closed_window();
    let _agent = sites.agent_with("a", "pki-a", &["--resync-window", &window]);
    let d = loop_dev(64);
    random_region(d.path(), 0, 64);
    let s = sites.sock("a");
    ctl(
        &s,
        &["protect", &p(d.path()), "--to", &sites.to(), "--name", "v"],
    );
    wait_caught_up(&s, "v");
    let verify = || {
        let out = sitrep()
            .args(["verify", "v", "--json", "--socket", &p(&s)])
            .output()
            .unwrap();
        let v: Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
        (out.status.code(), v)
    };
    let (code, v) = verify();
    assert_eq!(code, Some(0), "{v}");
    assert_eq!(v["mismatches"], serde_json::json!([]), "{v}");
    assert_eq!(v["compared_bytes"], 64 * MIB);
    // Corrupt the replica behind the server's back: one block, and three blocks.
    let mut rng = Lcg(7);
    let mut a = vec![0u8; 4096];
    let mut b = vec![0u8; 12288];
    rng.fill(&mut a);
    rng.fill(&mut b);
    write_at(&sites.replica("v"), MIB + 8192, &a);
    write_at(&sites.replica("v"), 40 * MIB, &b);
    let (code, v) = verify();
    assert_eq!(code, Some(3), "{v}");
    assert_eq!(
        v["mismatches"],
        serde_json::json!([[MIB + 8192, 4096], [40 * MIB, 12288]]),
        "{v}"
    );
    // Planned, and waiting for its window.
    let st = disk_status(&s, "v");
    assert_eq!(st["state"], "resync-required", "{st}");
    assert_eq!(st["resync"]["phase"], "waiting-for-window", "{st}");
    assert_eq!(st["resync"]["window"], window.as_str(), "{st}");
    assert!(
        st["resync_reason"].as_str().unwrap().contains("verify"),
        "{st}"
    );
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        disk_status(&s, "v")["resync"]["phase"],
        "waiting-for-window"
    );
    let r = ctl(&s, &["resync", "v", "--now"]);
    assert_eq!(r["scope_bytes"], 16384, "only the mismatches: {r}");
    assert_eq!(r["differing_bytes"], 16384, "{r}");
    assert_eq!(r["data_bytes_sent"], 16384, "{r}");
    wait_caught_up(&s, "v");
    assert_same(d.path(), &sites.replica("v"));
    let (code, v) = verify();
    assert_eq!(code, Some(0), "{v}");
}

#[test]
fn logs_past_the_threshold_become_a_scoped_resync() {
    if !require!(needs: &NEEDS) {
        return;
    }
    let mut sites = Sites::new();
    let _agent = sites.agent_with("a", "pki-a", &["--resync-log-threshold", "20"]);
    let d = loop_dev(64);
    random_region(d.path(), 0, 64);
    let s = sites.sock("a");
    ctl(
        &s,
        &["protect", &p(d.path()), "--to", &sites.to(), "--name", "t"],
    );
    wait_caught_up(&s, "t");
    // An outage while 24 MiB (37 %) change.
    sites.server.kill9();
    random_region(d.path(), 8, 32);
    std::thread::sleep(Duration::from_millis(500));
    sites.server.restart();
    wait_for("the threshold resync", 120, || {
        disk_status(&s, "t")["resyncs_completed"].as_u64() == Some(1)
    });
    let st = wait_caught_up(&s, "t");
    let r = &st["last_resync"];
    assert!(
        r["reason"].as_str().unwrap().contains("pending logs"),
        "{st}"
    );
    // The logs' ranges (the tracker may record a little more, never less), not the disk.
    let scope = r["scope_bytes"].as_u64().unwrap();
    assert!(
        (24 * MIB..=40 * MIB).contains(&scope),
        "the logs' ranges only: {st}"
    );
    assert!(r["compared_bytes"].as_u64().unwrap() <= 2 * scope, "{st}");
    assert_eq!(r["differing_bytes"], 24 * MIB, "{st}");
    assert_same(d.path(), &sites.replica("t"));
    // The logs the resync covered are gone; nothing is pending.
    assert_eq!(st["backlog_bytes"], 0, "{st}");
    let logs: Vec<_> = std::fs::read_dir(sites.path("state-a/disks/t/logs"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".hrl"))
        .collect();
    assert!(logs.len() <= 2, "{} logs left", logs.len());
}
