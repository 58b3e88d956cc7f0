//! Missed completions: noticing the changes the kernel completed without telling the program,
//! and what to log then.
//!
//! Changes are recorded when `block_rq_complete` reports them. On the 6.18 host kernel that
//! tracepoint does not fire for a few dozen completed write requests per million, in whole
//! batches (docs/tracking.md). The kernel's own statistics (`/sys/dev/block/M:m/stat`) still
//! count them. So the program counts, per device, the sectors of the change requests it saw
//! complete, charged the way the kernel charges them ([`MissCheck`] explains the comparison);
//! when the kernel's count grows faster, completions were missed, and the poller tells the
//! disk's log thread, which records a tracking gap before the log is sealed:
//!
//! - if every change to the device was also recorded when it was *queued* (queue marks on,
//!   for longer than [`RETENTION`]), the missed write's range is in the log current at its
//!   submission, or a later one: the gap covers every range of the logs sealed in the last
//!   [`RETENTION`] ([`RecentRanges`]), so the write's final data is shipped again with the
//!   log being sealed;
//! - otherwise (completion-only tracking, a whole disk whose partitions are written through
//!   their own nodes) nothing says where the change was: the gap covers the whole disk.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use hrl::Extent;

/// How far back a missed completion's write may have been queued and still be covered by
/// the recent logs' ranges (the block layer's default request timeout is 30 s).
pub(crate) const RETENTION: Duration = Duration::from_secs(32);

/// The comparison of one device's completed change sectors: the kernel's (`K`, read first)
/// and the program's (`C`).
///
/// The program counts a completion in the tracepoint, just *before* the kernel accounts it,
/// so reading `K` first and `C` second gives `K − C ≤ base + missed`: a completion being
/// accounted between the two reads can only lower the difference. Missed completions only
/// ever raise it. So the highest difference seen is a lower bound of `base + missed`, and a
/// reading above it proves a miss (by at least the excess). A reading lowered by a
/// completion in progress makes a later, undisturbed reading look like a miss; taking the
/// higher of two readings per check ([`observe`](Self::observe) twice) makes that need two
/// disturbed readings in a row — and it errs towards logging more, never less.
#[derive(Debug, Default, Clone)]
pub(crate) struct MissCheck {
    best: Option<i128>,
}

impl MissCheck {
    /// One reading; returns the sectors proven missed since the best earlier reading. The
    /// first reading sets the baseline.
    pub(crate) fn observe(&mut self, kernel: u64, seen: u64) -> u64 {
        let d = i128::from(kernel) - i128::from(seen);
        match self.best {
            Some(b) if d <= b => 0,
            Some(b) => {
                self.best = Some(d);
                u64::try_from(d - b).unwrap_or(u64::MAX)
            }
            None => {
                self.best = Some(d);
                0
            }
        }
    }
}

/// One disk's ranges per log, coarsely, for the logs sealed in the last [`RETENTION`]:
/// where a write whose completion was missed can be.
#[derive(Debug)]
pub(crate) struct RecentRanges {
    disk_size: u64,
    granule: u64,
    current: Vec<u64>,
    current_dirty: bool,
    /// (sealed at, ranges of that log), oldest first.
    sealed: VecDeque<(Instant, Vec<u64>)>,
}

/// Granules per disk: 2^17 bits = 16 KiB per log.
const GRANULES: u64 = 1 << 17;
/// Sealed logs kept apart; older ones are merged into their successor (a superset).
const MAX_SEALED: usize = 64;

impl RecentRanges {
    pub(crate) fn new(disk_size: u64) -> Self {
        let granule = disk_size.div_ceil(GRANULES).next_power_of_two().max(4096);
        let words = usize::try_from(disk_size.div_ceil(granule).div_ceil(64)).unwrap_or(0);
        Self {
            disk_size,
            granule,
            current: vec![0; words],
            current_dirty: false,
            sealed: VecDeque::new(),
        }
    }

    /// Notes a range recorded in the current log.
    pub(crate) fn mark(&mut self, e: &Extent) {
        let end = e.offset().saturating_add(e.len()).min(self.disk_size);
        if e.is_empty() || e.offset() >= end {
            return;
        }
        let (g0, g1) = (e.offset() / self.granule, (end - 1) / self.granule);
        for g in g0..=g1 {
            let (w, b) = (usize::try_from(g / 64).unwrap_or(usize::MAX), g % 64);
            if let Some(word) = self.current.get_mut(w) {
                *word |= 1 << b;
            }
        }
        self.current_dirty = true;
    }

    /// The current log was sealed at `now`.
    pub(crate) fn sealed(&mut self, now: Instant) {
        while self
            .sealed
            .front()
            .is_some_and(|(t, _)| now.saturating_duration_since(*t) > RETENTION)
        {
            self.sealed.pop_front();
        }
        if !self.current_dirty {
            return;
        }
        let words = self.current.len();
        let bits = std::mem::replace(&mut self.current, vec![0; words]);
        self.current_dirty = false;
        if self.sealed.len() >= MAX_SEALED
            && let Some((_, oldest)) = self.sealed.pop_front()
            && let Some((_, next)) = self.sealed.front_mut()
        {
            for (n, o) in next.iter_mut().zip(&oldest) {
                *n |= o;
            }
        }
        self.sealed.push_back((now, bits));
    }

    /// Every range of the logs sealed in the last [`RETENTION`] before `now`, merged.
    pub(crate) fn suspects(&self, now: Instant) -> Vec<Extent> {
        let mut union = vec![0u64; self.current.len()];
        for (_, bits) in self
            .sealed
            .iter()
            .filter(|(t, _)| now.saturating_duration_since(*t) <= RETENTION)
        {
            for (u, b) in union.iter_mut().zip(bits) {
                *u |= b;
            }
        }
        let mut out: Vec<Extent> = Vec::new();
        for (w, &word) in union.iter().enumerate() {
            let mut rest = word;
            while rest != 0 {
                let b = u64::from(rest.trailing_zeros());
                rest &= rest - 1;
                let start = (w as u64 * 64 + b) * self.granule;
                let end = (start + self.granule).min(self.disk_size);
                if let Some(last) = out.last_mut()
                    && last.offset() + last.len() == start
                {
                    if let Some(x) = Extent::new(last.offset(), end - last.offset()) {
                        *last = x;
                    }
                    continue;
                }
                if let Some(x) = Extent::new(start, end - start) {
                    out.push(x);
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn the_first_reading_is_the_baseline_and_only_a_rise_is_a_miss() {
        let mut m = MissCheck::default();
        // Stale counts from an earlier use of the slot, a device written before tracking.
        assert_eq!(m.observe(1_000, 40), 0);
        assert_eq!(m.observe(1_008, 48), 0, "seen as fast as the kernel");
        // A completion being accounted between the reads lowers the difference: no miss,
        // and the baseline stays.
        assert_eq!(m.observe(1_008, 56), 0);
        assert_eq!(m.observe(1_016, 56), 0, "the kernel caught up");
        assert_eq!(
            m.observe(1_024, 56),
            8,
            "the kernel completed 8 sectors unseen"
        );
        assert_eq!(m.observe(1_024, 56), 0, "reported once");
        assert_eq!(m.observe(2_000, 1_032), 0);
        assert_eq!(m.observe(u64::MAX, 0), u64::MAX - 968, "no overflow");
    }

    fn ext(o: u64, l: u64) -> Extent {
        Extent::new(o, l).unwrap()
    }

    #[test]
    fn suspects_are_the_recent_sealed_logs_ranges_coarsely() {
        let t0 = Instant::now();
        let disk = 1u64 << 30; // 1 GiB: 8 KiB granules
        let mut r = RecentRanges::new(disk);
        assert_eq!(r.granule, 8192);
        r.mark(&ext(4096, 4096));
        r.mark(&ext(8192, 100));
        r.sealed(t0);
        r.mark(&ext(disk - 512, 512));
        // Still the current log: not a suspect (its own records cover it).
        assert_eq!(r.suspects(t0), vec![ext(0, 16384)]);
        r.sealed(t0 + Duration::from_secs(1));
        assert_eq!(
            r.suspects(t0 + Duration::from_secs(1)),
            vec![ext(0, 16384), ext(disk - 8192, 8192)]
        );
        // Past the retention, the first log no longer counts, and is dropped at a seal.
        let later = t0 + RETENTION + Duration::from_millis(500);
        assert_eq!(r.suspects(later), vec![ext(disk - 8192, 8192)]);
        r.sealed(later);
        assert_eq!(r.sealed.len(), 1, "a log with no ranges is not kept");
    }

    #[test]
    fn many_seals_merge_the_oldest_instead_of_forgetting_them() {
        let t0 = Instant::now();
        let mut r = RecentRanges::new(256 << 20);
        for i in 0..(MAX_SEALED as u64 + 10) {
            r.mark(&ext(i * (1 << 20), 4096));
            r.sealed(t0);
        }
        assert_eq!(r.sealed.len(), MAX_SEALED);
        let s = r.suspects(t0);
        assert_eq!(s.len(), MAX_SEALED + 10, "every log's range is still there");
    }

    #[test]
    fn odd_sizes_clamp_to_the_disk() {
        let mut r = RecentRanges::new(10_000);
        r.mark(&ext(8_000, 1_900));
        r.mark(&ext(20_000, 10));
        r.sealed(Instant::now());
        assert_eq!(r.suspects(Instant::now()), vec![ext(4096, 10_000 - 4096)]);
    }
}
