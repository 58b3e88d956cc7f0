//! Shared helpers for sitrep's cross-crate integration tests, which come in three tiers:
//!
//! | tier | where it runs | what it may use | files |
//! |------|---------------|-----------------|-------|
//! | unit | anywhere, any user | memory, temp files | `src/**` `#[cfg(test)]`, other `tests/*.rs` |
//! | root | the host, as root | loop devices, BPF, network namespaces | `tests/root_*.rs` |
//! | VM   | a 6.12 kernel booted by `scripts/vm-tests.sh` | ublk, device-mapper, partitions | `tests/vm_*.rs` |
//!
//! A test declares what it needs with [`require!`] ([`tier`]); the rest are RAII guards for
//! the kernel objects tests create — [`loopdev::LoopDevice`], [`netns::NetNsPair`],
//! [`dm::DmDevice`] — so a failing test still cleans up, plus O_DIRECT IO and self-describing
//! test data ([`io`]), tool invocation with useful errors ([`cmd`]) and a raw bpf(2) probe
//! ([`bpf`]). See `docs/testing.md`.
// Test-support code: failing loudly with a message is its job, as in the tests it serves.
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

pub mod bpf;
pub mod cmd;
pub mod dm;
pub mod io;
pub mod loopdev;
pub mod netns;
pub mod replay;
pub mod tier;

pub use tier::Need;
