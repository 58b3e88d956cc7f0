//! A cut waits for the changes it sealed to be **performed**.
//!
//! The target logs a change before it performs it (that is what makes its log complete
//! after a crash). So right after a cut seals the log, a change whose record is in the sealed
//! log may still be on its way to the backing — and nothing will record it again. The agent
//! reads the device after a cut (the initial copy; ranges logged without data: extents mode,
//! changes past the log space cap), so a cut that returned at once could let it read the
//! old contents of such a range and lose the change. Hence the cut's contract here, the
//! same as the eBPF tracker's (which records at completion): **when a cut returns, every
//! change in the sealed log and the ones before it has been performed**.
//!
//! How: an epoch, advanced by every cut under the writer's mutex, and a count of changes in
//! flight per epoch parity. A change is counted (under the same mutex, so on the right side
//! of any cut) when its record is appended, and uncounted when its I/O completes to the
//! kernel (performed, or failed). The cut, once sealed, waits for the ended epoch's count to
//! reach zero — on the caller's thread, not the log thread, which the waiting changes may
//! themselves need (a FUA write waits for its record to be durable). Two parities suffice:
//! a change counted under an older epoch of the same parity only makes a wait longer, never
//! shorter.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Changes in flight per epoch parity.
#[derive(Debug, Default)]
pub(crate) struct Drain {
    epoch: AtomicU64,
    performing: [AtomicU64; 2],
}

impl Drain {
    /// The current epoch's parity (read under the writer's mutex, at an append).
    pub(super) fn parity(&self) -> u8 {
        u8::from(self.epoch.load(Ordering::SeqCst) & 1 == 1)
    }

    /// Counts `n` changes appended under `parity` (under the writer's mutex).
    pub(super) fn begin(&self, parity: u8, n: u64) {
        self.performing[usize::from(parity & 1)].fetch_add(n, Ordering::SeqCst);
    }

    /// A change counted under `parity` completed (performed or failed).
    pub(super) fn end(&self, parity: u8) {
        let c = &self.performing[usize::from(parity & 1)];
        // Never below zero, even if a caller ended more than it began.
        let _ = c.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |v| v.checked_sub(1));
    }

    /// Starts a new epoch (under the writer's mutex, right after a cut's rotation); returns
    /// the parity of the one that ended.
    pub(super) fn next_epoch(&self) -> u8 {
        u8::from(self.epoch.fetch_add(1, Ordering::SeqCst) & 1 == 1)
    }

    /// Waits until no change counted under `parity` is in flight; false after `limit`.
    pub(super) fn wait(&self, parity: u8, limit: Duration) -> bool {
        let c = &self.performing[usize::from(parity & 1)];
        let until = Instant::now() + limit;
        let mut pause = Duration::from_micros(50);
        while c.load(Ordering::SeqCst) > 0 {
            if Instant::now() >= until {
                return false;
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(2));
        }
        true
    }

    /// Changes in flight under `parity` (tests).
    #[cfg(test)]
    pub(super) fn in_flight(&self, parity: u8) -> u64 {
        self.performing[usize::from(parity & 1)].load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wait_ends_when_the_ended_epochs_changes_are_done_not_the_new_ones() {
        let d = Drain::default();
        let p = d.parity();
        d.begin(p, 2);
        let ended = d.next_epoch();
        assert_eq!(ended, p);
        // A change of the new epoch stays in flight throughout.
        d.begin(d.parity(), 1);
        assert!(!d.wait(ended, Duration::from_millis(5)));
        d.end(ended);
        assert!(!d.wait(ended, Duration::from_millis(5)));
        d.end(ended);
        assert!(d.wait(ended, Duration::from_millis(5)));
        assert_eq!(d.in_flight(d.parity()), 1);
        // Ending more than began never wraps.
        d.end(ended);
        assert_eq!(d.in_flight(ended), 0);
    }
}
