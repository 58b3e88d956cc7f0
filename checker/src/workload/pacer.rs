//! The `--rate` limit: writes spaced evenly over all workers.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::lock;

/// Spaces writes `interval` apart over all workers.
pub(super) struct Pacer {
    interval: Duration,
    next: Mutex<Instant>,
}

impl Pacer {
    pub(super) fn new(block_bytes: u64, rate: u64) -> Self {
        let nanos = u128::from(block_bytes) * 1_000_000_000 / u128::from(rate.max(1));
        Self {
            interval: Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX)),
            next: Mutex::new(Instant::now()),
        }
    }

    /// Sleeps until this worker's slot (waking every 100 ms to notice `stop`).
    pub(super) fn wait(&self, stop: &AtomicBool) {
        let slot = {
            let mut next = lock(&self.next);
            let slot = (*next).max(Instant::now());
            *next = slot + self.interval;
            slot
        };
        loop {
            let now = Instant::now();
            if now >= slot || stop.load(Ordering::SeqCst) {
                return;
            }
            std::thread::sleep((slot - now).min(Duration::from_millis(100)));
        }
    }
}
