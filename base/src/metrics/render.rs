//! The exposition text (format 0.0.4) of a [`StatusReport`]: one family per metric with
//! `# HELP` and `# TYPE`, one sample per disk (label `disk`).

use std::fmt::Write as _;

use super::text::{escape, family, float};
use crate::status::{DiskStatus, Health, ResyncPhase, ResyncStatus, StatusReport};

/// The exposition text of `r`: every family with `# HELP` and `# TYPE`, one sample per disk.
/// `sitrep_retries_total` and `sitrep_seconds_since_crash_point` are the agent's, `sitrep_points` the server's;
/// `sitrep_resync_progress_ratio` has a sample only for a disk with a resync.
#[must_use]
pub fn render(r: &StatusReport) -> String {
    let server = r.role == "server";
    let mut out = String::with_capacity(2048 + 1024 * r.disks.len());
    family(
        &mut out,
        "sitrep_info",
        "gauge",
        "The daemon (role agent or server, host: its certificate name); always 1.",
    );
    let _ = writeln!(
        out,
        "sitrep_info{{role=\"{}\",host=\"{}\"}} 1",
        escape(&r.role),
        escape(&r.host)
    );
    let families: [Family; 9] = [
        (
            "sitrep_health",
            "gauge",
            "Health: 0 normal, 1 warning (retrying a recoverable error, or a resync is \
             required), 2 critical (stopped: operator action needed).",
            &|d| Some(health(d.health).to_string()),
        ),
        (
            "sitrep_connected",
            "gauge",
            "1 while the disk's session with the peer is up.",
            &|d| Some(u8::from(d.connected).to_string()),
        ),
        (
            "sitrep_lag_seconds",
            "gauge",
            "Replication lag (RPO): 0 when every change is applied on the replica, else \
             seconds since the cut of the newest applied cycle.",
            &|d| Some(float(d.lag_seconds)),
        ),
        (
            "sitrep_backlog_bytes",
            "gauge",
            "Bytes of changed ranges recorded but not yet applied on the replica (an upper \
             bound).",
            &|d| Some(d.backlog_bytes.to_string()),
        ),
        (
            "sitrep_bytes_shipped_total",
            "counter",
            "Data bytes shipped (agent) or received (server), before compression; zero \
             ranges not counted.",
            &|d| Some(d.bytes_shipped.to_string()),
        ),
        (
            "sitrep_wire_bytes_total",
            "counter",
            "Bytes on the wire (frames, after compression).",
            &|d| Some(d.wire_bytes.to_string()),
        ),
        (
            "sitrep_zero_bytes_total",
            "counter",
            "Bytes described as zero ranges (never sent as bytes).",
            &|d| Some(d.zero_bytes.to_string()),
        ),
        (
            "sitrep_cycles_applied_total",
            "counter",
            "Cycles applied on the replica.",
            &|d| Some(d.cycles_applied.to_string()),
        ),
        (
            "sitrep_resync_progress_ratio",
            "gauge",
            "Progress of the running checksum resync, 0 to 1: the repair pass is the first \
             half, the confirmation the second (0 while it waits for its window).",
            &|d| d.resync.as_ref().map(|r| float(resync_ratio(r))),
        ),
    ];
    for (name, kind, help, value) in families {
        per_disk(&mut out, r, name, kind, help, value);
    }
    role_families(&mut out, r, server);
    if let Some(s) = &r.store {
        super::space::render(&mut out, s);
    }
    out
}

/// The families only one role has.
fn role_families(out: &mut String, r: &StatusReport, server: bool) {
    if server {
        per_disk(
            out,
            r,
            "sitrep_points",
            "gauge",
            "Recovery points retained.",
            &|d| Some(d.points.to_string()),
        );
    } else {
        per_disk(
            out,
            r,
            "sitrep_retries_total",
            "counter",
            "Attempts retried after recoverable errors since the agent started.",
            &|d| Some(d.retries.to_string()),
        );
        per_disk(
            out,
            r,
            "sitrep_seconds_since_crash_point",
            "gauge",
            "Seconds since the cut of the newest crash-consistent point the agent offered \
             (since the agent started, before the first).",
            &|d| d.crash_points.as_ref().map(|c| float(c.age_seconds)),
        );
    }
}

/// Name, type, help, and the sample value of a disk (None: no sample).
type Family<'a> = (
    &'a str,
    &'a str,
    &'a str,
    &'a dyn Fn(&DiskStatus) -> Option<String>,
);

fn per_disk(
    out: &mut String,
    r: &StatusReport,
    name: &str,
    kind: &str,
    help: &str,
    value: &dyn Fn(&DiskStatus) -> Option<String>,
) {
    family(out, name, kind, help);
    for d in &r.disks {
        if let Some(v) = value(d) {
            let _ = writeln!(out, "{name}{{disk=\"{}\"}} {v}", escape(&d.name));
        }
    }
}

fn health(h: Health) -> u8 {
    match h {
        Health::Normal => 0,
        Health::Warning => 1,
        Health::Critical => 2,
    }
}

#[allow(clippy::cast_precision_loss)] // a ratio
pub(super) fn resync_ratio(r: &ResyncStatus) -> f64 {
    let pass = if r.scope_bytes == 0 {
        0.0
    } else {
        (r.bytes_done as f64 / r.scope_bytes as f64).clamp(0.0, 1.0)
    };
    match r.phase {
        ResyncPhase::WaitingForWindow => 0.0,
        ResyncPhase::CompareAndRepair => pass / 2.0,
        ResyncPhase::Confirm => 0.5 + pass / 2.0,
        ResyncPhase::Done => 1.0,
    }
}
