//! The replica side of the checksum resync and of online verify (docs/architecture.md,
//! *Resync*): digests of the replica, repairs made durable with undo data first, the
//! persisted cursor, and the hand-over back to cycles.
//!
//! Repairs arrive as Data/Zero frames and are held in memory (at most [`MAX_PENDING_BYTES`]
//! of data, [`MAX_PENDING_FRAMES`] frames and [`MAX_PENDING_NAMED`] bytes named, zero ranges
//! included; past any of them the session is refused and its held repairs dropped) until
//! `ResyncCommit`; a commit then (1) saves what they overwrite
//! as an undo *part* when any recovery point exists (`undo/FROM.rPART.undo`, ordered after
//! every cycle before `FROM` and before cycle `FROM`'s own undo — see `crate::undo`), (2)
//! writes them, (3) fdatasyncs the replica, and (4) records the cursor in `state.json`. A
//! crash between (1) and (4) leaves the cursor behind: the agent sends that window again, a
//! new part saves the half-written bytes, and the earlier part still holds the originals
//! (the earliest saved copy wins when a point is rebuilt), so every retained point stays
//! exportable throughout.

use std::collections::BTreeMap;
use std::os::unix::fs::FileExt;

use serde::{Deserialize, Serialize};

use super::{Disk, Result, StoreError, io_err};
use crate::undo;
use base::digest::{self, Digest, Key};

/// Most repair data bytes held between two commits: 256 MiB. The agent commits after 16 MiB
/// of repairs or 64 MiB compared (docs/architecture.md, *Resync*).
pub const MAX_PENDING_BYTES: u64 = 256 << 20;
/// Most repair frames (Data and Zero) held between two commits: 256 Ki. Each costs about
/// 40 bytes besides its data, so at most ~10 MiB; a Zero frame costs that however long its
/// range. The agent holds at most ~30 Ki 4 KiB repairs between commits (64 MiB compared plus
/// six 8 MiB windows in flight): an eight-fold margin.
pub const MAX_PENDING_FRAMES: u64 = 1 << 18;
/// Most bytes the held repairs may name (data and zero ranges together): 1 GiB. A commit
/// saves what they overwrite in one undo part, so this keeps every part far below
/// [`crate::undo::MAX_ENTRIES`] (≤ 2 Mi entries even on a replica of alternating 512-byte
/// holes) and its read of the old bytes bounded; the agent names ≤ ~112 MiB per commit.
pub const MAX_PENDING_NAMED: u64 = 1 << 30;
/// 1 MiB pieces whose fine digests are kept between a coarse and a fine request.
const CACHE_PIECES: usize = 512;

/// A resync in progress, as persisted in `state.json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResyncProgress {
    /// The agent's id for this resync.
    pub id: u64,
    /// The first cycle after it.
    pub from_seq: u64,
    /// Everything in the agent's scope before this offset is repaired and durable.
    pub cursor: u64,
}

/// Per-session digest state and the repairs not yet committed.
#[derive(Debug, Default)]
pub struct ResyncSession {
    key: Option<Key>,
    /// Fine digests of recently digested 1 MiB pieces: offset → (len, fines).
    cache: BTreeMap<u64, (u64, Vec<Digest>)>,
    pending: Vec<(u64, Repair)>,
    pending_bytes: u64,
    /// Bytes the pending repairs name (data and zero ranges).
    pending_named: u64,
}

#[derive(Debug)]
enum Repair {
    Data(Vec<u8>),
    Zero(u64),
}

impl Repair {
    fn len(&self) -> u64 {
        match self {
            Self::Data(d) => d.len() as u64,
            Self::Zero(l) => *l,
        }
    }
}

impl ResyncSession {
    /// Sets the session's digest key; forgets cached digests (they were made with another).
    ///
    /// # Errors
    /// An unknown algorithm or a key of the wrong length.
    pub fn set_key(&mut self, disk: &str, algo: u8, key: &[u8]) -> Result<()> {
        let bad = |why: String| StoreError::BadRequest {
            disk: disk.into(),
            why,
        };
        let algo = digest::Algo::from_u8(algo)
            .ok_or_else(|| bad(format!("unknown digest algorithm {algo}")))?;
        self.key = Some(Key::from_bytes(algo, key).map_err(bad)?);
        self.cache.clear();
        Ok(())
    }

    fn invalidate(&mut self, offset: u64, len: u64) {
        let end = offset.saturating_add(len);
        let stale: Vec<u64> = self
            .cache
            .range(..end)
            .filter(|(o, (l, _))| o.saturating_add(*l) > offset)
            .map(|(o, _)| *o)
            .collect();
        for o in stale {
            self.cache.remove(&o);
        }
    }

    /// Forgets every cached digest (the replica changed outside the resync).
    pub fn forget_digests(&mut self) {
        self.cache.clear();
    }

    /// Drops repairs not yet committed (the session ended).
    pub fn abandon(&mut self) {
        self.pending.clear();
        self.pending_bytes = 0;
        self.pending_named = 0;
    }
}

impl Disk {
    /// The resync in progress, if any.
    #[must_use]
    pub fn resync(&self) -> Option<ResyncProgress> {
        self.state.resync
    }

    /// Starts resync `id` (cycles from `from_seq` follow it) or resumes it; returns the
    /// durable cursor. A broken chain is cleared: the resync is its repair.
    ///
    /// # Errors
    /// No completed copy, a `from_seq` not after the last applied cycle, or a file error.
    pub fn resync_begin(&mut self, id: u64, from_seq: u64) -> Result<u64> {
        if !self.state.copy.is_some_and(|c| c.done) {
            return Err(StoreError::BadRequest {
                disk: self.name().into(),
                why: "resync before the initial copy completed".into(),
            });
        }
        // Cycles acknowledged but not applied yet come first (see `Disk::apply_pending`).
        self.apply_pending()?;
        let bad = |why: String| StoreError::BadRequest {
            disk: self.name().into(),
            why,
        };
        if let Some(a) = self.state.applied
            && from_seq <= a.seq
        {
            return Err(bad(format!(
                "resync {id} would be followed by cycle {from_seq}, but cycle {} is already applied",
                a.seq
            )));
        }
        if let Some(r) = self.state.resync
            && r.id == id
            && r.from_seq == from_seq
        {
            return Ok(r.cursor);
        }
        self.state.resync = Some(ResyncProgress {
            id,
            from_seq,
            cursor: 0,
        });
        self.state.broken = None;
        self.save()?;
        Ok(0)
    }

    /// Digests of the replica over `ranges`: per 1 MiB piece of each range (`coarse`) or per
    /// 4 KiB block.
    ///
    /// # Errors
    /// No key, ranges outside the disk, unaligned or over the caps, or a read error.
    pub fn digests(
        &self,
        sess: &mut ResyncSession,
        coarse: bool,
        ranges: &[(u64, u64)],
    ) -> Result<Vec<Digest>> {
        let name = self.name().to_string();
        let bad = |why: String| StoreError::BadRequest {
            disk: name.clone(),
            why,
        };
        let Some(key) = sess.key.as_ref() else {
            return Err(bad("DigestReq before DigestKey".into()));
        };
        if ranges.len() > proto::MAX_DIGEST_RANGES {
            return Err(bad(format!("{} ranges in one DigestReq", ranges.len())));
        }
        let mut total = 0u64;
        for &(o, l) in ranges {
            self.check_range(o, l)?;
            if o % digest::FINE as u64 != 0
                || (l % digest::FINE as u64 != 0 && o + l != self.state.size)
                || l == 0
            {
                return Err(bad(format!("digest range {o}+{l} is not 4 KiB aligned")));
            }
            total = total.saturating_add(l);
        }
        if total > proto::MAX_DIGEST_BYTES {
            return Err(bad(format!("a DigestReq of {total} bytes")));
        }
        let key = key.clone();
        let mut out = Vec::new();
        let mut buf = Vec::new();
        let mut fines = Vec::new();
        let mut coarse_d = Vec::new();
        for &(o, l) in ranges {
            let mut at = o;
            while at < o + l {
                let n = (o + l - at).min(digest::COARSE as u64);
                let cached = sess
                    .cache
                    .get(&at)
                    .filter(|(cl, _)| *cl == n)
                    .map(|(_, f)| f.clone());
                let piece_fines = match cached {
                    Some(f) => f,
                    None => {
                        let len = usize::try_from(n).map_err(|_| bad("piece too large".into()))?;
                        buf.resize(len, 0);
                        self.replica
                            .read_exact_at(&mut buf, at)
                            .map_err(io_err(&name, format!("reading replica.img at {at}")))?;
                        fines.clear();
                        coarse_d.clear();
                        key.digest(&buf, &mut fines, &mut coarse_d);
                        if coarse {
                            if sess.cache.len() >= CACHE_PIECES {
                                sess.cache.pop_first();
                            }
                            sess.cache.insert(at, (n, fines.clone()));
                        }
                        fines.clone()
                    }
                };
                if coarse {
                    out.push(key.coarse(&piece_fines));
                } else {
                    out.extend_from_slice(&piece_fines);
                }
                at += n;
            }
        }
        Ok(out)
    }

    /// Holds one repair frame until the next commit.
    ///
    /// # Errors
    /// No resync in progress, a range outside the disk, or past a cap on what is held
    /// uncommitted (module docs).
    pub fn resync_put(&self, sess: &mut ResyncSession, frame: proto::Frame) -> Result<()> {
        let bad = |why: String| StoreError::BadRequest {
            disk: self.name().into(),
            why,
        };
        if self.state.resync.is_none() {
            return Err(bad("repair data without a resync in progress".into()));
        }
        let (offset, r) = match frame {
            proto::Frame::Data { offset, data } => (offset, Repair::Data(data)),
            proto::Frame::Zero { offset, len } => (offset, Repair::Zero(len)),
            proto::Frame::Control(m) => return Err(bad(format!("{} as repair data", m.name()))),
        };
        self.check_range(offset, r.len())?;
        // Memory held: the data, and per frame its entry (a zero range's however long it is).
        if sess.pending.len() as u64 >= MAX_PENDING_FRAMES {
            return Err(bad(format!(
                "more than {MAX_PENDING_FRAMES} repair frames without a ResyncCommit"
            )));
        }
        sess.pending_named = sess.pending_named.saturating_add(r.len());
        if sess.pending_named > MAX_PENDING_NAMED {
            return Err(bad(format!(
                "repairs naming more than {MAX_PENDING_NAMED} bytes without a ResyncCommit"
            )));
        }
        if let Repair::Data(d) = &r {
            sess.pending_bytes += d.len() as u64;
        }
        if sess.pending_bytes > MAX_PENDING_BYTES {
            return Err(bad(format!(
                "more than {MAX_PENDING_BYTES} bytes of repairs without a ResyncCommit"
            )));
        }
        sess.pending.push((offset, r));
        Ok(())
    }

    /// Makes the held repairs durable (undo part first when points exist) and records
    /// `cursor`.
    ///
    /// # Errors
    /// No resync in progress, a cursor past the end or going backwards, or a file error.
    pub fn resync_commit(&mut self, sess: &mut ResyncSession, cursor: u64) -> Result<()> {
        let name = self.name().to_string();
        let Some(mut r) = self.state.resync else {
            return Err(StoreError::BadRequest {
                disk: name,
                why: "ResyncCommit without a resync in progress".into(),
            });
        };
        if cursor > self.state.size {
            return Err(StoreError::BadRequest {
                disk: name,
                why: format!("resync cursor {cursor} is past the end of the disk"),
            });
        }
        let pending = std::mem::take(&mut sess.pending);
        sess.pending_bytes = 0;
        sess.pending_named = 0;
        if !pending.is_empty() {
            let ranges =
                base::ranges::normalize(pending.iter().map(|(o, r)| (*o, r.len())).collect());
            // Only what the interval has not saved yet, and only when a point needs it
            // (`compact.rs`).
            if let Some(ranges) = self
                .undo_needed(r.from_seq, &ranges)
                .filter(|n| !n.is_empty())
            {
                let est = undo::estimate(&mut &self.replica, &ranges, undo::MAX_ENTRIES)
                    .map_err(io_err(&name, "finding the replica's data"))?;
                self.check_history_room(r.from_seq, est)?;
                let dir = self.dir.join("undo");
                let part = undo::next_part(&dir, r.from_seq)
                    .map_err(io_err(&name, "listing undo parts"))?;
                let idx = undo::write_part(
                    &dir,
                    r.from_seq,
                    part,
                    base::now_ns(),
                    &ranges,
                    &self.replica,
                )
                .map_err(|e| {
                    // Give a partial file's space back (out of space, typically).
                    let tmp = format!("{}.tmp", undo::file_name(r.from_seq, Some(part)));
                    let _ = std::fs::remove_file(dir.join(tmp));
                    io_err(&name, format!("writing undo part {part} of the resync"))(e)
                })?;
                self.note_undo(idx);
            }
            for (o, rep) in pending {
                sess.invalidate(o, rep.len());
                match rep {
                    Repair::Data(d) => self.write_data(o, &d)?,
                    Repair::Zero(l) => self.write_zero(o, l)?,
                }
            }
            self.replica
                .sync_data()
                .map_err(io_err(&name, "syncing replica.img"))?;
        }
        r.cursor = cursor;
        self.state.resync = Some(r);
        self.save()
    }

    /// Resync `id` is complete: cycles from `from_seq` follow. The cycles it skipped are
    /// recorded so older points stay rebuildable from the undo data around them.
    ///
    /// # Errors
    /// Another resync (or none) is in progress, or a file error.
    pub fn resync_done(&mut self, sess: &mut ResyncSession, id: u64, from_seq: u64) -> Result<()> {
        let name = self.name().to_string();
        match self.state.resync {
            Some(r) if r.id == id && r.from_seq == from_seq => {}
            other => {
                return Err(StoreError::BadRequest {
                    disk: name,
                    why: format!(
                        "ResyncDone for resync {id} (cycles from {from_seq}), but the resync in progress is {other:?}"
                    ),
                });
            }
        }
        if !sess.pending.is_empty() {
            self.resync_commit(sess, self.state.size)?;
        }
        let first_skipped = self
            .state
            .applied
            .map(|a| a.seq + 1)
            .into_iter()
            .chain(self.state.base_seq)
            .chain(self.state.copy.map(|c| c.from_seq))
            .max()
            .unwrap_or(0);
        if from_seq > first_skipped {
            self.points.skipped.push((first_skipped, from_seq - 1));
            self.save_points()?;
        }
        self.state.base_seq = Some(from_seq);
        self.state.resync = None;
        self.state.broken = None;
        self.save()
    }
}
