//! The retry schedule for recoverable errors (network, low space, low memory), from the seed
//! documents: 1, 2, 4, 8, 10 minutes, then every 30 minutes. The unit is configurable
//! (`--retry-unit`, default one minute) so tests and impatient operators can shrink it.
//! Non-recoverable errors (authentication, broken chain, disk mismatch) are not retried.
//!
//! **Jitter, never faster.** Each delay is its step plus a random extra of up to
//! [`JITTER_PERCENT`] % of the step, so agents cut off by the same outage do not all dial the
//! server at the same instant when it returns. The jitter only ever adds: the seed's schedule
//! is the minimum. It comes from a SplitMix64 generator seeded once per [`Backoff`] (from the
//! OS; a cheap generator is enough — nothing here is secret).
//!
//! **Time is a seam.** The retry loop reads and waits on a [`Clock`]: [`SystemClock`] in the
//! daemon, [`ManualClock`] in tests, which drive a whole schedule of 30-minute steps in
//! microseconds.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Delays, in units, of the first retries; every later retry waits [`STEADY`] units.
pub const SCHEDULE: [u32; 5] = [1, 2, 4, 8, 10];
/// Units between retries once [`SCHEDULE`] is exhausted.
pub const STEADY: u32 = 30;
/// **Start-up.** Until a disk's first session reaches the server, and for at most
/// [`QUICK_WINDOW`] after the agent started it, a network error is retried every
/// [`QUICK_STEP`] (or one unit, if shorter) instead of on the schedule: an agent started
/// before the network is up (at boot, its unit ordered before the network) connects as soon
/// as the network is, not a retry unit later. The schedule itself does not advance.
pub const QUICK_STEP: Duration = Duration::from_secs(2);
/// How long after a disk's start [`QUICK_STEP`] retries are allowed.
pub const QUICK_WINDOW: Duration = Duration::from_secs(120);

/// Most jitter added to a step, in percent of the step.
pub const JITTER_PERCENT: u64 = 10;

/// The step, in units, of the retry after `failures` earlier failures (0: the first retry).
#[must_use]
pub fn step_units(failures: usize) -> u32 {
    SCHEDULE.get(failures).copied().unwrap_or(STEADY)
}

/// One scheduled retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retry {
    /// The schedule's step (the least the delay can be).
    pub step: Duration,
    /// The step plus its jitter: how long to wait.
    pub delay: Duration,
    /// When the attempt is due, on the clock the failure was timed with (Unix ns for
    /// [`SystemClock`]).
    pub due_ns: u64,
}

/// Retry state of one disk.
#[derive(Debug, Clone)]
pub struct Backoff {
    unit: Duration,
    failures: usize,
    rng: SplitMix64,
}

impl Backoff {
    /// A fresh schedule with `unit` per step, its jitter seeded from the OS.
    #[must_use]
    pub fn new(unit: Duration) -> Self {
        let mut seed = [0u8; 8];
        let seed = match getrandom::fill(&mut seed) {
            Ok(()) => u64::from_le_bytes(seed),
            // No OS randomness: the time still differs between disks and agents.
            Err(_) => base::now_ns(),
        };
        Self::with_seed(unit, seed)
    }

    /// A fresh schedule whose jitter comes from `seed` (deterministic, for tests).
    #[must_use]
    pub fn with_seed(unit: Duration, seed: u64) -> Self {
        Self {
            unit,
            failures: 0,
            rng: SplitMix64(seed),
        }
    }

    /// The step of the next delay (without jitter).
    #[must_use]
    pub fn next_step(&self) -> Duration {
        self.unit.saturating_mul(step_units(self.failures))
    }

    /// The delay before the next attempt after one more failure: the step plus up to
    /// [`JITTER_PERCENT`] % of it, never less than the step.
    pub fn next_delay(&mut self) -> Duration {
        let step = self.next_step();
        self.failures = self.failures.saturating_add(1);
        let step_ns = u64::try_from(step.as_nanos()).unwrap_or(u64::MAX);
        let max_jitter = step_ns / 100 * JITTER_PERCENT;
        step.saturating_add(Duration::from_nanos(self.rng.below(max_jitter)))
    }

    /// Records one more failure at `now_ns` (on the clock the caller sleeps on) and schedules
    /// the next attempt.
    pub fn retry_at(&mut self, now_ns: u64) -> Retry {
        let step = self.next_step();
        let delay = self.next_delay();
        let delay_ns = u64::try_from(delay.as_nanos()).unwrap_or(u64::MAX);
        Retry {
            step,
            delay,
            due_ns: now_ns.saturating_add(delay_ns),
        }
    }

    /// A quick retry at `now_ns`, `step` (plus jitter) later, that leaves the schedule where
    /// it is: the start-up retries of [`QUICK_STEP`], before the first session reached the
    /// server.
    pub fn quick_retry_at(&mut self, now_ns: u64, step: Duration) -> Retry {
        let step_ns = u64::try_from(step.as_nanos()).unwrap_or(u64::MAX);
        let delay = step.saturating_add(Duration::from_nanos(
            self.rng.below(step_ns / 100 * JITTER_PERCENT),
        ));
        let delay_ns = u64::try_from(delay.as_nanos()).unwrap_or(u64::MAX);
        Retry {
            step,
            delay,
            due_ns: now_ns.saturating_add(delay_ns),
        }
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

/// SplitMix64 (Steele, Lea, Flood 2014): one add and three xor-shift-multiplies per value,
/// statistically fine for spreading retries.
#[derive(Debug, Clone)]
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A value in `0..=max` (multiply-shift: no division, no modulo bias worth the name).
    fn below(&mut self, max: u64) -> u64 {
        let range = u128::from(max) + 1;
        let wide = u128::from(self.next()) * range;
        // The high 64 bits of a 64 × ≤65-bit product are ≤ max, which fits.
        u64::try_from(wide >> 64).unwrap_or(max)
    }
}

/// A clock's pending wait ([`Clock::sleep`]).
pub type Sleep<'a> = Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

/// The time a retry loop reads and waits on. Object safe: the agent holds an
/// `Arc<dyn Clock>` (the daemon's [`SystemClock`], or a test's simulated clock).
pub trait Clock: Send + Sync {
    /// Now, in nanoseconds (Unix time for [`SystemClock`]).
    fn now_ns(&self) -> u64;
    /// Waits `d` on this clock.
    fn sleep(&self, d: Duration) -> Sleep<'_>;
}

/// Wall-clock time and tokio's timer: the daemon's clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ns(&self) -> u64 {
        base::now_ns()
    }

    fn sleep(&self, d: Duration) -> Sleep<'_> {
        Box::pin(tokio::time::sleep(d))
    }
}

/// A simulated clock for tests: `sleep` moves the time forward when called and returns a
/// future that is already ready.
#[derive(Debug, Default)]
pub struct ManualClock {
    now_ns: AtomicU64,
}

impl ManualClock {
    /// A clock reading `start_ns`.
    #[must_use]
    pub fn at(start_ns: u64) -> Self {
        Self {
            now_ns: AtomicU64::new(start_ns),
        }
    }

    /// Moves the time forward by `d`.
    pub fn advance(&self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let _ = self
            .now_ns
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |t| {
                Some(t.saturating_add(ns))
            });
    }
}

impl Clock for ManualClock {
    fn now_ns(&self) -> u64 {
        self.now_ns.load(Ordering::SeqCst)
    }

    fn sleep(&self, d: Duration) -> Sleep<'_> {
        self.advance(d);
        Box::pin(std::future::ready(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const UNIT: Duration = Duration::from_secs(60);

    fn within_jitter(delay: Duration, step: Duration) -> bool {
        delay >= step && delay <= step + step / 10
    }

    #[test]
    fn quick_start_up_retries_leave_the_schedule_where_it_is() {
        let mut b = Backoff::with_seed(UNIT, 7);
        for i in 0..10 {
            let r = b.quick_retry_at(1_000, QUICK_STEP);
            assert!(within_jitter(r.delay, QUICK_STEP), "{i}: {r:?}");
            assert_eq!(r.step, QUICK_STEP);
        }
        assert_eq!(b.failures(), 0);
        // The first scheduled retry after them is still the schedule's first step.
        assert_eq!(b.retry_at(0).step, UNIT);
    }

    #[test]
    fn steps_follow_the_seed_schedule_and_delays_never_undercut_them() {
        let mut b = Backoff::with_seed(UNIT, 1);
        let mut steps = Vec::new();
        for _ in 0..8 {
            let step = b.next_step();
            let d = b.next_delay();
            assert!(within_jitter(d, step), "{d:?} for step {step:?}");
            steps.push(step.as_secs() / 60);
        }
        assert_eq!(steps, [1, 2, 4, 8, 10, 30, 30, 30]);
        assert_eq!(b.failures(), 8);
        b.reset();
        assert_eq!(b.failures(), 0);
        assert_eq!(b.next_step(), UNIT);
        assert!(within_jitter(b.next_delay(), UNIT));
    }

    #[test]
    fn the_schedule_saturates_instead_of_overflowing() {
        let mut b = Backoff::with_seed(Duration::MAX, 3);
        assert_eq!(b.next_delay(), Duration::MAX);
        let mut b = Backoff::with_seed(Duration::ZERO, 3);
        assert_eq!(b.next_delay(), Duration::ZERO);
        assert_eq!(b.retry_at(u64::MAX).due_ns, u64::MAX);
    }

    #[test]
    fn jitter_differs_between_backoffs() {
        let a: Vec<Duration> = {
            let mut b = Backoff::with_seed(UNIT, 1);
            (0..6).map(|_| b.next_delay()).collect()
        };
        let b: Vec<Duration> = {
            let mut b = Backoff::with_seed(UNIT, 2);
            (0..6).map(|_| b.next_delay()).collect()
        };
        assert_ne!(a, b);
        // OS-seeded schedules differ too (a collision of all six is ~impossible).
        let c: Vec<Duration> = {
            let mut b = Backoff::new(UNIT);
            (0..6).map(|_| b.next_delay()).collect()
        };
        let d: Vec<Duration> = {
            let mut b = Backoff::new(UNIT);
            (0..6).map(|_| b.next_delay()).collect()
        };
        assert_ne!(c, d);
    }

    /// What the loop saw of one attempt.
    struct Attempt {
        at_ns: u64,
        retry: Option<Retry>,
    }

    /// A retry loop shaped like the agent's (`primary/worker.rs`): attempt; on a failure
    /// schedule the retry and sleep on the clock; a success resets the schedule.
    async fn drive<C: Clock>(clock: &C, b: &mut Backoff, outcomes: &[bool]) -> Vec<Attempt> {
        let mut seen = Vec::new();
        for &ok in outcomes {
            let at_ns = clock.now_ns();
            if ok {
                b.reset();
                seen.push(Attempt { at_ns, retry: None });
                // The session runs a while before the next failure.
                clock.sleep(Duration::from_secs(3600)).await;
                continue;
            }
            let retry = b.retry_at(at_ns);
            seen.push(Attempt {
                at_ns,
                retry: Some(retry),
            });
            clock.sleep(retry.delay).await;
        }
        seen
    }

    #[tokio::test]
    async fn a_simulated_outage_follows_the_schedule_with_jitter_and_a_success_resets_it() {
        let clock = ManualClock::at(1_700_000_000_000_000_000);
        let mut b = Backoff::with_seed(UNIT, 0x5eed);
        // Ten failures, a success, three failures, a success.
        let mut outcomes = vec![false; 10];
        outcomes.push(true);
        outcomes.extend([false, false, false, true]);
        let seen = drive(&clock, &mut b, &outcomes).await;
        assert_eq!(seen.len(), 15);

        let mut steps = Vec::new();
        let mut jitters = Vec::new();
        for (i, a) in seen.iter().enumerate() {
            let Some(r) = a.retry else { continue };
            // The next attempt happened exactly when it was due, and the wait was the step
            // plus at most 10 % of it.
            let next = &seen[i + 1];
            assert_eq!(next.at_ns, r.due_ns, "attempt {}", i + 1);
            let waited = Duration::from_nanos(next.at_ns - a.at_ns);
            assert_eq!(waited, r.delay);
            assert!(
                within_jitter(waited, r.step),
                "attempt {}: waited {waited:?} for a step of {:?}",
                i + 1,
                r.step
            );
            steps.push(r.step.as_secs() / 60);
            jitters.push(waited - r.step);
        }
        assert_eq!(steps, [1, 2, 4, 8, 10, 30, 30, 30, 30, 30, 1, 2, 4]);
        // The jitter is random, not a constant offset.
        let mut distinct = jitters.clone();
        distinct.sort();
        distinct.dedup();
        assert!(distinct.len() >= 10, "jitters {jitters:?}");
        assert!(jitters.iter().any(|j| !j.is_zero()), "jitters {jitters:?}");
        // The whole outage took the schedule's sum, plus at most 10 %.
        let first_ten: u64 = [1, 2, 4, 8, 10, 30, 30, 30, 30, 30].iter().sum();
        let took = Duration::from_nanos(seen[10].at_ns - seen[0].at_ns);
        assert!(within_jitter(
            took,
            UNIT * u32::try_from(first_ten).unwrap()
        ));
    }
}
