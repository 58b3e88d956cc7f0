//! Cycles on the replica: admitting an arriving cycle, staging it (refused before the ack
//! when it could not be applied), and applying staged cycles as a redo log (see the parent
//! module's docs), also those a crash or a failed apply left.

use std::fs::{self, File};
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use proto::{Frame, Msg};

use super::staging::{max_cycle_frames, read_frame_sync};
use super::{
    Admit, AppliedCycle, Disk, Result, STAGE_MAGIC, Staging, StoreError, frame_name, io_err,
};
use crate::undo;

impl Disk {
    /// Applies every staged cycle after the last applied one, removes stale files. A staged
    /// cycle that cannot be applied leaves the disk open (see [`Disk::apply_pending`]).
    pub(super) fn recover(&mut self) -> Result<()> {
        let dir = self.staging_dir();
        fs::create_dir_all(&dir).map_err(io_err(self.name(), "creating staging/"))?;
        if let Ok(rd) = fs::read_dir(&dir) {
            for e in rd.flatten() {
                if e.file_name().to_string_lossy().contains(".cycle.tmp") {
                    let _ = fs::remove_file(e.path());
                }
            }
        }
        self.staged()?;
        if let Err(e) = self.apply_pending() {
            tracing::error!("{e}");
        }
        Ok(())
    }

    /// Applies, in chain order, the staged cycles the replica does not hold yet: a cycle is
    /// acknowledged once staged, so when its apply fails (out of space, say) the running
    /// server applies it before anything else touches the replica. The staged files stay
    /// until then, so a failure here loses nothing either. A failure that can never clear (a
    /// damaged staged file, one past a cap) moves the cycle aside and marks the disk broken.
    ///
    /// # Errors
    /// A file error (out of space...: kept as [`Disk::fault`] until an apply succeeds), or
    /// [`StoreError::BrokenChain`] when a staged cycle cannot be applied.
    pub fn apply_pending(&mut self) -> Result<()> {
        for (seq, path) in self.staged()? {
            if let Err(e) = self.apply_staged(seq, &path) {
                return Err(self.apply_failed(seq, e));
            }
        }
        self.fault = None;
        Ok(())
    }

    /// What a failed apply of staged cycle `seq` leaves. A file error (out of space, an I/O
    /// error) may clear: it becomes the disk's fault and the cycle stays staged. Anything
    /// else (a damaged file, a range outside the disk, a cap) never clears, and applying later
    /// cycles over the hole would be wrong: cycle `seq` and any after it are renamed to
    /// `SEQ.cycle.unapplied` (kept for the operator), and the disk is marked broken, so cycles
    /// are refused and the agent runs a whole-disk checksum resync.
    fn apply_failed(&mut self, seq: u64, e: StoreError) -> StoreError {
        if matches!(e, StoreError::Io { .. }) {
            self.fault = Some(e.to_string());
            return e;
        }
        let why = format!(
            "staged cycle {seq} cannot be applied ({e}); it is kept as staging/{seq:020}.cycle.unapplied and a checksum resync of the whole disk must replace it"
        );
        self.state.broken = Some(why.clone());
        if let Err(save) = self.save() {
            self.state.broken = None;
            self.fault = Some(save.to_string());
            return save;
        }
        tracing::error!(disk = %self.name(), "{why}");
        let moved = self.staged().map(|staged| {
            for (_, p) in staged.into_iter().filter(|(s, _)| *s >= seq) {
                let to = p.with_extension("cycle.unapplied");
                if let Err(err) = fs::rename(&p, &to) {
                    tracing::error!(disk = %self.name(), "moving {} aside: {err}", p.display());
                }
            }
            File::open(self.staging_dir()).and_then(|d| d.sync_all())
        });
        if let Err(err) = moved {
            tracing::error!(disk = %self.name(), "moving staged cycles aside: {err}");
        }
        self.fault = None;
        StoreError::BrokenChain {
            disk: self.name().into(),
            why,
        }
    }

    // ---- cycles ---------------------------------------------------------------------------

    /// Decides what to do with an arriving cycle `seq`.
    ///
    /// # Errors
    /// [`StoreError::BrokenChain`] if it skips ahead (the disk is marked broken), or if no
    /// copy has completed.
    pub fn cycle_admit(&mut self, seq: u64) -> Result<Admit> {
        if let Some(b) = &self.state.broken {
            return Err(StoreError::BrokenChain {
                disk: self.name().into(),
                why: b.clone(),
            });
        }
        if let Some(r) = self.state.resync {
            return Err(StoreError::BadRequest {
                disk: self.name().into(),
                why: format!("cycle {seq} while resync {} is in progress", r.id),
            });
        }
        // A cycle acknowledged but not applied (the apply failed: out of space...) comes
        // first: the next one must never be applied over that hole.
        self.apply_pending()?;
        let Some(expected) = self.expected_seq()? else {
            return Err(StoreError::BadRequest {
                disk: self.name().into(),
                why: format!("cycle {seq} before the initial copy completed"),
            });
        };
        if seq < expected {
            self.counters.duplicates += 1;
            return Ok(Admit::Duplicate);
        }
        if seq > expected {
            let why =
                format!("expected cycle {expected}, received {seq}: cycles in between are missing");
            self.state.broken = Some(why.clone());
            self.save()?;
            return Err(StoreError::BrokenChain {
                disk: self.name().into(),
                why,
            });
        }
        Ok(Admit::Stage)
    }

    /// Starts receiving cycle `seq` into a staging file private to session `epoch`.
    ///
    /// # Errors
    /// A file error.
    pub fn stage_begin(&self, seq: u64, epoch: u64, begin: &Msg) -> Result<Staging> {
        Staging::create(self.name(), &self.staging_dir(), seq, epoch, begin)
    }

    /// Makes a fully received staging file durable under its final name.
    ///
    /// # Errors
    /// The counts do not match, or a file error.
    pub fn stage_commit(&mut self, staging: Staging, end: &Msg) -> Result<PathBuf> {
        let seq = staging.seq();
        let path = staging.finish(self.name(), end, |ranges| {
            self.check_undo_bound(seq, &base::ranges::normalize(ranges))
        })?;
        self.counters.cycles_staged += 1;
        Ok(path)
    }

    /// Refuses cycle `seq` over `ranges` (normalized) if its undo data would not fit an undo
    /// file: one entry per hole and per MiB of allocated data of the replica under them
    /// ([`undo::estimate_entries`]; the walk stops at the cap). Nothing to check when its undo
    /// file is complete already (a crash after it was written).
    ///
    /// # Errors
    /// [`StoreError::TooLarge`], or the replica's layout could not be read.
    fn check_undo_bound(&self, seq: u64, ranges: &[(u64, u64)]) -> Result<()> {
        if self.undo.iter().any(|u| u.seq == seq && u.part.is_none()) {
            return Ok(());
        }
        let Some(need) = self.undo_needed(seq, ranges) else {
            return Ok(());
        };
        let cap = self.undo_cap;
        let est = undo::estimate(&mut &self.replica, &need, cap)
            .map_err(io_err(self.name(), "finding the replica's data"))?;
        let n = est.entries;
        if n > cap {
            return Err(StoreError::TooLarge {
                disk: self.name().into(),
                why: format!(
                    "cycle {seq} overwrites more than {cap} holes and MiB of allocated replica data: its undo data would not fit an undo file"
                ),
            });
        }
        self.check_history_room(seq, est)
    }

    /// Applies staged cycle `seq` (see the module docs for why this is crash-safe).
    ///
    /// # Errors
    /// The staged file is corrupt, names ranges outside the disk, or a file error.
    pub fn apply_staged(&mut self, seq: u64, path: &Path) -> Result<AppliedCycle> {
        if let Some(a) = self.state.applied.filter(|a| a.seq >= seq) {
            // Applied already (by [`Disk::cycle_admit`] of a newer session).
            let _ = fs::remove_file(path);
            return Ok(a);
        }
        // Validate the whole file first (every frame's CRC, the counts), so a corrupt staged
        // cycle leaves the replica untouched; then write it.
        let mut ranges = Vec::new();
        // Bytes that would be saved are compared with the replica on the way: only those
        // that change need a pre-image (`changed.rs`). Nothing to compare when no point
        // needs undo data, or a crash left this cycle's undo file complete.
        let mut changes = if self.undo.iter().any(|u| u.seq == seq && u.part.is_none()) {
            None
        } else {
            self.undo_coverage(seq).map(super::changed::Changes::new)
        };
        let cut_time_ns = self.walk_staged(seq, path, Some(&mut ranges), changes.as_mut())?;
        let bytes: u64 = ranges.iter().map(|r| r.1).sum();
        let ranges = base::ranges::normalize(ranges);
        self.check_undo_bound(seq, &ranges)?;
        self.ensure_undo(
            seq,
            cut_time_ns,
            changes.map(super::changed::Changes::into_changed),
        )?;
        self.walk_staged(seq, path, None, None)?;
        let name = self.name().to_string();
        self.replica
            .sync_data()
            .map_err(io_err(&name, "syncing replica.img"))?;
        let applied = AppliedCycle {
            seq,
            cut_time_ns,
            applied_unix_ns: base::now_ns(),
        };
        let before = self.state.applied.replace(applied);
        if let Err(e) = self.save() {
            // state.json still says `before`: so must memory, so that the staged file (kept)
            // is applied again (harmless: a redo log) instead of being taken as applied.
            self.state.applied = before;
            return Err(e);
        }
        let _ = fs::remove_file(path);
        self.counters.cycles_applied += 1;
        // Counted once (a crash before this line re-applies, and may count it again: the
        // figure is informational).
        self.points.unpointed_bytes += bytes;
        Ok(applied)
    }

    /// Reads staged cycle `seq` at `path` and checks it, collecting its ranges into
    /// `check` (at most [`max_cycle_frames`] of them: more is refused, so memory stays
    /// bounded whatever the file holds) and comparing them with the replica into `changes`
    /// — or, without `check`, writes it to the replica. Returns its cut time.
    fn walk_staged(
        &mut self,
        seq: u64,
        path: &Path,
        mut check: Option<&mut Vec<(u64, u64)>>,
        mut changes: Option<&mut super::changed::Changes>,
    ) -> Result<u64> {
        let name = self.name().to_string();
        let corrupt = |why: String| StoreError::Corrupt {
            disk: name.clone(),
            path: path.to_path_buf(),
            why,
        };
        let f = File::open(path).map_err(io_err(&name, format!("opening {}", path.display())))?;
        let mut r = BufReader::with_capacity(1 << 20, f);
        let mut magic = [0u8; 8];
        r.read_exact(&mut magic)
            .map_err(|e| corrupt(format!("no magic: {e}")))?;
        if &magic != STAGE_MAGIC {
            return Err(corrupt("bad magic".into()));
        }
        let mut buf = Vec::new();
        let mut cut_time_ns = 0;
        let mut frames = 0u64;
        let mut data_bytes = 0u64;
        let mut began = false;
        let cap = max_cycle_frames(self.state.size);
        loop {
            if check.is_some() && frames > cap {
                return Err(StoreError::TooLarge {
                    disk: name.clone(),
                    why: format!("staged cycle {seq} has more than {cap} frames"),
                });
            }
            let frame = read_frame_sync(&mut r, &mut buf).map_err(&corrupt)?;
            let Some(frame) = frame else {
                return Err(corrupt("ends before its CycleEnd".into()));
            };
            match frame {
                Frame::Control(Msg::CycleBegin {
                    seq: s,
                    cut_time_ns: t,
                    ..
                }) if !began => {
                    if s != seq {
                        return Err(corrupt(format!("holds cycle {s}, named {seq}")));
                    }
                    cut_time_ns = t;
                    began = true;
                }
                Frame::Data { offset, data } if began => {
                    if let Some(r) = check.as_deref_mut() {
                        self.check_range(offset, data.len() as u64)?;
                        r.push((offset, data.len() as u64));
                        if let Some(c) = changes.as_deref_mut() {
                            c.data(&self.replica, offset, &data)
                                .map_err(io_err(&name, "comparing with replica.img"))?;
                        }
                    } else {
                        self.write_data(offset, &data)?;
                    }
                    frames += 1;
                    data_bytes += data.len() as u64;
                }
                Frame::Zero { offset, len } if began => {
                    if let Some(r) = check.as_deref_mut() {
                        self.check_range(offset, len)?;
                        r.push((offset, len));
                        if let Some(c) = changes.as_deref_mut() {
                            c.zero(&self.replica, offset, len)
                                .map_err(io_err(&name, "comparing with replica.img"))?;
                        }
                    } else {
                        self.write_zero(offset, len)?;
                    }
                    frames += 1;
                }
                Frame::Control(Msg::CycleEnd {
                    seq: s,
                    frames: f,
                    data_bytes: b,
                }) if began => {
                    if s != seq || f != frames || b != data_bytes {
                        return Err(corrupt(format!(
                            "CycleEnd says cycle {s}, {f} frames, {b} bytes; file has cycle {seq}, {frames} frames, {data_bytes} bytes"
                        )));
                    }
                    break;
                }
                other => return Err(corrupt(format!("unexpected frame {}", frame_name(&other)))),
            }
        }
        Ok(cut_time_ns)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::store::AttachRequest;

    const SIZE: u64 = 1 << 20;

    fn disk(store: &Path) -> Disk {
        let req = AttachRequest {
            name: "d",
            disk_id: "00112233445566778899aabbccddeeff".into(),
            size: SIZE,
            block_size: 512,
            client: "sitea",
        };
        let mut d = Disk::attach(store, &req).unwrap();
        d.copy_begin(10, false).unwrap();
        d.copy_done(10).unwrap();
        d
    }

    /// Stages cycle `seq` writing 4 KiB of `byte` at `offset`; returns the staged file.
    fn stage(d: &mut Disk, seq: u64, offset: u64, byte: u8) -> PathBuf {
        assert_eq!(d.cycle_admit(seq).unwrap(), Admit::Stage);
        let begin = Msg::CycleBegin {
            seq,
            log_id: [7; 16],
            cut_time_ns: 1000 + seq,
            extents: 1,
            data_bytes: 4096,
        };
        let mut s = d.stage_begin(seq, 1, &begin).unwrap();
        let data = Frame::Data {
            offset,
            data: vec![byte; 4096],
        };
        s.push("d", SIZE, &data).unwrap();
        let end = Msg::CycleEnd {
            seq,
            frames: 1,
            data_bytes: 4096,
        };
        d.stage_commit(s, &end).unwrap()
    }

    /// Cycle `seq`: one Zero frame over `[offset, offset+len)`, received up to its end.
    fn zero_cycle(d: &mut Disk, seq: u64, offset: u64, len: u64) -> Result<PathBuf> {
        assert_eq!(d.cycle_admit(seq).unwrap(), Admit::Stage);
        let begin = Msg::CycleBegin {
            seq,
            log_id: [7; 16],
            cut_time_ns: 1000 + seq,
            extents: 1,
            data_bytes: len,
        };
        let mut s = d.stage_begin(seq, 1, &begin).unwrap();
        s.push("d", SIZE, &Frame::Zero { offset, len }).unwrap();
        let end = Msg::CycleEnd {
            seq,
            frames: 1,
            data_bytes: 0,
        };
        d.stage_commit(s, &end)
    }

    #[test]
    fn a_cycle_whose_undo_would_not_fit_is_refused_before_the_ack() {
        let dir = tempfile::tempdir().unwrap();
        let mut d = disk(dir.path());
        // Six separate 4 KiB extents of data, holes between them: a discard of the whole disk
        // needs six data entries and up to seven hole entries.
        for i in 0..6u64 {
            d.write_data(i * (128 << 10), &[1u8; 4096]).unwrap();
        }
        // A recovery point (cycle 10 zeroes a block that held zeros): later cycles need undo.
        let p = zero_cycle(&mut d, 10, SIZE - 4096, 4096).unwrap();
        d.apply_staged(10, &p).unwrap();
        assert!(d.verdict(10, true, None, 0).unwrap().is_some());
        d.undo_cap = 8;
        let e = zero_cycle(&mut d, 11, 0, SIZE).unwrap_err();
        assert!(matches!(e, StoreError::TooLarge { .. }), "{e}");
        assert!(e.to_string().contains("cycle 11"), "{e}");
        // Nothing staged or applied; the disk still takes cycle 11.
        assert!(d.staged().unwrap().is_empty());
        assert!(fs::read_dir(d.staging_dir()).unwrap().next().is_none());
        assert_eq!(d.expected_seq().unwrap(), Some(11));
        let p = zero_cycle(&mut d, 11, 0, 256 << 10).unwrap();
        d.apply_staged(11, &p).unwrap();
        d.undo_cap = undo::MAX_ENTRIES;
        let p = zero_cycle(&mut d, 12, 0, SIZE).unwrap();
        d.apply_staged(12, &p).unwrap();
        assert!(fs::read(d.replica_path()).unwrap().iter().all(|&b| b == 0));
    }

    #[test]
    fn an_unapplicable_staged_cycle_is_moved_aside_and_marks_the_disk_broken() {
        let dir = tempfile::tempdir().unwrap();
        let mut d = disk(dir.path());
        let p = stage(&mut d, 10, 0, 1);
        // Damaged on disk after the ack: a frame no longer reads back.
        let mut bytes = fs::read(&p).unwrap();
        let last = bytes.len() - 40;
        bytes[last] ^= 1;
        fs::write(&p, &bytes).unwrap();
        drop(d);
        let mut d = Disk::open(dir.path(), "d").unwrap();
        let why = d.state().broken.clone().unwrap();
        assert!(why.contains("staged cycle 10"), "{why}");
        assert!(d.staged().unwrap().is_empty());
        assert_eq!(
            fs::read(p.with_extension("cycle.unapplied")).unwrap(),
            bytes
        );
        assert!(d.state().applied.is_none());
        let e = d.cycle_admit(10).unwrap_err();
        assert!(matches!(e, StoreError::BrokenChain { .. }), "{e}");
        // A resync repairs it.
        d.resync_begin(1, 11).unwrap();
        assert!(d.state().broken.is_none());
    }

    #[test]
    fn a_cycle_staged_but_not_applied_is_applied_before_the_next_one() {
        let dir = tempfile::tempdir().unwrap();
        let mut d = disk(dir.path());
        // Cycle 10 is acknowledged, then its apply fails (out of space): still staged.
        let p10 = stage(&mut d, 10, 0, 1);
        assert_eq!(d.expected_seq().unwrap(), Some(11));
        // The agent goes on with cycle 11: 10 is applied first, in chain order.
        let p11 = stage(&mut d, 11, 4096, 2);
        assert_eq!(d.state().applied.unwrap().seq, 10);
        assert!(!p10.exists());
        d.apply_staged(11, &p11).unwrap();
        // A late apply of 10 (a superseded session) changes nothing.
        assert_eq!(d.apply_staged(10, &p10).unwrap().seq, 11);
        let img = fs::read(d.replica_path()).unwrap();
        assert_eq!(&img[..4096], &[1; 4096][..]);
        assert_eq!(&img[4096..8192], &[2; 4096][..]);
        assert!(d.staged().unwrap().is_empty());
    }
}
