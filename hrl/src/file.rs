//! One open log file: create atomically, append batches, seal.
//!
//! Durability protocol (each step's failure leaves no half-made log visible):
//! 1. create: write the header to `NAME.tmp`, fdatasync, rename to `NAME`, fsync the
//!    directory — a log either exists with a valid header or not at all;
//! 2. append: one `pwrite` of a whole batch at the end offset, then one fdatasync (group
//!    commit); the end offset advances only after both succeed;
//! 3. seal: `pwrite` the seal block into header sector 1, fdatasync. A crash before the seal
//!    leaves an unsealed log whose tail the reader validates record by record.
//!
//! A rotation does step 1 for log N+1 up to the rename first, then seals N, then renames
//! N+1 into the chain: a full filesystem fails it before anything changed, and a crash in
//! between leaves only a `.tmp`, which the next create removes.
//!
//! **Preallocation** (optional): the file is created already `preallocate` bytes long and
//! filled with zeros (written, not merely reserved), so appends are overwrites of allocated,
//! initialised blocks inside `i_size`. Their fdatasync then flushes data only, without a
//! filesystem journal commit. That matters when the log lives on a device that is itself
//! tracked: each journal commit would be a tracked change, logged, committed, journalled
//! again — a feedback loop. The zero tail reads as "no more records"; sealing truncates the
//! file to its records.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::format::HEADER_SIZE;
use crate::format::header::{LogHeader, SEAL_OFFSET, Seal, encode_header, encode_seal};
use crate::mapped::Mapping;
use crate::units::SeqNo;

/// When to make appended records durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SyncPolicy {
    /// fdatasync after every batch (production).
    #[default]
    Data,
    /// Never sync (benchmarks of the encoder, tests that do not model power loss).
    Never,
    /// Write each batch (one `pwrite`, so it survives the *process*) but sync only when the
    /// owner asks ([`crate::LogWriter::sync_handle`]); log creation and seals are still
    /// synced. For owners whose durability points are explicit, like a disk's flushes.
    Explicit,
}

impl SyncPolicy {
    /// Whether each batch is synced as it is written.
    pub(crate) fn syncs_batches(self) -> bool {
        self == SyncPolicy::Data
    }

    /// Whether creating and sealing a log is synced.
    pub(crate) fn syncs_structure(self) -> bool {
        self != SyncPolicy::Never
    }
}

/// An open, unsealed log file.
#[derive(Debug)]
pub(crate) struct LogFile {
    file: File,
    path: PathBuf,
    header: LogHeader,
    end: u64,
    next_seq: SeqNo,
    record_count: u64,
    /// Appends are copies into this mapping while they fit (see `mapped.rs`).
    map: Option<Mapping>,
}

impl LogFile {
    /// Creates `path` with `header` (atomically, see the module docs) up to the rename: the
    /// file exists only as `NAME.tmp`, outside the chain. [`Prepared::publish`] renames it in; [`Prepared::discard`] removes it. A
    /// rotation prepares the next log *before* sealing the current one, so a full
    /// filesystem fails the rotation with nothing changed.
    ///
    /// With a [`Spare`] at least `preallocate` long, the spare becomes the file: only the
    /// header is written (and synced), not the zeros — what keeps a rotation off the 16 MiB
    /// zero fill.
    pub(crate) fn prepare(
        path: &Path,
        header: LogHeader,
        sync: SyncPolicy,
        preallocate: u64,
        map: u64,
        spare: Option<Spare>,
    ) -> Result<Prepared> {
        if let Some(spare) = spare {
            if spare.len >= preallocate && preallocate > HEADER_SIZE as u64 {
                return Self::prepare_in(spare, path, header, sync, map);
            }
            spare.discard();
        }
        let tmp = path.with_extension("hrl.tmp");
        // A `.tmp` left by a writer that died mid-creation (e.g. while preallocating) was
        // never renamed into the chain, so it holds nothing: remove it. The caller holds
        // the directory lock, so no other writer can be creating it now.
        match std::fs::remove_file(&tmp) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(&tmp, "remove stale", e)),
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(|e| Error::io(&tmp, "create", e))?;
        let mut prepared = Prepared::new(file, path, header, tmp);
        let written = (|| {
            let file = &prepared.log.file;
            let bytes = encode_header(&header);
            file.write_all_at(&bytes, 0)
                .map_err(|e| Error::io(&prepared.tmp, "write header of", e))?;
            if preallocate > HEADER_SIZE as u64 {
                write_zeros(file, HEADER_SIZE as u64, preallocate)
                    .map_err(|e| Error::io(&prepared.tmp, "preallocate", e))?;
            }
            if sync.syncs_structure() {
                file.sync_data()
                    .map_err(|e| Error::io(&prepared.tmp, "fdatasync", e))?;
            }
            Ok(())
        })();
        if written.is_ok() && map > HEADER_SIZE as u64 {
            prepared.log.map = Mapping::new(&prepared.log.file, map);
        }
        match written {
            Ok(()) => Ok(prepared),
            Err(e) => {
                // Give the space back (a full filesystem is the usual cause).
                prepared.discard();
                Err(e)
            }
        }
    }

    /// [`Self::prepare`] in a spare: the header over its first block, synced per `sync`.
    fn prepare_in(
        spare: Spare,
        path: &Path,
        header: LogHeader,
        sync: SyncPolicy,
        map: u64,
    ) -> Result<Prepared> {
        let mut prepared = Prepared::new(spare.file, path, header, spare.path);
        let written = (|| {
            let file = &prepared.log.file;
            file.write_all_at(&encode_header(&header), 0)
                .map_err(|e| Error::io(&prepared.tmp, "write header of", e))?;
            if sync.syncs_structure() {
                file.sync_data()
                    .map_err(|e| Error::io(&prepared.tmp, "fdatasync", e))?;
            }
            Ok(())
        })();
        if let Err(e) = written {
            prepared.discard();
            return Err(e);
        }
        if map > HEADER_SIZE as u64 {
            prepared.log.map = Mapping::new(&prepared.log.file, map);
        }
        Ok(prepared)
    }

    /// Reopens an unsealed log whose valid records end at `end` (found by the reader),
    /// cutting off any torn tail, so it can be sealed.
    pub(crate) fn reopen_truncated(
        path: &Path,
        header: LogHeader,
        end: u64,
        next_seq: SeqNo,
        record_count: u64,
    ) -> Result<Self> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| Error::io(path, "open", e))?;
        file.set_len(end)
            .map_err(|e| Error::io(path, "truncate torn tail of", e))?;
        Ok(Self {
            file,
            path: path.to_owned(),
            header,
            end,
            next_seq,
            record_count,
            map: None,
        })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn file(&self) -> &File {
        &self.file
    }

    pub(crate) fn header(&self) -> &LogHeader {
        &self.header
    }

    /// The sequence number the next appended record gets.
    pub(crate) fn next_seq(&self) -> SeqNo {
        self.next_seq
    }

    /// Offset one past the last appended record.
    pub(crate) fn end(&self) -> u64 {
        self.end
    }

    /// See [`Mapping::prefault_due`]; false for an unmapped log.
    pub(crate) fn prefault_due(&self, low: usize) -> bool {
        self.map
            .as_ref()
            .is_some_and(|m| m.prefault_due(self.end, low))
    }

    /// See [`Mapping::prefault`]; `None` for an unmapped log.
    pub(crate) fn prefault(&mut self, ahead: usize) -> Option<crate::mapped::Prefault> {
        let end = self.end;
        self.map.as_mut().and_then(|m| m.prefault(end, ahead))
    }

    /// Writes a batch of encoded records at the end, then syncs per `sync`.
    pub(crate) fn append_batch(
        &mut self,
        batch: &[u8],
        records: u64,
        sync: SyncPolicy,
    ) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let mapped = self
            .map
            .as_mut()
            .is_some_and(|m| m.write_at(batch, self.end));
        if !mapped {
            self.file
                .write_all_at(batch, self.end)
                .map_err(|e| Error::io(&self.path, "append to", e))?;
        }
        if sync.syncs_batches() {
            self.file
                .sync_data()
                .map_err(|e| Error::io(&self.path, "fdatasync", e))?;
        }
        self.end += batch.len() as u64;
        self.record_count += records;
        self.next_seq = SeqNo(self.next_seq.0 + records);
        Ok(())
    }

    /// Writes the seal block and syncs; the log is then immutable. On an error the log is
    /// still open (and still appendable: at worst its preallocated tail is gone).
    pub(crate) fn seal(&mut self, recovered: bool, sync: SyncPolicy) -> Result<(PathBuf, Seal)> {
        // Unmap first: the truncate below would leave the mapping's tail unbacked.
        self.map = None;
        // Drop a preallocated zero tail: a sealed log is exactly its records.
        let len = self
            .file
            .metadata()
            .map_err(|e| Error::io(&self.path, "stat", e))?
            .len();
        if len > self.end {
            self.file
                .set_len(self.end)
                .map_err(|e| Error::io(&self.path, "trim preallocated tail of", e))?;
        }
        let seal = Seal {
            end_offset: self.end,
            record_count: self.record_count,
            next_seq: self.next_seq,
            sealed_unix_ns: crate::now_unix_ns(),
            recovered,
        };
        self.file
            .write_all_at(&encode_seal(&seal), SEAL_OFFSET as u64)
            .map_err(|e| Error::io(&self.path, "write seal of", e))?;
        if sync.syncs_structure() {
            self.file
                .sync_data()
                .map_err(|e| Error::io(&self.path, "fdatasync", e))?;
        }
        Ok((self.path.clone(), seal))
    }
}

/// A log file written but not yet in the chain (see [`LogFile::prepare`]).
#[derive(Debug)]
pub(crate) struct Prepared {
    log: LogFile,
    tmp: PathBuf,
}

impl Prepared {
    /// `file` (named `tmp` for now) as log `path` with `header` and no records yet.
    fn new(file: File, path: &Path, header: LogHeader, tmp: PathBuf) -> Self {
        Self {
            log: LogFile {
                file,
                path: path.to_owned(),
                header,
                end: HEADER_SIZE as u64,
                next_seq: header.first_seq,
                record_count: 0,
                map: None,
            },
            tmp,
        }
    }

    /// Renames the file into the chain (and fsyncs the directory per `sync`).
    pub(crate) fn publish(self, sync: SyncPolicy) -> Result<LogFile> {
        if let Err(e) = std::fs::rename(&self.tmp, &self.log.path) {
            let err = Error::io(&self.log.path, "rename into", e);
            self.discard();
            return Err(err);
        }
        if sync.syncs_structure() {
            sync_dir(&self.log.path)?;
        }
        Ok(self.log)
    }

    /// Removes the file (best effort: a leftover `.tmp` is removed by the next prepare).
    pub(crate) fn discard(self) {
        let _ = std::fs::remove_file(&self.tmp);
    }
}

/// The name of a writer's spare file in its directory: not a log name, so chain listings
/// never see it.
pub const SPARE_FILE: &str = "spare.hrl.tmp";

/// A preallocated, zero-filled file made ahead of the next rotation
/// ([`crate::LogWriter::prepare_spare`]), outside the chain until a rotation writes a header
/// into it and renames it in. A spare left by a crash is removed when the writer opens.
#[derive(Debug)]
pub(crate) struct Spare {
    file: File,
    path: PathBuf,
    len: u64,
}

impl Spare {
    /// Creates [`SPARE_FILE`] in `dir`, `len` bytes of zeros (synced per `sync`).
    pub(crate) fn create(dir: &Path, len: u64, sync: SyncPolicy) -> Result<Self> {
        let path = dir.join(SPARE_FILE);
        remove_spare(dir)?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| Error::io(&path, "create", e))?;
        let spare = Self { file, path, len };
        let made = write_zeros(&spare.file, 0, len)
            .map_err(|e| Error::io(&spare.path, "preallocate", e))
            .and_then(|()| {
                if sync.syncs_structure() {
                    spare
                        .file
                        .sync_data()
                        .map_err(|e| Error::io(&spare.path, "fdatasync", e))?;
                }
                Ok(())
            });
        match made {
            Ok(()) => Ok(spare),
            Err(e) => {
                spare.discard();
                Err(e)
            }
        }
    }

    /// Removes the file.
    pub(crate) fn discard(self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Removes a spare left in `dir` (by a crash, or a writer dropped without `close`).
pub(crate) fn remove_spare(dir: &Path) -> Result<()> {
    let path = dir.join(SPARE_FILE);
    match std::fs::remove_file(&path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(&path, "remove stale", e)),
    }
}

/// Writes zeros over `[from, to)` (real writes, so the blocks are initialised).
fn write_zeros(file: &File, from: u64, to: u64) -> std::io::Result<()> {
    let chunk = vec![0u8; 1 << 20];
    let mut at = from;
    while at < to {
        let n = usize::try_from((to - at).min(chunk.len() as u64)).unwrap_or(chunk.len());
        file.write_all_at(&chunk[..n], at)?;
        at += n as u64;
    }
    Ok(())
}

/// fsyncs the directory holding `path`, so a create or rename in it is durable.
pub(crate) fn sync_dir(path: &Path) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(dir, "fsync directory", e))
}
