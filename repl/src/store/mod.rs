//! The secondary's store of replicas: one directory per disk, crash-safe.
//!
//! ```text
//! STORE/disks/NAME/state.json     DiskState (written atomically: tmp + fsync + rename + dir fsync)
//! STORE/disks/NAME/replica.img    the replica, a sparse file of the disk's size
//! STORE/disks/NAME/staging/SEQ.cycle          a staged cycle (see below), durable before it is acked
//! STORE/disks/NAME/staging/SEQ.cycle.tmp.E    a cycle being received by session epoch E
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

use std::fs::{self, File, OpenOptions};
use std::io::{BufReader, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use proto::{Frame, Msg};
use serde::{Deserialize, Serialize};

use crate::points::{PointsFile, Retention};
use crate::undo::{self, UndoIndex};

mod points;
mod resync;
mod staging;

pub use resync::{MAX_PENDING_BYTES, ResyncProgress, ResyncSession};
pub use staging::Staging;
use staging::read_frame_sync;

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
    points: PointsFile,
    retention: Retention,
}

/// What [`Disk::attach`] was asked for.
#[derive(Debug, Clone)]
pub struct AttachRequest<'a> {
    /// Disk name (validated by the caller with [`crate::valid_disk_name`]).
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

/// Writes `bytes` to `path` atomically and durably.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let written = File::create(&tmp).and_then(|mut f| {
        f.write_all(bytes)?;
        f.sync_all()
    });
    if let Err(e) = written {
        // Out of space, typically: give back what the partial copy holds; `path` is intact.
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        File::open(dir)?.sync_all()?;
    }
    Ok(())
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
                    && crate::valid_disk_name(n)
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
    /// Opens an existing replica and finishes any cycle a crash left staged.
    ///
    /// # Errors
    /// Missing or corrupt state, or a staged cycle that cannot be applied.
    pub fn open(store: &Path, name: &str) -> Result<Self> {
        let dir = disk_dir(store, name);
        let state_path = dir.join("state.json");
        let text = fs::read(&state_path).map_err(io_err(name, "reading state.json"))?;
        let state: DiskState = serde_json::from_slice(&text).map_err(|e| StoreError::Corrupt {
            disk: name.into(),
            path: state_path.clone(),
            why: e.to_string(),
        })?;
        if state.version != 1 {
            return Err(StoreError::Corrupt {
                disk: name.into(),
                path: state_path,
                why: format!("unsupported state version {}", state.version),
            });
        }
        let replica_path = state
            .replica_device
            .clone()
            .unwrap_or_else(|| dir.join("replica.img"));
        let replica = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&replica_path)
            .map_err(io_err(name, format!("opening {}", replica_path.display())))?;
        advise_random(&replica);
        let undo_dir = dir.join("undo");
        fs::create_dir_all(&undo_dir).map_err(io_err(name, "creating undo/"))?;
        undo::clean_tmp(&undo_dir);
        let undo = undo::load_all(&undo_dir).map_err(|e| StoreError::Corrupt {
            disk: name.into(),
            path: undo_dir.clone(),
            why: e.to_string(),
        })?;
        let points_path = dir.join("points.json");
        let points = match fs::read(&points_path) {
            Ok(t) => serde_json::from_slice(&t).map_err(|e| StoreError::Corrupt {
                disk: name.into(),
                path: points_path.clone(),
                why: e.to_string(),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => PointsFile {
                version: 1,
                ..PointsFile::default()
            },
            Err(e) => return Err(io_err(name, "reading points.json")(e)),
        };
        let mut disk = Self {
            dir,
            state,
            replica,
            counters: DiskCounters::default(),
            undo,
            points,
            retention: Retention::default(),
        };
        disk.recover()?;
        disk.drop_unreconstructible_points();
        Ok(disk)
    }

    /// Opens disk `req.name`, creating its replica on first attach (owned by `req.client`),
    /// after checking the client may write it and that it is the same disk.
    ///
    /// # Errors
    /// [`StoreError::Unauthorized`], [`StoreError::Mismatch`], or a file error.
    pub fn attach(store: &Path, req: &AttachRequest<'_>) -> Result<Self> {
        let name = req.name;
        let dir = disk_dir(store, name);
        if !dir.join("state.json").exists() {
            fs::create_dir_all(dir.join("staging"))
                .map_err(io_err(name, "creating its directory"))?;
            fs::create_dir_all(dir.join("undo")).map_err(io_err(name, "creating undo/"))?;
            let replica = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(dir.join("replica.img"))
                .map_err(io_err(name, "creating replica.img"))?;
            advise_random(&replica);
            replica
                .set_len(req.size)
                .map_err(io_err(name, "sizing replica.img"))?;
            replica
                .sync_all()
                .map_err(io_err(name, "syncing replica.img"))?;
            let state = DiskState {
                version: 1,
                name: name.into(),
                disk_id: req.disk_id.clone(),
                owner: req.client.into(),
                size: req.size,
                block_size: req.block_size,
                created_unix_ns: crate::now_ns(),
                copy: None,
                applied: None,
                broken: None,
                resync: None,
                base_seq: None,
                failed_over: None,
                replica_device: None,
            };
            let mut d = Self {
                dir,
                state,
                replica,
                counters: DiskCounters::default(),
                undo: Vec::new(),
                points: PointsFile {
                    version: 1,
                    ..PointsFile::default()
                },
                retention: Retention::default(),
            };
            d.save()?;
            return Ok(d);
        }
        let d = Self::open(store, name)?;
        d.check_attach(req)?;
        Ok(d)
    }

    /// Checks that `req` may continue replicating into this (already open) disk.
    ///
    /// # Errors
    /// [`StoreError::Unauthorized`] or [`StoreError::Mismatch`].
    pub fn check_attach(&self, req: &AttachRequest<'_>) -> Result<()> {
        let name = req.name;
        if let Some(why) = &self.state.failed_over {
            return Err(StoreError::FailedOver {
                disk: name.into(),
                why: why.clone(),
            });
        }
        if self.state.owner != req.client {
            return Err(StoreError::Unauthorized {
                disk: name.into(),
                owner: self.state.owner.clone(),
                client: req.client.into(),
            });
        }
        if self.state.disk_id != req.disk_id {
            return Err(StoreError::Mismatch {
                disk: name.into(),
                why: format!(
                    "the replica belongs to disk id {}, not {} (another disk with the same name?)",
                    self.state.disk_id, req.disk_id
                ),
            });
        }
        if self.state.size != req.size || self.state.block_size != req.block_size {
            return Err(StoreError::Mismatch {
                disk: name.into(),
                why: format!(
                    "the replica is {} bytes with {}-byte blocks, the source {} bytes with {}-byte blocks",
                    self.state.size, self.state.block_size, req.size, req.block_size
                ),
            });
        }
        Ok(())
    }

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

    /// Reverse replication: makes `device` (the old primary's own disk) the replica of
    /// `req.name`, owned by `req.client`, with the copy complete at `from_seq` (the client
    /// compares the whole disk by digests next). An existing entry of that name (the
    /// previous direction's replica) is moved to `STORE/retired/NAME-<ns>` first, never
    /// deleted.
    ///
    /// # Errors
    /// The device cannot be opened or has another size, or a file error.
    pub fn adopt(
        store: &Path,
        req: &AttachRequest<'_>,
        device: &Path,
        from_seq: u64,
    ) -> Result<Self> {
        let name = req.name;
        let replica = OpenOptions::new()
            .read(true)
            .write(true)
            .open(device)
            .map_err(io_err(name, format!("opening {}", device.display())))?;
        advise_random(&replica);
        let size = {
            use std::io::{Seek, SeekFrom};
            (&replica)
                .seek(SeekFrom::End(0))
                .map_err(io_err(name, format!("sizing {}", device.display())))?
        };
        if size != req.size {
            return Err(StoreError::Mismatch {
                disk: name.into(),
                why: format!(
                    "{} is {size} bytes, the disk to reverse-replicate {} bytes",
                    device.display(),
                    req.size
                ),
            });
        }
        let dir = disk_dir(store, name);
        if dir.exists() {
            let retired = store.join("retired");
            fs::create_dir_all(&retired).map_err(io_err(name, "creating retired/"))?;
            let to = retired.join(format!("{name}-{}", crate::now_ns()));
            fs::rename(&dir, &to).map_err(io_err(
                name,
                format!("retiring the previous replica to {}", to.display()),
            ))?;
            tracing::info!(disk = name, to = %to.display(), "previous replica retired");
        }
        fs::create_dir_all(dir.join("staging")).map_err(io_err(name, "creating its directory"))?;
        fs::create_dir_all(dir.join("undo")).map_err(io_err(name, "creating undo/"))?;
        let state = DiskState {
            version: 1,
            name: name.into(),
            disk_id: req.disk_id.clone(),
            owner: req.client.into(),
            size: req.size,
            block_size: req.block_size,
            created_unix_ns: crate::now_ns(),
            copy: Some(CopyProgress {
                done: true,
                from_seq,
                cursor: req.size,
            }),
            applied: None,
            broken: None,
            resync: None,
            base_seq: None,
            failed_over: None,
            replica_device: Some(device.to_path_buf()),
        };
        let mut d = Self {
            dir,
            state,
            replica,
            counters: DiskCounters::default(),
            undo: Vec::new(),
            points: PointsFile {
                version: 1,
                ..PointsFile::default()
            },
            retention: Retention::default(),
        };
        d.save()?;
        Ok(d)
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

    /// Applies every staged cycle after the last applied one, removes stale files.
    fn recover(&mut self) -> Result<()> {
        let dir = self.staging_dir();
        fs::create_dir_all(&dir).map_err(io_err(self.name(), "creating staging/"))?;
        if let Ok(rd) = fs::read_dir(&dir) {
            for e in rd.flatten() {
                if e.file_name().to_string_lossy().contains(".cycle.tmp") {
                    let _ = fs::remove_file(e.path());
                }
            }
        }
        for (seq, path) in self.staged()? {
            if self.state.applied.is_some_and(|a| a.seq >= seq) {
                let _ = fs::remove_file(&path);
                continue;
            }
            self.apply_staged(seq, &path)?;
        }
        Ok(())
    }

    /// Applies, in chain order, the staged cycles the replica does not hold yet: a cycle is
    /// acknowledged once staged, so when its apply fails (out of space, say) the running
    /// server applies it before anything else touches the replica. The staged files stay
    /// until then, so a failure here loses nothing either.
    ///
    /// # Errors
    /// As [`Disk::apply_staged`]: a file error (out of space...) or a corrupt staged cycle.
    pub fn apply_pending(&mut self) -> Result<()> {
        for (seq, path) in self.staged()? {
            self.apply_staged(seq, &path)?;
        }
        Ok(())
    }

    // ---- initial copy -------------------------------------------------------------------

    /// A copy starts: `restart` (or a different `from_seq`) discards the old cursor, and any
    /// staged cycle (the copy supersedes it).
    ///
    /// # Errors
    /// A file error.
    pub fn copy_begin(&mut self, from_seq: u64, restart: bool) -> Result<CopyProgress> {
        let keep = !restart
            && self
                .state
                .copy
                .is_some_and(|c| c.from_seq == from_seq && !c.done);
        if !keep {
            for (_, p) in self.staged()? {
                let _ = fs::remove_file(p);
            }
            // The copy rewrites the replica without undo data: no older point survives it.
            // (The checksum resync that replaces full re-copies keeps them.)
            self.points.points.clear();
            self.points.judged_upto = None;
            self.save_points()?;
            for u in std::mem::take(&mut self.undo) {
                let _ = fs::remove_file(&u.path);
            }
            self.points.skipped.clear();
            self.save_points()?;
            self.state.copy = Some(CopyProgress {
                done: false,
                from_seq,
                cursor: 0,
            });
            self.state.broken = None;
            self.state.resync = None;
            self.state.base_seq = None;
            self.save()?;
        }
        Ok(self.state.copy.unwrap_or(CopyProgress {
            done: false,
            from_seq,
            cursor: 0,
        }))
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
        let path = staging.finish(self.name(), end)?;
        self.counters.cycles_staged += 1;
        Ok(path)
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
        let cut_time_ns = self.walk_staged(seq, path, Some(&mut ranges))?;
        let bytes: u64 = ranges.iter().map(|r| r.1).sum();
        self.ensure_undo(seq, cut_time_ns, ranges)?;
        self.walk_staged(seq, path, None)?;
        let name = self.name().to_string();
        self.replica
            .sync_data()
            .map_err(io_err(&name, "syncing replica.img"))?;
        let applied = AppliedCycle {
            seq,
            cut_time_ns,
            applied_unix_ns: crate::now_ns(),
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
    /// `check` — or, without `check`, writes it to the replica. Returns its cut time.
    fn walk_staged(
        &mut self,
        seq: u64,
        path: &Path,
        mut check: Option<&mut Vec<(u64, u64)>>,
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
        loop {
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

/// Tells the kernel the replica is read at random (the undo capture reads the old bytes of
/// every range a cycle overwrites). Without it, reads at rising offsets across a big cycle
/// look sequential, readahead grows to its maximum, and on a sparse replica the kernel
/// zero-fills hundreds of KiB of holes per 4 KiB read: a profile of 50 MB/s of 4 KiB writes
/// showed 56 % of the server's CPU in that memset, and the lag never recovered once a cycle
/// grew big. Advice only: an error is ignored (the device may not support it).
fn advise_random(f: &File) {
    let _ = nix::fcntl::posix_fadvise(f, 0, 0, nix::fcntl::PosixFadviseAdvice::POSIX_FADV_RANDOM);
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
        Err(nix::errno::Errno::EOPNOTSUPP) => {
            let zeros = vec![0u8; 1 << 20];
            let mut at = offset;
            let end = offset + len;
            while at < end {
                let n = usize::try_from((end - at).min(1 << 20)).unwrap_or(1 << 20);
                f.write_all_at(&zeros[..n], at)?;
                at += n as u64;
            }
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

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
