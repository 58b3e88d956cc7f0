//! What the agent reports (`sitrep status`, the metrics endpoint): each disk's state,
//! health, lag and counters, computed from its protection and run-time status.
//!
//! Built without waiting for any disk's I/O: the protection and run-time status are read
//! from the disk's published [`DiskSnapshot`](super::snapshot::DiskSnapshot) (its phase
//! included), and the tracker — held during a cut or tag while a log commit reaches the
//! disk — is only tried (`records_since_cut_now`).

use std::sync::Arc;

use super::point_age;
use super::snapshot::{CopyRun, DiskSnapshot};
use super::{Agent, DiskRt, lock};
use base::config::Frequency;
use base::status::{
    self, CopyStatus, CrashPointStatus, CycleStatus, DiskStatus, Health, ReplState, StatusReport,
};

impl Agent {
    pub(super) fn disk_status(&self, rt: &DiskRt) -> DiskStatus {
        let records = self.records_since_cut_now(rt);
        let st = rt.snapshot();
        let p = &st.prot;
        let now = base::now_ns();
        let applied_seq = st.last_applied.as_ref().map(|a| a.seq);
        let pending = !p.copy.done
            || st.pending_logs > 0
            || records > 0
            || st
                .last_shipped_seq
                .is_some_and(|s| applied_seq.is_none_or(|a| a < s));
        let since = st
            .last_applied
            .as_ref()
            .map_or(p.created_unix_ns, |a| a.cut_time_ns);
        let state = st.phase.state();
        let lag_seconds = if pending {
            now.saturating_sub(since) as f64 / 1e9
        } else {
            0.0
        };
        let rpo_target = match p.frequency {
            Frequency::Continuous => 60.0,
            Frequency::Every(d) => 2.0 * d.as_secs_f64() + 60.0,
        };
        let crash_points = crash_points(&st, state, now);
        let health = if st.critical {
            Health::Critical
        } else if st.error.is_some()
            || state == ReplState::ResyncRequired
            || (state == ReplState::Protected && lag_seconds > rpo_target)
            || crash_points.overdue.is_some()
        {
            Health::Warning
        } else {
            Health::Normal
        };
        DiskStatus {
            name: p.name.clone(),
            device: Some(p.device.display().to_string()),
            peer: p.to.clone(),
            state,
            health,
            lag_seconds,
            rpo_target_seconds: Some(rpo_target),
            backlog_bytes: st.backlog_bytes,
            bytes_shipped: st.bytes_shipped,
            wire_bytes: st.wire_bytes,
            zero_bytes: st.zero_bytes,
            cycles_applied: st.cycles_applied,
            last_applied: st.last_applied.as_ref().map(|a| CycleStatus {
                seq: a.seq,
                cut_time_unix_ns: a.cut_time_ns,
            }),
            copy: st.copy.map(copy_status),
            connected: st.connected,
            error: st.error.clone(),
            resync_reason: if p.copy.done && p.resync.is_none() {
                None
            } else {
                p.resync_reason.clone()
            },
            points: 0,
            points_bytes: 0,
            oldest_point: None,
            newest_point: None,
            point_policy: Some(p.points),
            cycles_judged: st.cycles_judged,
            cycles_consistent: st.cycles_consistent,
            resync: st
                .resync
                .as_ref()
                .map(|r| r.status(self.opts.resync_window)),
            last_resync: st.last_resync.clone(),
            resyncs_completed: st.resyncs_completed,
            next_retry_unix_ns: if st.critical { None } else { st.next_retry_ns },
            retries: st.retries,
            action: if st.critical { st.action.clone() } else { None },
            crash_points: Some(crash_points),
            round_freeze_ms: st.round_freeze_ms,
            source: lock(&rt.source_seen).clone(),
        }
    }

    pub(super) fn status(&self) -> StatusReport {
        let disks: Vec<Arc<DiskRt>> = lock(&self.disks).values().cloned().collect();
        StatusReport {
            schema: status::SCHEMA,
            role: "agent".into(),
            host: self.name.clone(),
            disks: disks.iter().map(|d| self.disk_status(d)).collect(),
            listeners: vec![self.control.status()],
            store: None,
            groups: Vec::new(),
        }
    }
}

/// The disk's crash-consistent points as `status` shows them: overdue (a Warning) only while
/// protected, changes wait for a point, and the last is older than a slot and its grace.
fn crash_points(st: &DiskSnapshot, state: ReplState, now: u64) -> CrashPointStatus {
    let every = st.prot.points.crash_points_every_secs;
    let overdue = (state == ReplState::Protected)
        .then(|| st.points.overdue_secs(now, every))
        .flatten()
        .map(|age| point_age::overdue_message(&st.prot.name, age));
    CrashPointStatus {
        last_cut_unix_ns: st.points.last_point_ns,
        age_seconds: st.points.age_secs(now),
        every_seconds: every,
        overdue,
    }
}

#[allow(clippy::cast_precision_loss)] // rates
fn copy_status(c: CopyRun) -> CopyStatus {
    let secs = c.started.elapsed().as_secs_f64();
    let rate = if secs > 0.5 {
        c.cursor.saturating_sub(c.started_cursor) as f64 / secs
    } else {
        0.0
    };
    CopyStatus {
        done: c.done,
        bytes_done: c.cursor,
        size: c.size,
        rate_bytes_per_sec: rate,
        eta_seconds: (rate > 0.0 && !c.done).then(|| c.size.saturating_sub(c.cursor) as f64 / rate),
    }
}
