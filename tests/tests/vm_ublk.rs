//! VM tier: the tracked ublk disk (`ublk-target`) against the real ublk driver.
//!
//! The server runs in a child process — this same test binary re-executed with
//! `SITREP_UBLK_CHILD=<config json>`, which makes [`ublk_server_child`] serve the disk —
//! so a test can `kill -9` it and start another, exactly as an operator's crash would, and
//! always runs the code of this build (not a stale `target/debug/sitrep`).
//!
//! The oracle for "every change is in the log" is a replay: the backing file is filled with
//! a known pattern and copied before the disk starts; afterwards, the logged extents (copied
//! from the final backing) or the journaled data (in log order) are applied to the copy,
//! which must then equal the final backing byte for byte.

// Test helpers: failing loudly with a message is their job, as in the tests they serve.
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hrl::{LogReader, RecordBody, RecoveryMode};
use sitrep_tests::cmd::run;
use sitrep_tests::io::{fill_pattern, first_mismatch};
use sitrep_tests::{Need, require};
use ublk_target::{DiskConfig, Durability, LogMode};

/// What the ublk fio and crash tests need.
const UBLK_FIO: &[Need] = &[
    Need::InVm,
    Need::Root,
    Need::Path("/dev/ublk-control"),
    Need::Command("fio"),
];

const MIB: u64 = 1 << 20;
const CHILD_ENV: &str = "SITREP_UBLK_CHILD";
const READY_ENV: &str = "SITREP_UBLK_READY_FILE";

/// Not a test on its own: the server process the other tests start (see the module docs).
#[test]
fn ublk_server_child() {
    let Ok(cfg) = std::env::var(CHILD_ENV) else {
        return;
    };
    let cfg: DiskConfig = serde_json::from_str(&cfg).expect("child config");
    let ready = PathBuf::from(std::env::var(READY_ENV).expect("ready file"));
    let stopped = ublk_target::serve(&cfg, move |info| {
        // Written then renamed: the parent never reads half a file.
        let tmp = ready.with_extension("tmp");
        std::fs::write(&tmp, serde_json::to_vec(info).expect("json")).expect("ready file");
        std::fs::rename(&tmp, &ready).expect("ready file");
    });
    if let Err(e) = stopped {
        eprintln!("ublk server: {e}");
        std::process::exit(1);
    }
}

/// A running server child; stopped cleanly (SIGTERM) on drop.
struct Server {
    child: Option<Child>,
    info: serde_json::Value,
}

impl Server {
    fn start(cfg: &DiskConfig) -> Self {
        Self::try_start(cfg).expect("start the ublk server")
    }

    fn try_start(cfg: &DiskConfig) -> anyhow::Result<Self> {
        let exe = std::env::current_exe()?;
        let ready = tempfile::NamedTempFile::new()?.into_temp_path();
        std::fs::remove_file(&ready)?;
        let mut child = Command::new(exe)
            .args([
                "--exact",
                "ublk_server_child",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, serde_json::to_string(cfg)?)
            .env(READY_ENV, &*ready)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()?;
        let deadline = Instant::now() + Duration::from_secs(60);
        let info = loop {
            if let Ok(b) = std::fs::read(&ready) {
                break serde_json::from_slice::<serde_json::Value>(&b)?;
            }
            if let Some(st) = child.try_wait()? {
                anyhow::bail!("the server exited before it was ready ({st})");
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                anyhow::bail!("the server was not ready within 60 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let s = Self {
            child: Some(child),
            info,
        };
        wait_for(&s.device(), Duration::from_secs(20));
        Ok(s)
    }

    fn device(&self) -> PathBuf {
        PathBuf::from(self.info["device"].as_str().expect("device"))
    }

    fn dev(&self) -> String {
        self.device().display().to_string()
    }

    fn id(&self) -> u64 {
        self.info["id"].as_u64().expect("id")
    }

    /// SIGTERM and wait: the server seals the log and deletes the device.
    fn stop(mut self) {
        self.stop_inner();
    }

    fn stop_inner(&mut self) {
        if let Some(mut c) = self.child.take() {
            let pid = nix::unistd::Pid::from_raw(i32::try_from(c.id()).expect("pid"));
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                if let Ok(Some(st)) = c.try_wait() {
                    assert!(st.success(), "server exited with {st}");
                    break;
                }
                if Instant::now() > deadline {
                    let _ = c.kill();
                    let _ = c.wait();
                    panic!("server did not stop within 30 s of SIGTERM");
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// `kill -9`: no seal, the device stays (quiesced) for the next server to recover.
    fn crash(mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().expect("kill -9");
            c.wait().expect("reap");
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if std::thread::panicking() {
            if let Some(mut c) = self.child.take() {
                let _ = c.kill();
                let _ = c.wait();
                let _ = ublk_target::devices::delete(
                    u32::try_from(self.id()).unwrap_or(u32::MAX),
                    true,
                    Duration::from_secs(5),
                );
            }
        } else {
            self.stop_inner();
        }
    }
}

fn wait_for(path: &Path, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "{} did not appear",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A backing file filled with a pattern, and a pristine copy of it for the replay oracle.
struct Disk {
    dir: tempfile::TempDir,
    backing: PathBuf,
    original: PathBuf,
}

impl Disk {
    fn new(size: u64, seed: u64) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let backing = dir.path().join("disk.img");
        let mut buf = vec![0u8; usize::try_from(MIB).unwrap()];
        let f = std::fs::File::create(&backing).unwrap();
        for off in (0..size).step_by(usize::try_from(MIB).unwrap()) {
            fill_pattern(&mut buf, seed, off);
            f.write_all_at(&buf, off).unwrap();
        }
        f.sync_all().unwrap();
        let original = dir.path().join("original.img");
        std::fs::copy(&backing, &original).unwrap();
        Self {
            dir,
            backing,
            original,
        }
    }

    fn config(&self, mode: LogMode) -> DiskConfig {
        DiskConfig {
            mode,
            depth: 64,
            ..DiskConfig::new(&self.backing)
        }
    }

    fn log_dir(&self) -> PathBuf {
        ublk_target::config::default_log_dir(&self.backing)
    }
}

/// Every record of every log in `dir`, in chain order; each log must be sealed and valid.
fn read_chain(dir: &Path) -> (Vec<hrl::Record>, Vec<hrl::Seal>) {
    let mut records = Vec::new();
    let mut seals = Vec::new();
    let mut prev: Option<(hrl::LogHeader, hrl::Seal)> = None;
    for (_, path) in hrl::chain::list_logs(dir).unwrap() {
        let mut r = LogReader::open(&path, RecoveryMode::Strict).unwrap();
        let seal = *r
            .seal()
            .unwrap_or_else(|| panic!("{} is not sealed", path.display()));
        if let Some((ph, ps)) = &prev {
            hrl::chain::check_link(ph, Some(ps), r.header())
                .unwrap_or_else(|c| panic!("{}: {c:?}", path.display()));
        }
        prev = Some((*r.header(), seal));
        records.extend(r.read_all().unwrap());
        seals.push(seal);
    }
    (records, seals)
}

/// Applies the log to a copy of the original backing and compares with the final backing.
fn assert_replay_reproduces_backing(disk: &Disk, records: &[hrl::Record]) {
    let fin = std::fs::read(&disk.backing).unwrap();
    let mut img = std::fs::read(&disk.original).unwrap();
    let range = |off: u64, len: u64| {
        let a = usize::try_from(off).unwrap();
        a..a + usize::try_from(len).unwrap()
    };
    for rec in records {
        match &rec.body {
            // Extents mode: the log names the ranges; the data comes from the source.
            RecordBody::Write(exts) | RecordBody::Discard(exts) => {
                for e in exts {
                    let r = range(e.offset(), e.len());
                    img[r.clone()].copy_from_slice(&fin[r]);
                }
            }
            RecordBody::WriteZeroes(exts) => {
                for e in exts {
                    img[range(e.offset(), e.len())].fill(0);
                }
            }
            RecordBody::WriteData { offset, data } => {
                let r = range(*offset, data.len() as u64);
                img[r].copy_from_slice(data);
            }
            RecordBody::TrackingGap { .. } => panic!("unexpected tracking gap: {rec:?}"),
            _ => {}
        }
    }
    if let Some(i) = first_mismatch(&img, &fin) {
        panic!("replaying the log does not reproduce the backing: first difference at byte {i}");
    }
}

fn fio(dev: &str, extra: &[&str]) -> String {
    let mut args = vec![
        "--name=ublk",
        "--ioengine=libaio",
        "--direct=1",
        "--iodepth=32",
        "--bsrange=4k-1m",
        "--verify=crc32c",
        "--randrepeat=1",
        "--output-format=terse",
    ];
    let file = format!("--filename={dev}");
    args.push(&file);
    args.extend_from_slice(extra);
    run("fio", &args)
}

fn count(records: &[hrl::Record], f: impl Fn(&RecordBody) -> bool) -> usize {
    records.iter().filter(|r| f(&r.body)).count()
}

/// How many writes the log names: a `Write` record lists the plain writes of one batch of
/// a queue's completions (one extent each), a `WriteData` record is one write.
fn logged_writes(records: &[hrl::Record]) -> usize {
    records
        .iter()
        .map(|r| match &r.body {
            RecordBody::Write(v) => v.len(),
            RecordBody::WriteData { .. } => 1,
            _ => 0,
        })
        .sum()
}

fn fio_then_replay(mode: LogMode) {
    let disk = Disk::new(48 * MIB, 7);
    let server = Server::start(&disk.config(mode));
    let t = Instant::now();
    fio(
        &server.dev(),
        &["--rw=randwrite", "--size=24m", "--offset=8m"],
    );
    eprintln!("fio {mode:?}: {:?}", t.elapsed());
    server.stop();
    let (records, seals) = read_chain(&disk.log_dir());
    assert!(
        seals.iter().all(|s| !s.recovered),
        "clean stop seals cleanly"
    );
    let writes = logged_writes(&records);
    assert!(writes > 10, "expected logged writes, got {writes}");
    assert_replay_reproduces_backing(&disk, &records);
}

#[test]
fn ublk_fio_verify_passes_and_the_extent_log_replays_to_the_backing() {
    if !require!(needs: UBLK_FIO) {
        return;
    }
    fio_then_replay(LogMode::Extents);
}

#[test]
fn ublk_fio_verify_passes_and_the_journal_replays_to_the_backing() {
    if !require!(needs: UBLK_FIO) {
        return;
    }
    fio_then_replay(LogMode::Journal);
}

#[test]
fn ublk_discard_and_write_zeroes_reach_the_backing_and_the_log() {
    if !require!(
        Need::InVm,
        Need::Root,
        Need::Path("/dev/ublk-control"),
        Need::Command("blkdiscard")
    ) {
        return;
    }
    let disk = Disk::new(16 * MIB, 3);
    let server = Server::start(&disk.config(LogMode::Journal));
    let dev = server.dev();
    run("blkdiscard", &["-o", "1048576", "-l", "1048576", &dev]);
    run(
        "blkdiscard",
        &["-z", "-o", "4194304", "-l", "2097152", &dev],
    );
    server.stop();
    let fin = std::fs::read(&disk.backing).unwrap();
    assert!(
        fin[1 << 20..2 << 20].iter().all(|&b| b == 0),
        "discarded range reads zero"
    );
    assert!(
        fin[4 << 20..6 << 20].iter().all(|&b| b == 0),
        "zeroed range reads zero"
    );
    assert!(
        fin[6 << 20..7 << 20].iter().any(|&b| b != 0),
        "untouched data survives"
    );
    let (records, _) = read_chain(&disk.log_dir());
    let covered = |pick: fn(&RecordBody) -> Option<&Vec<hrl::Extent>>, a: u64, b: u64| {
        let mut bytes = 0;
        for r in &records {
            for e in pick(&r.body).into_iter().flatten() {
                if e.offset() >= a && e.end() <= b {
                    bytes += e.len();
                }
            }
        }
        bytes
    };
    let discards = covered(
        |b| match b {
            RecordBody::Discard(e) => Some(e),
            _ => None,
        },
        MIB,
        2 * MIB,
    );
    let zeroes = covered(
        |b| match b {
            RecordBody::WriteZeroes(e) => Some(e),
            _ => None,
        },
        4 * MIB,
        6 * MIB,
    );
    assert_eq!(discards, MIB, "the discard is logged: {records:?}");
    assert_eq!(zeroes, 2 * MIB, "the write-zeroes is logged");
    assert_replay_reproduces_backing(&disk, &records);
}

#[test]
fn ublk_ext4_on_the_tracked_disk_is_clean_and_the_log_replays() {
    if !require!(
        Need::InVm,
        Need::Root,
        Need::Path("/dev/ublk-control"),
        Need::Command("mkfs.ext4"),
        Need::Command("e2fsck")
    ) {
        return;
    }
    let disk = Disk::new(64 * MIB, 5);
    let server = Server::start(&disk.config(LogMode::Extents));
    let dev = server.dev();
    run("mkfs.ext4", &["-q", "-F", &dev]);
    let mnt = disk.dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let mnt_s = mnt.display().to_string();
    run("mount", &[&dev, &mnt_s]);
    let mut expected = Vec::new();
    for i in 0..8u64 {
        let mut data = vec![0u8; usize::try_from(300_000 + i * 77_777).unwrap()];
        fill_pattern(&mut data, 100 + i, 0);
        std::fs::write(mnt.join(format!("f{i}")), &data).unwrap();
        expected.push(data);
    }
    run("sync", &[]);
    run("umount", &[&mnt_s]);
    run("e2fsck", &["-fn", &dev]);
    // The device and its backing hold the same bytes.
    let via_dev = std::fs::read(&dev).unwrap();
    let backing = std::fs::read(&disk.backing).unwrap();
    assert!(
        first_mismatch(&via_dev, &backing).is_none(),
        "device == backing"
    );
    run("mount", &["-o", "ro", &dev, &mnt_s]);
    for (i, data) in expected.iter().enumerate() {
        let got = std::fs::read(mnt.join(format!("f{i}"))).unwrap();
        assert!(got == *data, "file f{i} reads back");
    }
    run("umount", &[&mnt_s]);
    server.stop();
    let (records, _) = read_chain(&disk.log_dir());
    let flushes = count(&records, |b| matches!(b, RecordBody::Flush));
    assert!(flushes > 0, "ext4 flushes are logged");
    assert_replay_reproduces_backing(&disk, &records);
}

#[test]
fn ublk_kill_9_mid_fio_then_restart_recovers_the_device_and_the_log_has_no_gap() {
    if !require!(needs: UBLK_FIO) {
        return;
    }
    kill_9_then_restart(LogMode::Extents);
}

/// The same crash in journal mode: the recovered log's write data must replay too.
#[test]
fn ublk_journal_mode_survives_kill_9_and_replays() {
    if !require!(needs: UBLK_FIO) {
        return;
    }
    kill_9_then_restart(LogMode::Journal);
}

fn kill_9_then_restart(mode: LogMode) {
    let disk = Disk::new(48 * MIB, 9);
    let cfg = disk.config(mode);
    let server = Server::start(&cfg);
    let dev = server.dev();
    let id = server.id();
    let verified = ["--rw=randwrite", "--size=16m", "--offset=0"];
    fio(&dev, &verified);
    // A second writer, killed under: the server dies with its I/O in flight.
    let file = format!("--filename={dev}");
    let mut bg = Command::new("fio")
        .args([
            "--name=bg",
            "--ioengine=libaio",
            "--direct=1",
            "--iodepth=32",
            "--bs=64k",
            "--rw=randwrite",
            "--offset=24m",
            "--size=16m",
            "--time_based",
            "--runtime=4",
            &file,
        ])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    server.crash();
    wait_quiesced(id, Duration::from_secs(20));
    let t = Instant::now();
    let server = Server::start(&cfg);
    eprintln!("restart after kill -9: {:?}", t.elapsed());
    assert_eq!(server.id(), id, "the same device is back");
    assert_eq!(
        server.info["device_recovered"], true,
        "user recovery took it over"
    );
    assert_eq!(server.info["log_resume"], "recovered");
    assert_eq!(
        server.info["gap_recorded"], false,
        "a server crash loses no written record: no gap"
    );
    let st = bg.wait().unwrap();
    eprintln!("fio across the crash: {st}");
    let mut verify_only = verified.to_vec();
    verify_only.push("--verify_only");
    fio(&server.dev(), &verify_only);
    server.stop();
    let (records, seals) = read_chain(&disk.log_dir());
    assert!(seals.len() >= 2, "a recovered log and the next: {seals:?}");
    assert!(
        seals.iter().any(|s| s.recovered),
        "the crashed log was recovered"
    );
    assert_eq!(gaps(&records), 0, "no tracking gap after a server crash");
    assert_replay_reproduces_backing(&disk, &records);
}

/// After a *host* crash under `Flush` durability, records written since the last log sync
/// may be gone while their data reached the backing: the restart must record a whole-disk
/// gap. The host crash is simulated by what it leaves behind — an unsealed log and a run
/// marker from another boot — after a real `kill -9` of the server. Under `Write`
/// durability the same leftovers need no gap (every record was synced before its change).
#[test]
fn ublk_a_host_crash_under_flush_durability_records_a_whole_disk_gap() {
    if !require!(needs: UBLK_FIO) {
        return;
    }
    for (durability, want_gap) in [(Durability::Flush, true), (Durability::Write, false)] {
        let disk = Disk::new(16 * MIB, 19);
        let cfg = DiskConfig {
            durability,
            ..disk.config(LogMode::Extents)
        };
        let server = Server::start(&cfg);
        assert_eq!(server.info["gap_recorded"], false);
        let id = server.id();
        fio(&server.dev(), &["--rw=randwrite", "--size=4m"]);
        server.crash();
        wait_quiesced(id, Duration::from_secs(30));
        let marker = disk.log_dir().join("ublk-run");
        let text = std::fs::read_to_string(&marker).expect("the server wrote its run marker");
        assert!(
            text.contains(&format!("durability {}", durability.name())),
            "{text}"
        );
        let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap();
        assert!(text.contains(boot.trim()), "{text}");
        std::fs::write(
            &marker,
            text.replace(boot.trim(), "00000000-0000-4000-8000-000000000000"),
        )
        .unwrap();
        let server = Server::start(&cfg);
        assert_eq!(server.info["log_resume"], "recovered", "{durability:?}");
        assert_eq!(server.info["gap_recorded"], want_gap, "{durability:?}");
        server.stop();
        let (records, _) = read_chain(&disk.log_dir());
        let whole = count(&records, |b| {
            matches!(
                b,
                RecordBody::TrackingGap {
                    reason: hrl::GapReason::NoCleanPredecessor,
                    scope: hrl::GapScope::WholeDisk,
                }
            )
        });
        assert_eq!(
            (whole, gaps(&records)),
            (usize::from(want_gap), usize::from(want_gap))
        );
        // The simulated crash lost no record, so the rest of the log still replays.
        let changes: Vec<hrl::Record> = records
            .into_iter()
            .filter(|r| !matches!(r.body, RecordBody::TrackingGap { .. }))
            .collect();
        assert_replay_reproduces_backing(&disk, &changes);
    }
}

/// Waits until the kernel has quiesced device `id` after its server died (it does so from
/// a work item once the server's char device is released: seconds under emulation, more
/// with other tests running, well over 20 s with hundreds of tags in flight).
fn wait_quiesced(id: u64, timeout: Duration) {
    let id = u32::try_from(id).unwrap();
    let deadline = Instant::now() + timeout;
    loop {
        let s = ublk_target::devices::describe(id).expect("the device is kept");
        if s.state == "quiesced" {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "device {id} still {} after {timeout:?}: the kernel keeps it for recovery",
            s.state
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn gaps(records: &[hrl::Record]) -> usize {
    count(records, |b| matches!(b, RecordBody::TrackingGap { .. }))
}

/// The byte ranges covered by `exts`, merged: a set to compare two logs by.
fn merged(mut exts: Vec<hrl::Extent>) -> Vec<(u64, u64)> {
    exts.sort();
    let mut out: Vec<(u64, u64)> = Vec::new();
    for e in exts {
        match out.last_mut() {
            Some(last) if e.offset() <= last.1 => last.1 = last.1.max(e.end()),
            _ => out.push((e.offset(), e.end())),
        }
    }
    out
}

fn written_extents(records: &[hrl::Record]) -> Vec<hrl::Extent> {
    records
        .iter()
        .filter_map(|r| match &r.body {
            RecordBody::Write(e) => Some(e.clone()),
            _ => None,
        })
        .flatten()
        .collect()
}

#[test]
fn ublk_and_the_ebpf_tracker_record_the_same_written_ranges() {
    if !require!(
        Need::InVm,
        Need::Root,
        Need::Path("/dev/ublk-control"),
        Need::Bpf,
        Need::Command("fio")
    ) {
        return;
    }
    let disk = Disk::new(32 * MIB, 11);
    let server = Server::start(&disk.config(LogMode::Extents));
    let bpf_logs = tempfile::tempdir().unwrap();
    // fio runs in a child process, so the default exclude_self leaves its bios tracked.
    let mut tracker = tracker_bpf::Tracker::start(tracker_bpf::TrackerConfig::default())
        .expect("load the eBPF tracker");
    tracker
        .add_device(&server.device(), bpf_logs.path())
        .expect("track /dev/ublkbN");
    fio(
        &server.dev(),
        &[
            "--rw=randwrite",
            "--size=8m",
            "--offset=4m",
            "--do_verify=0",
        ],
    );
    std::thread::sleep(Duration::from_millis(200));
    tracker.stop().expect("stop the tracker");
    server.stop();
    let (ublk_records, _) = read_chain(&disk.log_dir());
    let (bpf_records, _) = read_chain(bpf_logs.path());
    let ublk = merged(written_extents(&ublk_records));
    let bpf = merged(written_extents(&bpf_records));
    assert!(!ublk.is_empty(), "fio wrote");
    assert_eq!(
        ublk, bpf,
        "ublk log vs eBPF tracker log: written ranges differ"
    );
}

/// Two hardware queues (one server thread each) sharing one log: two fio jobs, each pinned
/// to its own region, run at once; the log must still replay to the backing exactly.
#[test]
fn ublk_two_queues_share_one_log_and_it_replays_to_the_backing() {
    if !require!(needs: UBLK_FIO) {
        return;
    }
    let disk = Disk::new(48 * MIB, 11);
    let server = Server::start(&DiskConfig {
        queues: 2,
        // Over the registered-buffer budget (256 × 512 KiB > 64 MiB): this test also covers
        // the backing I/O through unregistered buffers; the others, registered ones.
        depth: 256,
        ..disk.config(LogMode::Extents)
    });
    let name = server
        .device()
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let hw_queues = std::fs::read_dir(format!("/sys/block/{name}/mq"))
        .unwrap()
        .count();
    assert_eq!(hw_queues, 2, "the kernel sees two hardware queues");
    fio(
        &server.dev(),
        &[
            "--rw=randwrite",
            "--numjobs=2",
            "--size=12m",
            "--offset=8m",
            "--offset_increment=16m",
            "--cpus_allowed_policy=split",
            "--cpus_allowed=0-1",
        ],
    );
    server.stop();
    let (records, seals) = read_chain(&disk.log_dir());
    assert!(
        seals.iter().all(|s| !s.recovered),
        "clean stop seals cleanly"
    );
    assert!(logged_writes(&records) > 10);
    assert_replay_reproduces_backing(&disk, &records);
}

/// A block device as the backing (BLKDISCARD/BLKZEROOUT instead of fallocate): fio verify,
/// a discard and a write-zeroes pass through, and the log replays to the device's contents.
#[test]
fn ublk_over_a_block_device_backing_replays_exactly() {
    if !require!(
        Need::InVm,
        Need::Root,
        Need::LoopDevices,
        Need::Path("/dev/ublk-control"),
        Need::Command("fio"),
        Need::Command("blkdiscard")
    ) {
        return;
    }
    let disk = Disk::new(32 * MIB, 13);
    let lo = sitrep_tests::loopdev::LoopDevice::over_file(
        &disk.backing,
        sitrep_tests::loopdev::LoopOptions::default(),
    )
    .unwrap();
    let log_dir = disk.dir.path().join("logs");
    std::fs::create_dir(&log_dir).unwrap();
    let server = Server::start(&DiskConfig {
        log_dir: Some(log_dir.clone()),
        ..DiskConfig {
            backing: lo.path().to_owned(),
            ..disk.config(LogMode::Extents)
        }
    });
    let dev = server.dev();
    fio(&dev, &["--rw=randwrite", "--size=16m", "--offset=4m"]);
    run("blkdiscard", &["-o", "24117248", "-l", "1048576", &dev]);
    run(
        "blkdiscard",
        &["-z", "-o", "26214400", "-l", "1048576", &dev],
    );
    server.stop();
    run("blockdev", &["--flushbufs", lo.path().to_str().unwrap()]);
    let (records, _) = read_chain(&log_dir);
    assert!(count(&records, |b| matches!(b, RecordBody::Discard(_))) > 0);
    assert!(count(&records, |b| matches!(b, RecordBody::WriteZeroes(_))) > 0);
    assert_replay_reproduces_backing(&disk, &records);
}

/// The group commit's own risk, under both durabilities: the server killed while many tags
/// (two queues x 128) have appended records or are performing writes already logged —
/// under `Write` while a batch is being synced by the log thread, under `Flush` while
/// records are being written inline by the queues. No change may reach the backing without
/// its record: the extents replay (ranges copied from the final backing, so it does not
/// depend on write order) must reproduce the backing exactly.
#[test]
fn ublk_kill_9_with_many_tags_queued_behind_a_syncing_batch_loses_no_change() {
    if !require!(needs: UBLK_FIO) {
        return;
    }
    kill_9_deep(Durability::Write);
}

#[test]
fn ublk_kill_9_with_many_tags_in_flight_under_flush_durability_loses_no_change() {
    if !require!(needs: UBLK_FIO) {
        return;
    }
    kill_9_deep(Durability::Flush);
}

fn kill_9_deep(durability: Durability) {
    let disk = Disk::new(48 * MIB, 17);
    let cfg = DiskConfig {
        queues: 2,
        depth: 128,
        durability,
        ..disk.config(LogMode::Extents)
    };
    let mut server = Server::start(&cfg);
    let id = server.id();
    let file = format!("--filename={}", server.dev());
    let mut bg = Command::new("fio")
        .args([
            "--name=deep",
            "--ioengine=io_uring",
            "--direct=1",
            "--iodepth=128",
            "--bs=4k",
            "--rw=randwrite",
            "--numjobs=2",
            "--offset=4m",
            "--size=16m",
            "--offset_increment=20m",
            "--time_based",
            "--runtime=12",
            &file,
        ])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    // One crash: a second kill -9 shortly after a user recovery left the device "live" (not
    // quiesced) for 20 s on the 6.12 VM kernel; to be investigated separately.
    for round in 0..1 {
        std::thread::sleep(Duration::from_millis(1200));
        server.crash();
        // 256 tags in flight under TCG emulation, with CI's other tiers competing for the
        // two cores: the kernel's quiesce work can take well over 20 s here.
        wait_quiesced(id, Duration::from_secs(90));
        server = Server::start(&cfg);
        assert_eq!(server.id(), id, "round {round}: the same device is back");
        assert_eq!(server.info["log_resume"], "recovered");
        assert_eq!(server.info["gap_recorded"], false);
    }
    let st = bg.wait().unwrap();
    eprintln!("deep fio across the crash: {st}");
    server.stop();
    let (records, seals) = read_chain(&disk.log_dir());
    assert!(
        seals.iter().any(|s| s.recovered),
        "the crashed log was recovered: {seals:?}"
    );
    let writes = logged_writes(&records);
    assert!(writes > 100, "expected many logged writes, got {writes}");
    assert_replay_reproduces_backing(&disk, &records);
}
