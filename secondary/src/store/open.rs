//! Opening a replica: [`Disk::open`] (an existing one, finishing what a crash left staged),
//! [`Disk::attach`] (created on first attach) with its checks, and [`Disk::adopt`] (reverse
//! replication: the old primary's own disk becomes the replica).

use std::fs::{self, File, OpenOptions};
use std::path::Path;

use super::{
    AttachRequest, CopyProgress, Disk, DiskCounters, DiskState, Result, StoreError, disk_dir,
    io_err, sync_dir,
};
use crate::undo;
use base::points::{PointsFile, Retention};

impl Disk {
    /// Opens an existing replica and finishes any cycle a crash left staged. A staged cycle
    /// that cannot be applied does not keep the disk closed (its points stay available): a
    /// transient failure is kept as [`Disk::fault`], a lasting one marks the disk broken (see
    /// the parent module's docs).
    ///
    /// # Errors
    /// Missing or corrupt state or undo data, or the staging directory cannot be read.
    pub fn open(store: &Path, name: &str) -> Result<Self> {
        let mut disk = Self::open_dir(disk_dir(store, name), name, false)?;
        disk.recover()?;
        disk.drop_unreconstructible_points();
        Ok(disk)
    }

    /// Opens a retired copy (`STORE/retired/NAME-<ns>`, see [`super::retired`]) to read
    /// its points: its own `replica.img` (never a device: the device moved on), read-only,
    /// no staged cycle applied, nothing written.
    ///
    /// # Errors
    /// Missing or corrupt state, points or undo data, or no replica kept.
    pub fn open_retired(dir: std::path::PathBuf, label: &str) -> Result<Self> {
        Self::open_dir(dir, label, true)
    }

    /// The disk in `dir`: its state, replica, undo index and points (no recovery).
    /// `retired`: read-only, and the replica is always `dir/replica.img`.
    fn open_dir(dir: std::path::PathBuf, name: &str, retired: bool) -> Result<Self> {
        let state = super::read_state_file(&dir, name)?.ok_or_else(|| StoreError::Corrupt {
            disk: name.into(),
            path: dir.join("state.json"),
            why: "missing".into(),
        })?;
        let replica_path = match (&state.replica_device, retired) {
            (Some(dev), false) => dev.clone(),
            _ => dir.join("replica.img"),
        };
        let replica = OpenOptions::new()
            .read(true)
            .write(!retired)
            .open(&replica_path)
            .map_err(io_err(name, format!("opening {}", replica_path.display())))?;
        advise_random(&replica);
        let undo_dir = dir.join("undo");
        if !retired {
            fs::create_dir_all(&undo_dir).map_err(io_err(name, "creating undo/"))?;
            undo::clean_tmp(&undo_dir);
        }
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
        let mut d = Self {
            dir,
            state,
            replica,
            counters: DiskCounters::default(),
            undo,
            cov: std::collections::BTreeMap::new(),
            points,
            retention: Retention::default(),
            point_cap: None,
            fault: None,
            undo_cap: undo::MAX_ENTRIES,
            held: std::collections::BTreeMap::new(),
            pins: std::collections::BTreeSet::new(),
            budget: super::HistoryBudget::default(),
        };
        d.rebuild_coverage(!retired);
        Ok(d)
    }

    /// Opens disk `req.name`, creating its replica on first attach (owned by `req.client`),
    /// after checking the client may write it and that it is the same disk.
    ///
    /// # Errors
    /// [`StoreError::Unauthorized`], [`StoreError::Mismatch`], or a file error.
    pub fn attach(store: &Path, req: &AttachRequest<'_>) -> Result<Self> {
        let name = req.name;
        let dir = disk_dir(store, name);
        if let Some(state) = read_state(store, name)? {
            // Authorize first: a client that may not write this disk never makes the server
            // open it (which applies what a crash left staged).
            check_attach_state(&state, req)?;
            let d = Self::open(store, name)?;
            d.check_attach(req)?;
            return Ok(d);
        }
        {
            fs::create_dir_all(dir.join("staging"))
                .map_err(io_err(name, "creating its directory"))?;
            fs::create_dir_all(dir.join("undo")).map_err(io_err(name, "creating undo/"))?;
            // The new directories are durable before anything in them is acknowledged.
            for d in [store.join("disks"), dir.clone()] {
                sync_dir(&d).map_err(io_err(name, format!("syncing {}", d.display())))?;
            }
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
                created_unix_ns: base::now_ns(),
                copy: None,
                applied: None,
                broken: None,
                resync: None,
                base_seq: None,
                failed_over: None,
                replica_device: None,
            };
            Self::create_new(dir, state, replica)
        }
    }

    /// Checks that `req` may continue replicating into this (already open) disk.
    ///
    /// # Errors
    /// [`StoreError::Unauthorized`] or [`StoreError::Mismatch`].
    pub fn check_attach(&self, req: &AttachRequest<'_>) -> Result<()> {
        check_attach_state(&self.state, req)
    }

    /// Reverse replication: makes `device` (the old primary's own disk) the replica of
    /// `req.name`, owned by `req.client`, with the copy complete at `from_seq` (the client
    /// compares the whole disk by digests next). An existing entry of that name (the
    /// previous direction's replica) is retired to `STORE/retired/NAME-<ns>` first, never
    /// deleted (see [`super::retired`]). The caller has authorized `req.client`.
    ///
    /// # Errors
    /// The device cannot be opened or has another size, too many retired copies
    /// ([`StoreError::HistoryFull`]), or a file error.
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
        let size = {
            use std::io::{Seek, SeekFrom};
            (&replica)
                .seek(SeekFrom::End(0))
                .map_err(io_err(name, format!("sizing {}", device.display())))?
        };
        drop(replica);
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
        let state = DiskState {
            version: 1,
            name: name.into(),
            disk_id: req.disk_id.clone(),
            owner: req.client.into(),
            size: req.size,
            block_size: req.block_size,
            created_unix_ns: base::now_ns(),
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
        let why = format!(
            "reverse replication by '{}' adopted {} under this name",
            req.client,
            device.display()
        );
        super::retired::install(store, name, &why, |dir| {
            fs::create_dir(dir.join("staging")).map_err(io_err(name, "creating staging/"))?;
            fs::create_dir(dir.join("undo")).map_err(io_err(name, "creating undo/"))?;
            let bytes = serde_json::to_vec_pretty(&state).map_err(|e| StoreError::Io {
                disk: name.into(),
                what: "encoding state.json".into(),
                source: std::io::Error::other(e),
            })?;
            super::write_atomic(&dir.join("state.json"), &bytes)
                .map_err(io_err(name, "writing state.json"))
        })?;
        Self::open(store, name)
    }

    /// A disk's store just made: no points, no undo data, default retention; saved.
    fn create_new(dir: std::path::PathBuf, state: DiskState, replica: File) -> Result<Self> {
        let mut d = Self {
            dir,
            state,
            replica,
            counters: DiskCounters::default(),
            undo: Vec::new(),
            cov: std::collections::BTreeMap::new(),
            points: PointsFile {
                version: 1,
                ..PointsFile::default()
            },
            retention: Retention::default(),
            point_cap: None,
            fault: None,
            undo_cap: undo::MAX_ENTRIES,
            held: std::collections::BTreeMap::new(),
            pins: std::collections::BTreeSet::new(),
            budget: super::HistoryBudget::default(),
        };
        d.save()?;
        Ok(d)
    }
}

/// Checks that `req` may replicate into the disk whose state is `state`: the client is its
/// owner (the certificate name that created it), it did not fail over here, and it is the
/// same disk (id, size, block size).
///
/// # Errors
/// [`StoreError::FailedOver`], [`StoreError::Unauthorized`] or [`StoreError::Mismatch`].
pub fn check_attach_state(state: &DiskState, req: &AttachRequest<'_>) -> Result<()> {
    let name = req.name;
    if state.owner != req.client {
        return Err(StoreError::Unauthorized {
            disk: name.into(),
            owner: state.owner.clone(),
            client: req.client.into(),
        });
    }
    if let Some(why) = &state.failed_over {
        return Err(StoreError::FailedOver {
            disk: name.into(),
            why: why.clone(),
        });
    }
    if state.disk_id != req.disk_id {
        return Err(StoreError::Mismatch {
            disk: name.into(),
            why: format!(
                "the replica belongs to disk id {}, not {} (another disk with the same name?)",
                state.disk_id, req.disk_id
            ),
        });
    }
    if state.size != req.size || state.block_size != req.block_size {
        return Err(StoreError::Mismatch {
            disk: name.into(),
            why: format!(
                "the replica is {} bytes with {}-byte blocks, the source {} bytes with {}-byte blocks",
                state.size, state.block_size, req.size, req.block_size
            ),
        });
    }
    Ok(())
}

/// The persisted state of disk `name` (`STORE/disks/NAME/state.json`) without opening the
/// disk — nothing is recovered or written; `None` if it has no entry. What authorization
/// decides on before anything else happens.
///
/// # Errors
/// The file cannot be read or is invalid.
pub fn read_state(store: &Path, name: &str) -> Result<Option<DiskState>> {
    super::read_state_file(&disk_dir(store, name), name)
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
