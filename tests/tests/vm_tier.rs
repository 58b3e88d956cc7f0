//! VM tier: tests that need kernel features the host lacks (ublk, device-mapper, partition
//! tables on loop devices). `scripts/vm-tests.sh` builds this binary on the host, boots the
//! Debian 6.12 kernel once under qemu (virtme-ng, host root filesystem shared read-only, /tmp
//! writable), loads `ublk_drv loop dm-mod`, and runs it with `SITREP_IN_VM=1
//! SITREP_REQUIRE_TIERS=1`. On the host these tests print `SKIP ...: VM tier: run by
//! scripts/vm-tests.sh` and pass.
//!
//! # Adding a VM test
//!
//! 1. Write a `#[test] fn` in this file (or a new `tests/vm_<topic>.rs`: the runner picks up
//!    every `vm_*` test target of `sitrep-tests`).
//! 2. Start it with `if !require!(Need::InVm, Need::Root) { return; }` — add other needs
//!    (e.g. `Need::Path("/dev/ublk-control")`, `Need::Command("fio")`) as needed.
//! 3. Use the guards from `sitrep_tests` (`LoopDevice`, `DmDevice`, …) so devices are torn
//!    down even when an assertion fails: the whole tier shares one boot.
//! 4. Keep data small (the guest has 2 GiB RAM and /tmp lives in it) and avoid long sleeps
//!    (everything runs under software emulation, ~10× slower than the host).
//! 5. Run `scripts/vm-tests.sh` (add `-- <filter>` to pass libtest arguments).
//!
//! If a new test needs another kernel module, add it to `MODULES` in `scripts/vm-guest.sh`.

use std::os::unix::fs::FileTypeExt;
use std::time::Duration;

use sitrep_tests::cmd::{run, try_run_with_stdin};
use sitrep_tests::dm::{DmDevice, linear_table};
use sitrep_tests::io::{
    AlignedBuf, MIB, assert_same, direct_read, direct_round_trip, mib, read_u64_file as sysfs_u64,
};
use sitrep_tests::loopdev::{LoopDevice, LoopOptions};
use sitrep_tests::{Need, require};

const SECTOR: u64 = 512;

#[test]
fn guest_runs_the_debian_6_12_kernel_with_ublk_loaded() {
    if !require!(Need::InVm, Need::Root) {
        return;
    }
    let release = run("uname", &["-r"]);
    assert!(
        release.starts_with("6.12."),
        "VM tier must run on the 6.12 kernel, got {release}"
    );
    assert!(
        std::path::Path::new("/sys/module/ublk_drv").exists(),
        "ublk_drv is not loaded"
    );
    let ctl = std::fs::metadata("/dev/ublk-control").expect("/dev/ublk-control exists");
    assert!(
        ctl.file_type().is_char_device(),
        "/dev/ublk-control is a character device"
    );
}

#[test]
fn loop_device_round_trips_data() {
    if !require!(Need::InVm, Need::Root, Need::LoopDevices) {
        return;
    }
    let dev = LoopDevice::new(8 * MIB, LoopOptions::default()).expect("attach loop device");
    let data = AlignedBuf::with_pattern(mib(1), 11, 3 * MIB);
    direct_round_trip(dev.path(), 3 * MIB, &data);
    let backing = std::fs::read(dev.backing()).unwrap();
    assert_same(&data, &backing[mib(3)..mib(4)], "backing file at 3 MiB");
}

#[test]
fn partitioned_loop_device_maps_partitions_to_the_right_offsets() {
    if !require!(
        Need::InVm,
        Need::Root,
        Need::LoopDevices,
        Need::Command("sfdisk")
    ) {
        return;
    }
    let opts = LoopOptions {
        partscan: true,
        ..Default::default()
    };
    let dev = LoopDevice::new(40 * MIB, opts).expect("attach loop device with --partscan");
    // MBR: p1 = [1 MiB, 17 MiB), p2 = [17 MiB, 40 MiB). sfdisk re-reads the table itself.
    let (p1_start, p1_len, p2_start) = (MIB / SECTOR, 16 * MIB / SECTOR, 17 * MIB / SECTOR);
    let script = format!(
        "label: dos\nstart={p1_start}, size={p1_len}, type=83\nstart={p2_start}, type=83\n"
    );
    let disk = dev.path().to_str().unwrap();
    try_run_with_stdin(
        "sfdisk",
        &["--no-reread", "--no-tell-kernel", disk],
        &script,
    )
    .expect("sfdisk");
    dev.reread_partitions();
    let p1 = dev
        .wait_partition(1, Duration::from_secs(10))
        .expect("partition 1 node");
    let p2 = dev
        .wait_partition(2, Duration::from_secs(10))
        .expect("partition 2 node");

    // The kernel sees the partitions where the table puts them.
    let sys = format!("/sys/class/block/{}", dev.name());
    assert_eq!(
        sysfs_u64(&format!("{sys}/{}p1/start", dev.name())),
        p1_start
    );
    assert_eq!(sysfs_u64(&format!("{sys}/{}p1/size", dev.name())), p1_len);
    assert_eq!(
        sysfs_u64(&format!("{sys}/{}p2/start", dev.name())),
        p2_start
    );
    assert_eq!(
        sysfs_u64(&format!("{sys}/{}p2/size", dev.name())),
        23 * MIB / SECTOR
    );

    // Write each partition's first and last MiB through the partition node…
    let writes = [
        (&p1, 0, 21),
        (&p1, 15 * MIB, 22),
        (&p2, 0, 23),
        (&p2, 22 * MIB, 24),
    ];
    for &(part, offset, seed) in &writes {
        direct_round_trip(
            part,
            offset,
            &AlignedBuf::with_pattern(mib(1), seed, offset),
        );
    }
    // …and find the same bytes through the whole disk at partition start + offset.
    for &(part, offset, seed) in &writes {
        let start = if part == &p1 { p1_start } else { p2_start } * SECTOR;
        let got = direct_read(dev.path(), start + offset, mib(1));
        let what = format!("{} offset {offset} seen through {disk}", part.display());
        assert_same(&AlignedBuf::with_pattern(mib(1), seed, offset), &got, &what);
    }
    // The MBR survived (partition writes did not spill onto sector 0) and the gap is zeros.
    let head = direct_read(dev.path(), 0, mib(1));
    assert_eq!(&head[510..512], &[0x55, 0xaa], "MBR signature intact");
    assert_same(
        &vec![0; mib(1) - 4096],
        &head[4096..],
        "gap before partition 1",
    );
}

#[test]
fn device_mapper_linear_maps_onto_the_loop_device() {
    if !require!(
        Need::InVm,
        Need::Root,
        Need::LoopDevices,
        Need::Command("dmsetup")
    ) {
        return;
    }
    let dev = LoopDevice::new(32 * MIB, LoopOptions::default()).expect("attach loop device");
    // 8 MiB of the loop device starting at 2 MiB.
    let (start, sectors) = (2 * MIB / SECTOR, 8 * MIB / SECTOR);
    let dm = DmDevice::create(&linear_table(sectors, dev.path(), start)).expect("dmsetup create");
    let size = run("blockdev", &["--getsize64", dm.path().to_str().unwrap()]);
    assert_eq!(size, (8 * MIB).to_string(), "dm device size");

    let writes = [(0, 31), (7 * MIB, 32)];
    for (offset, seed) in writes {
        direct_round_trip(
            dm.path(),
            offset,
            &AlignedBuf::with_pattern(mib(1), seed, offset),
        );
    }
    for (offset, seed) in writes {
        let got = direct_read(dev.path(), 2 * MIB + offset, mib(1));
        let what = format!("dm offset {offset} seen through {}", dev.path().display());
        assert_same(&AlignedBuf::with_pattern(mib(1), seed, offset), &got, &what);
    }
    // Nothing outside the mapped range was touched.
    let before = direct_read(dev.path(), 0, mib(2));
    assert_same(&vec![0; mib(2)], &before, "loop device before the dm range");
    let after = direct_read(dev.path(), 10 * MIB, mib(1));
    assert_same(&vec![0; mib(1)], &after, "loop device after the dm range");
}
