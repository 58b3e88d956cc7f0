//! VM tier (ublk): a ublk disk replicates from its target's own logs (issue 24).
//!
//! - Journal mode under `sitrep workload` at full rate: every cycle is judged a
//!   crash-consistent point (offered ÷ cycles = 1.0), every exported point passes
//!   `sitrep check` at its cut time, the agent never reads the device after the initial copy
//!   (the device's read counter does not move), replica == source. The same workload through
//!   eBPF tracking of the same disk (`--ship-ublk-logs false`) is run for comparison and its
//!   ratio printed.
//! - `kill -9` of the agent and of the target under `fio --verify`: the agent continues from
//!   the sealed logs, the target is recovered by `disk add` (user recovery), fio's verify
//!   passes, no resync, replica == source.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::points::{check, export, finish, point_list, workload};
use common::*;
use serde_json::Value;
use sitrep_tests::Need;
use sitrep_tests::replay::{fio, fio_engine};

// Small: everything runs under TCG, and every point checked is a whole-disk export.
const DISK_MIB: u64 = 32;
/// Seconds of `sitrep workload` per source.
const WORKLOAD_SECS: u32 = 5;
/// Points exported while the workload runs (the others after it).
const DURING: usize = 2;

/// One test at a time: a `disk del` then `disk add` must get its device number back, and
/// under TCG the tests only slow each other down.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn needs() -> bool {
    sitrep_tests::require!(
        Need::InVm,
        Need::Root,
        Need::Bpf,
        Need::Netns,
        Need::Path("/dev/ublk-control"),
        Need::Command("fio")
    )
}

/// A journal-mode ublk disk served by `sitrep disk add`; deleted on drop.
struct UblkDisk {
    backing: PathBuf,
    mode: String,
    /// More `disk add` arguments.
    extra: Vec<String>,
    info: Value,
}

impl UblkDisk {
    fn add(dir: &Path, mode: &str) -> Self {
        Self::add_with(dir, mode, &[])
    }

    fn add_with(dir: &Path, mode: &str, extra: &[&str]) -> Self {
        let backing = dir.join(format!("ublk-{mode}.img"));
        let f = std::fs::File::create(&backing).unwrap();
        f.set_len(DISK_MIB << 20).unwrap();
        let mut d = Self {
            backing,
            mode: mode.to_string(),
            extra: extra.iter().map(|a| (*a).to_string()).collect(),
            info: Value::Null,
        };
        d.info = d.start();
        d
    }

    /// `sitrep disk add` over the backing (a new device, or the quiesced one recovered).
    fn start(&self) -> Value {
        let out = sitrep()
            .args(["disk", "add", "--backing", &p(&self.backing), "--json"])
            .args(["--mode", &self.mode])
            .args(&self.extra)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "disk add: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    fn device(&self) -> PathBuf {
        PathBuf::from(self.info["device"].as_str().unwrap())
    }

    fn id(&self) -> String {
        self.info["id"].to_string()
    }

    /// Sectors read from the device so far (`/sys/block/ublkbN/stat`, third field).
    fn sectors_read(&self) -> u64 {
        let name = self.device();
        let name = name.file_name().unwrap().to_string_lossy();
        let stat = std::fs::read_to_string(format!("/sys/block/{name}/stat")).unwrap();
        stat.split_whitespace().nth(2).unwrap().parse().unwrap()
    }

    /// kill -9 of the serving process (the kernel quiesces the device), then `disk add`
    /// again: user recovery of the same device, the log chain continued.
    fn crash_and_recover(&mut self) {
        let pid = self.info["pid"].as_u64().unwrap();
        let st = Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status()
            .unwrap();
        assert!(st.success());
        std::thread::sleep(Duration::from_millis(500));
        let info = self.start();
        assert_eq!(info["device"], self.info["device"], "{info}");
        assert_eq!(info["device_recovered"], true, "{info}");
        assert_eq!(info["gap_recorded"], false, "{info}");
        self.info = info;
    }
}

impl UblkDisk {
    /// `disk del` (a clean stop: the log is sealed, the device deleted), then `disk add`
    /// again over the same backing: a new device, the same log chain.
    fn stop_and_add_again(&mut self) {
        let out = sitrep().args(["disk", "del", &self.id()]).output().unwrap();
        assert!(
            out.status.success(),
            "disk del: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let info = self.start();
        assert_eq!(info["log_resume"], "clean", "{info}");
        assert_eq!(info["gap_recorded"], false, "{info}");
        self.info = info;
    }
}

impl Drop for UblkDisk {
    fn drop(&mut self) {
        let _ = sitrep()
            .args(["disk", "del", &self.id(), "--force"])
            .output();
    }
}

fn protect(sites: &Sites, dev: &Path, name: &str) {
    let s = sites.sock("a");
    ctl(
        &s,
        &["protect", &p(dev), "--to", &sites.to(), "--name", name],
    );
    wait_caught_up(&s, name);
}

/// (cycles judged, of them consistent) for `name` on agent `a`.
fn judged(sites: &Sites, name: &str) -> (u64, u64) {
    let st = disk_status(&sites.sock("a"), name);
    (
        st["cycles_judged"].as_u64().unwrap(),
        st["cycles_consistent"].as_u64().unwrap(),
    )
}

/// Runs the workload for `secs` at full rate, exporting the newest new point about once a
/// second meanwhile (up to [`DURING`]); then exports every other point offered since the
/// workload began and checks them all at their cut times. Returns the points checked.
fn run_and_check(sites: &Sites, dev: &Path, name: &str, secs: u32) -> usize {
    let history = sites.path(&format!("{name}.history"));
    let started = base_now_ns();
    let mut child = workload(dev, &history, secs, None, 8);
    let mut during = 0;
    while child.try_wait().unwrap().is_none() {
        if during < DURING
            && let Some(&(id, _)) = point_list(sites, name).last()
        {
            // Exported while replication goes on (checked once the history is complete).
            let img = export(sites, name, id).unwrap();
            let kept = sites.path(&format!("{name}-during-{id}.img"));
            std::fs::rename(&img, &kept).unwrap();
            during += 1;
        }
        std::thread::sleep(Duration::from_millis(1000));
    }
    finish(child);
    wait_caught_up(&sites.sock("a"), name);
    let mut checked = 0;
    for (id, t) in point_list(sites, name) {
        let kept = sites.path(&format!("{name}-during-{id}.img"));
        let img = if kept.exists() {
            kept
        } else if t >= started {
            export(sites, name, id)
                .unwrap_or_else(|| panic!("{name}: point {id} was retired (every point is kept)"))
        } else {
            continue;
        };
        if let Err(v) = check(&history, &img, t) {
            panic!("{name}: point {id} is not the disk at its cut time: {v}");
        }
        let _ = std::fs::remove_file(&img);
        checked += 1;
    }
    checked
}

fn base_now_ns() -> u64 {
    u64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos(),
    )
    .unwrap()
}

#[test]
fn a_journal_ublk_disk_ships_its_own_logs_and_every_cycle_is_a_point() {
    if !needs() {
        return;
    }
    let _serial = serial();
    let sites = Sites::with_server_args(&["--keep-points", "1000"]);
    let disk = UblkDisk::add(&sites.path(""), "journal");
    let dev = disk.device();
    let mut agent = sitrep_tests_agent(&sites);
    protect(&sites, &dev, "uj");
    let log = agent.log_text();
    assert!(
        log.contains("shipping the ublk target's own logs"),
        "the agent did not use the target's logs:\n{log}"
    );
    let read_before = disk.sectors_read();
    let t0 = Instant::now();
    let checked = run_and_check(&sites, &dev, "uj", WORKLOAD_SECS);
    let took = t0.elapsed();
    let (cycles, consistent) = judged(&sites, "uj");
    assert!(cycles >= 3, "only {cycles} cycles in {took:?}");
    assert_eq!(
        consistent, cycles,
        "journal cycles are exact: every one must be a point"
    );
    assert!(checked >= 3, "only {checked} points exported and checked");
    assert_eq!(
        disk.sectors_read(),
        read_before,
        "the agent read the device: journal cycles must take their data from the log"
    );
    assert_same(&dev, &sites.replica("uj"));
    eprintln!("journal: {consistent}/{cycles} cycles were points; {checked} checked");

    // The same workload on the same disk through eBPF tracking, for comparison.
    ctl(&sites.sock("a"), &["unprotect", "uj"]);
    agent.stop();
    let _ebpf = sites.agent_with("e", "pki-a", &["--ship-ublk-logs", "false"]);
    let s = sites.sock("e");
    ctl(
        &s,
        &["protect", &p(&dev), "--to", &sites.to(), "--name", "ue"],
    );
    wait_caught_up(&s, "ue");
    let history = sites.path("ue.history");
    finish(workload(&dev, &history, WORKLOAD_SECS, None, 8));
    wait_caught_up(&s, "ue");
    let st = disk_status(&s, "ue");
    eprintln!(
        "eBPF tracking of the same disk: {}/{} cycles were points",
        st["cycles_consistent"], st["cycles_judged"]
    );
    assert_same(&dev, &sites.replica("ue"));
}

#[test]
fn kill_9_of_the_agent_and_of_the_target_under_fio_verify_costs_no_resync() {
    if !needs() {
        return;
    }
    let _serial = serial();
    let sites = Sites::with_server_args(&["--keep-points", "1000"]);
    let mut disk = UblkDisk::add(&sites.path(""), "journal");
    let dev = disk.device();
    let mut agent = sitrep_tests_agent(&sites);
    protect(&sites, &dev, "uk");
    let d = dev.clone();
    let engine = format!("--ioengine={}", fio_engine());
    let writer = std::thread::spawn(move || {
        fio(
            &d,
            &[
                "--rw=randwrite",
                "--bsrange=4k-64k",
                "--direct=1",
                &engine,
                "--iodepth=8",
                "--size=8m",
                "--rate=1500k",
                "--verify=crc32c",
                "--verify_fatal=1",
            ],
        );
    });
    // fio runs ~5.5 s (8 MiB at 1.5 MB/s; under the 50 % of the disk past which pending logs
    // are resynced instead): the agent dies at 1.5 s, the target at ~3.5 s.
    std::thread::sleep(Duration::from_millis(1500));
    agent.kill9();
    std::thread::sleep(Duration::from_millis(500));
    agent.spawn();
    std::thread::sleep(Duration::from_millis(1500));
    assert!(!writer.is_finished(), "fio ended before the target's crash");
    disk.crash_and_recover();
    writer.join().unwrap();
    let s = sites.sock("a");
    wait_caught_up(&s, "uk");
    let st = disk_status(&s, "uk");
    assert_eq!(st["resyncs_completed"], 0, "{st}");
    assert!(
        st["resync"].is_null() && st["resync_reason"].is_null(),
        "{st}"
    );
    // The counters are the restarted agent's. Its first cycle follows one whose verdict it
    // cannot know (the crashed agent's last), so it is not offered, nor are logs the target
    // sealed by itself right after it (its recovery); from the next agent cut on, every
    // cycle is a point — so the replica ends at one.
    assert!(st["cycles_consistent"].as_u64().unwrap() >= 1, "{st}");
    assert_eq!(
        st["crash_points"]["last_cut_unix_ns"], st["last_applied"]["cut_time_unix_ns"],
        "the last cycle applied is a point: {st}"
    );
    eprintln!(
        "after the crashes: {}/{} cycles were points",
        st["cycles_consistent"], st["cycles_judged"]
    );
    assert_same(&dev, &sites.replica("uk"));
    agent.stop();
}

#[test]
fn past_the_log_cap_changes_are_read_from_the_device_and_a_clean_stop_continues_the_chain() {
    if !needs() {
        return;
    }
    let _serial = serial();
    let sites = Sites::with_server_args(&["--keep-points", "1000"]);
    let mut disk = UblkDisk::add_with(&sites.path(""), "journal", &["--log-cap", "16M"]);
    let dev = disk.device();
    // Never trade the pending logs for a resync: this test wants them shipped.
    let mut agent = sites.agent_with("a", "pki-a", &["--resync-log-threshold", "100"]);
    let s = sites.sock("a");
    // Named by its backing file: its device is protected, as a disk named after the file.
    ctl(&s, &["protect", &p(&disk.backing), "--to", &sites.to()]);
    let uo = disk
        .backing
        .file_stem()
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    wait_caught_up(&s, &uo);
    assert_eq!(disk_status(&s, &uo)["device"], p(&dev));
    // With no agent shipping, 5 × 4 MiB of journal data outgrow the 16 MiB log cap: the
    // later writes are logged as ranges only.
    agent.stop();
    for _ in 0..5 {
        random_region(&dev, 4, 8);
    }
    agent.spawn();
    wait_caught_up(&s, &uo);
    let st = disk_status(&s, &uo);
    assert_eq!(st["source"]["kind"], "ublk-journal", "{st}");
    assert!(
        st["source"]["overflows"].as_u64().unwrap() > 0,
        "nothing overflowed the log cap: {st}"
    );
    assert_eq!(st["resyncs_completed"], 0, "{st}");
    assert_same(&dev, &sites.replica(&uo));
    // A clean stop of the target and `disk add` again: the chain continues, no resync.
    disk.stop_and_add_again();
    assert_eq!(
        disk.device(),
        dev,
        "the device came back under another number"
    );
    random_region(&dev, 20, 22);
    wait_caught_up(&s, &uo);
    let st = disk_status(&s, &uo);
    assert_eq!(st["resyncs_completed"], 0, "{st}");
    assert!(st["resync_reason"].is_null(), "{st}");
    assert_same(&dev, &sites.replica(&uo));
    agent.stop();
}
