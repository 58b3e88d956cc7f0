//! VM tier (device-mapper): an agent crash (kill -9) under writes to a protected
//! device-mapper striped volume — a bio-based device, whose bios the striped target splits at
//! chunk boundaries, so a completion may show only a bio's tail — costs no resync. The crash
//! sentinel remembers each bio's range from queue to completion (`sen_flight`), the next agent
//! adopts it and re-ships only what it marked (docs/tracking.md, "Agent crash"). Replica ==
//! source afterwards.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use sitrep_tests::Need;
use sitrep_tests::dm::DmDevice;
use sitrep_tests::io::MIB;
use sitrep_tests::replay::fio_engine;

/// Each leg's size.
const LEG_MIB: u64 = 32;

#[test]
fn a_kill_9_under_writes_to_a_striped_volume_costs_no_resync() {
    if !sitrep_tests::require!(
        Need::InVm,
        Need::Root,
        Need::LoopDevices,
        Need::Bpf,
        Need::Netns,
        Need::Command("fio"),
        Need::Command("dmsetup")
    ) {
        return;
    }
    let sites = Sites::new();
    let mut agent = sitrep_tests_agent(&sites);
    let (la, lb) = (loop_dev(LEG_MIB), loop_dev(LEG_MIB));
    // `0 N striped 2 128 A 0 B 0`: 64 KiB chunks alternating over the two legs.
    let sectors = 2 * LEG_MIB * MIB / 512;
    let vol = DmDevice::create(&format!(
        "0 {sectors} striped 2 128 {} 0 {} 0",
        p(la.path()),
        p(lb.path())
    ))
    .unwrap();
    let s = sites.sock("a");
    ctl(
        &s,
        &[
            "protect",
            &p(vol.path()),
            "--to",
            &sites.to(),
            "--name",
            "st",
        ],
    );
    wait_caught_up(&s, "st");
    // Random writes of 4 KiB to 192 KiB (most of the large ones cross a chunk boundary and
    // are split) over the first 16 MiB; the agent dies in the middle of them.
    let engine = format!("--ioengine={}", fio_engine());
    crash_costs_no_resync(
        &sites,
        &mut agent,
        vol.path(),
        "st",
        &[
            "--rw=randwrite",
            "--bsrange=4k-192k",
            "--direct=1",
            &engine,
            "--iodepth=8",
            "--size=16m",
            "--time_based",
            "--runtime=4",
            "--rate=8m",
        ],
        2 * LEG_MIB * MIB,
    );
}
