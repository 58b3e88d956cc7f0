//! The server's `status --json` and `points` answers, built from the disks' published
//! snapshots (`snapshot.rs`): they never wait for a disk's mutex, whatever runs on the disk.

use std::sync::atomic::Ordering;

use super::snapshot::DiskSnapshot;
use super::{Shared, Slot, lock};
use base::control::Response;
use base::status::{self, DiskStatus, Health, ReplState, StatusReport};

/// The server's `status --json`: one entry per disk slot (a disk that could not be opened
/// shows as Critical with its error), and the listeners' counters.
pub(super) fn status_report(sh: &Shared) -> StatusReport {
    let slots = lock(&sh.slots).clone();
    let now = base::now_ns();
    let mut disks = Vec::new();
    for (name, slot) in slots {
        let err = lock(&slot.error).clone();
        match (slot.disk.snapshot(), err) {
            (Some(d), err) => disks.push(disk_status(name, &slot, &d, err, now)),
            (None, Some(e)) => disks.push(unopened(name, e)),
            (None, None) => {}
        }
    }
    StatusReport {
        schema: status::SCHEMA,
        role: "server".into(),
        host: sh.name.clone(),
        disks,
        listeners: vec![sh.tls.status(), sh.control.status()],
        store: Some(super::quota::report(sh)),
        groups: groups_status(sh),
    }
}

/// Each group's newest point and the member holding the next one back (from snapshots).
fn groups_status(sh: &Shared) -> Vec<status::GroupStatus> {
    sh.groups
        .names()
        .into_iter()
        .filter_map(|name| {
            let (_, pts) = sh.groups.points(&name)?;
            let declared: Vec<String> = sh.groups.members(&name).into_keys().collect();
            let members: Vec<String> = if declared.is_empty() {
                pts.last()
                    .map(|p| p.members.keys().cloned().collect())
                    .unwrap_or_default()
            } else {
                declared
            };
            let newest: Vec<(u64, &String)> = members
                .iter()
                .map(|m| {
                    let slot = lock(&sh.slots).get(m).cloned();
                    let cut = slot
                        .and_then(|s| s.disk.snapshot())
                        .and_then(|d| d.points.last().map(|p| p.cut_time_ns))
                        .unwrap_or(0);
                    (cut, m)
                })
                .collect();
            let held_back_by = match (newest.iter().min(), newest.iter().max()) {
                (Some(lo), Some(hi)) if lo.0 < hi.0 => Some(lo.1.clone()),
                _ => None,
            };
            let last_round = sh.groups.last_round(&name);
            Some(status::GroupStatus {
                last_round,
                name,
                points: pts.len() as u64,
                newest_point: pts.last().map(|p| (p.id, p.cut_time_ns)),
                held_back_by,
                members,
            })
        })
        .collect()
}

/// The status of open disk `name` from its snapshot `d` (`err`: why its last session ended).
fn disk_status(
    name: String,
    slot: &Slot,
    d: &DiskSnapshot,
    err: Option<String>,
    now: u64,
) -> DiskStatus {
    let st = &*d.state;
    let c = d.counters;
    // A broken chain is critical even on a failed-over disk (whose phase outranks it).
    let broken = st.broken.clone();
    DiskStatus {
        name,
        device: None,
        peer: st.owner.clone(),
        state: st.phase().state(),
        health: if broken.is_some() {
            Health::Critical
        } else if err.is_some() || d.fault().is_some() {
            Health::Warning
        } else {
            Health::Normal
        },
        lag_seconds: st
            .applied
            .map_or(0.0, |a| now.saturating_sub(a.cut_time_ns) as f64 / 1e9),
        rpo_target_seconds: None,
        backlog_bytes: 0,
        bytes_shipped: c.data_bytes,
        wire_bytes: slot.wire_bytes.load(Ordering::Relaxed),
        zero_bytes: c.zero_bytes,
        cycles_applied: c.cycles_applied,
        last_applied: st.applied.map(|a| status::CycleStatus {
            seq: a.seq,
            cut_time_unix_ns: a.cut_time_ns,
        }),
        copy: st.copy.map(|cp| status::CopyStatus {
            done: cp.done,
            bytes_done: cp.cursor,
            size: st.size,
            rate_bytes_per_sec: 0.0,
            eta_seconds: None,
        }),
        connected: slot.connected.load(Ordering::Relaxed),
        error: broken.clone().or(d.fault().map(String::from)).or(err),
        resync_reason: broken,
        points: d.points.len() as u64,
        points_bytes: d.points_bytes,
        oldest_point: d.points.first().map(status::PointRef::from),
        newest_point: d.points.last().map(status::PointRef::from),
        point_policy: Some(base::points::PointPolicy {
            crash_points_every_secs: d.retention.0 / 1_000_000_000,
            retain_secs: d.retention.1 / 1_000_000_000,
            max_point_storage_bytes: d.point_cap,
        }),
        cycles_judged: 0,
        cycles_consistent: 0,
        resync: None,
        last_resync: None,
        resyncs_completed: 0,
        next_retry_unix_ns: None,
        retries: 0,
        action: None,
        crash_points: None,
        round_freeze_ms: None,
        source: None,
    }
}

/// The status of disk `name`, which could not be opened (`e`).
fn unopened(name: String, e: String) -> DiskStatus {
    DiskStatus {
        name,
        device: None,
        peer: String::new(),
        state: ReplState::Critical,
        health: Health::Critical,
        lag_seconds: 0.0,
        rpo_target_seconds: None,
        backlog_bytes: 0,
        bytes_shipped: 0,
        wire_bytes: 0,
        zero_bytes: 0,
        cycles_applied: 0,
        last_applied: None,
        copy: None,
        connected: false,
        error: Some(e),
        resync_reason: None,
        points: 0,
        points_bytes: 0,
        oldest_point: None,
        newest_point: None,
        point_policy: None,
        cycles_judged: 0,
        cycles_consistent: 0,
        resync: None,
        last_resync: None,
        resyncs_completed: 0,
        next_retry_unix_ns: None,
        retries: 0,
        action: None,
        crash_points: None,
        round_freeze_ms: None,
        source: None,
    }
}

pub(super) fn points_report(sh: &Shared, name: &str) -> Response {
    let slot = lock(&sh.slots).get(name).cloned();
    let Some(slot) = slot else {
        return Response::err(format!("disk {name} is not replicated here"));
    };
    let Some(d) = slot.disk.snapshot() else {
        return Response::err(format!("disk {name} is not open (see `sitrep status`)"));
    };
    Response::ok(status::PointsReport {
        schema: status::SCHEMA,
        disk: name.to_string(),
        size: d.state.size,
        storage_bytes: d.points_bytes,
        points: d.points.to_vec(),
        policy: Some(sh.retention.for_disk(Some(d.retention))),
    })
}
