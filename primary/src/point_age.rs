//! How old the disk's newest crash-consistent point is, and when that is overdue: the
//! agent's side of "a crash-consistent point at least every `crash_points_every`".
//!
//! A cycle is a point only if no write raced its reads (`crate::cycle::raced`). Under churn
//! that can fail cycle after cycle; when no point was made for longer than the slot plus a
//! grace while changes wait for one, the disk's health turns Warning with a message naming
//! the operator's options, `status --json` shows the age (`crash_points`), and
//! `sitrep_seconds_since_crash_point` exports it.
//!
//! *Tried and measured, not kept*: a converging series of quick cuts (cut the next cycle as
//! soon as the previous one's reads complete, read it into memory at queue depth 16, repeat
//! until a round is race-free). On the CI machine it offered no more points than plain
//! cycles at 5 k writes/s (23 vs 27 a minute) and none at full rate, where the workload
//! writes as fast as the agent reads back and every rotation spends ~25 ms in fsyncs inside
//! the race window. What did pay was the tracker answering cuts and tags within a
//! millisecond (`tracker-bpf/src/poller.rs`, `BUSY_POLL`). See docs/benchmarks.md,
//! *Recovery points under churn*.

const NS: u64 = 1_000_000_000;

/// When the disk's last crash-consistent point was made (agent memory, not persisted: a
/// restarted agent counts from its start).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PointState {
    /// Cut time (ns since the epoch) of the newest cycle judged crash-consistent.
    pub(crate) last_point_ns: Option<u64>,
    /// Cut time of the oldest cycle judged not consistent since then (None: every change
    /// judged so far is covered by a point).
    pub(crate) unpointed_since_ns: Option<u64>,
    /// Counted from here while there is no point yet (the agent's start).
    pub(crate) baseline_ns: u64,
}

impl PointState {
    /// No point yet, counting from `now_ns`.
    pub(crate) fn new(now_ns: u64) -> Self {
        Self {
            last_point_ns: None,
            unpointed_since_ns: None,
            baseline_ns: now_ns,
        }
    }

    /// A cycle cut at `cut_ns` was judged.
    pub(crate) fn judged(&mut self, cut_ns: u64, consistent: bool) {
        if consistent {
            self.last_point_ns = Some(self.last_point_ns.map_or(cut_ns, |l| l.max(cut_ns)));
            self.unpointed_since_ns = None;
        } else if self.unpointed_since_ns.is_none() {
            self.unpointed_since_ns = Some(cut_ns);
        }
    }

    /// Seconds since the last point (or the baseline), if that is longer than the slot plus
    /// its grace ([`grace_secs`]) while changes wait for a point: the point is overdue.
    pub(crate) fn overdue_secs(&self, now_ns: u64, every_secs: u64) -> Option<u64> {
        self.unpointed_since_ns?;
        let age = now_ns.saturating_sub(self.last_point_ns.unwrap_or(self.baseline_ns)) / NS;
        (age > every_secs.saturating_add(grace_secs(every_secs))).then_some(age)
    }

    /// Seconds since the last point, or since the baseline before the first.
    pub(crate) fn age_secs(&self, now_ns: u64) -> f64 {
        let since = self.last_point_ns.unwrap_or(self.baseline_ns);
        #[allow(clippy::cast_precision_loss)] // seconds
        let s = now_ns.saturating_sub(since) as f64 / 1e9;
        s
    }
}

/// How late a point may be before health turns Warning: half a slot, at least 30 s (a
/// series and its cycles' acks take a few seconds).
pub(crate) fn grace_secs(every_secs: u64) -> u64 {
    (every_secs / 2).max(30)
}

/// The operator's message for an overdue point.
pub(crate) fn overdue_message(disk: &str, age_secs: u64) -> String {
    let age = if age_secs >= 120 {
        format!("{} min", age_secs / 60)
    } else {
        format!("{age_secs} s")
    };
    format!(
        "disk {disk}: no crash-consistent point for {age} (writes outrun the reads); options: \
         sitrep point {disk} --app-consistent (fsfreeze of a mounted filesystem), a lower write \
         rate, or a larger --crash-points-every"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = NS;

    #[test]
    fn overdue_after_a_slot_and_its_grace_while_unpointed() {
        let mut p = PointState::new(0);
        p.judged(10 * S, true);
        p.judged(20 * S, false);
        // every 60 s, grace 30 s: overdue past 90 s after the point.
        assert_eq!(p.overdue_secs(100 * S, 60), None);
        assert_eq!(p.overdue_secs(101 * S, 60), Some(91));
        // A point clears it; so does an idle disk (nothing unpointed).
        p.judged(101 * S, true);
        assert_eq!(p.overdue_secs(500 * S, 60), None);
        // Before any point: counted from the baseline.
        let mut q = PointState::new(50 * S);
        q.judged(60 * S, false);
        // every 10 s, grace 30 s: overdue past 40 s after the baseline.
        assert_eq!(q.overdue_secs(90 * S, 10), None);
        assert_eq!(q.overdue_secs(91 * S, 10), Some(41));
        assert_eq!(grace_secs(300), 150);
        let m = overdue_message("db", 420);
        assert!(
            m.starts_with("disk db: no crash-consistent point for 7 min"),
            "{m}"
        );
    }

    #[test]
    fn a_late_verdict_of_an_older_cut_does_not_move_the_point_back() {
        let mut p = PointState::new(0);
        p.judged(30 * S, true);
        p.judged(20 * S, true);
        assert_eq!(p.last_point_ns, Some(30 * S));
    }
}
