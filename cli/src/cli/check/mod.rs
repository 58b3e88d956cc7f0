//! `sitrep check`: is an image a crash-consistent state of the device at a point time? Or,
//! for a multi-device workload, is a set of images (one per device) one state of all the
//! devices? (The rules and the formats: docs/checker.md.)

use std::path::PathBuf;

use anyhow::{Context, bail};
use checker::{
    CheckOptions, Counts, GroupOptions, Report, UnixNs, check_group, check_image, parse_point_time,
    read_history,
};
use clap::Args;

use crate::Outcome;

mod group;

/// Arguments of `sitrep check`.
#[derive(Args)]
pub(crate) struct CheckArgs {
    /// The history written by `sitrep workload`.
    #[arg(long)]
    history: PathBuf,
    /// The image to check: a file or a block device (a replica, a recovery point, the
    /// device itself). For a multi-device workload, once per device, in the workload's
    /// device order.
    #[arg(long, required = true)]
    image: Vec<PathBuf>,
    /// The instant the image claims to be: ns since the Unix epoch (CLOCK_REALTIME, the
    /// clock of sitrep's cut times) or RFC 3339, e.g. 2026-11-23T10:42:17.123Z. Required for
    /// a single-device workload; for a multi-device one, without it the images are checked
    /// for intactness and against each other only.
    #[arg(long, value_parser = point_time)]
    point_time: Option<UnixNs>,
    /// How many violations to list (all are counted); for several images, per image and for
    /// the dependency violations.
    #[arg(long, default_value_t = 100)]
    max_violations: usize,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

fn point_time(s: &str) -> Result<UnixNs, String> {
    parse_point_time(s).map_err(|e| e.to_string())
}

/// Runs `sitrep check`: exit 0 consistent, 3 not consistent, 1 could not check.
pub(crate) fn run(a: &CheckArgs) -> anyhow::Result<Outcome> {
    let history = read_history(&a.history).context("reading the workload history")?;
    let devices = history.header.devices.len();
    let ok = if devices > 1 {
        let opts = GroupOptions {
            point_time: a.point_time,
            max_listed: a.max_violations,
        };
        let report = check_group(&history, &a.image, opts).context("checking the images")?;
        if a.json {
            crate::outln!("{}", serde_json::to_string(&report)?);
        } else {
            group::print_human(&a.history, &report);
        }
        report.ok
    } else {
        let [image] = a.image.as_slice() else {
            bail!(
                "{} images given for a history of 1 device: give one --image",
                a.image.len()
            );
        };
        let Some(point_time) = a.point_time else {
            bail!("--point-time is required for a single-device history");
        };
        let opts = CheckOptions {
            point_time,
            max_listed: a.max_violations,
        };
        let report = check_image(&history, image, opts)
            .with_context(|| format!("checking {}", image.display()))?;
        if a.json {
            crate::outln!("{}", serde_json::to_string(&report)?);
        } else {
            print_human(a, image, &report);
        }
        report.ok
    };
    Ok(if ok { Outcome::Ok } else { Outcome::Invalid })
}

fn print_human(a: &CheckArgs, image: &std::path::Path, r: &Report) {
    let h = &r.history;
    crate::outln!(
        "history    {}: run {}, {} write records, {}",
        a.history.display(),
        r.run_id,
        h.records,
        if h.clean {
            "closed cleanly".to_owned()
        } else {
            format!("NOT closed cleanly ({} torn tail bytes)", h.torn_tail_bytes)
        }
    );
    crate::outln!("image      {}", image.display());
    crate::outln!("point time {} ({} ns)", r.point_time, r.point_time_ns);
    let c = &r.counts;
    crate::outln!(
        "checked    {} of {} blocks of {} bytes: {} current, {} in flight, {} unwritten, {} unrecorded",
        r.checked,
        r.blocks,
        r.block_size,
        c.current,
        c.in_flight,
        c.unwritten,
        c.unrecorded
    );
    for n in &r.notes {
        crate::outln!("note       {n}");
    }
    if r.ok {
        crate::outln!("CONSISTENT: every block holds a version the device held at the point time");
        return;
    }
    crate::outln!(
        "NOT CONSISTENT: {} violations ({})",
        r.violations_total,
        kinds(c)
    );
    print_violations("", &r.violations, r.violations_total, true);
}

/// The listed per-block violations (each line prefixed by `prefix`), and how many more.
/// `timed`: checked at a point time, so each has an allowed range to show.
fn print_violations(prefix: &str, listed: &[checker::Violation], total: u64, timed: bool) {
    for v in listed {
        let allowed = checker::Allowed {
            from_seq: v.allowed_from_seq,
            to_seq: v.allowed_to_seq,
        };
        let found = v
            .found_seq
            .map_or_else(|| "no version".to_owned(), |s| format!("seq {s}"));
        if !timed {
            crate::outln!(
                "  {prefix}block {}: {}: found {found}: {}",
                v.block,
                v.kind,
                v.detail
            );
        } else {
            crate::outln!(
                "  {prefix}block {}: {}: found {found}, allowed {allowed}: {}",
                v.block,
                v.kind,
                v.detail
            );
        }
    }
    let hidden = total - listed.len() as u64;
    if hidden > 0 {
        crate::outln!("  ... and {hidden} more (--max-violations, or --json)");
    }
}

/// The violation kinds with a count, e.g. `future 3, torn 1`.
fn kinds(c: &Counts) -> String {
    [
        ("torn", c.torn),
        ("foreign", c.foreign),
        ("future", c.future),
        ("stale", c.stale),
        ("unknown", c.unknown),
        ("misplaced", c.misplaced),
    ]
    .iter()
    .filter(|(_, n)| *n > 0)
    .map(|(k, n)| format!("{k} {n}"))
    .collect::<Vec<_>>()
    .join(", ")
}
