//! A crash-consistent point in every slot of `crash_points_every` under sustained writes:
//! when one is due, a converging series of quick cuts.
//!
//! **Why.** A cycle is a point only if no write raced its reads (`crate::cycle::raced`):
//! nothing recorded between its cut and its tag may touch its ranges. A normal cycle's
//! reads are paced by the link (frames stream to the server as they are read), so under
//! churn its window is seconds long and nearly every cycle races — 1 point a minute at
//! 17,700 4 KiB writes/s on a 32 MiB hot set.
//!
//! **How.** When a point is due ([`PointState::due`]), the cycle being read triggers a
//! series the moment its reads complete (right after its tag, in `sealed.rs`): the next
//! cycle is cut at once, its (smaller) set of ranges read by [`QUICK_READERS`] threads into
//! memory — not paced by the link — and tagged as soon as the last read returns, while the
//! previous cycle still waits for its ack. Then the next round is cut at once, and so on.
//! A round's set is what was written during the previous round's read, so each round's set
//! shrinks roughly by (write rate / read rate); its race window is only its own short read,
//! and a race-free round comes within a few rounds. The series stops at the first
//! consistent round or after [`MAX_ROUNDS`]; the in-memory cycles ship in order, their data
//! exactly as read before their tag.
//!
//! **Bounds.** At most [`QUICK_MEMORY`] of cycle data is held in memory; a round whose set
//! is larger (or a whole-disk gap) is left to the normal path, and the series ends.
//!
//! **Ordering.** Tags and cuts alternate exactly as in normal cycles (tag k, then cut k+1);
//! a series never starts while a filesystem is frozen or an app-consistent point waits.
//! If a cycle read into memory is not shipped (the session failed), its cut is marked
//! inexact: a later re-read would tag it again after its first tag, which the verdict
//! would wrongly trust.
//!
//! **Slots.** A point is due when the disk has changes no point covers and none of its
//! consistent cuts lies in the current slot (`cut_time / every`), the slotting the
//! server's retention keeps one point per. Under light load every cycle is consistent and
//! no series ever runs. Rejected: "older than `every` minus a margin" — it drifts against
//! the server's slots, so a slot could end up empty.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use hrl::LogSeq;
use proto::{EncodeOpts, Frame};

use super::session::GRANULE;
use super::{Agent, DiskRt, lock};
use crate::cycle::{CycleExtents, raced, read_cycle};
use base::devread::{Chunk, DevReader};

/// Data of the cycles a series holds in memory, at most.
pub(crate) const QUICK_MEMORY: u64 = 64 << 20;
/// Rounds of one series, at most.
pub(crate) const MAX_ROUNDS: u32 = 8;
/// Reader threads of a quick round (its queue depth).
pub(crate) const QUICK_READERS: usize = 16;

const NS: u64 = 1_000_000_000;

/// When the disk's last crash-consistent point was made (agent memory, not persisted: a
/// restarted agent counts from its start).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PointState {
    /// Cut time (ns since the epoch) of the newest cycle judged crash-consistent.
    pub(crate) last_point_ns: Option<u64>,
    /// Cut time of the oldest cycle judged not consistent since then (None: every change
    /// judged so far is covered by a point).
    pub(crate) unpointed_since_ns: Option<u64>,
    /// Counted from here while there is no point yet (the agent's start).
    pub(crate) baseline_ns: u64,
}

impl PointState {
    /// No point yet, counting from `now_ns`.
    pub(crate) fn new(now_ns: u64) -> Self {
        Self {
            last_point_ns: None,
            unpointed_since_ns: None,
            baseline_ns: now_ns,
        }
    }

    /// A cycle cut at `cut_ns` was judged.
    pub(crate) fn judged(&mut self, cut_ns: u64, consistent: bool) {
        if consistent {
            self.last_point_ns = Some(self.last_point_ns.map_or(cut_ns, |l| l.max(cut_ns)));
            self.unpointed_since_ns = None;
        } else if self.unpointed_since_ns.is_none() {
            self.unpointed_since_ns = Some(cut_ns);
        }
    }

    /// Whether a point is due at `now_ns` with slots `every_secs` wide: changes no point
    /// covers, and no point cut in the current slot.
    pub(crate) fn due(&self, now_ns: u64, every_secs: u64) -> bool {
        let every = every_secs.max(1).saturating_mul(NS);
        self.unpointed_since_ns.is_some()
            && self
                .last_point_ns
                .is_none_or(|l| l / every < now_ns / every)
    }

    /// Seconds since the last point (or the baseline), if that is longer than the slot plus
    /// its grace ([`grace_secs`]) while changes wait for a point: the point is overdue.
    pub(crate) fn overdue_secs(&self, now_ns: u64, every_secs: u64) -> Option<u64> {
        self.unpointed_since_ns?;
        let age = now_ns.saturating_sub(self.last_point_ns.unwrap_or(self.baseline_ns)) / NS;
        (age > every_secs.saturating_add(grace_secs(every_secs))).then_some(age)
    }

    /// Seconds since the last point, or since the baseline before the first.
    pub(crate) fn age_secs(&self, now_ns: u64) -> f64 {
        let since = self.last_point_ns.unwrap_or(self.baseline_ns);
        #[allow(clippy::cast_precision_loss)] // seconds
        let s = now_ns.saturating_sub(since) as f64 / 1e9;
        s
    }
}

/// How late a point may be before health turns Warning: half a slot, at least 30 s (a
/// series and its cycles' acks take a few seconds).
pub(crate) fn grace_secs(every_secs: u64) -> u64 {
    (every_secs / 2).max(30)
}

/// The operator's message for an overdue point.
pub(crate) fn overdue_message(disk: &str, age_secs: u64) -> String {
    let age = if age_secs >= 120 {
        format!("{} min", age_secs / 60)
    } else {
        format!("{age_secs} s")
    };
    format!(
        "disk {disk}: no crash-consistent point for {age} (writes outrun the reads); options: \
         sitrep point {disk} --app-consistent (fsfreeze of a mounted filesystem), a lower write \
         rate, or a larger --crash-points-every"
    )
}

/// A cycle read into memory before its tag.
pub(crate) struct QuickRead {
    /// The cycle.
    pub(crate) cyc: CycleExtents,
    /// Encoded frames with their data and zero bytes.
    pub(crate) frames: Vec<(Vec<u8>, u64, u64)>,
}

/// Where a cycle cut by a series stands.
enum Slot {
    /// Cut; being read.
    Reading,
    /// Read and tagged: ship these frames.
    Ready(QuickRead),
    /// Taken by the shipping loop (its verdict not sent yet).
    Shipping,
    /// Left to the normal path.
    Normal,
}

#[derive(Default)]
struct State {
    running: bool,
    slots: BTreeMap<u64, Slot>,
    held: u64,
}

/// One disk's series (none running most of the time), shared by the shipping loop and
/// [`Series::run`] inside `ship_sealed`.
pub(crate) struct Series<'a> {
    rt: &'a DiskRt,
    st: Mutex<State>,
    start: tokio::sync::Notify,
    changed: tokio::sync::Notify,
}

impl<'a> Series<'a> {
    /// No series yet.
    pub(crate) fn new(rt: &'a DiskRt) -> Self {
        Self {
            rt,
            st: Mutex::new(State::default()),
            start: tokio::sync::Notify::new(),
            changed: tokio::sync::Notify::new(),
        }
    }

    /// Called when a cycle's reads completed (right after its tag): starts a series if a
    /// point is due, none runs and `allowed` (no frozen filesystem, no point waiting),
    /// cutting its first round now.
    ///
    /// # Errors
    /// The cut failed.
    pub(crate) fn maybe_start(&self, agent: &Agent, allowed: bool) -> Result<(), String> {
        let (pts, every) = {
            let snap = self.rt.snapshot();
            (snap.points, snap.prot.points.crash_points_every_secs)
        };
        if !allowed || lock(&self.st).running || !pts.due(base::now_ns(), every) {
            return Ok(());
        }
        let seq = agent.cut(self.rt).map_err(|e| e.to_string())?;
        let mut st = lock(&self.st);
        st.running = true;
        st.slots.insert(seq, Slot::Reading);
        drop(st);
        tracing::debug!(seq, "point due: quick cuts");
        self.start.notify_one();
        Ok(())
    }

    /// Whether a series runs or cut cycles not shipped yet.
    pub(crate) fn busy(&self) -> bool {
        let st = lock(&self.st);
        st.running || !st.slots.is_empty()
    }

    /// Waits until the series changes (a round read, the series ended).
    pub(crate) async fn changed(&self) {
        self.changed.notified().await;
    }

    /// For cycle `seq` about to ship: its in-memory read if a series made one (waiting for
    /// it while it is read); None: ship it the normal way.
    pub(crate) async fn take(&self, seq: u64) -> Option<QuickRead> {
        loop {
            {
                let mut st = lock(&self.st);
                match st.slots.get(&seq) {
                    None => return None,
                    Some(Slot::Normal | Slot::Shipping) => {
                        st.slots.remove(&seq);
                        return None;
                    }
                    Some(Slot::Ready(_)) => {
                        if let Some(Slot::Ready(q)) = st.slots.insert(seq, Slot::Shipping) {
                            st.held = st.held.saturating_sub(q.cyc.bytes);
                            return Some(q);
                        }
                    }
                    Some(Slot::Reading) => {}
                }
            }
            self.changed().await;
        }
    }

    /// Cycle `seq`'s verdict was sent.
    pub(crate) fn shipped(&self, seq: u64) {
        lock(&self.st).slots.remove(&seq);
    }

    /// Runs the series as they are started; never returns (dropped with `ship_sealed`).
    pub(crate) async fn run(&self, agent: &Agent, device: &Path, logs: &Path) {
        loop {
            self.start.notified().await;
            if let Err(e) = self.rounds(agent, device, logs).await {
                tracing::warn!("quick cuts: {e}");
            }
            let mut st = lock(&self.st);
            st.running = false;
            for s in st.slots.values_mut() {
                if matches!(s, Slot::Reading) {
                    *s = Slot::Normal;
                }
            }
            drop(st);
            self.changed.notify_one();
        }
    }

    /// The rounds of one series, the first already cut.
    async fn rounds(&self, agent: &Agent, device: &Path, logs: &Path) -> Result<(), String> {
        let first = lock(&self.st).slots.keys().next_back().copied();
        let Some(mut seq) = first else { return Ok(()) };
        for round in 1..=MAX_ROUNDS {
            let t_parse = std::time::Instant::now();
            let path = logs.join(hrl::chain::log_file_name(LogSeq(seq)));
            let size = self.rt.size;
            let cyc = tokio::task::block_in_place(|| read_cycle(&path, size, GRANULE))
                .map_err(|e| e.to_string())?;
            if cyc.whole_disk_gap.is_some() || lock(&self.st).held + cyc.bytes > QUICK_MEMORY {
                return Ok(()); // `run` leaves it to the normal path
            }
            let ranges = cyc.ranges.clone();
            let parse_ms = t_parse.elapsed().as_secs_f64() * 1000.0;
            let t_read = std::time::Instant::now();
            let frames = read_into_memory(device.to_path_buf(), size, ranges).await?;
            let read_ms = t_read.elapsed().as_secs_f64() * 1000.0;
            // Tag at once (the race window ends here), then cut the next round at once.
            let t_mark = std::time::Instant::now();
            agent.mark(self.rt, seq).map_err(|e| e.to_string())?;
            let mark_ms = t_mark.elapsed().as_secs_f64() * 1000.0;
            let t_cut = std::time::Instant::now();
            let next = if round < MAX_ROUNDS {
                Some(agent.cut(self.rt).map_err(|e| e.to_string())?)
            } else {
                None
            };
            let cut_ms = t_cut.elapsed().as_secs_f64() * 1000.0;
            let ranges = cyc.ranges.clone();
            let bytes = cyc.bytes;
            {
                let mut st = lock(&self.st);
                st.held += cyc.bytes;
                st.slots.insert(seq, Slot::Ready(QuickRead { cyc, frames }));
                if let Some(n) = next {
                    st.slots.insert(n, Slot::Reading);
                }
            }
            self.changed.notify_one();
            let exact = lock(&self.rt.cuts).get(&seq).is_some_and(|c| c.1);
            let dir = logs.to_path_buf();
            let clean = tokio::task::spawn_blocking(move || raced(&dir, seq, &ranges))
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())?
                == Some(false);
            tracing::debug!(
                seq,
                round,
                bytes,
                parse_ms,
                read_ms,
                mark_ms,
                cut_ms,
                exact,
                clean,
                "quick cut read"
            );
            match next {
                Some(n) if !(exact && clean) => seq = n,
                _ => return Ok(()),
            }
        }
        Ok(())
    }
}

impl Drop for Series<'_> {
    /// Cycles read into memory but not shipped lose their exactness (see the module docs).
    fn drop(&mut self) {
        let st = lock(&self.st);
        let mut cuts = lock(&self.rt.cuts);
        for seq in st.slots.keys() {
            if let Some(c) = cuts.get_mut(seq) {
                c.1 = false;
            }
        }
    }
}

/// Reads `ranges` of `device` with [`QUICK_READERS`] threads into encoded frames (raw:
/// compressing would slow the read that bounds the race window).
async fn read_into_memory(
    device: PathBuf,
    size: u64,
    ranges: Vec<(u64, u64)>,
) -> Result<Vec<(Vec<u8>, u64, u64)>, String> {
    let readers = QUICK_READERS.clamp(1, ranges.len().max(1));
    let mut shares = vec![Vec::new(); readers];
    for (i, r) in ranges.into_iter().enumerate() {
        shares[i % readers].push(r);
    }
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let out = std::thread::scope(|sc| {
            let hs: Vec<_> = shares
                .iter()
                .map(|sh| sc.spawn(|| read_share(&device, size, sh)))
                .collect();
            let mut all = Vec::new();
            for h in hs {
                all.extend(
                    h.join()
                        .map_err(|_| "a quick reader panicked".to_string())??,
                );
            }
            Ok(all)
        });
        let _ = tx.send(out);
    });
    rx.await
        .map_err(|_| "the quick reader stopped".to_string())?
}

/// One reader's share, as encoded frames.
fn read_share(
    device: &Path,
    size: u64,
    ranges: &[(u64, u64)],
) -> Result<Vec<(Vec<u8>, u64, u64)>, String> {
    let mut r = DevReader::open(device, size, proto::MAX_DATA).map_err(|e| e.to_string())?;
    let mut enc = proto::Encoder::new(EncodeOpts {
        compress_level: None,
    });
    let mut out = Vec::new();
    for &(s, e) in ranges {
        r.read_range(s, e, |c| {
            let (frame, data, zero) = match c {
                Chunk::Data { offset, bytes } => (
                    Frame::Data {
                        offset,
                        data: bytes.to_vec(),
                    },
                    bytes.len() as u64,
                    0,
                ),
                Chunk::Zero { offset, len } => (Frame::Zero { offset, len }, 0, len),
            };
            let mut bytes = Vec::new();
            enc.encode(&frame, &mut bytes)
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            out.push((bytes, data, zero));
            Ok::<(), std::io::Error>(())
        })
        .map_err(|e| e.to_string())?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = NS;

    #[test]
    fn a_point_is_due_once_per_slot_only_while_changes_are_unpointed() {
        let mut p = PointState::new(0);
        // Nothing judged yet: nothing to cover.
        assert!(!p.due(100 * S, 10));
        // A racing cycle with no point yet: due.
        p.judged(5 * S, false);
        assert!(p.due(6 * S, 10));
        // A point cut at 12 s covers slot [10, 20): not due again until 20 s.
        p.judged(12 * S, true);
        p.judged(13 * S, false);
        assert!(!p.due(19 * S, 10));
        assert!(p.due(20 * S, 10));
        // Light load: every cycle consistent, never due.
        p.judged(21 * S, true);
        assert!(!p.due(45 * S, 10));
    }

    #[test]
    fn overdue_after_a_slot_and_its_grace_while_unpointed() {
        let mut p = PointState::new(0);
        p.judged(10 * S, true);
        p.judged(20 * S, false);
        // every 60 s, grace 30 s: overdue past 90 s after the point.
        assert_eq!(p.overdue_secs(100 * S, 60), None);
        assert_eq!(p.overdue_secs(101 * S, 60), Some(91));
        // A point clears it; so does an idle disk (nothing unpointed).
        p.judged(101 * S, true);
        assert_eq!(p.overdue_secs(500 * S, 60), None);
        // Before any point: counted from the baseline.
        let mut q = PointState::new(50 * S);
        q.judged(60 * S, false);
        // every 10 s, grace 30 s: overdue past 40 s after the baseline.
        assert_eq!(q.overdue_secs(90 * S, 10), None);
        assert_eq!(q.overdue_secs(91 * S, 10), Some(41));
        assert_eq!(grace_secs(300), 150);
        let m = overdue_message("db", 420);
        assert!(
            m.starts_with("disk db: no crash-consistent point for 7 min"),
            "{m}"
        );
    }

    #[test]
    fn a_late_verdict_of_an_older_cut_does_not_move_the_point_back() {
        let mut p = PointState::new(0);
        p.judged(30 * S, true);
        p.judged(20 * S, true);
        assert_eq!(p.last_point_ns, Some(30 * S));
    }
}
