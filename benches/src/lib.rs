//! Benchmark harness for sitrep.
//!
//! **Status: not built yet** (issue "benchmark harness"). This crate will hold one command
//! that measures tracking overhead, ublk IOPS, shipping throughput, replication lag, resync
//! and initial-copy speed, each as a *ratio* against a baseline measured in the same run
//! (the machines are shared and noisy), and writes `docs/benchmarks.md`.
//! Benchmarks are never tests: nothing here asserts a wall-clock time.

/// The change-log crate whose throughput the first benchmarks measure.
pub use hrl;
