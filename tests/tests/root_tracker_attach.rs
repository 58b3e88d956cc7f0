//! Root tier: both attachments of the tracker (tp_btf and the raw-tracepoint fallback) see a
//! write, a discard, a write-zeroes and a flush on a loop device, with exact extents.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;
use std::time::Duration;

use hrl::chain::list_logs;
use hrl::{Extent, LogReader, RecordBody, RecoveryMode};
use sitrep_tests::io::{AlignedBuf, MIB, direct_round_trip};
use sitrep_tests::loopdev::{LoopDevice, LoopOptions};
use sitrep_tests::{Need, require};
use tracker_bpf::{AttachMode, Attached, Tracker, TrackerConfig};

/// What the per-attachment tests need.
const TRACK_DISCARD: &[Need] = &[
    Need::Root,
    Need::LoopDevices,
    Need::Bpf,
    Need::Command("blkdiscard"),
];

fn records(dir: &std::path::Path) -> Vec<RecordBody> {
    let mut v = Vec::new();
    for (_, p) in list_logs(dir).unwrap() {
        let mut r = LogReader::open(&p, RecoveryMode::Strict).unwrap();
        v.extend(r.read_all().unwrap().into_iter().map(|r| r.body));
    }
    v
}

fn each_kind_is_logged(mode: AttachMode, want: Attached) {
    let dev = LoopDevice::new(16 * MIB, LoopOptions::default()).unwrap();
    let logs = tempfile::tempdir().unwrap();
    let mut t = Tracker::start(TrackerConfig {
        attach: mode,
        exclude_self: false,
        ..TrackerConfig::default()
    })
    .unwrap();
    assert_eq!(t.attached(), want);
    t.add_device(dev.path(), logs.path()).unwrap();
    direct_round_trip(dev.path(), MIB, &AlignedBuf::with_pattern(65536, 1, MIB));
    let d = dev.path().to_str().unwrap();
    let ok = |args: &[&str]| {
        assert!(
            Command::new("blkdiscard")
                .args(args)
                .status()
                .unwrap()
                .success()
        )
    };
    ok(&["-o", "4194304", "-l", "1048576", d]);
    ok(&["-z", "-o", "8388608", "-l", "65536", d]);
    // An fsync of the block device sends an empty PREFLUSH write.
    std::fs::OpenOptions::new()
        .write(true)
        .open(d)
        .unwrap()
        .sync_all()
        .unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let stats = t.stats();
    t.stop().unwrap();
    assert_eq!(stats.kernel.unaccounted, 0);
    let recs = records(logs.path());
    let x = |o, l| Extent::new(o, l).unwrap();
    assert!(
        matches!(recs[0], RecordBody::TrackingGap { .. }),
        "first start: {:?}",
        recs[0]
    );
    assert!(
        recs.contains(&RecordBody::Write(vec![x(MIB, 65536)])),
        "{recs:?}"
    );
    assert!(
        recs.contains(&RecordBody::Discard(vec![x(4 * MIB, MIB)])),
        "{recs:?}"
    );
    // The loop driver may offer write-zeroes natively or not; either way the range is logged.
    assert!(
        recs.contains(&RecordBody::WriteZeroes(vec![x(8 * MIB, 65536)]))
            || recs.contains(&RecordBody::Write(vec![x(8 * MIB, 65536)])),
        "{recs:?}"
    );
    assert!(recs.contains(&RecordBody::Flush), "{recs:?}");
}

#[test]
fn tp_btf_attachment_logs_every_kind() {
    if !require!(needs: TRACK_DISCARD) {
        return;
    }
    each_kind_is_logged(AttachMode::TpBtf, Attached::TpBtf);
}

#[test]
fn raw_tracepoint_fallback_logs_every_kind() {
    if !require!(needs: TRACK_DISCARD) {
        return;
    }
    each_kind_is_logged(AttachMode::RawTp, Attached::RawTp);
}

#[test]
fn own_log_writes_on_the_tracked_device_do_not_feed_back() {
    if !require!(
        Need::Root,
        Need::LoopDevices,
        Need::Bpf,
        Need::Command("mkfs.ext4"),
        Need::Command("fio")
    ) {
        return;
    }
    let dev = LoopDevice::new(64 * MIB, LoopOptions::default()).unwrap();
    let d = dev.path().to_str().unwrap();
    let run = |cmd: &str, args: &[&str]| {
        let st = Command::new(cmd).args(args).status().unwrap();
        assert!(st.success(), "{cmd} {args:?}");
    };
    // No lazy init: its background zeroing would look like a stream of writes.
    run(
        "mkfs.ext4",
        &[
            "-q",
            "-F",
            "-E",
            "lazy_itable_init=0,lazy_journal_init=0",
            d,
        ],
    );
    let mnt = tempfile::tempdir().unwrap();
    let m = mnt.path().to_str().unwrap();
    run("mount", &[d, m]);
    let logs = mnt.path().join("sitrep-logs");
    std::fs::create_dir(&logs).unwrap();
    let result = std::panic::catch_unwind(|| {
        // Default config: the tracker's own process is excluded.
        let mut t = Tracker::start(TrackerConfig::default()).unwrap();
        t.add_device(dev.path(), &logs).unwrap();
        let data = mnt.path().join("data");
        run(
            "fio",
            &[
                "--name=w",
                &format!("--filename={}", data.display()),
                "--rw=randwrite",
                "--bs=4k",
                "--size=8M",
                "--fsync=16",
                "--ioengine=psync",
            ],
        );
        std::thread::sleep(Duration::from_millis(300));
        let busy = t.stats();
        std::thread::sleep(Duration::from_secs(1));
        let idle = t.stats();
        t.stop().unwrap();
        let events = |s: &tracker_bpf::TrackerStats| s.disks[0].1.events;
        assert!(
            busy.kernel.excluded > 0,
            "own log writes were seen and excluded: {busy:?}"
        );
        // Idle: only the filesystem journal's commits of our own log writes may appear
        // (a few blocks per commit), not a self-sustaining stream of log writes.
        let idle_events = events(&idle) - events(&busy);
        eprintln!(
            "excluded {} own bios; {idle_events} events in 1 s idle",
            busy.kernel.excluded
        );
        assert!(
            idle_events < 200,
            "feedback loop: {idle_events} events while idle"
        );
    });
    run("umount", &[m]);
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}
