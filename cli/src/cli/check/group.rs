//! The human form of a multi-device check's report (the JSON is the report itself, schema 2).

use std::path::Path;

use checker::{DependencyViolation, GroupReport};

use super::{kinds, print_violations};

/// Prints `r` for a person: the history, one line per device, the dependency rule, the
/// verdict, then the listed violations.
pub(super) fn print_human(history: &Path, r: &GroupReport) {
    let h = &r.history;
    crate::outln!(
        "history    {}: run {}, {} write records over {} devices, {}",
        history.display(),
        r.run_id,
        h.records,
        r.devices.len(),
        if h.clean {
            "closed cleanly".to_owned()
        } else {
            format!("NOT closed cleanly ({} torn tail bytes)", h.torn_tail_bytes)
        }
    );
    match (&r.point_time, r.point_time_ns) {
        (Some(t), Some(ns)) => crate::outln!("point time {t} ({ns} ns)"),
        _ => crate::outln!("point time none: intactness and dependencies only"),
    }
    let timed = r.point_time.is_some();
    for d in &r.devices {
        let c = &d.counts;
        let held = if timed {
            format!(
                "{} current, {} in flight, {} unwritten, {} unrecorded",
                c.current, c.in_flight, c.unwritten, c.unrecorded
            )
        } else {
            format!(
                "{} recorded, {} unwritten, {} unrecorded",
                c.recorded, c.unwritten, c.unrecorded
            )
        };
        crate::outln!(
            "device {:<3} {}: {} of {} blocks of {} bytes: {held}; {} violations",
            d.device,
            d.image,
            d.checked,
            d.blocks,
            r.block_size,
            d.violations_total
        );
    }
    crate::outln!(
        "dependency {} writes found depend on a write on another device: {} of those missing",
        r.dependencies.checked,
        r.dependencies.violations
    );
    for n in &r.notes {
        crate::outln!("note       {n}");
    }
    if r.ok {
        let what = if timed {
            "every image holds a state its device held at the point time"
        } else {
            "every block is intact"
        };
        crate::outln!(
            "CONSISTENT: {what}, and no image holds a write whose dependency on another device \
             is missing"
        );
        return;
    }
    crate::outln!(
        "NOT CONSISTENT: {} violations ({})",
        r.violations_total,
        summary(r)
    );
    for d in &r.devices {
        let prefix = format!("device {} ", d.device);
        print_violations(&prefix, &d.violations, d.violations_total, timed);
    }
    for v in &r.dependency_violations {
        print_dependency(v);
    }
    let hidden = r.dependencies.violations - r.dependency_violations.len() as u64;
    if hidden > 0 {
        crate::outln!(
            "  ... and {hidden} more dependency violations (--max-violations, or --json)"
        );
    }
}

/// `device 0: future 3; device 1: torn 1; dependency 12`.
fn summary(r: &GroupReport) -> String {
    let mut parts: Vec<String> = r
        .devices
        .iter()
        .filter(|d| d.violations_total > 0)
        .map(|d| format!("device {}: {}", d.device, kinds(&d.counts)))
        .collect();
    if r.dependencies.violations > 0 {
        parts.push(format!("dependency {}", r.dependencies.violations));
    }
    parts.join("; ")
}

fn print_dependency(v: &DependencyViolation) {
    let found = v
        .found_seq
        .map_or_else(|| "no version".to_owned(), |s| format!("seq {s}"));
    crate::outln!(
        "  dependency: device {} block {} seq {} needs device {} block {} at seq {} or newer, \
         found {found}",
        v.device,
        v.block,
        v.seq,
        v.depends_on_device,
        v.depends_on_block,
        v.depends_on_seq
    );
}
