//! Benchmark harness for sitrep.
//!
//! Benchmarks are never tests: nothing here asserts a wall-clock time. Each benchmark
//! measures sitrep against a baseline **in the same run**, alternating the two several
//! times, and reports the ratio of medians — the machines are shared and noisy, so only
//! ratios measured side by side mean anything. Results are recorded in
//! `docs/benchmarks.md` with the exact command that produced them.
//!
//! - `tracker_overhead`: fio 4k random writes on a loop device, with and without eBPF
//!   tracking (BRIEF §7: ≥ 0.99 of the untracked IOPS, 0 lost writes).
//!
//! Later issues add: ublk IOPS against rublk's loop target, shipping throughput,
//! replication lag, resync against rsync, initial copy against `cat | nc`.

pub mod fio;
pub mod harness;
pub mod report;
pub mod results;

/// The change-log crate whose throughput later benchmarks measure.
pub use hrl;

/// Median of a non-empty sample (the mean of the middle two for an even count).
#[must_use]
pub fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    match n {
        0 => f64::NAN,
        _ if n % 2 == 1 => s[n / 2],
        _ => (s[n / 2 - 1] + s[n / 2]) / 2.0,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn median() {
        assert_eq!(super::median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(super::median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(super::median(&[]).is_nan());
    }
}
