//! VM tier (device-mapper): an ext4 filesystem on a striped volume over two loop devices —
//! what `lvcreate --stripes 2` builds — with both loop devices in one consistency group.
//! Files are written through the filesystem while cycles ship; a group point taken under
//! those writes, exported, assembled into the same striped volume and mounted (the journal
//! replays, as after a power loss), is a clean filesystem (`e2fsck -fn`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use sitrep_tests::Need;
use sitrep_tests::dm::DmDevice;
use sitrep_tests::io::MIB;
use sitrep_tests::loopdev::{LoopDevice, LoopOptions};

const SECTOR: u64 = 512;
/// Each leg's size.
const LEG_MIB: u64 = 64;

/// `0 N striped 2 128 A 0 B 0`: 64 KiB chunks alternating over the two legs.
fn striped_table(a: &Path, b: &Path) -> String {
    let sectors = 2 * LEG_MIB * MIB / SECTOR;
    format!("0 {sectors} striped 2 128 {} 0 {} 0", p(a), p(b))
}

fn run(cmd: &str, args: &[&str]) -> std::process::Output {
    let out = Command::new(cmd).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[test]
fn a_group_point_of_a_striped_ext4_mounts_and_fscks_clean() {
    if !sitrep_tests::require!(
        Need::InVm,
        Need::Root,
        Need::LoopDevices,
        Need::Bpf,
        Need::Netns,
        Need::Command("dmsetup"),
        Need::Command("mkfs.ext4"),
        Need::Command("e2fsck")
    ) {
        return;
    }
    let sites = Sites::new();
    let _agent = sitrep_tests_agent(&sites);
    let (la, lb) = (loop_dev(LEG_MIB), loop_dev(LEG_MIB));
    let s = sites.sock("a");
    let srv = sites.path("server.sock");
    protect_in_group(&sites, &s, la.path(), "a", "vg");
    protect_in_group(&sites, &s, lb.path(), "b", "vg");

    let vol = DmDevice::create(&striped_table(la.path(), lb.path())).unwrap();
    run("mkfs.ext4", &["-q", "-F", &p(vol.path())]);
    let mnt = sites.path("mnt");
    std::fs::create_dir(&mnt).unwrap();
    run("mount", &[&p(vol.path()), &p(&mnt)]);
    // Files written and synced in rounds while the group's cycles ship; group points are
    // taken between and during the rounds.
    // Retention keeps only a few group points: count by id.
    let newest_id = || {
        ctl(&srv, &["points", "--group", "vg"])["points"]
            .as_array()
            .and_then(|p| p.last().cloned())
    };
    let before = newest_id().and_then(|p| p["id"].as_u64()).unwrap_or(0);
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut round = 0u32;
    let newest = loop {
        let f = mnt.join(format!("f{}", round % 16));
        run(
            "dd",
            &[
                "if=/dev/urandom",
                &format!("of={}", p(&f)),
                "bs=64k",
                "count=16",
                "status=none",
            ],
        );
        if round.is_multiple_of(4) {
            run("sync", &[]);
        }
        round += 1;
        let newest = newest_id();
        let id = newest.as_ref().and_then(|p| p["id"].as_u64()).unwrap_or(0);
        if id >= before + 3 && round >= 8 {
            break newest.unwrap();
        }
        assert!(
            Instant::now() < deadline,
            "no group points under the writes: {newest:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    // The newest group point, taken under the writes, exported at once (retention thins the
    // group's points as new ones come); then both legs assembled, mounted (journal replay)
    // and checked.
    let id = newest["id"].as_u64().unwrap().to_string();
    let out = sites.path("export");
    std::fs::create_dir(&out).unwrap();
    ctl(
        &srv,
        &[
            "points",
            "export",
            "--group",
            "vg",
            &id,
            "--out-dir",
            &p(&out),
        ],
    );
    run("umount", &[&p(&mnt)]);
    let ea = LoopDevice::over_file(&out.join("a.img"), LoopOptions::default()).unwrap();
    let eb = LoopDevice::over_file(&out.join("b.img"), LoopOptions::default()).unwrap();
    let restored = DmDevice::create(&striped_table(ea.path(), eb.path())).unwrap();
    let mnt2 = sites.path("mnt2");
    std::fs::create_dir(&mnt2).unwrap();
    run("mount", &[&p(restored.path()), &p(&mnt2)]);
    run("umount", &[&p(&mnt2)]);
    let fsck = Command::new("e2fsck")
        .args(["-fn", &p(restored.path())])
        .output()
        .unwrap();
    assert_eq!(
        fsck.status.code(),
        Some(0),
        "group point {id}: e2fsck -fn: {}{}",
        String::from_utf8_lossy(&fsck.stdout),
        String::from_utf8_lossy(&fsck.stderr)
    );
    drop(restored);
    drop(vol);
}
