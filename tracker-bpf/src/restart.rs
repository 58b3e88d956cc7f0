//! A device's start and stop as continuity sees them: the gap a start records first (none,
//! a scoped one from the crash sentinel, or the whole disk) and the record a clean stop
//! leaves. The rules are `continuity.rs`'s and `crash.rs`'s; this is their use by the
//! tracker (`tracker.rs`).

use std::time::Duration;

use hrl::{GapReason, Resume};

use crate::continuity::{self, CleanStop};
use crate::crash::Guard;
use crate::device::{DeviceInfo, IoCounters, boot_id};
use crate::disk::DiskMsg;
use crate::sentinel::Watch;

/// What a start knows when its tracking has just gone live.
pub(crate) struct StartCtx<'a> {
    /// The clean-stop record found beside the logs.
    pub(crate) saved: Option<&'a CleanStop>,
    /// The id of the previous log if it was sealed cleanly.
    pub(crate) prev: Option<&'a str>,
    pub(crate) info: &'a DeviceInfo,
    pub(crate) trust_clean_reboot: bool,
    /// How the log directory looked.
    pub(crate) resume: &'a Resume,
    pub(crate) guard: Option<&'a Guard>,
    /// The device's place in the crash sentinel.
    pub(crate) watch: Option<&'a Watch>,
}

/// The first thing a start logs, and what it tells the caller.
pub(crate) struct StartGap {
    /// Why the log starts with a whole-disk gap (None: it does not).
    pub(crate) gap: Option<String>,
    /// Why it starts with a gap over the sentinel's ranges only.
    pub(crate) scoped: Option<String>,
    /// The gap record to send to the log thread, if any.
    pub(crate) msg: Option<DiskMsg>,
}

/// The gap a start records: none if continuity vouches for the untracked interval, else
/// scoped to what the crash sentinel marked when it knows the device, else the whole disk.
pub(crate) fn start_gap(c: &StartCtx<'_>) -> StartGap {
    let Some(why) = restart_gap(c.saved, c.prev, c.info, c.trust_clean_reboot) else {
        return StartGap {
            gap: None,
            scoped: None,
            msg: None,
        };
    };
    let reason = match c.resume {
        Resume::Clean { .. } => GapReason::NotTracking,
        _ => GapReason::NoCleanPredecessor,
    };
    let msg = crate::crash::gap_msg(c.guard, c.watch, c.info, reason, &why);
    match &msg {
        // Not a whole-disk gap: the ranges are shipped like any other change.
        DiskMsg::GapExtents { why, .. } => StartGap {
            gap: None,
            scoped: Some(why.clone()),
            msg: Some(msg),
        },
        _ => StartGap {
            gap: Some(why),
            scoped: None,
            msg: Some(msg),
        },
    }
}

/// The record a clean stop leaves, from the device's counters read while still tracked
/// with nothing in flight (`quiet`); None if the boot id cannot be read.
pub(crate) fn clean_stop(info: &DeviceInfo, quiet: IoCounters) -> Option<CleanStop> {
    let boot = boot_id().ok()?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    Some(CleanStop {
        version: continuity::VERSION,
        identity: info.identity(),
        stopped_unix_ns: u64::try_from(now).unwrap_or(u64::MAX),
        boot_id: boot,
        major: info.major,
        minor: info.minor,
        start_sect: info.start_sect,
        size: info.size,
        counters: quiet,
        sealed_log_id: String::new(),
    })
}

/// Why the new log must start with a gap, or `None` if the chain may simply continue.
///
/// The counters are read twice, [`SETTLE`] apart, and both reads must match the clean
/// stop's. A bio queued just before registration may sit in a plug list or the I/O
/// scheduler without counting as in flight; if it completes within the settle time it moves
/// the counters and forces the gap (see docs/tracking.md for the residual window).
pub(crate) fn restart_gap(
    saved: Option<&CleanStop>,
    prev: Option<&str>,
    info: &DeviceInfo,
    trust_clean_reboot: bool,
) -> Option<String> {
    let identity = info.identity();
    let check = || -> Option<String> {
        match (boot_id(), info.io_counters()) {
            (Ok(boot), Ok(counters)) => {
                let now = continuity::Start {
                    boot_id: &boot,
                    counters: &counters,
                    identity: identity.as_deref(),
                    trust_clean_reboot,
                };
                continuity::check(saved, prev, info, &now).err()
            }
            (Err(e), _) | (_, Err(e)) => Some(format!("cannot read device counters: {e}")),
        }
    };
    if let Some(why) = check() {
        return Some(why);
    }
    std::thread::sleep(SETTLE);
    check()
}

/// How long a restart watches the counters before trusting a clean stop.
const SETTLE: Duration = Duration::from_millis(100);

/// The device's counters with nothing in flight, trying for up to ~0.5 s; `None` if the
/// device never went quiet (the next start will then record a gap).
pub(crate) fn quiet_counters(info: &DeviceInfo) -> Option<IoCounters> {
    for _ in 0..50 {
        match info.io_counters() {
            Ok(c) if c.in_flight == 0 => return Some(c),
            Ok(_) => std::thread::sleep(Duration::from_millis(10)),
            Err(_) => return None,
        }
    }
    None
}
