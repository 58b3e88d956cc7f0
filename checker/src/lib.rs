//! Independent end-to-end verification of recovery points: a self-describing block workload
//! and a crash-consistency checker.
//!
//! `sitrep workload` writes blocks that say which write produced them ([`block`]) and records
//! the issue and completion time of every write in a history file ([`history`]). `sitrep
//! check` reads that history and an image (a replica, a recovery point, the device itself)
//! and decides whether the image is a state the device really passed through at a point
//! time T ([`check`], the rule in [`rule`]): every block holds a version issued before T and
//! no older than the last write to that block completed by T. A run over several devices
//! (a database's data and log disks) records, for every write, the write on another device
//! it depends on; a set of images, one per device, is then checked together ([`group`]):
//! the per-block rule on each, and the dependency rule ([`depend`]) across them.
//!
//! Why a separate crate, and why nothing from the replication code: the checker must not
//! share a bug with what it checks. It reads the image bytes and its own history, nothing
//! else — no HRL log, no replica metadata.
//!
//! Clock: every time here is CLOCK_REALTIME in nanoseconds since the Unix epoch
//! (`SystemTime::now()`, [`UnixNs::now`]), because sitrep's cut times — the HRL seal times
//! (`sealed_unix_ns`) recovery points are named by — are taken with the same clock on the
//! same source host. docs/checker.md has the whole argument and its limits.
//!
//! - [`block`]: the on-disk block format (versioned, explicit little-endian, golden bytes);
//! - [`history`]: the history file format, its buffered writer and its torn-tail reader;
//! - [`rule`]: the consistency rule for one block, pure;
//! - [`depend`]: the dependency rule across the devices of a multi-device run;
//! - [`check`]: one image against a single-device history, the report;
//! - [`group`]: a set of images, one per device, against a multi-device history;
//! - [`workload`]: the writer threads, rate limit and stop conditions;
//! - [`units`]: point times (ns or RFC 3339), durations, rates.

pub mod block;
mod buf;
pub mod check;
pub mod depend;
pub mod error;
pub mod group;
pub mod history;
mod outcome;
pub mod rule;
mod scan;
pub mod units;
pub mod workload;

pub use block::{BLOCK_FORMAT_VERSION, BlockHeader, BlockSize, decode, encode};
pub use check::{CheckOptions, Counts, Report, Violation, check_image};
pub use depend::{DependencyViolation, judge_dependency};
pub use error::{Error, Result};
pub use group::{DeviceReport, GroupOptions, GroupReport, check_group};
pub use history::{
    DeviceGeometry, History, HistoryHeader, HistoryRecord, HistoryWriter, read_history,
};
pub use rule::{Allowed, BlockCase, Holds, Kind, Verdict, judge, judge_intact};
pub use units::{RunId, UnixNs, parse_point_time};
pub use workload::{WorkloadConfig, WorkloadStats, run_workload};
