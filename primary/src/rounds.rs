//! A cross-host group round as the agent sees it (`group.rs` serves its prepare and cut
//! between cycles): the step the server asked for, and the release, answered on receipt by
//! the session's reader side (`session.rs`) — docs/architecture.md, *Consistency groups*.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{DiskRt, freeze, lock};

/// A step of a cross-host group round, as the server asked (`GroupRound`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RoundStep {
    /// The group.
    pub(crate) group: String,
    /// The round.
    pub(crate) round: u64,
    /// 0: prepare, 1: cut, 2: release.
    pub(crate) step: u8,
}

/// The tag a round's release leaves in the log (never a cycle's sequence, so no verdict
/// mistakes it for its own tag).
const RELEASE_TAG: u64 = u64::MAX;

/// A round's release (step 2), answered the moment it arrives, wherever the disk's task is:
/// the tracker is drained into the log (a tag no verdict reads) and the change count compared
/// with the one before the round's cut — quiet if no change was recorded since
/// (docs/architecture.md, *Consistency groups*: the window from a cut to the release must be
/// quiet on every member, so it is kept as short as a round trip).
pub(crate) fn release(rt: &DiskRt, group: String, round: u64) -> proto::Msg {
    let dev = lock(&rt.prot).device.clone();
    let cut = *lock(&rt.round);
    let (seq, quiet) = match cut {
        Some((r, seq, before)) if r == round => {
            let now = tokio::task::block_in_place(|| {
                let mut g = lock(&rt.source);
                let t = g.as_mut()?;
                t.mark(&dev, RELEASE_TAG).ok()?;
                Some(t.records(&dev))
            });
            (seq, now == Some(before))
        }
        _ => (0, false),
    };
    // Thawed only now: the change count above was read while nothing could write.
    thaw(rt, round);
    proto::Msg::GroupRoundDone {
        group,
        round,
        step: 2,
        seq,
        quiet,
    }
}

/// The longest a round keeps a filesystem frozen: the hold waiting for the cut
/// ([`HOLD`](super::group::HOLD)) and a second more for the release.
pub(crate) const MAX_FREEZE: Duration = Duration::from_secs(2);

/// Rounds may keep a disk's filesystem frozen at most this long per [`FREEZE_WINDOW`] (10 %),
/// whoever asks how often: a round past it runs unfrozen (and likely has no point). A
/// server sending prepares back to back cannot stall the application.
pub(crate) const FREEZE_BUDGET: Duration = Duration::from_secs(6);

/// The window [`FREEZE_BUDGET`] is counted over.
pub(crate) const FREEZE_WINDOW: Duration = Duration::from_secs(60);

/// Whether a freeze of at most [`MAX_FREEZE`] fits the budget, given the freezes that ended
/// in the window (older entries are dropped).
fn budget_allows(recent: &mut VecDeque<(Instant, Duration)>, now: Instant) -> bool {
    while recent
        .front()
        .is_some_and(|(end, _)| now.duration_since(*end) > FREEZE_WINDOW)
    {
        recent.pop_front();
    }
    let spent: Duration = recent.iter().map(|(_, d)| *d).sum();
    spent + MAX_FREEZE <= FREEZE_BUDGET
}

#[derive(Debug, Default)]
struct Held {
    /// The round holding the filesystem frozen.
    frozen: Option<(u64, freeze::Frozen)>,
    /// When the freezes of the last [`FREEZE_WINDOW`] ended, and how long each lasted.
    recent: VecDeque<(Instant, Duration)>,
}

/// The filesystem a group with `freeze` on (`sitrep group set G --freeze on`) keeps frozen
/// from a round's prepare to its release, so that no member is written between the
/// members' cuts and the release — the round has a point under steady writes, and the
/// application's writes wait for the round instead (`round_freeze_ms` in `status`). Shared
/// with a watchdog thread that thaws it after [`MAX_FREEZE`] whatever happens to the round
/// (a lost server, a session that ends); capped at [`FREEZE_BUDGET`] per minute.
#[derive(Debug, Default, Clone)]
pub(crate) struct RoundFreeze(Arc<Mutex<Held>>);

impl RoundFreeze {
    /// Freezes the filesystem mounted from `device` for round `round` (nothing if none is
    /// mounted or the budget is spent; a refusal is logged and the round goes on unfrozen).
    /// Blocks while the filesystem writes its dirty data back (in a child process: the
    /// tracker records it).
    fn freeze(&self, disk: &str, device: &Path, round: u64) -> bool {
        if let Some(ms) = self.thaw(None) {
            tracing::warn!(disk, ms, "an earlier round's freeze was still held: thawed");
        }
        if !budget_allows(&mut lock(&self.0).recent, Instant::now()) {
            tracing::warn!(
                disk,
                "round {round}: not frozen: rounds froze the filesystem for {} s of the last minute already",
                (FREEZE_BUDGET - MAX_FREEZE).as_secs()
            );
            return false;
        }
        let mount = match freeze::mount_point(device) {
            Ok(Some(m)) => m,
            Ok(None) => return false,
            Err(e) => {
                tracing::warn!(disk, "round {round}: reading the mounts: {e}");
                return false;
            }
        };
        match freeze::Frozen::new(&mount) {
            Ok(f) => lock(&self.0).frozen = Some((round, f)),
            Err(e) => {
                tracing::warn!(disk, "round {round}: not frozen: {e}");
                return false;
            }
        }
        let me = self.clone();
        let disk = disk.to_string();
        std::thread::spawn(move || {
            std::thread::sleep(MAX_FREEZE);
            if let Some(ms) = me.thaw(Some(round)) {
                tracing::warn!(
                    disk,
                    ms,
                    "round {round}: thawed by the watchdog (no release came)"
                );
            }
        });
        true
    }

    /// Thaws round `round`'s freeze (any round's with `None`); how long it lasted (ms).
    pub(crate) fn thaw(&self, round: Option<u64>) -> Option<f64> {
        let taken = {
            let mut g = lock(&self.0);
            if g.frozen
                .as_ref()
                .is_some_and(|(r, _)| round.is_none_or(|want| want == *r))
            {
                g.frozen.take()
            } else {
                None
            }
        };
        let ms = taken.map(|(_, f)| f.thaw())?;
        lock(&self.0)
            .recent
            .push_back((Instant::now(), Duration::from_secs_f64(ms / 1000.0)));
        Some(ms)
    }
}

/// Freezes the filesystem mounted from `rt`'s device for round `round` (see
/// [`RoundFreeze`]), then drains the tracker into the log (a tag no verdict reads): the
/// freeze's own writeback is then counted before the cut, so that the release, comparing
/// counts, sees only what was written after the cut — nothing, while frozen.
pub(crate) fn freeze(rt: &DiskRt, round: u64) {
    let (name, dev) = {
        let p = lock(&rt.prot);
        (p.name.clone(), p.device.clone())
    };
    tokio::task::block_in_place(|| {
        if rt.round_freeze.freeze(&name, &dev, round)
            && let Some(t) = lock(&rt.source).as_mut()
            && let Err(e) = t.mark(&dev, RELEASE_TAG)
        {
            tracing::warn!(disk = %name, "round {round}: draining the tracker: {e}");
        }
    });
}

/// Thaws `rt`'s filesystem if round `round` froze it, and publishes how long it was frozen.
pub(crate) fn thaw(rt: &DiskRt, round: u64) {
    if let Some(ms) = tokio::task::block_in_place(|| rt.round_freeze.thaw(Some(round))) {
        tracing::debug!(disk = %lock(&rt.prot).name, ms, "round {round}: thawed");
        rt.set(|s| s.round_freeze_ms = Some(ms));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_freeze_budget_caps_rounds_at_a_tenth_of_the_time() {
        let t0 = Instant::now();
        let mut recent = VecDeque::new();
        assert!(budget_allows(&mut recent, t0));
        // Normal rounds: 50 ms each, one a second, go on forever.
        for i in 0..120 {
            let now = t0 + Duration::from_secs(i);
            assert!(budget_allows(&mut recent, now), "round {i}");
            recent.push_back((now, Duration::from_millis(50)));
        }
        assert!(
            recent.len() <= 61,
            "entries older than the window are dropped"
        );
        // A server that never sends the cut: each freeze lasts MAX_FREEZE (the watchdog).
        let t1 = t0 + Duration::from_secs(1000);
        let mut frozen = Duration::ZERO;
        let mut recent = VecDeque::new();
        for i in 0..600 {
            let now = t1 + Duration::from_millis(100 * i);
            if budget_allows(&mut recent, now) {
                recent.push_back((now + MAX_FREEZE, MAX_FREEZE));
                frozen += MAX_FREEZE;
            }
        }
        // 60 s of prepares back to back freeze for the budget, and no more.
        assert_eq!(frozen, FREEZE_BUDGET);
    }
}
