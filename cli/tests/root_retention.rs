//! Root tier: time-based retention end to end (issue 21, item 2). A disk protected with
//! `--crash-points-every 10s --retain 40s` (the server's floor lowered to 0 for the test)
//! is written for 70 s; the server then keeps exactly what the policy says: nothing older
//! than the span (plus a slot of slack), at most one crash-consistent point per 10 s slot
//! besides the newest, and one in every slot the span covers. The agent's policy reaches
//! the server over protocol 3 and both sides' `status` show it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeMap;
use std::process::Stdio;

use common::*;
use sitrep_tests::io::MIB;
use sitrep_tests::loopdev::{LoopDevice, LoopOptions};
use sitrep_tests::require;

const S: u64 = 1_000_000_000;
const EVERY: u64 = 10 * S;
const RETAIN: u64 = 40 * S;

#[test]
fn a_disk_keeps_one_point_per_slot_for_its_span() {
    if !require!(needs: &NEEDS) {
        return;
    }
    let sites = Sites::with_server_args(&["--min-retain", "0s", "--keep-points", "1"]);
    let _agent = sitrep_tests_agent(&sites);
    let s = sites.sock("a");
    let dev = LoopDevice::new(16 * MIB, LoopOptions::default()).unwrap();
    ctl(
        &s,
        &[
            "protect",
            &p(dev.path()),
            "--to",
            &sites.to(),
            "--name",
            "t",
            "--crash-points-every",
            "10s",
            "--retain",
            "40s",
        ],
    );
    wait_caught_up(&s, "t");
    let out = sitrep()
        .args(["workload", &p(dev.path()), "--history"])
        .arg(sites.path("t.history"))
        .args(["--duration", "70s", "--queue-depth", "1", "--rate", "1M"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "workload: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_caught_up(&s, "t");
    let server = sites.path("server.sock");
    // A late completion can still make a point (docs/tracking.md): take a listing that the
    // server's status agrees with.
    let (pts, st) = (0..20)
        .find_map(|_| {
            let a = ctl(&server, &["points", "t"]);
            let st = disk_status(&server, "t");
            let b = ctl(&server, &["points", "t"]);
            (a == b).then_some((a, st))
        })
        .expect("the points kept changing");
    let policy = &pts["policy"];
    assert_eq!(policy["every_ns"], EVERY, "{pts}");
    assert_eq!(policy["retain_ns"], RETAIN, "{pts}");
    let list: Vec<(u64, u64, String)> = pts["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|pt| {
            (
                pt["id"].as_u64().unwrap(),
                pt["cut_time_ns"].as_u64().unwrap(),
                pt["kind"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    eprintln!("{} points retained: {list:?}", list.len());
    let &(newest_id, newest, _) = list.last().expect("no point retained");
    // Nothing older than the span (ages count back from the newest cut), one slot of slack.
    for &(id, t, _) in &list {
        assert!(
            newest - t <= RETAIN + EVERY,
            "point {id} is {} s older than the newest",
            (newest - t) / S
        );
    }
    // At most one crash-consistent point per slot besides the newest.
    let mut per_slot: BTreeMap<u64, u32> = BTreeMap::new();
    for (id, t, kind) in &list {
        if *id != newest_id && kind == "crash-consistent" {
            *per_slot.entry(t / EVERY).or_default() += 1;
        }
    }
    assert!(
        per_slot.values().all(|n| *n == 1),
        "more than one point in a slot: {per_slot:?}"
    );
    // One in every slot wholly inside the span (the workload covered all of them).
    let first_slot = (newest - RETAIN).div_ceil(EVERY);
    for slot in first_slot..=newest / EVERY {
        assert!(
            list.iter().any(|(_, t, _)| t / EVERY == slot),
            "no point in slot {slot} (span {first_slot}..={}): {list:?}",
            newest / EVERY
        );
    }
    // Both sides' status show the policy; the server's the retained range.
    assert_eq!(st["oldest_point"]["id"], list[0].0, "{st}");
    assert_eq!(st["newest_point"]["id"], newest_id, "{st}");
    assert_eq!(st["point_policy"]["crash_points_every_secs"], 10, "{st}");
    assert_eq!(st["point_policy"]["retain_secs"], 40, "{st}");
    assert!(st["points_bytes"].as_u64().unwrap() > 0, "{st}");
    let a = disk_status(&s, "t");
    assert_eq!(a["point_policy"]["crash_points_every_secs"], 10, "{a}");
    assert_eq!(a["point_policy"]["retain_secs"], 40, "{a}");
}
