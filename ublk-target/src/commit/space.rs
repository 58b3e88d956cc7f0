//! Keeping the writer's space count true while the *agent* deletes the logs it shipped.
//!
//! [`hrl::LogWriter::total_bytes`] (what its space cap, `WriterConfig::max_total_bytes`,
//! compares with) counts every log the writer sealed or found at open. Here the writer lives
//! in the target while the agent ships the logs and deletes them itself
//! (`primary/src/source.rs`, `release_in`): without a recount the writer would count every
//! log it ever sealed, and after `--log-cap` bytes of logs in its lifetime record every
//! change as a gap and refuse every tag.
//!
//! So the target recounts ([`hrl::LogWriter::recount_sealed`]: one directory listing and a
//! `stat` per log, under the writer's mutex, off the queues' path) at each cut, after each
//! rotation, when a tag does not fit, and — at most once a second — when a change did not
//! fit.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use hrl::LogWriter;

use super::{Inner, lock};

/// Recount at most this often because changes hit the cap (a cut or a rotation recounts
/// anyway).
const RECOUNT_OVER_CAP: Duration = Duration::from_secs(1);

/// When the writer's sealed logs were last counted again.
#[derive(Debug, Default)]
pub(super) struct Space {
    /// The writer's rotations when last recounted.
    rotations: u64,
    /// When last recounted.
    last: Option<Instant>,
}

impl Space {
    /// Counting starts from what the writer counted at open.
    pub(super) fn new(w: &LogWriter) -> Self {
        Self {
            rotations: w.stats().rotations,
            last: None,
        }
    }

    /// Counts the sealed logs in the directory again (those the agent deleted drop out).
    pub(super) fn recount(&mut self, w: &mut LogWriter) {
        self.last = Some(Instant::now());
        self.rotations = w.stats().rotations;
        if let Err(e) = w.recount_sealed() {
            // Counted as before until a later recount manages: the cap is only reached early.
            tracing::warn!(error = %e, "recounting the log space");
        }
    }
}

impl Inner {
    /// After each pass of the log thread: recounts if the writer rotated since the last
    /// recount, or if a change hit the cap (at most once per [`RECOUNT_OVER_CAP`]).
    pub(super) fn maintain_space(&self) {
        let over = self.over_cap.load(Ordering::Relaxed);
        let mut guard = lock(&self.writer);
        let Some(w) = guard.as_mut() else { return };
        let mut space = lock(&self.space);
        let rotated = w.stats().rotations != space.rotations;
        let due = over && space.last.is_none_or(|t| t.elapsed() >= RECOUNT_OVER_CAP);
        if due {
            self.over_cap.store(false, Ordering::Relaxed);
        }
        if rotated || due {
            space.recount(w);
        }
    }
}
