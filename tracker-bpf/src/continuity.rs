//! Tracking continuity across a stop and a start: may the new log simply continue the old
//! chain, or must it begin with a whole-disk tracking gap?
//!
//! A clean stop records, next to the logs (`tracker-state.json`), the device's change
//! counters from `/sys/dev/block/M:m/stat` read *while the device was still tracked* and with
//! nothing in flight, plus the boot id and the id of the log it sealed. A start reads the
//! counters again *after* tracking is live. If the boot is the same, nothing was in flight,
//! and the counters are equal, no write completed while the device was untracked, and the
//! chain continues with no resync. Any difference — a reboot (writes before the agent
//! started at boot are invisible), an untracked write, a crash (no state file, unsealed log)
//! — makes the new log start with a whole-disk gap. Errors are always on the side of a
//! resync: a write tracked during the stop window also moves the counters (a spurious gap,
//! never a missed write). See docs/tracking.md.

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
/// recovery), `now` the counters read after tracking became live.
///
/// # Errors
/// The reason a whole-disk gap is needed, for the log and the operator.
pub fn check(
    saved: Option<&CleanStop>,
    prev_log_id: Option<&str>,
    dev: &DeviceInfo,
    boot_id: &str,
    now: &IoCounters,
) -> Result<(), String> {
    let Some(prev) = prev_log_id else {
        return Err("no cleanly closed previous log (first start, or the tracker died)".into());
    };
    let Some(s) = saved else {
        return Err("no clean-stop record beside the logs".into());
    };
    if s.version != 1 {
        return Err(format!("clean-stop record version {} unknown", s.version));
    }
    if s.sealed_log_id != prev {
        return Err("clean-stop record belongs to another log".into());
    }
    if s.boot_id != boot_id {
        return Err(
            "the system rebooted since the clean stop: writes made before tracking \
                    started in this boot are unknown"
                .into(),
        );
    }
    if (s.major, s.minor, s.start_sect, s.size) != (dev.major, dev.minor, dev.start_sect, dev.size)
    {
        return Err(format!(
            "device changed since the clean stop ({}:{} start {} size {} → {}:{} start {} \
             size {})",
            s.major, s.minor, s.start_sect, s.size, dev.major, dev.minor, dev.start_sect, dev.size
        ));
    }
    if now.in_flight != 0 {
        return Err(format!(
            "{} requests in flight when tracking resumed",
            now.in_flight
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
            version: 1,
            boot_id: "b".into(),
            major: 7,
            minor: 9,
            start_sect: 0,
            size: 1 << 20,
            counters: counters(10),
            sealed_log_id: "aa".into(),
        }
    }

    #[test]
    fn continues_only_when_everything_matches() {
        let s = stop();
        assert_eq!(
            check(Some(&s), Some("aa"), &dev(), "b", &counters(10)),
            Ok(())
        );
        let gap = |r: Result<(), String>, word: &str| {
            let e = r.unwrap_err();
            assert!(e.contains(word), "{e}");
        };
        gap(
            check(None, Some("aa"), &dev(), "b", &counters(10)),
            "clean-stop",
        );
        gap(
            check(Some(&s), None, &dev(), "b", &counters(10)),
            "previous log",
        );
        gap(
            check(Some(&s), Some("bb"), &dev(), "b", &counters(10)),
            "another log",
        );
        gap(
            check(Some(&s), Some("aa"), &dev(), "c", &counters(10)),
            "rebooted",
        );
        gap(
            check(Some(&s), Some("aa"), &dev(), "b", &counters(11)),
            "untracked",
        );
        let mut busy = counters(10);
        busy.in_flight = 1;
        gap(check(Some(&s), Some("aa"), &dev(), "b", &busy), "in flight");
        let mut other = dev();
        other.start_sect = 2048;
        gap(
            check(Some(&s), Some("aa"), &other, "b", &counters(10)),
            "device changed",
        );
    }

    #[test]
    fn state_file_round_trips_once() {
        let d = tempfile::tempdir().unwrap();
        save(d.path(), &stop()).unwrap();
        assert_eq!(take(d.path()), Some(stop()));
        assert_eq!(
            take(d.path()),
            None,
            "a clean stop vouches for one restart only"
        );
    }
}
