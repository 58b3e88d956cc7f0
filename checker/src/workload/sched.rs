//! The scheduler every worker asks for its next write, under one lock: which device and
//! block, which seq, when issued, and which write it depends on.
//!
//! The devices' blocks are numbered in one global space, device after device (device `i`'s
//! blocks are `starts[i] .. starts[i + 1]`), so one in-flight bitmap, one initialization
//! counter and one random pick cover any number of devices; with one device the space is the
//! device's and every choice is what the single-device workload always made.

use std::time::{Duration, Instant};

use crate::Error;
use crate::history::HistoryRecord;
use crate::units::UnixNs;

/// One write to issue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Issue {
    pub(super) seq: u64,
    pub(super) device: u16,
    pub(super) block: u64,
    pub(super) issue_ns: UnixNs,
    /// The most recently completed write on another device (completed before this one is
    /// issued: both happen under the scheduler lock).
    pub(super) depends_on: Option<u64>,
}

pub(super) struct Sched {
    next_seq: u64,
    /// Global index of each device's first block; the last entry is the total.
    starts: Vec<u64>,
    /// Prefix sums of the hot block counts (random writes pick among the first `hot[i]`
    /// blocks of device `i`); the last entry is the total.
    hot_starts: Vec<u64>,
    pub(super) init_next: u64,
    in_flight: Vec<u64>,
    rng: u64,
    random_until: Option<Instant>,
    pub(super) pending: Vec<HistoryRecord>,
    pub(super) writes: u64,
    pub(super) error: Option<Error>,
    /// The most recently completed write (device, seq)...
    last: Option<(u16, u64)>,
    /// ...and the most recently completed one on a device other than `last`'s.
    last_other: Option<(u16, u64)>,
}

impl Sched {
    /// `blocks[i]` blocks on device `i`, random writes over the first `hot[i]` of each
    /// (`1 ≤ hot[i] ≤ blocks[i]`, at least the queue depth in all), `seed` for the picks.
    pub(super) fn new(blocks: &[u64], hot: Vec<u64>, seed: u64) -> Self {
        let prefix = |v: &[u64]| {
            std::iter::once(0)
                .chain(v.iter().scan(0u64, |acc, &b| {
                    *acc += b;
                    Some(*acc)
                }))
                .collect::<Vec<u64>>()
        };
        let starts = prefix(blocks);
        let total = starts.last().copied().unwrap_or(0);
        Self {
            next_seq: 0,
            hot_starts: prefix(&hot),
            starts,
            init_next: 0,
            in_flight: vec![0u64; usize::try_from(total.div_ceil(64)).unwrap_or(0)],
            rng: seed | 1,
            random_until: None,
            pending: Vec::new(),
            writes: 0,
            error: None,
            last: None,
            last_other: None,
        }
    }

    fn total(&self) -> u64 {
        self.starts.last().copied().unwrap_or(0)
    }

    /// The next write, or `None` when the run is over.
    pub(super) fn next(&mut self, duration: Option<Duration>) -> Option<Issue> {
        if self.error.is_some() {
            return None;
        }
        let total = self.total();
        let g = if self.init_next < total {
            self.init_next += 1;
            if self.init_next == total {
                self.random_until = duration.map(|d| Instant::now() + d);
            }
            self.init_next - 1
        } else {
            if self.random_until.is_some_and(|u| Instant::now() >= u) {
                return None;
            }
            self.pick_free()
        };
        self.in_flight[word(g)] |= bit(g);
        let seq = self.next_seq;
        self.next_seq += 1;
        let (device, block) = self.locate(g);
        let depends_on = match self.last {
            Some((d, s)) if d != device => Some(s),
            _ => self.last_other.map(|(_, s)| s),
        };
        Some(Issue {
            seq,
            device,
            block,
            issue_ns: UnixNs::now(),
            depends_on,
        })
    }

    /// (device, block) of global block `g`.
    fn locate(&self, g: u64) -> (u16, u64) {
        let i = self.starts.partition_point(|&s| s <= g).saturating_sub(1);
        (u16::try_from(i).unwrap_or(u16::MAX), g - self.starts[i])
    }

    /// A random hot block with no write in flight (one exists: the hot blocks are at least
    /// the queue depth).
    fn pick_free(&mut self) -> u64 {
        let hot_total = self.hot_starts.last().copied().unwrap_or(1).max(1);
        loop {
            // xorshift64*: fast, and good enough to spread writes.
            self.rng ^= self.rng >> 12;
            self.rng ^= self.rng << 25;
            self.rng ^= self.rng >> 27;
            let r = self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D) % hot_total;
            let i = self
                .hot_starts
                .partition_point(|&s| s <= r)
                .saturating_sub(1);
            let g = self.starts[i] + (r - self.hot_starts[i]);
            if self.in_flight[word(g)] & bit(g) == 0 {
                return g;
            }
        }
    }

    /// `rec`'s write completed: queue its record, then release its block, and make it the
    /// dependency of the writes issued from now on.
    pub(super) fn done(&mut self, rec: HistoryRecord) {
        self.pending.push(rec);
        self.writes += 1;
        let g = self.starts[usize::from(rec.device)] + rec.block;
        self.in_flight[word(g)] &= !bit(g);
        if let Some(last) = self.last.filter(|&(d, _)| d != rec.device) {
            self.last_other = Some(last);
        }
        self.last = Some((rec.device, rec.seq));
    }
}

fn word(block: u64) -> usize {
    usize::try_from(block / 64).unwrap_or(usize::MAX)
}

fn bit(block: u64) -> u64 {
    1 << (block % 64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn complete(s: &mut Sched, w: Issue) {
        s.done(HistoryRecord {
            seq: w.seq,
            device: w.device,
            block: w.block,
            issue_ns: w.issue_ns,
            complete_ns: w.issue_ns,
            depends_on: w.depends_on,
        });
    }

    #[test]
    fn initialization_goes_device_after_device_then_random_over_all() {
        let mut s = Sched::new(&[3, 4], vec![3, 2], 42);
        let init: Vec<(u16, u64)> = (0..7)
            .map(|_| {
                let w = s.next(None).unwrap();
                complete(&mut s, w);
                (w.device, w.block)
            })
            .collect();
        assert_eq!(
            init,
            [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2), (1, 3)]
        );
        let mut seen = [[0u32; 4]; 2];
        for _ in 0..1000 {
            let w = s.next(None).unwrap();
            seen[usize::from(w.device)][usize::try_from(w.block).unwrap()] += 1;
            complete(&mut s, w);
        }
        // Each hot block equally likely (~200 of 1000), the rest of device 1 never.
        assert!(seen[0][..3].iter().all(|&n| n > 120), "{seen:?}");
        assert!(seen[1][..2].iter().all(|&n| n > 120), "{seen:?}");
        assert_eq!((seen[1][2], seen[1][3]), (0, 0), "{seen:?}");
    }

    #[test]
    fn a_write_depends_on_the_last_completed_write_on_another_device() {
        let mut s = Sched::new(&[4, 2, 2], vec![4, 2, 2], 7);
        // Device 0's initialization: nothing on another device has completed.
        for _ in 0..4 {
            let w = s.next(None).unwrap();
            assert_eq!((w.device, w.depends_on), (0, None));
            complete(&mut s, w);
        }
        // Device 1's first writes depend on device 0's last (seq 3), the second one too
        // because the first (seq 4) has not completed yet.
        let a = s.next(None).unwrap();
        assert_eq!((a.seq, a.device, a.depends_on), (4, 1, Some(3)));
        let b = s.next(None).unwrap();
        assert_eq!((b.seq, b.device, b.depends_on), (5, 1, Some(3)));
        complete(&mut s, b);
        let c = s.next(None).unwrap();
        assert_eq!((c.seq, c.device, c.depends_on), (6, 2, Some(5)));
        // Completion order, not issue order: seq 4 completes after seq 5.
        complete(&mut s, a);
        let d = s.next(None).unwrap();
        assert_eq!((d.seq, d.device, d.depends_on), (7, 2, Some(4)));
        complete(&mut s, c);
        complete(&mut s, d);
        // The last completed are on device 2 (6, then 7): a write to device 2 depends on
        // device 1's seq 4, one to device 0 or 1 on seq 7.
        for _ in 0..20 {
            let e = s.next(None).unwrap();
            let want = if e.device == 2 { Some(4) } else { Some(7) };
            assert_eq!(e.depends_on, want, "{e:?}");
            s.in_flight[word(s.starts[usize::from(e.device)] + e.block)] = 0;
        }
    }

    #[test]
    fn one_device_has_no_dependencies() {
        let mut s = Sched::new(&[8], vec![8], 1);
        for _ in 0..50 {
            let w = s.next(None).unwrap();
            assert_eq!((w.device, w.depends_on), (0, None));
            complete(&mut s, w);
        }
    }
}
