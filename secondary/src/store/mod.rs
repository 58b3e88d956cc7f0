//! The secondary's store of replicas: one directory per disk, crash-safe.
//!
//! ```text
//! STORE/disks/NAME/state.json     DiskState (written atomically: tmp + fsync + rename + dir fsync)
//! STORE/disks/NAME/policy.json    the recovery-point policy its agent asked for (`policy.rs`)
//! STORE/disks/NAME/replica.img    the replica, a sparse file of the disk's size
//! STORE/disks/NAME/staging/SEQ.cycle          a staged cycle (see below), durable before it is acked
//! STORE/disks/NAME/staging/SEQ.cycle.tmp.E    a cycle being received by session epoch E
//! STORE/disks/NAME/staging/SEQ.cycle.unapplied  a staged cycle that could not be applied (kept)
//! ```
//!
//! **Staged cycle file** (format version 1): the 8 bytes `SRSTAGE1`, then protocol frames
//! (docs/protocol.md, never compressed here): one `Control(CycleBegin)`, any number of
//! `Data`/`Zero`, one `Control(CycleEnd)` whose counts match. Every frame carries its own
//! CRC, so a staged file that does not read back whole is refused, never half-applied.
//!
//! **Apply is a redo log.** A cycle is staged and fsynced before the agent is told it may drop
//! its log; it is then read back and checked whole (every frame's CRC, the counts) — a
//! corrupt staged cycle never touches the replica — written into the replica, the replica is
//! fdatasynced, `state.json`
//! records it as applied, and only then is the staged file removed. A crash anywhere in that
//! sequence leaves the staged file in place and `applied` behind it, so [`Disk::open`]
//! applies it again. Every frame carries absolute contents (the data of a range, or "this
//! range is zero"), and the ranges of one cycle do not depend on each other's order, so
//! applying a cycle twice, or completing a half-applied one, yields exactly the state after
//! the whole cycle. Cycles apply strictly in chain order.
//!
//! **Acknowledged means applicable.** Everything that could make a cycle fail to apply for
//! good is checked before its `CycleAck`: its ranges lie inside the disk, its counts match,
//! it stays within the frame and byte caps (`staging`), and its undo data fits an undo file
//! ([`crate::undo::estimate_entries`] over the replica's allocated extents under its ranges).
//! What remains is the transient (out of space, an I/O error), which a later apply retries.
//! A staged cycle that still cannot be applied (damaged, or written by an older version
//! without these checks) does not keep its disk from opening: it is moved aside to
//! `staging/SEQ.cycle.unapplied` (kept, never deleted), the disk is marked broken with the
//! cause (status Critical; cycles refused with `BrokenChain`, so the agent runs a whole-disk
//! checksum resync), and its points stay available for export and failover.
//!
//! **Caps on what one peer can make the server hold** (each past-cap request is refused with
//! a clear error; the disk, and every other disk, go on for the next honest session):
//! frames per cycle [`MAX_CYCLE_FRAMES`] (and [`max_cycle_frames`] of the disk), bytes named
//! per cycle ≤ the disk's size (so a staged file ≤ size + 32 bytes a frame, and at most one
//! staged file per disk plus one being received per session), undo entries per file
//! [`crate::undo::MAX_ENTRIES`], and for a resync, between two commits,
//! [`MAX_PENDING_BYTES`] of data, [`MAX_PENDING_FRAMES`] frames and [`MAX_PENDING_NAMED`]
//! bytes named.

use std::fs::{self, File};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use proto::Frame;
use serde::{Deserialize, Serialize};

use crate::undo::UndoIndex;
use base::points::{PointsFile, Retention};

mod apply;
mod budget;
mod changed;
mod compact;
mod open;
mod phase;
mod points;
mod policy;
mod resync;
pub mod retired;
mod staging;
mod usage;

pub use budget::{DEFAULT_MULTIPLE, FREE_SPACE_RESERVE, HistoryBudget, MIN_BUDGET, reserve};
pub use open::{check_attach_state, read_state};
pub use resync::{
    MAX_PENDING_BYTES, MAX_PENDING_FRAMES, MAX_PENDING_NAMED, ResyncProgress, ResyncSession,
};
pub use staging::{MAX_CYCLE_FRAMES, Staging, max_cycle_frames};

/// Magic at the start of a staged cycle file.
pub const STAGE_MAGIC: &[u8; 8] = b"SRSTAGE1";

/// Why the store refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A file operation failed.
    #[error("disk {disk}: {what}: {source}")]
    Io {
        /// The disk.
        disk: String,
        /// What was being done (names the file).
        what: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The client may not write this disk.
    #[error("disk {disk}: replicated by '{owner}'; client '{client}' may not write it")]
    Unauthorized {
        /// The disk.
        disk: String,
        /// Its owner.
        owner: String,
        /// Who asked.
        client: String,
    },
    /// Attach with a different disk id or geometry than the replica's.
    #[error("disk {disk}: {why}")]
    Mismatch {
        /// The disk.
        disk: String,
        /// What differs.
        why: String,
    },
    /// The chain of cycles is broken: operator action (a resync) is needed.
    #[error("disk {disk}: broken chain: {why}")]
    BrokenChain {
        /// The disk.
        disk: String,
        /// What was expected and what came.
        why: String,
    },
    /// The peer sent something invalid (out-of-range extent, wrong counts, ...).
    #[error("disk {disk}: {why}")]
    BadRequest {
        /// The disk.
        disk: String,
        /// What was wrong.
        why: String,
    },
    /// The disk failed over on this site: it takes no more replication.
    #[error("disk {disk}: failed over on this site ({why}); it takes no more cycles")]
    FailedOver {
        /// The disk.
        disk: String,
        /// When and to which point.
        why: String,
    },
    /// Reverse replication refused: both sites wrote the disk since the failover.
    #[error("disk {disk}: split brain: {why}; nothing was overwritten")]
    SplitBrain {
        /// The disk.
        disk: String,
        /// What each side wrote.
        why: String,
    },
    /// The client may not do this to the disk (reverse replication not allowed for it).
    #[error("disk {disk}: {why}")]
    NotAllowed {
        /// The disk.
        disk: String,
        /// Why, and what this site's operator can do.
        why: String,
    },
    /// Keeping the disk's history would need more room than its cap: refused (retried)
    /// until the operator makes room.
    #[error("disk {disk}: refused to keep its history safe: {why}")]
    HistoryFull {
        /// The disk.
        disk: String,
        /// What is kept and what to do.
        why: String,
    },
    /// A cycle is past a cap the agent can reach (too many frames, undo data that would not fit
    /// an undo file): refused before it is acknowledged. Sent as `BrokenChain`, so the agent
    /// replaces the cycle with a checksum resync, which carries any change in bounded
    /// batches; the disk itself is not marked broken.
    #[error("disk {disk}: {why}; a checksum resync must replace this cycle")]
    TooLarge {
        /// The disk.
        disk: String,
        /// Which cap, and by how much.
        why: String,
    },
    /// A staged cycle or the state file is corrupt.
    #[error("disk {disk}: {path}: {why}")]
    Corrupt {
        /// The disk.
        disk: String,
        /// The file.
        path: PathBuf,
        /// What was wrong.
        why: String,
    },
}

type Result<T> = std::result::Result<T, StoreError>;

/// Initial-copy progress, as persisted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CopyProgress {
    /// The copy finished; cycles from `from_seq` apply on top.
    pub done: bool,
    /// The first log sequence whose cycles follow this copy.
    pub from_seq: u64,
    /// Everything before this byte offset is durable in the replica.
    pub cursor: u64,
}

/// The last cycle applied to the replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppliedCycle {
    /// Its log sequence number.
    pub seq: u64,
    /// When the source sealed it (source clock, ns since the epoch).
    pub cut_time_ns: u64,
    /// When it was applied here (ns since the epoch).
    pub applied_unix_ns: u64,
}

/// `state.json` of one replicated disk (version 1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskState {
    /// Format version of this file (1).
    pub version: u32,
    /// The disk's name.
    pub name: String,
    /// The protected disk's id, 32 hex digits.
    pub disk_id: String,
    /// The client identity (certificate CN) allowed to write this replica.
    pub owner: String,
    /// Disk size in bytes.
    pub size: u64,
    /// Logical block size.
    pub block_size: u32,
    /// When the replica was created (ns since the epoch).
    pub created_unix_ns: u64,
    /// Initial copy; `None` until a copy starts.
    pub copy: Option<CopyProgress>,
    /// Last applied cycle.
    pub applied: Option<AppliedCycle>,
    /// Set when the chain broke: no cycle is accepted until a new copy or a resync.
    pub broken: Option<String>,
    /// A checksum resync in progress (cycles are refused meanwhile).
    #[serde(default)]
    pub resync: Option<ResyncProgress>,
    /// Set by a completed resync: the first cycle after it.
    #[serde(default)]
    pub base_seq: Option<u64>,
    /// Set by an unplanned failover: the disk is active here and takes no more cycles.
    #[serde(default)]
    pub failed_over: Option<String>,
    /// Reverse replication: the replica is this block device (the old primary's own disk,
    /// adopted from the local agent) instead of `replica.img`.
    #[serde(default)]
    pub replica_device: Option<PathBuf>,
}

/// Counters of a disk since the server started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct DiskCounters {
    /// Data bytes received (after decompression).
    pub data_bytes: u64,
    /// Bytes announced as zero extents.
    pub zero_bytes: u64,
    /// Cycles staged.
    pub cycles_staged: u64,
    /// Cycles applied.
    pub cycles_applied: u64,
    /// Duplicate cycles acknowledged without being applied again.
    pub duplicates: u64,
}

/// One replicated disk, open.
#[derive(Debug)]
pub struct Disk {
    dir: PathBuf,
    state: DiskState,
    replica: File,
    counters: DiskCounters,
    undo: Vec<UndoIndex>,
    /// Coverage of each retained interval's undo files, keyed by the point that opens it
    /// (`compact.rs`).
    cov: std::collections::BTreeMap<u64, Vec<base::ranges::Range>>,
    points: PointsFile,
    retention: Retention,
    /// The point storage cap its agent asked for (`policy.json`; None: none).
    point_cap: Option<u64>,
    /// Why the last apply of a staged cycle failed (out of space...), until one succeeds.
    fault: Option<String>,
    /// Most undo entries a cycle may need: [`crate::undo::MAX_ENTRIES`] (a field so that unit
    /// tests can reach it with a small replica).
    undo_cap: u64,
    /// How much undo data the disk may keep ([`HistoryBudget`]).
    budget: HistoryBudget,
    /// Points being read by an export or a failover (id → readers; memory only): no
    /// retention, quota, cap or delete retires them until the reader lets go.
    held: std::collections::BTreeMap<u64, u32>,
    /// Points a retained group point needs (memory only; the group files are the record,
    /// `server/groups.rs`): retention passes over them.
    pins: std::collections::BTreeSet<u64>,
}

/// What [`Disk::attach`] was asked for.
#[derive(Debug, Clone)]
pub struct AttachRequest<'a> {
    /// Disk name (validated by the caller with [`base::valid_disk_name`]).
    pub name: &'a str,
    /// Disk id, hex.
    pub disk_id: String,
    /// Size in bytes.
    pub size: u64,
    /// Logical block size.
    pub block_size: u32,
    /// The client's certificate name.
    pub client: &'a str,
}

fn io_err(disk: &str, what: impl Into<String>) -> impl FnOnce(std::io::Error) -> StoreError {
    let disk = disk.to_string();
    let what = what.into();
    move |source| StoreError::Io { disk, what, source }
}

pub(crate) use base::files::{sync_dir, write_atomic};
pub use phase::ReplicaPhase;
pub use policy::{AskedPolicy, POLICY_FILE, POLICY_VERSION};

/// Reads a disk directory's `state.json` (None: there is none).
pub(crate) fn read_state_file(dir: &Path, name: &str) -> Result<Option<DiskState>> {
    let path = dir.join("state.json");
    let text = match fs::read(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err(name, "reading state.json")(e)),
    };
    let state: DiskState = serde_json::from_slice(&text).map_err(|e| StoreError::Corrupt {
        disk: name.into(),
        path: path.clone(),
        why: e.to_string(),
    })?;
    if state.version != 1 {
        return Err(StoreError::Corrupt {
            disk: name.into(),
            path,
            why: format!("unsupported state version {}", state.version),
        });
    }
    Ok(Some(state))
}

/// The directory of disk `name` in `store`.
#[must_use]
pub fn disk_dir(store: &Path, name: &str) -> PathBuf {
    store.join("disks").join(name)
}

/// Names of the disks in `store`.
///
/// # Errors
/// The store's directory cannot be read.
pub fn list_disks(store: &Path) -> std::io::Result<Vec<String>> {
    let dir = store.join("disks");
    let mut out = Vec::new();
    match fs::read_dir(&dir) {
        Ok(rd) => {
            for e in rd {
                let e = e?;
                if let Some(n) = e.file_name().to_str()
                    && base::valid_disk_name(n)
                    && e.path().join("state.json").exists()
                {
                    out.push(n.to_string());
                }
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    out.sort();
    Ok(out)
}

impl Disk {
    /// The persisted state.
    #[must_use]
    pub fn state(&self) -> &DiskState {
        &self.state
    }

    /// Counters since open.
    #[must_use]
    pub fn counters(&self) -> DiskCounters {
        self.counters
    }

    /// Why a staged (acknowledged) cycle is not applied yet — a transient failure such as a
    /// full file system, retried before the next cycle — or `None`. (A cycle that can never
    /// be applied marks the disk broken instead: [`DiskState::broken`].)
    #[must_use]
    pub fn fault(&self) -> Option<&str> {
        self.fault.as_deref()
    }

    /// Marks the disk failed over (`why`: when, to which point): sessions are refused from
    /// now on.
    ///
    /// # Errors
    /// The state cannot be saved.
    pub fn set_failed_over(&mut self, why: String) -> Result<()> {
        self.state.failed_over = Some(why);
        self.save()
    }

    /// Deletes every recovery point and its undo data (a committed failover).
    ///
    /// # Errors
    /// A file error.
    pub fn drop_points(&mut self) -> Result<()> {
        self.points.points.clear();
        self.save_points()?;
        self.cov.clear();
        for u in std::mem::take(&mut self.undo) {
            let _ = fs::remove_file(&u.path);
        }
        Ok(())
    }

    /// The disk's directory in the store.
    #[must_use]
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The replica image's path.
    #[must_use]
    pub fn replica_path(&self) -> PathBuf {
        self.state
            .replica_device
            .clone()
            .unwrap_or_else(|| self.dir.join("replica.img"))
    }

    fn name(&self) -> &str {
        &self.state.name
    }

    fn save(&mut self) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(&self.state).map_err(|e| StoreError::Io {
            disk: self.state.name.clone(),
            what: "encoding state.json".into(),
            source: std::io::Error::other(e),
        })?;
        write_atomic(&self.dir.join("state.json"), &bytes)
            .map_err(io_err(&self.state.name, "writing state.json"))
    }

    fn staging_dir(&self) -> PathBuf {
        self.dir.join("staging")
    }

    /// The staged (durable, not yet applied) cycles, in order.
    ///
    /// # Errors
    /// The staging directory cannot be read.
    pub fn staged(&self) -> Result<Vec<(u64, PathBuf)>> {
        let dir = self.staging_dir();
        let mut out = Vec::new();
        let rd = fs::read_dir(&dir).map_err(io_err(self.name(), "reading staging/"))?;
        for e in rd {
            let e = e.map_err(io_err(self.name(), "reading staging/"))?;
            let n = e.file_name();
            let Some(n) = n.to_str() else { continue };
            if let Some(seq) = n.strip_suffix(".cycle").and_then(|s| s.parse::<u64>().ok()) {
                out.push((seq, e.path()));
            }
        }
        out.sort();
        Ok(out)
    }

    /// The next cycle sequence this disk accepts; `None` while no copy has completed.
    ///
    /// # Errors
    /// The staging directory cannot be read.
    pub fn expected_seq(&self) -> Result<Option<u64>> {
        let Some(copy) = self.state.copy.filter(|c| c.done) else {
            return Ok(None);
        };
        let mut next = copy.from_seq.max(self.state.base_seq.unwrap_or(0));
        if let Some(a) = self.state.applied {
            next = next.max(a.seq + 1);
        }
        if let Some((s, _)) = self.staged()?.last() {
            next = next.max(s + 1);
        }
        Ok(Some(next))
    }

    // ---- initial copy -------------------------------------------------------------------

    /// A copy starts: `restart` (or a different `from_seq`) discards the old cursor, and any
    /// staged cycle (the copy supersedes it). The copy rewrites the replica without undo
    /// data, so no older point would survive it in place: if the disk has recovery points,
    /// the whole entry is retired first (`STORE/retired/`, see [`retired`]) — replica, undo
    /// data and points kept, never deleted on a peer's request — and the copy goes into a
    /// fresh entry with the same owner and id.
    ///
    /// # Errors
    /// [`StoreError::HistoryFull`] (too many retired copies), or a file error.
    pub fn copy_begin(&mut self, from_seq: u64, restart: bool) -> Result<CopyProgress> {
        let keep = !restart
            && self
                .state
                .copy
                .is_some_and(|c| c.from_seq == from_seq && !c.done);
        if keep {
            return Ok(self.state.copy.unwrap_or(CopyProgress {
                done: false,
                from_seq,
                cursor: 0,
            }));
        }
        let copy = CopyProgress {
            done: false,
            from_seq,
            cursor: 0,
        };
        if !self.points.points.is_empty() {
            self.retire_for_copy(copy)?;
            return Ok(copy);
        }
        for (_, p) in self.staged()? {
            let _ = fs::remove_file(p);
        }
        // No point exists: undo data serves none (see `Disk::verdict`).
        self.points.judged_upto = None;
        self.points.skipped.clear();
        self.save_points()?;
        self.cov.clear();
        for u in std::mem::take(&mut self.undo) {
            let _ = fs::remove_file(&u.path);
        }
        self.state.copy = Some(copy);
        self.state.broken = None;
        self.state.resync = None;
        self.state.base_seq = None;
        self.save()?;
        Ok(copy)
    }

    fn check_range(&self, offset: u64, len: u64) -> Result<()> {
        if offset
            .checked_add(len)
            .is_none_or(|end| end > self.state.size)
        {
            return Err(StoreError::BadRequest {
                disk: self.name().into(),
                why: format!(
                    "range {offset}+{len} runs past the end of the {}-byte disk",
                    self.state.size
                ),
            });
        }
        Ok(())
    }

    /// Writes `data` at `offset` of the replica.
    ///
    /// # Errors
    /// Out of range, or the write failed.
    pub fn write_data(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        self.check_range(offset, data.len() as u64)?;
        self.replica.write_all_at(data, offset).map_err(io_err(
            self.name(),
            format!("writing replica.img at {offset}"),
        ))?;
        self.counters.data_bytes += data.len() as u64;
        Ok(())
    }

    /// Makes `[offset, offset+len)` of the replica read as zeros (punching a hole).
    ///
    /// # Errors
    /// Out of range, or the file system refused.
    pub fn write_zero(&mut self, offset: u64, len: u64) -> Result<()> {
        self.check_range(offset, len)?;
        punch_zero(&self.replica, offset, len).map_err(io_err(
            self.name(),
            format!("zeroing replica.img at {offset}+{len}"),
        ))?;
        self.counters.zero_bytes += len;
        Ok(())
    }

    /// Everything before `cursor` is durable: sync the replica and record it.
    ///
    /// # Errors
    /// No copy in progress, a cursor past the end, or a file error.
    pub fn copy_checkpoint(&mut self, cursor: u64) -> Result<()> {
        if cursor > self.state.size {
            return Err(StoreError::BadRequest {
                disk: self.name().into(),
                why: format!("copy cursor {cursor} is past the end of the disk"),
            });
        }
        let Some(mut c) = self.state.copy else {
            return Err(StoreError::BadRequest {
                disk: self.name().into(),
                why: "copy checkpoint without a copy in progress".into(),
            });
        };
        self.replica
            .sync_data()
            .map_err(io_err(self.name(), "syncing replica.img"))?;
        c.cursor = cursor;
        self.state.copy = Some(c);
        self.save()
    }

    /// The copy is complete: cycles from `from_seq` follow.
    ///
    /// # Errors
    /// The copy did not reach the end, or a file error.
    pub fn copy_done(&mut self, from_seq: u64) -> Result<()> {
        self.copy_checkpoint(self.state.size)?;
        self.state.copy = Some(CopyProgress {
            done: true,
            from_seq,
            cursor: self.state.size,
        });
        self.save()
    }
}

/// What to do with an arriving cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// The next one in the chain: stage it.
    Stage,
    /// Already staged or applied: read and drop it, acknowledge it again.
    Duplicate,
}

pub(crate) fn frame_name(f: &Frame) -> &'static str {
    match f {
        Frame::Control(m) => m.name(),
        Frame::Data { .. } => "Data",
        Frame::Zero { .. } => "Zero",
    }
}

fn punch_zero(f: &File, offset: u64, len: u64) -> std::io::Result<()> {
    use nix::fcntl::{FallocateFlags, fallocate};
    let (Ok(o), Ok(l)) = (i64::try_from(offset), i64::try_from(len)) else {
        return Err(std::io::Error::other("range too large"));
    };
    match fallocate(
        f,
        FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE,
        o,
        l,
    ) {
        Ok(()) => Ok(()),
        Err(nix::errno::Errno::EOPNOTSUPP) => write_zeros(f, offset, len),
        Err(e) => Err(e.into()),
    }
}

/// Writes zeros over the *data* of `[offset, offset+len)` (where holes cannot be punched):
/// a hole already reads as zero, so the work follows the data there, not the range's length
/// (a whole-device discard of a sparse 64 TiB replica writes nothing).
fn write_zeros(f: &File, offset: u64, len: u64) -> std::io::Result<()> {
    const CHUNK: u64 = 1 << 20;
    let zeros = vec![0u8; 1 << 20];
    let end = offset.saturating_add(len);
    let mut at = offset;
    while let Some((s, t)) = crate::undo::data_run(f, at, end) {
        let mut p = s;
        while p < t {
            let n = (t - p).min(CHUNK);
            f.write_all_at(&zeros[..usize::try_from(n).unwrap_or(1 << 20)], p)?;
            p += n;
        }
        at = t;
    }
    Ok(())
}
