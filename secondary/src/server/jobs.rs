//! The server's jobs (`sitrep jobs` against the server's socket): failovers, with their steps
//! and progress. Kept in memory for the daemon's lifetime (the newest 100).

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use super::lock;
use base::status::{Job, JobState};

/// Jobs kept (older ones are forgotten).
const KEEP: usize = 100;

/// The server's job list.
#[derive(Default)]
pub(super) struct Jobs {
    list: Mutex<Vec<(Job, Instant)>>,
    next: AtomicU64,
}

impl Jobs {
    /// Starts a job of `kind` on `disk`; returns its id.
    pub(super) fn start(&self, kind: &str, disk: &str) -> u64 {
        let id = self.next.fetch_add(1, Ordering::SeqCst) + 1;
        let mut l = lock(&self.list);
        l.push((
            Job {
                id,
                kind: kind.into(),
                disk: disk.into(),
                state: JobState::Running,
                step: "prerequisites".into(),
                progress_percent: 0.0,
                bytes_done: 0,
                bytes_total: 0,
                rate_bytes_per_sec: 0.0,
                eta_seconds: None,
                started_unix_ns: base::now_ns(),
                finished_unix_ns: None,
                error: None,
            },
            Instant::now(),
        ));
        if l.len() > KEEP {
            l.remove(0);
        }
        id
    }

    /// Job `id` is at `step` (`percent` of the whole job), `done` of `total` bytes.
    pub(super) fn step(&self, id: u64, step: &str, percent: f64, done: u64, total: u64) {
        let mut l = lock(&self.list);
        if let Some((j, since)) = l.iter_mut().find(|(j, _)| j.id == id) {
            if j.step != step {
                *since = Instant::now();
            }
            let secs = since.elapsed().as_secs_f64();
            let rate = if secs > 0.5 { done as f64 / secs } else { 0.0 };
            j.step = step.into();
            j.progress_percent = percent;
            j.bytes_done = done;
            j.bytes_total = total;
            j.rate_bytes_per_sec = rate;
            j.eta_seconds = (rate > 0.0 && total > done).then(|| (total - done) as f64 / rate);
        }
    }

    /// Job `id` ended: succeeded, or failed with the error.
    pub(super) fn finish(&self, id: u64, res: Result<(), String>) {
        let mut l = lock(&self.list);
        if let Some((j, _)) = l.iter_mut().find(|(j, _)| j.id == id) {
            j.finished_unix_ns = Some(base::now_ns());
            j.eta_seconds = None;
            match res {
                Ok(()) => {
                    j.state = JobState::Succeeded;
                    j.step = "complete".into();
                    j.progress_percent = 100.0;
                }
                Err(e) => {
                    j.state = JobState::Failed;
                    j.error = Some(e);
                }
            }
        }
    }

    /// Every job kept, newest first.
    pub(super) fn report(&self) -> Vec<Job> {
        lock(&self.list)
            .iter()
            .rev()
            .map(|(j, _)| j.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_and_outcomes() {
        let j = Jobs::default();
        let a = j.start("failover", "d");
        let b = j.start("test-failover", "e");
        j.step(a, "export", 40.0, 10, 100);
        j.finish(b, Err("no point".into()));
        j.finish(a, Ok(()));
        let r = j.report();
        assert_eq!(r[0].id, b);
        assert_eq!(r[0].state, JobState::Failed);
        assert_eq!(r[0].error.as_deref(), Some("no point"));
        assert_eq!(r[1].state, JobState::Succeeded);
        assert_eq!(r[1].step, "complete");
        assert!((r[1].progress_percent - 100.0).abs() < f64::EPSILON);
        for _ in 0..KEEP + 5 {
            j.start("x", "y");
        }
        assert_eq!(j.report().len(), KEEP);
    }
}
