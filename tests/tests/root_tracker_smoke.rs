//! Smoke: the tracker sees O_DIRECT writes on a loop device.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use sitrep_tests::io::{AlignedBuf, MIB, direct_round_trip};
use sitrep_tests::loopdev::{LoopDevice, LoopOptions};
use sitrep_tests::{Need, require};
use tracker_bpf::{Tracker, TrackerConfig};

#[test]
fn smoke() {
    if !require!(Need::Root, Need::LoopDevices, Need::Bpf) {
        return;
    }
    let dev = LoopDevice::new(16 * MIB, LoopOptions::default()).unwrap();
    let logs = tempfile::tempdir().unwrap();
    let mut t = Tracker::start(TrackerConfig {
        exclude_self: false,
        ..TrackerConfig::default()
    })
    .unwrap();
    eprintln!("attached {:?}", t.attached());
    let add = t.add_device(dev.path(), logs.path()).unwrap();
    eprintln!("{add:?}");
    direct_round_trip(dev.path(), MIB, &AlignedBuf::with_pattern(65536, 1, MIB));
    std::thread::sleep(Duration::from_millis(100));
    eprintln!("{:#?}", t.stats());
    let r = t.stop().unwrap();
    eprintln!("{r:#?}");
}
