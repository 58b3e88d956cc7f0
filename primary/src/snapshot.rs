//! A disk's published state: the [`DiskSnapshot`] its task (and the control handlers that
//! change its protection) publish on a `tokio::sync::watch` channel. `status`, `jobs`,
//! the metrics endpoint and `sitrep wait` read it — a borrow of the latest value — without
//! taking the disk's locks or waiting for its I/O; `wait` is woken by each new value.

use std::time::Instant;

use proto::CycleInfo;

use super::phase::Phase;
use super::state::Protection;
use super::window::ResyncWindow;
use base::status::{ResyncPhase, ResyncStatus};

/// A running initial copy.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CopyRun {
    pub(crate) cursor: u64,
    pub(crate) size: u64,
    pub(crate) started: Instant,
    pub(crate) started_cursor: u64,
    pub(crate) done: bool,
}

/// A running resync's live progress (agent memory; `status` shows it).
#[derive(Debug, Clone)]
pub(crate) struct ResyncRun {
    pub(crate) phase: ResyncPhase,
    pub(crate) reason: String,
    pub(crate) scope_bytes: u64,
    pub(crate) pass_total: u64,
    pub(crate) pass_done: u64,
    pub(crate) pass_started: Instant,
    pub(crate) compared: u64,
    pub(crate) differing: u64,
    pub(crate) data_sent: u64,
    pub(crate) wire_at_start: u64,
    pub(crate) wire_now: u64,
    /// Bytes written by earlier sessions of this resync.
    pub(crate) wire_before: u64,
    pub(crate) started: Option<Instant>,
}

impl ResyncRun {
    pub(crate) fn new(reason: String) -> Self {
        Self {
            phase: ResyncPhase::WaitingForWindow,
            reason,
            scope_bytes: 0,
            pass_total: 0,
            pass_done: 0,
            pass_started: Instant::now(),
            compared: 0,
            differing: 0,
            data_sent: 0,
            wire_at_start: 0,
            wire_now: 0,
            wire_before: 0,
            started: None,
        }
    }

    #[allow(clippy::cast_precision_loss)] // rates
    pub(crate) fn status(&self, window: ResyncWindow) -> ResyncStatus {
        let secs = self.pass_started.elapsed().as_secs_f64();
        let rate = if secs > 0.2 {
            self.pass_done as f64 / secs
        } else {
            0.0
        };
        ResyncStatus {
            phase: self.phase,
            reason: self.reason.clone(),
            scope_bytes: self.scope_bytes,
            bytes_done: self.pass_done,
            compared_bytes: self.compared,
            differing_bytes: self.differing,
            data_bytes_sent: self.data_sent,
            wire_bytes: self.wire_before + self.wire_now.saturating_sub(self.wire_at_start),
            rate_bytes_per_sec: rate,
            eta_seconds: (rate > 0.0 && self.pass_done < self.pass_total)
                .then(|| (self.pass_total - self.pass_done) as f64 / rate),
            seconds: self.started.map_or(0.0, |s| s.elapsed().as_secs_f64()),
            window: window.to_string(),
        }
    }
}

/// Everything `status` shows of one disk, as last published.
#[derive(Debug, Clone)]
pub(crate) struct DiskSnapshot {
    /// The protection as last changed (and saved).
    pub(crate) prot: Protection,
    /// Where the disk stands, from `prot` and the fields below ([`Self::phase_now`]).
    pub(crate) phase: Phase,
    /// Server confirmations of real work (acks, applied cycles) since start: a session that
    /// moved it resets the retry schedule.
    pub(crate) progress: u64,
    pub(crate) connected: bool,
    pub(crate) error: Option<String>,
    pub(crate) critical: bool,
    pub(crate) last_applied: Option<CycleInfo>,
    pub(crate) last_shipped_seq: Option<u64>,
    pub(crate) last_cut: Option<(u64, u64)>,
    pub(crate) bytes_shipped: u64,
    pub(crate) wire_bytes: u64,
    pub(crate) zero_bytes: u64,
    pub(crate) cycles_applied: u64,
    pub(crate) cycles_judged: u64,
    pub(crate) cycles_consistent: u64,
    /// When the last crash-consistent point was cut (`point_age.rs`).
    pub(crate) points: super::point_age::PointState,
    pub(crate) copy: Option<CopyRun>,
    pub(crate) backlog_bytes: u64,
    pub(crate) pending_logs: usize,
    pub(crate) resync: Option<ResyncRun>,
    pub(crate) last_resync: Option<ResyncStatus>,
    pub(crate) resyncs_completed: u64,
    /// When the next attempt is due (Unix ns) while waiting to retry.
    pub(crate) next_retry_ns: Option<u64>,
    /// Attempts retried since the agent started.
    pub(crate) retries: u64,
    /// The operator's action for a critical error.
    pub(crate) action: Option<String>,
    /// The step of a planned failover while one runs.
    pub(crate) planned: Option<super::jobs::JobStep>,
    /// The job the disk is running (at most one at a time).
    pub(crate) job: Option<super::jobs::CurrentJob>,
    /// How long the last cross-host round froze the disk's filesystem (ms).
    pub(crate) round_freeze_ms: Option<f64>,
}

impl DiskSnapshot {
    /// The phase the fields describe ([`Phase::of`]).
    pub(crate) fn phase_now(&self) -> Phase {
        let running = self.resync.as_ref().is_some_and(|r| r.started.is_some());
        Phase::of(&self.prot, self.critical, running, self.planned)
    }

    /// The state of a disk just started with `prot`.
    pub(crate) fn new(prot: Protection) -> Self {
        let mut s = Self {
            prot,
            phase: Phase::Protected,
            progress: 0,
            connected: false,
            error: None,
            critical: false,
            last_applied: None,
            last_shipped_seq: None,
            last_cut: None,
            bytes_shipped: 0,
            wire_bytes: 0,
            zero_bytes: 0,
            cycles_applied: 0,
            cycles_judged: 0,
            cycles_consistent: 0,
            points: super::point_age::PointState::new(base::now_ns()),
            copy: None,
            backlog_bytes: 0,
            pending_logs: 0,
            resync: None,
            last_resync: None,
            resyncs_completed: 0,
            next_retry_ns: None,
            retries: 0,
            action: None,
            planned: None,
            job: None,
            round_freeze_ms: None,
        };
        s.phase = s.phase_now();
        s
    }
}

/// The protection, locked for a change: dropping it publishes the change (and the phase it
/// implies) in the snapshot.
pub(crate) struct ProtGuard<'a> {
    pub(crate) guard: std::sync::MutexGuard<'a, Protection>,
    pub(crate) snap: &'a tokio::sync::watch::Sender<DiskSnapshot>,
}

impl std::ops::Deref for ProtGuard<'_> {
    type Target = Protection;
    fn deref(&self) -> &Protection {
        &self.guard
    }
}

impl std::ops::DerefMut for ProtGuard<'_> {
    fn deref_mut(&mut self) -> &mut Protection {
        &mut self.guard
    }
}

impl Drop for ProtGuard<'_> {
    fn drop(&mut self) {
        let p = &*self.guard;
        self.snap.send_if_modified(|s| {
            if s.prot == *p {
                return false;
            }
            s.prot = p.clone();
            s.phase = s.phase_now();
            true
        });
    }
}
