//! The retry schedule for recoverable errors (network, low space, low memory), from the seed
//! documents: 1, 2, 4, 8, 10 minutes, then every 30 minutes. The unit is configurable
//! (`--retry-unit`, default one minute) so tests and impatient operators can shrink it.
//! Non-recoverable errors (authentication, broken chain, disk mismatch) are not retried.

use std::time::Duration;

/// Delays, in units, of the first retries; every later retry waits [`STEADY`] units.
pub const SCHEDULE: [u32; 5] = [1, 2, 4, 8, 10];
/// Units between retries once [`SCHEDULE`] is exhausted.
pub const STEADY: u32 = 30;

/// Retry state of one disk.
#[derive(Debug, Clone)]
pub struct Backoff {
    unit: Duration,
    failures: usize,
}

impl Backoff {
    /// A fresh schedule with `unit` per step.
    #[must_use]
    pub fn new(unit: Duration) -> Self {
        Self { unit, failures: 0 }
    }

    /// The delay before the next attempt after one more failure.
    pub fn next_delay(&mut self) -> Duration {
        let units = SCHEDULE.get(self.failures).copied().unwrap_or(STEADY);
        self.failures = self.failures.saturating_add(1);
        self.unit.saturating_mul(units)
    }

    /// Failures since the last success.
    #[must_use]
    pub fn failures(&self) -> usize {
        self.failures
    }

    /// A success resets the schedule.
    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn follows_the_seed_schedule() {
        let mut b = Backoff::new(Duration::from_secs(60));
        let mins: Vec<u64> = (0..8).map(|_| b.next_delay().as_secs() / 60).collect();
        assert_eq!(mins, [1, 2, 4, 8, 10, 30, 30, 30]);
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_secs(60));
    }
}
