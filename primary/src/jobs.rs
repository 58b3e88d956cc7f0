//! The agent's jobs (`sitrep jobs`): what kind each is and which step it is at, as enums —
//! the progress percent comes from the step ([`JobStep::percent`]), never from matching
//! strings. The `--json` schema ([`base::status::Job`]) keeps strings (the server's jobs
//! share it); [`JobKind::as_str`] and [`JobStep::as_str`] are exactly those strings.

use base::status::{Job, JobState, ResyncPhase};

use super::{Agent, DiskRt, lock};

/// What a job of the agent does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum JobKind {
    /// Track, copy once, ship the changes made during the copy.
    EnableProtection,
    /// A checksum resync (or a full re-copy standing in for one).
    Resync,
    /// `sitrep failover NAME --planned`.
    PlannedFailover,
}

impl JobKind {
    /// The `kind` string of the `--json` schema.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::EnableProtection => "enable-protection",
            Self::Resync => "resync",
            Self::PlannedFailover => "planned-failover",
        }
    }
}

/// A job's current step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum JobStep {
    /// Checks before anything starts.
    Prerequisites,
    /// Enable protection: the tracker takes the device.
    StartTracking,
    /// Enable protection: the whole-disk copy.
    InitialReplication,
    /// Enable protection: the first cycles after the copy.
    ShipChangesDuringCopy,
    /// Resync: waiting for the resync window.
    WaitingForWindow,
    /// Resync: compare and repair the scope.
    CompareAndRepair,
    /// Resync: compare again, repairing what no recorded change explains.
    Confirm,
    /// Resync: the cycles cut during the resync follow.
    ShipChangesDuringResync,
    /// Planned failover 1: ship what is pending.
    ShipPending,
    /// Planned failover 2: freeze the filesystem.
    Quiesce,
    /// Planned failover 3: cut and ship the last cycle.
    ShipLastCycle,
    /// Planned failover 4: compare the whole disk.
    Compare,
    /// Planned failover 5: a second cut holds no change.
    CheckNoWrites,
    /// Planned failover 6: the server activates the replica.
    Activate,
}

impl JobStep {
    /// The `step` string of the `--json` schema.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Prerequisites => "prerequisites",
            Self::StartTracking => "start-tracking",
            Self::InitialReplication => "initial-replication",
            Self::ShipChangesDuringCopy => "ship-changes-during-copy",
            Self::WaitingForWindow => "waiting-for-window",
            Self::CompareAndRepair => "compare-and-repair",
            Self::Confirm => "confirm",
            Self::ShipChangesDuringResync => "ship-changes-during-resync",
            Self::ShipPending => "ship-pending",
            Self::Quiesce => "quiesce",
            Self::ShipLastCycle => "ship-last-cycle",
            Self::Compare => "compare",
            Self::CheckNoWrites => "check-no-writes",
            Self::Activate => "activate",
        }
    }

    /// The job's progress (0–100) at this step, `done` of `total` bytes into it.
    #[allow(clippy::cast_precision_loss)] // a ratio
    pub(crate) fn percent(self, done: u64, total: u64) -> f64 {
        let frac = if total > 0 {
            done as f64 / total as f64
        } else {
            0.0
        };
        match self {
            Self::Prerequisites | Self::WaitingForWindow => 0.0,
            Self::StartTracking => 2.0,
            Self::InitialReplication => 5.0 + 85.0 * frac,
            Self::CompareAndRepair => 5.0 + 75.0 * frac,
            Self::Confirm => 80.0 + 15.0 * frac,
            Self::ShipChangesDuringCopy | Self::Activate => 92.0,
            Self::ShipChangesDuringResync => 97.0,
            Self::ShipPending => 10.0,
            Self::Quiesce => 20.0,
            Self::ShipLastCycle => 25.0,
            Self::Compare => 30.0,
            Self::CheckNoWrites => 90.0,
        }
    }

    /// Whether the rate and ETA come from the running resync.
    fn of_resync(self) -> bool {
        matches!(
            self,
            Self::WaitingForWindow
                | Self::CompareAndRepair
                | Self::Confirm
                | Self::ShipChangesDuringResync
        )
    }
}

impl From<ResyncPhase> for JobStep {
    fn from(p: ResyncPhase) -> Self {
        match p {
            ResyncPhase::WaitingForWindow => Self::WaitingForWindow,
            ResyncPhase::CompareAndRepair => Self::CompareAndRepair,
            ResyncPhase::Confirm => Self::Confirm,
            ResyncPhase::Done => Self::ShipChangesDuringResync,
        }
    }
}

/// The job a disk is running (at most one at a time).
#[derive(Debug, Clone, Copy)]
pub(crate) struct CurrentJob {
    pub(crate) id: u64,
    pub(crate) kind: JobKind,
}

impl Agent {
    pub(crate) fn new_job(&self, rt: &DiskRt, kind: JobKind, disk: &str) -> u64 {
        let id = self
            .next_job
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
            + 1;
        lock(&self.jobs).push(Job {
            id,
            kind: kind.as_str().into(),
            disk: disk.into(),
            state: JobState::Running,
            step: JobStep::Prerequisites.as_str().into(),
            progress_percent: 0.0,
            bytes_done: 0,
            bytes_total: 0,
            rate_bytes_per_sec: 0.0,
            eta_seconds: None,
            started_unix_ns: base::now_ns(),
            finished_unix_ns: None,
            error: None,
        });
        rt.set(|s| s.job = Some(CurrentJob { id, kind }));
        id
    }

    fn update_job(&self, rt: &DiskRt, f: impl FnOnce(&mut Job)) {
        let Some(cur) = rt.snapshot().job else {
            return;
        };
        if let Some(j) = lock(&self.jobs).iter_mut().find(|j| j.id == cur.id) {
            f(j);
        }
    }

    /// Moves the disk's job to `step`, `done` of `total` bytes into it.
    #[allow(clippy::cast_precision_loss)] // rates
    pub(crate) fn job_step(&self, rt: &DiskRt, step: JobStep, done: u64, total: u64) {
        let snap = rt.snapshot();
        let (rate, eta) = match (&snap.copy, &snap.resync) {
            (Some(c), _) if step == JobStep::InitialReplication => {
                let secs = c.started.elapsed().as_secs_f64();
                let rate = if secs > 0.5 {
                    done.saturating_sub(c.started_cursor) as f64 / secs
                } else {
                    0.0
                };
                let eta = (rate > 0.0).then(|| total.saturating_sub(done) as f64 / rate);
                (rate, eta)
            }
            (_, Some(r)) if step.of_resync() => {
                let s = r.status(self.opts.resync_window);
                (s.rate_bytes_per_sec, s.eta_seconds)
            }
            _ => (0.0, None),
        };
        drop(snap);
        self.update_job(rt, |j| {
            j.step = step.as_str().into();
            j.bytes_done = done;
            j.bytes_total = total;
            j.rate_bytes_per_sec = rate;
            j.eta_seconds = eta;
            j.progress_percent = step.percent(done, total);
        });
    }

    pub(crate) fn job_fail(&self, rt: &DiskRt, msg: &str) {
        self.job_finish(rt, JobState::Failed, Some(msg.to_string()));
    }

    pub(crate) fn job_finish(&self, rt: &DiskRt, state: JobState, error: Option<String>) {
        let finished = base::now_ns();
        let kind = rt.snapshot().job.map(|c| c.kind);
        self.update_job(rt, |j| {
            if j.state == JobState::Running {
                j.state = state;
                j.error = error;
                j.finished_unix_ns = Some(finished);
                if state == JobState::Succeeded {
                    j.step = if kind == Some(JobKind::EnableProtection) {
                        "finalize-protection"
                    } else {
                        "complete"
                    }
                    .into();
                    j.progress_percent = 100.0;
                }
            }
        });
        if state != JobState::Running {
            rt.set(|s| s.job = None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_keep_their_strings_and_percents() {
        let all = [
            (JobStep::Prerequisites, "prerequisites", 0.0),
            (JobStep::StartTracking, "start-tracking", 2.0),
            (JobStep::InitialReplication, "initial-replication", 5.0),
            (
                JobStep::ShipChangesDuringCopy,
                "ship-changes-during-copy",
                92.0,
            ),
            (JobStep::WaitingForWindow, "waiting-for-window", 0.0),
            (JobStep::CompareAndRepair, "compare-and-repair", 5.0),
            (JobStep::Confirm, "confirm", 80.0),
            (
                JobStep::ShipChangesDuringResync,
                "ship-changes-during-resync",
                97.0,
            ),
            (JobStep::ShipPending, "ship-pending", 10.0),
            (JobStep::Quiesce, "quiesce", 20.0),
            (JobStep::ShipLastCycle, "ship-last-cycle", 25.0),
            (JobStep::Compare, "compare", 30.0),
            (JobStep::CheckNoWrites, "check-no-writes", 90.0),
            (JobStep::Activate, "activate", 92.0),
        ];
        for (step, s, pct) in all {
            assert_eq!(step.as_str(), s);
            assert!((step.percent(0, 0) - pct).abs() < 1e-9, "{s}");
        }
        assert!((JobStep::InitialReplication.percent(1, 2) - 47.5).abs() < 1e-9);
        assert!((JobStep::CompareAndRepair.percent(1, 4) - 23.75).abs() < 1e-9);
        assert!((JobStep::Confirm.percent(1, 1) - 95.0).abs() < 1e-9);
        assert_eq!(JobKind::EnableProtection.as_str(), "enable-protection");
        assert_eq!(JobKind::Resync.as_str(), "resync");
        assert_eq!(JobKind::PlannedFailover.as_str(), "planned-failover");
    }
}
