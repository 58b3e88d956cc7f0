//! VM tier: the eBPF tracker on what the host kernel cannot give us — a partition of a
//! partitioned loop device, and a device-mapper linear volume (extents must be relative to
//! the device the operator protected, and writes elsewhere on the same disk must not
//! appear); and writes kept in flight across a rotation by a delaying device (dm-delay for
//! the bio-based path, null_blk for blk-mq), which must land in the log sealed after they
//! completed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::time::Duration;

use hrl::chain::list_logs;
use hrl::{Extent, LogReader, RecordBody, RecoveryMode};
use sitrep_tests::cmd::{try_run, try_run_with_stdin};
use sitrep_tests::dm::{DmDevice, linear_table};
use sitrep_tests::io::{AlignedBuf, MIB, direct_round_trip, open_direct};
use sitrep_tests::loopdev::{LoopDevice, LoopOptions, wait_for_path};
use sitrep_tests::{Need, require};
use std::os::unix::fs::FileExt;
use std::time::Instant;
use tracker_bpf::hrl::SealedLog;
use tracker_bpf::{Tracker, TrackerConfig};

const SECTOR: u64 = 512;

/// Every Write-record extent in a disk's logs (gaps excluded), sorted, repeats removed: a
/// bio-based device's write is recorded when it is queued and again when it completes,
/// possibly in different records.
fn written(dir: &Path) -> Vec<Extent> {
    let mut v = Vec::new();
    for (_, p) in list_logs(dir).unwrap() {
        let mut r = LogReader::open(&p, RecoveryMode::Strict).unwrap();
        for rec in r.read_all().unwrap() {
            if let RecordBody::Write(e) = rec.body {
                v.extend(e);
            }
        }
    }
    v.sort();
    v.dedup();
    v
}

fn tracker() -> Tracker {
    // The test writes from its own process, so it must not be excluded.
    Tracker::start(TrackerConfig {
        exclude_self: false,
        ..TrackerConfig::default()
    })
    .expect("load and attach the tracker in the 6.12 guest")
}

fn write(dev: &Path, offset: u64, len: u64, seed: u64) {
    let len = usize::try_from(len).unwrap();
    direct_round_trip(dev, offset, &AlignedBuf::with_pattern(len, seed, offset));
}

#[test]
fn tracker_partition_extents_are_relative_to_the_partition() {
    if !require!(
        Need::InVm,
        Need::Root,
        Need::LoopDevices,
        Need::Bpf,
        Need::Command("sfdisk")
    ) {
        return;
    }
    let dev = LoopDevice::new(
        40 * MIB,
        LoopOptions {
            partscan: true,
            ..Default::default()
        },
    )
    .unwrap();
    let script = format!(
        "label: dos\nstart={}, size={}, type=83\nstart={}, type=83\n",
        MIB / SECTOR,
        16 * MIB / SECTOR,
        17 * MIB / SECTOR
    );
    try_run_with_stdin(
        "sfdisk",
        &[
            "--no-reread",
            "--no-tell-kernel",
            dev.path().to_str().unwrap(),
        ],
        &script,
    )
    .unwrap();
    dev.reread_partitions();
    let p1 = dev.wait_partition(1, Duration::from_secs(10)).unwrap();
    let p2 = dev.wait_partition(2, Duration::from_secs(10)).unwrap();

    let logs = tempfile::tempdir().unwrap();
    let mut t = tracker();
    let add = t.add_device(&p2, logs.path()).unwrap();
    assert_eq!(
        add.info.start_sect,
        17 * MIB / SECTOR,
        "partition start from sysfs"
    );
    assert_eq!(add.info.size, 23 * MIB);

    write(&p2, 0, 64 << 10, 1);
    write(&p2, 5 * MIB, 128 << 10, 2);
    write(&p2, 23 * MIB - 4096, 4096, 3); // the partition's last block
    write(&p1, 2 * MIB, 64 << 10, 4); // another partition of the same disk: not tracked
    write(dev.path(), 17 * MIB + 8 * MIB, 4096, 5); // whole disk node: not tracked either
    std::thread::sleep(Duration::from_millis(200));
    t.stop().unwrap();

    let want = vec![
        Extent::new(0, 64 << 10).unwrap(),
        Extent::new(5 * MIB, 128 << 10).unwrap(),
        Extent::new(23 * MIB - 4096, 4096).unwrap(),
    ];
    assert_eq!(
        written(logs.path()),
        want,
        "p2 extents, relative to p2, and nothing else"
    );
}

#[test]
fn tracker_device_mapper_linear_volume_is_tracked_in_its_own_coordinates() {
    if !require!(
        Need::InVm,
        Need::Root,
        Need::LoopDevices,
        Need::Bpf,
        Need::Command("dmsetup")
    ) {
        return;
    }
    let dev = LoopDevice::new(32 * MIB, LoopOptions::default()).unwrap();
    // A 16 MiB volume starting 8 MiB into the loop device.
    let dm = DmDevice::create(&linear_table(
        16 * MIB / SECTOR,
        dev.path(),
        8 * MIB / SECTOR,
    ))
    .unwrap();
    let logs = tempfile::tempdir().unwrap();
    let mut t = tracker();
    let add = t.add_device(dm.path(), logs.path()).unwrap();
    assert_eq!(add.info.size, 16 * MIB);
    assert_eq!(add.info.start_sect, 0);

    write(dm.path(), 0, 4096, 1);
    write(dm.path(), 3 * MIB, 256 << 10, 2);
    write(dev.path(), 0, 4096, 3); // the underlying device outside the volume: not tracked
    std::thread::sleep(Duration::from_millis(200));
    t.stop().unwrap();

    assert_eq!(
        written(logs.path()),
        vec![
            Extent::new(0, 4096).unwrap(),
            Extent::new(3 * MIB, 256 << 10).unwrap()
        ]
    );
}

/// Write requests in flight on a disk (`/sys/block/<name>/inflight`, second field).
fn writes_in_flight(name: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/sys/block/{name}/inflight")).unwrap();
    text.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Writes a dm `delay` target is holding (`dmsetup status`: `<start> <len> delay <reads>
/// <writes> ...`).
fn dm_delayed_writes(dm: &str) -> u64 {
    let status = try_run("dmsetup", &["status", dm]).unwrap();
    let f: Vec<&str> = status.split_whitespace().collect();
    let at = f.iter().position(|&w| w == "delay").unwrap();
    f.get(at + 2)
        .and_then(|w| w.parse().ok())
        .unwrap_or_else(|| panic!("unexpected dm-delay status {status:?}"))
}

/// Whether a sealed log has a Write record covering `[off, off + len)`.
fn log_covers(log: &SealedLog, off: u64, len: u64) -> bool {
    let mut r = LogReader::open(&log.path, RecoveryMode::Strict).unwrap();
    let mut got = Vec::new();
    for rec in r.read_all().unwrap() {
        if let RecordBody::Write(e) = rec.body {
            got.extend(e.into_iter().map(|e| (e.offset(), e.offset() + e.len())));
        }
    }
    got.sort_unstable();
    // Merge touching extents, then look for one that contains the range.
    let mut merged: Vec<(u64, u64)> = Vec::new();
    for (s, e) in got {
        match merged.last_mut() {
            Some(last) if s <= last.1 => last.1 = last.1.max(e),
            _ => merged.push((s, e)),
        }
    }
    merged.iter().any(|&(s, e)| s <= off && off + len <= e)
}

/// The invariant replication relies on: a write still in flight when log N is sealed is
/// recorded in a later log (the one current when it completes), so the agent, which reads
/// log N's extents after the seal, cannot ship its range before the write landed and then
/// forget it. `dev` delays writes by `delay`; `queue_time_record_allowed` says whether the
/// write may also be in log N (bio-based devices record at queue time as well);
/// `in_flight` counts the device's writes in flight.
fn write_in_flight_across_a_rotation(
    dev: &Path,
    delay: Duration,
    queue_time_record_allowed: bool,
    in_flight: &dyn Fn() -> u64,
) {
    let name = dev.display().to_string();
    let logs = tempfile::tempdir().unwrap();
    // Completion records only: what this test is about.
    let mut t = Tracker::start(TrackerConfig {
        exclude_self: false,
        mark_at_queue: false,
        ..TrackerConfig::default()
    })
    .unwrap();
    t.add_device(dev, logs.path()).unwrap();
    let (off, len) = (MIB, 64 << 10);
    let path = dev.to_owned();
    let started = Instant::now();
    let writer = std::thread::spawn(move || {
        let f = open_direct(&path).unwrap();
        let buf = AlignedBuf::with_pattern(usize::try_from(len).unwrap(), 9, off);
        f.write_all_at(&buf, off).unwrap();
        started.elapsed()
    });
    let deadline = Instant::now() + delay / 2;
    while in_flight() == 0 {
        assert!(
            Instant::now() < deadline,
            "the write never showed as in flight on {name}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    // Longer than the tracker's drains (50 ms): a tracker that recorded the write when it
    // was queued would have it in the first log by now.
    std::thread::sleep(Duration::from_millis(300));
    let first = t.rotate(dev).unwrap();
    assert!(
        in_flight() > 0 && !writer.is_finished(),
        "the write completed before the rotation: the test proves nothing (delay {delay:?})"
    );
    let took = writer.join().unwrap();
    assert!(
        took >= delay / 2,
        "the device did not delay the write: {took:?}"
    );
    // Past the fine bitmap's drain interval (50 ms) and the coalescing window.
    std::thread::sleep(Duration::from_millis(300));
    let second = t.rotate(dev).unwrap();
    t.stop().unwrap();
    assert!(
        log_covers(&second, off, len),
        "{name}: a write in flight across the first seal is missing from the next log"
    );
    if !queue_time_record_allowed {
        assert!(
            !log_covers(&first, off, len),
            "{name}: the write was recorded before it completed"
        );
    }
}

#[test]
fn tracker_write_in_flight_across_a_rotation_bio_based_dm_delay() {
    if !require!(
        Need::InVm,
        Need::Root,
        Need::LoopDevices,
        Need::Bpf,
        Need::Command("dmsetup")
    ) {
        return;
    }
    try_run("modprobe", &["dm-delay"]).expect("dm-delay in the 6.12 guest");
    let dev = LoopDevice::new(16 * MIB, LoopOptions::default()).unwrap();
    let sectors = 16 * MIB / SECTOR;
    let d = dev.path().display();
    // Reads undelayed, writes delayed 4 s (a software-emulated guest on a busy 2-core host
    // needed more than 1.5 s between the write showing in flight and the rotation).
    let dm = DmDevice::create(&format!("0 {sectors} delay {d} 0 0 {d} 0 4000")).unwrap();
    // dm-delay holds the bio before dm's own accounting sees it in flight: ask the target.
    let in_flight = || dm_delayed_writes(dm.name());
    write_in_flight_across_a_rotation(dm.path(), Duration::from_millis(4000), true, &in_flight);
}

#[test]
fn tracker_write_in_flight_across_a_rotation_blk_mq_null_blk() {
    if !require!(Need::InVm, Need::Root, Need::Bpf) {
        return;
    }
    // Every request completes 4 s after it was issued (timer completion).
    try_run(
        "modprobe",
        &[
            "null_blk",
            "nr_devices=1",
            "gb=1",
            "memory_backed=1",
            "irqmode=2",
            "completion_nsec=4000000000",
        ],
    )
    .expect("null_blk in the 6.12 guest");
    let dev = Path::new("/dev/nullb0");
    wait_for_path(dev, Duration::from_secs(10)).unwrap();
    let result = std::panic::catch_unwind(|| {
        let in_flight = || writes_in_flight("nullb0");
        write_in_flight_across_a_rotation(dev, Duration::from_millis(4000), false, &in_flight);
    });
    if let Err(e) = try_run("rmmod", &["null_blk"]) {
        eprintln!("warning: rmmod null_blk: {e:#}");
    }
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}
