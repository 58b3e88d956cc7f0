//! `sitrep check`: is an image a crash-consistent state of the device at a point time?
//! (The rule and the formats: docs/checker.md.)

use std::path::PathBuf;

use anyhow::Context;
use checker::{CheckOptions, Counts, Report, UnixNs, check_image, parse_point_time, read_history};
use clap::Args;

use crate::Outcome;

/// Arguments of `sitrep check`.
#[derive(Args)]
pub(crate) struct CheckArgs {
    /// The history written by `sitrep workload`.
    #[arg(long)]
    history: PathBuf,
    /// The image to check: a file or a block device (a replica, a recovery point, the
    /// device itself).
    #[arg(long)]
    image: PathBuf,
    /// The instant the image claims to be: ns since the Unix epoch (CLOCK_REALTIME, the
    /// clock of sitrep's cut times) or RFC 3339, e.g. 2026-11-23T10:42:17.123Z.
    #[arg(long, value_parser = point_time)]
    point_time: UnixNs,
    /// How many violations to list (all are counted).
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
    let opts = CheckOptions {
        point_time: a.point_time,
        max_listed: a.max_violations,
    };
    let report = check_image(&history, &a.image, opts)
        .with_context(|| format!("checking {}", a.image.display()))?;
    if a.json {
        crate::outln!("{}", serde_json::to_string(&report)?);
    } else {
        print_human(a, &report);
    }
    Ok(if report.ok {
        Outcome::Ok
    } else {
        Outcome::Invalid
    })
}

fn print_human(a: &CheckArgs, r: &Report) {
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
    crate::outln!("image      {}", a.image.display());
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
    for v in &r.violations {
        let allowed = checker::Allowed {
            from_seq: v.allowed_from_seq,
            to_seq: v.allowed_to_seq,
        };
        let found = v
            .found_seq
            .map_or_else(|| "no version".to_owned(), |s| format!("seq {s}"));
        crate::outln!(
            "  block {}: {}: found {found}, allowed {allowed}: {}",
            v.block,
            v.kind,
            v.detail
        );
    }
    let hidden = r.violations_total - r.violations.len() as u64;
    if hidden > 0 {
        crate::outln!("  ... and {hidden} more (--max-violations, or --json)");
    }
}

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
