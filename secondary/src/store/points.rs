//! The recovery-point side of a [`Disk`]: undo data before each apply, verdicts into points,
//! retention, and rebuilding a point for export (see `crate::undo` and `base::points`).

use std::fs::{self, File};
use std::os::unix::fs::FileExt;

use super::{Disk, Result, StoreError, io_err, write_atomic};
use crate::undo;
use base::points::{Point, PointKind, Retention};

impl Disk {
    // ---- recovery points ------------------------------------------------------------------

    /// Sets the retention policy (applied at the next point).
    pub fn set_retention(&mut self, r: Retention) {
        self.retention = r;
    }

    /// Saves `need` — what cycle `seq` is about to change that its interval has not saved
    /// yet (`compact.rs`, `changed.rs`; `None`: no point needs undo data) — unless a crash
    /// already left a complete undo file for it: then the replica may be half-written and
    /// must not be read. With nothing to save, no file is written: after a crash the same
    /// nothing is computed again (an interval's coverage only grows, and bytes already
    /// written compare as unchanged).
    pub(super) fn ensure_undo(
        &mut self,
        seq: u64,
        cut_time_ns: u64,
        need: Option<Vec<(u64, u64)>>,
    ) -> Result<()> {
        if self.undo.iter().any(|u| u.seq == seq && u.part.is_none()) {
            return Ok(());
        }
        let Some(need) = need.filter(|n| !n.is_empty()) else {
            return Ok(());
        };
        let dir = self.dir.join("undo");
        let idx = undo::write(&dir, seq, cut_time_ns, &need, &self.replica).map_err(|e| {
            // Out of space, typically: give the partial file's space back (the retry
            // writes it again; the replica is untouched until it is whole).
            let _ = fs::remove_file(dir.join(format!("{}.tmp", undo::file_name(seq, None))));
            io_err(self.name(), format!("writing the undo file of cycle {seq}"))(e)
        })?;
        self.note_undo(idx);
        Ok(())
    }

    pub(super) fn save_points(&mut self) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(&self.points).map_err(|e| StoreError::Io {
            disk: self.state.name.clone(),
            what: "encoding points.json".into(),
            source: std::io::Error::other(e),
        })?;
        write_atomic(&self.dir.join("points.json"), &bytes)
            .map_err(io_err(&self.state.name, "writing points.json"))
    }

    /// Points newer than the replica (a store copied back from an older state) cannot be
    /// rebuilt: forget them. (Whether every later cycle's undo was saved is not checked per
    /// cycle: a compacted interval keeps no file for a cycle that changed only bytes saved
    /// before — completeness holds by construction, see `compact.rs`.)
    pub(super) fn drop_unreconstructible_points(&mut self) {
        let applied = self.state.applied.map_or(0, |a| a.seq);
        let before = self.points.points.len();
        self.points.points.retain(|p| p.id <= applied);
        if self.points.points.len() != before {
            tracing::warn!(disk = %self.state.name, "dropped {} recovery points newer than the replica", before - self.points.points.len());
            let _ = self.save_points();
        }
    }

    /// The source's verdict on applied cycle `seq`: if it was crash-consistent it becomes a
    /// recovery point (app-consistent when `label` says how it was quiesced). Applies the
    /// retention policy and deletes undo data no retained point needs. Returns the new point.
    ///
    /// # Errors
    /// A file error.
    pub fn verdict(
        &mut self,
        seq: u64,
        consistent: bool,
        label: Option<String>,
        now_ns: u64,
    ) -> Result<Option<Point>> {
        if let Some(l) = &label
            && l.len() > proto::MAX_LABEL_LEN
        {
            return Err(StoreError::BadRequest {
                disk: self.state.name.clone(),
                why: format!(
                    "a verdict label of {} bytes (at most {} are kept)",
                    l.len(),
                    proto::MAX_LABEL_LEN
                ),
            });
        }
        let before = self.points.clone();
        let judged_before = self.points.judged_upto;
        self.points.judged_upto = Some(judged_before.map_or(seq, |j| j.max(seq)));
        let copy_from = self.state.copy.filter(|c| c.done).map(|c| c.from_seq);
        // Only the newest applied cycle, not judged before, can become a point: the cycles
        // applied after an older one saved no undo for it (`compact.rs`).
        let newest = self.state.applied.filter(|a| a.seq == seq);
        let mut made = None;
        if consistent
            && let (Some(from), Some(applied)) = (copy_from, newest)
            && seq >= from
            && judged_before.is_none_or(|j| seq > j)
            && !self.points.points.iter().any(|p| p.id == seq)
        {
            let cut_time_ns = applied.cut_time_ns;
            let first_seq = self.points.points.last().map_or(from, |p| p.id + 1);
            let p = Point {
                id: seq,
                kind: if label.is_some() {
                    PointKind::AppConsistent
                } else {
                    PointKind::CrashConsistent
                },
                cut_time_ns,
                first_seq,
                created_unix_ns: now_ns,
                label,
                bytes: std::mem::take(&mut self.points.unpointed_bytes),
            };
            self.points.points.push(p.clone());
            self.points.points.sort_by_key(|p| p.id);
            made = Some(p);
        }
        let keep = self.retention.keep_flags(&self.points.points, now_ns);
        let retire: std::collections::BTreeSet<u64> = self
            .points
            .points
            .iter()
            .zip(&keep)
            .filter(|(p, k)| !**k && !self.is_held(p.id) && !self.pins.contains(&p.id))
            .map(|(p, _)| p.id)
            .collect();
        if let Err(e) = self.retire_points(&retire) {
            // points.json is unchanged (out of space...): so is memory.
            self.points = before;
            return Err(e);
        }
        if let Some(p) = made.as_ref().filter(|p| !retire.contains(&p.id)) {
            self.open_interval(p.id);
        }
        Ok(made)
    }

    /// Retires the points `ids` (retention, the quota, `sitrep points delete`): saves
    /// `points.json` without them, then deletes the undo data no remaining point needs.
    /// Unknown ids are ignored.
    ///
    /// # Errors
    /// `points.json` could not be written (then nothing changed on disk; the caller restores
    /// its in-memory copy).
    pub fn retire_points(&mut self, ids: &std::collections::BTreeSet<u64>) -> Result<()> {
        let old: Vec<u64> = self.points.points.iter().map(|p| p.id).collect();
        self.points.points.retain(|p| !ids.contains(&p.id));
        self.save_points()?;
        // Each retired point's interval merges into the one before it (`compact.rs`).
        self.merge_intervals(&old);
        Ok(())
    }

    /// Holds point `id` for a reader (an export, a failover's export): until
    /// [`Disk::release`], retention passes over it and the quota, the cap and `points delete`
    /// must ([`Disk::is_held`]). Returns false if there is no such point.
    pub fn hold(&mut self, id: u64) -> bool {
        if !self.points.points.iter().any(|p| p.id == id) {
            return false;
        }
        *self.held.entry(id).or_insert(0) += 1;
        true
    }

    /// Lets go of one hold on point `id` ([`Disk::hold`]).
    pub fn release(&mut self, id: u64) {
        if let Some(n) = self.held.get_mut(&id) {
            *n -= 1;
            if *n == 0 {
                self.held.remove(&id);
            }
        }
    }

    /// The points a retained group point needs: retention keeps them (the quota, a point
    /// cap and `points delete` do not ask).
    pub fn set_pins(&mut self, pins: std::collections::BTreeSet<u64>) {
        self.pins = pins;
    }

    /// True while a reader holds point `id`.
    #[must_use]
    pub fn is_held(&self, id: u64) -> bool {
        self.held.contains_key(&id)
    }

    /// Retained recovery points, oldest first.
    #[must_use]
    pub fn points(&self) -> &[Point] {
        &self.points.points
    }

    /// Bytes of undo data kept for the retained points.
    #[must_use]
    pub fn points_bytes(&self) -> u64 {
        self.undo.iter().map(|u| u.bytes).sum()
    }

    /// Fills `buf` with point `id`'s bytes at `offset`: the replica's, overlaid by what the
    /// cycles after the point overwrote (the earliest such cycle wins).
    ///
    /// # Errors
    /// No such point, out of range, or a read failed.
    pub fn export_chunk(&self, id: u64, offset: u64, buf: &mut [u8]) -> Result<()> {
        if !self.points.points.iter().any(|p| p.id == id) {
            return Err(StoreError::BadRequest {
                disk: self.name().into(),
                why: format!("no recovery point {id}"),
            });
        }
        let len = buf.len() as u64;
        self.check_range(offset, len)?;
        self.replica.read_exact_at(buf, offset).map_err(io_err(
            self.name(),
            format!("reading replica.img at {offset}"),
        ))?;
        let end = offset + len;
        for u in self.undo.iter().rev().filter(|u| u.seq > id) {
            let first = u.entries.partition_point(|e| e.end() <= offset);
            let mut file = None;
            for e in u.entries[first..].iter().take_while(|e| e.offset < end) {
                let s = e.offset.max(offset);
                let t = e.end().min(end);
                let f =
                    match &file {
                        Some(f) => f,
                        None => file.insert(File::open(&u.path).map_err(io_err(
                            self.name(),
                            format!("opening {}", u.path.display()),
                        ))?),
                    };
                let (a, b) = (
                    usize::try_from(s - offset).unwrap_or(0),
                    usize::try_from(t - offset).unwrap_or(0),
                );
                undo::read_entry(f, e, s, &mut buf[a..b])
                    .map_err(io_err(self.name(), format!("reading {}", u.path.display())))?;
            }
        }
        Ok(())
    }
}
