//! `check` for a multi-device run: a set of images, one per device, against one history.
//!
//! Two rules, and the report (JSON schema 2, [`GROUP_REPORT_SCHEMA`]):
//!
//! - with a point time T, every image is checked at T by the per-block rule
//!   ([`crate::rule::judge`]) — that alone already means all of them are the state at one
//!   instant; without T, only intactness ([`crate::rule::judge_intact`]);
//! - always, the dependency rule ([`crate::depend`]): a write found in any image whose
//!   dependency on another device is not there (nor a newer version of its block) proves the
//!   images are from different instants.
//!
//! Images are scanned one after the other, in device order, each streamed like a single
//! image (`scan.rs`); the dependency rule takes note of every block as it goes by and
//! is judged at the end, when every image's content is known.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::check::{Counts, HistorySummary, Violation, index, size_note, time_notes};
use crate::depend::{Dependencies, DependencyViolation};
use crate::history::History;
use crate::scan::{ScanOptions, scan_device};
use crate::units::UnixNs;
use crate::{Error, Result};

/// Version of the multi-device [`GroupReport`] JSON schema (`schema` field). 2: this layout.
/// (Single-device reports stay schema 1: [`crate::check::Report`].)
pub const GROUP_REPORT_SCHEMA: u32 = 2;

/// What to check.
#[derive(Debug, Clone, Copy)]
pub struct GroupOptions {
    /// The point time T the images claim to be, if any.
    pub point_time: Option<UnixNs>,
    /// How many violations to list per device, and how many dependency violations (all are
    /// counted).
    pub max_listed: usize,
}

/// One device's image, as the report describes it.
#[derive(Debug, Clone, Serialize)]
pub struct DeviceReport {
    /// The device index in the run.
    pub device: u16,
    /// The image checked as that device.
    pub image: String,
    /// The device's blocks in the run.
    pub blocks: u64,
    /// Blocks checked.
    pub checked: u64,
    /// Blocks per outcome.
    pub counts: Counts,
    /// The per-block violations on this device, counted.
    pub violations_total: u64,
    /// The first [`GroupOptions::max_listed`] of them, in block order.
    pub violations: Vec<Violation>,
}

/// The dependency rule's summary.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct DependencySummary {
    /// Writes found in the images that depend on a write on another device.
    pub checked: u64,
    /// How many of those dependencies are not there.
    pub violations: u64,
}

/// The outcome of a multi-device check (the `--json` output, schema 2).
#[derive(Debug, Clone, Serialize)]
pub struct GroupReport {
    /// [`GROUP_REPORT_SCHEMA`].
    pub schema: u32,
    /// No violation of either rule.
    pub ok: bool,
    /// T, ns since the epoch; `null` when checked without a point time.
    pub point_time_ns: Option<u64>,
    /// T, RFC 3339 UTC; `null` without.
    pub point_time: Option<String>,
    /// The run (hex).
    pub run_id: String,
    /// Bytes per block.
    pub block_size: u32,
    /// Blocks the history covers, over all devices.
    pub blocks: u64,
    /// Blocks checked, over all devices.
    pub checked: u64,
    /// The history read.
    pub history: HistorySummary,
    /// Per device, in device order.
    pub devices: Vec<DeviceReport>,
    /// Blocks per outcome, summed over the devices.
    pub counts: Counts,
    /// The dependency rule.
    pub dependencies: DependencySummary,
    /// All violations: per-block ones on every device plus dependency ones.
    pub violations_total: u64,
    /// The first [`GroupOptions::max_listed`] dependency violations.
    pub dependency_violations: Vec<DependencyViolation>,
    /// Things the reader should know.
    pub notes: Vec<String>,
}

/// Checks `images` (one per device, in the history's device order) against `history`.
///
/// # Errors
/// Not one image per device; the history is inconsistent with itself (a seq twice,
/// overlapping writes to a block, a dependency that is not a completed write on another
/// device); an image cannot be read or is smaller than its device's blocks.
pub fn check_group(
    history: &History,
    images: &[PathBuf],
    opts: GroupOptions,
) -> Result<GroupReport> {
    let hdr = &history.header;
    if images.len() != hdr.devices.len() {
        return Err(Error::Invalid(format!(
            "{} images given for a history of {} devices: give one --image per device, in \
             the history's device order",
            images.len(),
            hdr.devices.len()
        )));
    }
    let sorted = index(history)?;
    let mut deps = Dependencies::new(history, &sorted)?;
    let mut report = new_report(history, opts);
    let mut start = 0;
    for (device, image) in (0u16..).zip(images) {
        let end = start + sorted[start..].partition_point(|r| r.device == device);
        let scan_opts = ScanOptions {
            device,
            t: opts.point_time,
            max_listed: opts.max_listed,
        };
        let scan = scan_device(
            history,
            &sorted[start..end],
            image,
            scan_opts,
            |case, found| {
                deps.observe(case, found);
            },
        )?;
        start = end;
        if let Some(n) = size_note(&scan) {
            report.notes.push(format!("device {device}: {n}"));
        }
        report.checked += scan.checked;
        report.counts.merge(&scan.counts);
        report.violations_total += scan.violations_total;
        report.devices.push(DeviceReport {
            device,
            image: display(image),
            blocks: hdr.devices[usize::from(device)].block_count,
            checked: scan.checked,
            counts: scan.counts,
            violations_total: scan.violations_total,
            violations: scan.violations,
        });
    }
    let (checked, violated, listed) = deps.violations(opts.max_listed);
    report.dependencies = DependencySummary {
        checked,
        violations: violated,
    };
    report.violations_total += violated;
    report.dependency_violations = listed;
    report.ok = report.violations_total == 0;
    Ok(report)
}

fn display(p: &Path) -> String {
    p.display().to_string()
}

fn new_report(history: &History, opts: GroupOptions) -> GroupReport {
    let hdr = &history.header;
    let mut notes = time_notes(history, opts.point_time);
    if opts.point_time.is_none() {
        notes.push(
            "no point time: blocks are judged for intactness only (torn, foreign, unknown, \
             misplaced), and the images against each other by the dependency rule"
                .into(),
        );
    }
    GroupReport {
        schema: GROUP_REPORT_SCHEMA,
        ok: false,
        point_time_ns: opts.point_time.map(|t| t.0),
        point_time: opts.point_time.map(UnixNs::rfc3339),
        run_id: hdr.run_id.to_string(),
        block_size: hdr.block_size.bytes(),
        blocks: hdr.total_blocks(),
        checked: 0,
        history: HistorySummary::of(history),
        devices: Vec::with_capacity(hdr.devices.len()),
        counts: Counts::default(),
        dependencies: DependencySummary {
            checked: 0,
            violations: 0,
        },
        violations_total: 0,
        dependency_violations: Vec::new(),
        notes,
    }
}
