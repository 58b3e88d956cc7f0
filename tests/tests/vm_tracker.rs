//! VM tier: the eBPF tracker on what the host kernel cannot give us — a partition of a
//! partitioned loop device, and a device-mapper linear volume. Extents must be relative to
//! the device the operator protected, and writes elsewhere on the same disk must not appear.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::time::Duration;

use hrl::chain::list_logs;
use hrl::{Extent, LogReader, RecordBody, RecoveryMode};
use sitrep_tests::cmd::try_run_with_stdin;
use sitrep_tests::dm::{DmDevice, linear_table};
use sitrep_tests::io::{AlignedBuf, MIB, direct_round_trip};
use sitrep_tests::loopdev::{LoopDevice, LoopOptions};
use sitrep_tests::{Need, require};
use tracker_bpf::{Tracker, TrackerConfig};

const SECTOR: u64 = 512;

/// Every Write-record extent in a disk's logs (gaps excluded).
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
fn partition_extents_are_relative_to_the_partition() {
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
fn device_mapper_linear_volume_is_tracked_in_its_own_coordinates() {
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
