//! Opening a replica: [`Disk::open`] (an existing one, finishing what a crash left staged),
//! [`Disk::attach`] (created on first attach) with its checks, and [`Disk::adopt`] (reverse
//! replication: the old primary's own disk becomes the replica).

use std::fs::{self, File, OpenOptions};
use std::path::Path;

use super::{
    AttachRequest, CopyProgress, Disk, DiskCounters, DiskState, Result, StoreError, disk_dir,
    io_err,
};
use crate::points::{PointsFile, Retention};
use crate::undo;

impl Disk {
    /// Opens an existing replica and finishes any cycle a crash left staged. A staged cycle
    /// that cannot be applied does not keep the disk closed (its points stay available): a
    /// transient failure is kept as [`Disk::fault`], a lasting one marks the disk broken (see
    /// the parent module's docs).
    ///
    /// # Errors
    /// Missing or corrupt state or undo data, or the staging directory cannot be read.
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
            fault: None,
            undo_cap: undo::MAX_ENTRIES,
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
            return Self::create_new(dir, state, replica);
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
        Self::create_new(dir, state, replica)
    }

    /// A disk's store just made: no points, no undo data, default retention; saved.
    fn create_new(dir: std::path::PathBuf, state: DiskState, replica: File) -> Result<Self> {
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
            fault: None,
            undo_cap: undo::MAX_ENTRIES,
        };
        d.save()?;
        Ok(d)
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
