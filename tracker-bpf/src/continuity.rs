//! Tracking continuity across a stop and a start: may the new log simply continue the old
//! chain, or must it begin with a whole-disk tracking gap?
//!
//! A clean stop records, next to the logs (`tracker-state.json`), the device's change
//! counters from `/sys/dev/block/M:m/stat` read *while the device was still tracked* and with
//! nothing in flight, the boot id, the device's identity (WWN, serial, dm UUID or loop backing
//! file: `DeviceInfo::identity`) and the id of the log it sealed. A start reads the counters
//! again *after* tracking is live.
//!
//! - **Same boot**: if nothing was in flight and the counters are equal, no write completed
//!   while the device was untracked, and the chain continues with no resync.
//! - **After a reboot** (`trust_clean_reboot`, the agent's `--trust-clean-reboot`, default
//!   on): the counters restart from zero at boot, so they must be zero when tracking is live
//!   — nothing completed a change on the device in this boot before tracking began (no
//!   fsck, mount or program wrote it) — and the device must be the same one (identity, start
//!   and size; its `dev_t` may differ). Then the chain continues. What this cannot see: a
//!   write made after the clean stop in the previous boot (the agent's unit stops after the
//!   filesystems are unmounted, see packaging/systemd) or by another OS booted meanwhile —
//!   the trust Hyper-V's and ASR's filter drivers place in a clean shutdown; `sitrep verify`
//!   finds such a difference.
//!
//! Anything else — a crash (no state file, unsealed log), an untracked write, a device
//! without a stable identity after a reboot — makes the new log start with a whole-disk gap.
//! Errors are always on the side of a resync: a write tracked during the start window also
//! moves the counters (a spurious gap, never a missed write). See docs/tracking.md.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::device::{DeviceInfo, IoCounters};

/// The state file's name inside a disk's log directory.
pub const STATE_FILE: &str = "tracker-state.json";

/// What a clean stop saw.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CleanStop {
    /// Layout version of this file.
    pub version: u32,
    /// Boot during which the counters were read.
    pub boot_id: String,
    /// Device major number.
    pub major: u32,
    /// Device minor number.
    pub minor: u32,
    /// Partition start, sectors.
    pub start_sect: u64,
    /// Device size, bytes.
    pub size: u64,
    /// Counters read while still tracked, with nothing in flight.
    pub counters: IoCounters,
    /// The log the stop sealed (hex id).
    pub sealed_log_id: String,
    /// The device's identity ([`DeviceInfo::identity`]; version 2, `None` if it has none).
    #[serde(default)]
    pub identity: Option<String>,
    /// When the stop happened (ns since the epoch; version 2).
    #[serde(default)]
    pub stopped_unix_ns: u64,
}

/// The version a clean stop writes (1: no identity, never trusted across a reboot).
pub const VERSION: u32 = 2;

/// What a start sees, to weigh a clean stop against.
#[derive(Debug, Clone, Copy)]
pub struct Start<'a> {
    /// This boot's id.
    pub boot_id: &'a str,
    /// The device's counters, read after tracking became live.
    pub counters: &'a IoCounters,
    /// The device's identity now.
    pub identity: Option<&'a str>,
    /// Whether a clean stop in an earlier boot may continue the chain.
    pub trust_clean_reboot: bool,
}

/// Writes the state file atomically (temp file, fsync, rename, fsync directory).
///
/// # Errors
/// IO.
pub fn save(dir: &Path, s: &CleanStop) -> std::io::Result<()> {
    let tmp = dir.join(format!("{STATE_FILE}.tmp"));
    let text = serde_json::to_vec_pretty(s).map_err(std::io::Error::other)?;
    {
        let f = std::fs::File::create(&tmp)?;
        std::io::Write::write_all(&mut &f, &text)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, dir.join(STATE_FILE))?;
    std::fs::File::open(dir)?.sync_all()
}

/// Reads and removes the state file: it vouches for exactly one restart.
#[must_use]
pub fn take(dir: &Path) -> Option<CleanStop> {
    let p = dir.join(STATE_FILE);
    let text = std::fs::read(&p).ok();
    let _ = std::fs::remove_file(&p);
    serde_json::from_slice(&text?).ok()
}

/// Whether tracking may continue without a resync; `Err` says why not.
///
/// `prev_log_id` is the id of the last sealed log if it was sealed cleanly (not by crash
/// recovery), `dev` the device now.
///
/// # Errors
/// The reason a whole-disk gap is needed, for the log and the operator.
pub fn check(
    saved: Option<&CleanStop>,
    prev_log_id: Option<&str>,
    dev: &DeviceInfo,
    now: &Start<'_>,
) -> Result<(), String> {
    let Some(prev) = prev_log_id else {
        return Err("no cleanly closed previous log (first start, or the tracker died)".into());
    };
    let Some(s) = saved else {
        return Err("no clean-stop record beside the logs".into());
    };
    if !(1..=VERSION).contains(&s.version) {
        return Err(format!("clean-stop record version {} unknown", s.version));
    }
    if s.sealed_log_id != prev {
        return Err("clean-stop record belongs to another log".into());
    }
    if now.counters.in_flight != 0 {
        return Err(format!(
            "{} requests in flight when tracking resumed",
            now.counters.in_flight
        ));
    }
    if s.boot_id == now.boot_id {
        same_boot(s, dev, now.counters)
    } else {
        after_reboot(s, dev, now)
    }
}

fn same_boot(s: &CleanStop, dev: &DeviceInfo, now: &IoCounters) -> Result<(), String> {
    if (s.major, s.minor, s.start_sect, s.size) != (dev.major, dev.minor, dev.start_sect, dev.size)
    {
        return Err(format!(
            "device changed since the clean stop ({}:{} start {} size {} → {}:{} start {} \
             size {})",
            s.major, s.minor, s.start_sect, s.size, dev.major, dev.minor, dev.start_sect, dev.size
        ));
    }
    if s.counters.completed() != now.completed() {
        return Err(format!(
            "the device completed changes while untracked ({} → {} writes, {} → {} discards)",
            s.counters.writes, now.writes, s.counters.discards, now.discards
        ));
    }
    Ok(())
}

fn after_reboot(s: &CleanStop, dev: &DeviceInfo, now: &Start<'_>) -> Result<(), String> {
    const REBOOTED: &str = "the system rebooted since the clean stop";
    if !now.trust_clean_reboot {
        return Err(format!(
            "{REBOOTED}, and clean reboots are not trusted (--trust-clean-reboot false)"
        ));
    }
    let Some(then) = s.identity.as_deref() else {
        return Err(format!(
            "{REBOOTED}, and the stop recorded no stable identity for the device (no WWN, \
             serial, dm UUID or loop backing file) to recognise it by"
        ));
    };
    if now.identity != Some(then) || (s.start_sect, s.size) != (dev.start_sect, dev.size) {
        return Err(format!(
            "{REBOOTED}, and {} is not the device stopped cleanly ({then}, start {} size {} → \
             {}, start {} size {})",
            dev.path.display(),
            s.start_sect,
            s.size,
            now.identity.unwrap_or("no identity"),
            dev.start_sect,
            dev.size
        ));
    }
    let c = now.counters;
    if c.completed() != (0, 0, 0, 0) {
        return Err(format!(
            "{REBOOTED}, and the device completed {} writes and {} discards in this boot \
             before tracking began (an fsck, a mount or a program wrote it)",
            c.writes, c.discards
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev() -> DeviceInfo {
        DeviceInfo {
            path: "/dev/loop9".into(),
            major: 7,
            minor: 9,
            size: 1 << 20,
            logical_block_size: 512,
            start_sect: 0,
            bio_based: false,
        }
    }

    fn counters(writes: u64) -> IoCounters {
        IoCounters {
            writes,
            write_sectors: writes * 8,
            discards: 0,
            discard_sectors: 0,
            in_flight: 0,
        }
    }

    fn stop() -> CleanStop {
        CleanStop {
            version: VERSION,
            boot_id: "b".into(),
            major: 7,
            minor: 9,
            start_sect: 0,
            size: 1 << 20,
            counters: counters(10),
            sealed_log_id: "aa".into(),
            identity: Some("loop:/x:1:2@0".into()),
            stopped_unix_ns: 1,
        }
    }

    fn start<'a>(boot: &'a str, c: &'a IoCounters) -> Start<'a> {
        Start {
            boot_id: boot,
            counters: c,
            identity: Some("loop:/x:1:2@0"),
            trust_clean_reboot: true,
        }
    }

    fn gap(r: Result<(), String>, word: &str) {
        let e = r.unwrap_err();
        assert!(e.contains(word), "{e}");
    }

    #[test]
    fn continues_in_the_same_boot_only_when_everything_matches() {
        let s = stop();
        let (ten, eleven) = (counters(10), counters(11));
        let now = start("b", &ten);
        assert_eq!(check(Some(&s), Some("aa"), &dev(), &now), Ok(()));
        gap(check(None, Some("aa"), &dev(), &now), "clean-stop");
        gap(check(Some(&s), None, &dev(), &now), "previous log");
        gap(check(Some(&s), Some("bb"), &dev(), &now), "another log");
        gap(
            check(Some(&s), Some("aa"), &dev(), &start("b", &eleven)),
            "untracked",
        );
        let mut busy = counters(10);
        busy.in_flight = 1;
        gap(
            check(Some(&s), Some("aa"), &dev(), &start("b", &busy)),
            "in flight",
        );
        let mut other = dev();
        other.start_sect = 2048;
        gap(check(Some(&s), Some("aa"), &other, &now), "device changed");
        let mut v9 = stop();
        v9.version = 9;
        gap(check(Some(&v9), Some("aa"), &dev(), &now), "version 9");
    }

    #[test]
    fn after_a_reboot_continues_only_for_the_same_device_untouched_since_boot() {
        let s = stop();
        let zero = counters(0);
        let now = start("c", &zero);
        // Another dev_t after the reboot is fine: the identity says it is the same device.
        let mut moved = dev();
        moved.minor = 0;
        assert_eq!(check(Some(&s), Some("aa"), &moved, &now), Ok(()));
        // Written in this boot before tracking began.
        let three = counters(3);
        gap(
            check(Some(&s), Some("aa"), &dev(), &start("c", &three)),
            "before tracking began",
        );
        // Another device at the same path, or none to tell.
        let mut other = start("c", &zero);
        other.identity = Some("loop:/y:1:3@0");
        gap(
            check(Some(&s), Some("aa"), &dev(), &other),
            "not the device",
        );
        other.identity = None;
        gap(
            check(Some(&s), Some("aa"), &dev(), &other),
            "not the device",
        );
        let mut bigger = dev();
        bigger.size *= 2;
        gap(check(Some(&s), Some("aa"), &bigger, &now), "not the device");
        // A version 1 record has no identity; trust switched off.
        let mut v1 = stop();
        v1.version = 1;
        v1.identity = None;
        gap(
            check(Some(&v1), Some("aa"), &dev(), &now),
            "no stable identity",
        );
        let mut off = start("c", &zero);
        off.trust_clean_reboot = false;
        gap(check(Some(&s), Some("aa"), &dev(), &off), "not trusted");
    }

    #[test]
    fn state_file_round_trips_once_and_version_1_still_loads() {
        let d = tempfile::tempdir().unwrap();
        save(d.path(), &stop()).unwrap();
        assert_eq!(take(d.path()), Some(stop()));
        assert_eq!(
            take(d.path()),
            None,
            "a clean stop vouches for one restart only"
        );
        let v1 = r#"{"version":1,"boot_id":"b","major":7,"minor":9,"start_sect":0,
            "size":1048576,"counters":{"writes":10,"write_sectors":80,"discards":0,
            "discard_sectors":0,"in_flight":0},"sealed_log_id":"aa"}"#;
        std::fs::write(d.path().join(STATE_FILE), v1).unwrap();
        let s = take(d.path()).unwrap();
        assert_eq!((s.version, s.identity), (1, None));
    }
}
