//! A [`ChangeSource`] for tests: the test writes to the "device" (a regular file) through
//! [`FakeSource::write`], and the fake logs each write into a real HRL log with the `hrl`
//! crate's writer — the same chain the eBPF tracker writes, so the agent's cycle reader,
//! its verdict and the server's reverse check read it unchanged.
//!
//! It models the tracker's contract, not its machinery: every write is logged before
//! `write` returns (so every cut is exact unless a test says otherwise), a clean
//! `remove_device`/`stop` seals the log, and the next `add_device` reports a gap unless the
//! chain was closed cleanly and nothing was written since — like the tracker's clean-stop
//! record (first start, [`FakeSource::crash`], or a write while untracked: a gap).
//!
//! The handle is shared (`Clone`): a test keeps one, gives the agent another boxed, and
//! keeps writing and asserting while the agent runs — and after it stops, so a restarted
//! agent can be given the same fake.
//!
//! **Journal mode** ([`FakeSource::journal`]) models a ublk target's `--mode journal`
//! instead: every write's data goes into a `WriteData` record appended (and committed)
//! *before* the write is performed, discards and write-zeroes are logged before the range
//! is zeroed, and the writer seals a log by itself once it passes a size, as the target
//! rotates at 16 MiB — logs the agent did not cut. [`FakeSource::log_only_write`] logs a
//! write without performing it, so a test can tell data shipped from the log from data
//! read from the device.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use hrl::{
    ChainSpec, DiskId, DiskIdentity, Extent, GapReason, GapScope, Generation, GroupId, LogReader,
    LogWriter, RecordBody, RecordFlags, RecoveryMode, Resume, SyncPolicy, WriterConfig,
};

use super::{Added, ChangeSource, Cut, SourceError, release_in, sealed_in};

/// The logical block size the fake reports for every device.
pub const BLOCK_SIZE: u32 = 512;

/// A fake change source. See the module docs.
#[derive(Clone, Default)]
pub struct FakeSource {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Default)]
struct Inner {
    disks: BTreeMap<PathBuf, Disk>,
    /// Devices whose changes since their last clean stop are not all logged (written while
    /// untracked): the next `add_device` reports a gap.
    missed: BTreeSet<PathBuf>,
    /// Cuts are reported inexact (a test of the consistency verdict).
    inexact: bool,
    /// Journal mode, sealing a log by itself past this many bytes (module docs).
    journal: Option<u64>,
}

struct Disk {
    writer: LogWriter,
    log_dir: PathBuf,
    records: u64,
    queue_marks: bool,
    /// Logs sealed by a cut (the writer's other rotations it made by itself).
    cuts: u64,
}

/// The most data one `WriteData` record of the fake carries (a longer write is logged as
/// several records, in order).
const MAX_RECORD_DATA: usize = 1 << 20;

impl Disk {
    fn append(&mut self, device: &Path, body: &RecordBody) -> Result<(), SourceError> {
        let log = |source| SourceError::Log {
            device: device.to_owned(),
            source,
        };
        self.writer
            .append(RecordFlags::empty(), body)
            .map_err(log)?;
        self.writer.commit().map_err(log)?;
        Ok(())
    }

    /// Logs `data` at `offset` as `WriteData` records (journal mode).
    fn append_data(&mut self, device: &Path, offset: u64, data: &[u8]) -> Result<(), SourceError> {
        let mut at = offset;
        for chunk in data.chunks(MAX_RECORD_DATA) {
            self.writer
                .append_write_data(RecordFlags::empty(), at, chunk)
                .map_err(|source| SourceError::Log {
                    device: device.to_owned(),
                    source,
                })?;
            self.records += 1;
            at += chunk.len() as u64;
        }
        self.writer.commit().map_err(|source| SourceError::Log {
            device: device.to_owned(),
            source,
        })?;
        Ok(())
    }
}

impl FakeSource {
    /// A fake tracking nothing yet.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A fake whose disks log in journal mode (module docs), their writer sealing a log by
    /// itself once it passes `rotate_at` bytes. A log directory holding another mode's
    /// chain is refused by `add_device`.
    #[must_use]
    pub fn journal(rotate_at: u64) -> Self {
        let f = Self::default();
        f.lock().journal = Some(rotate_at);
        f
    }

    /// Writes `data` at `offset` of `device` (a regular file) and, if it is tracked, logs
    /// it and commits before returning: the range after the write (extents mode), or the
    /// data before it (journal mode). A write to an untracked device makes its next
    /// `add_device` report a gap.
    ///
    /// # Errors
    /// The range runs past the device or is not sector aligned (journal mode), the file
    /// cannot be written, or the log failed.
    pub fn write(&self, device: &Path, offset: u64, data: &[u8]) -> Result<(), SourceError> {
        let extent = inside(device, offset, data.len() as u64)?;
        let mut g = self.lock();
        if let Some(d) = g.disks.get_mut(device).filter(|d| d.writer.spec().journal) {
            d.append_data(device, offset, data)?;
            return write_file(device, offset, data);
        }
        write_file(device, offset, data)?;
        g.log_after(device, &RecordBody::Write(vec![extent]))
    }

    /// Discards `len` bytes at `offset` of `device`: they read zeros after, as a punched
    /// hole in a file backing does. Logged as a `Discard` (before, in journal mode).
    ///
    /// # Errors
    /// As [`write`](Self::write).
    pub fn discard(&self, device: &Path, offset: u64, len: u64) -> Result<(), SourceError> {
        self.zero(device, offset, len, true)
    }

    /// Writes zeros over `len` bytes at `offset` of `device`, logged as a `WriteZeroes`
    /// (before, in journal mode).
    ///
    /// # Errors
    /// As [`write`](Self::write).
    pub fn write_zeroes(&self, device: &Path, offset: u64, len: u64) -> Result<(), SourceError> {
        self.zero(device, offset, len, false)
    }

    fn zero(&self, device: &Path, offset: u64, len: u64, discard: bool) -> Result<(), SourceError> {
        let extent = inside(device, offset, len)?;
        let zeros =
            vec![0u8; usize::try_from(len).map_err(|e| SourceError::Invalid(e.to_string()))?];
        let body = if discard {
            RecordBody::Discard(vec![extent])
        } else {
            RecordBody::WriteZeroes(vec![extent])
        };
        let mut g = self.lock();
        if let Some(d) = g.disks.get_mut(device).filter(|d| d.writer.spec().journal) {
            d.append(device, &body)?;
            d.records += 1;
            return write_file(device, offset, &zeros);
        }
        write_file(device, offset, &zeros)?;
        g.log_after(device, &body)
    }

    /// Logs a write of `data` at `offset` of a journal-mode `device` without performing it:
    /// the device keeps its bytes (what a target's log holds for a write it never performed
    /// — a crash in between). A replica holding `data` got it from the log, never from a
    /// read of the device.
    ///
    /// # Errors
    /// The device is not tracked in journal mode, the range is invalid, or the log failed.
    pub fn log_only_write(
        &self,
        device: &Path,
        offset: u64,
        data: &[u8],
    ) -> Result<(), SourceError> {
        inside(device, offset, data.len() as u64)?;
        self.with_disk(device, |d, _| {
            if !d.writer.spec().journal {
                return Err(SourceError::Invalid(format!(
                    "{} is not logged in journal mode",
                    device.display()
                )));
            }
            d.append_data(device, offset, data)
        })
    }

    /// Logs `device`'s writer sealed by itself (rotation) since it was added, as opposed to
    /// cuts; 0 if it is not tracked.
    #[must_use]
    pub fn self_sealed(&self, device: &Path) -> u64 {
        self.lock()
            .disks
            .get(device)
            .map_or(0, |d| d.writer.stats().rotations.saturating_sub(d.cuts))
    }

    /// Tracking loses events on `device`: its current log gets a whole-disk gap record
    /// (the next cycle then asks for a resync). On an untracked device, the next
    /// `add_device` reports a gap.
    ///
    /// # Errors
    /// The log failed.
    pub fn lose_track(&self, device: &Path) -> Result<(), SourceError> {
        let mut g = self.lock();
        match g.disks.get_mut(device) {
            Some(d) => {
                d.append(device, &gap_body(GapReason::EventsLost))?;
                d.records += 1;
            }
            None => {
                g.missed.insert(device.to_owned());
            }
        }
        Ok(())
    }

    /// The agent dies: every log is left unsealed (the next `add_device` recovers it and
    /// reports a gap), as a crash of the tracker would.
    pub fn crash(&self) {
        let mut g = self.lock();
        let disks = std::mem::take(&mut g.disks);
        g.missed.extend(disks.into_keys());
    }

    /// Report cuts as exact (the default) or not.
    pub fn set_exact(&self, exact: bool) {
        self.lock().inexact = !exact;
    }

    /// Whether `device` is tracked.
    #[must_use]
    pub fn tracked(&self, device: &Path) -> bool {
        self.lock().disks.contains_key(device)
    }

    /// Whether queue marks are on for `device` (between a cut and its tag).
    #[must_use]
    pub fn queue_marks_on(&self, device: &Path) -> bool {
        self.lock().disks.get(device).is_some_and(|d| d.queue_marks)
    }

    fn with_disk<T>(
        &self,
        device: &Path,
        f: impl FnOnce(&mut Disk, bool) -> Result<T, SourceError>,
    ) -> Result<T, SourceError> {
        let mut g = self.lock();
        let inexact = g.inexact;
        let d = g
            .disks
            .get_mut(device)
            .ok_or_else(|| SourceError::NotTracked(device.to_owned()))?;
        f(d, !inexact)
    }
}

impl Inner {
    /// Logs `body` for a change just made to `device` (extents mode), or notes the change
    /// as missed if the device is not tracked.
    fn log_after(&mut self, device: &Path, body: &RecordBody) -> Result<(), SourceError> {
        match self.disks.get_mut(device) {
            Some(d) => {
                d.append(device, body)?;
                d.records += 1;
            }
            None => {
                self.missed.insert(device.to_owned());
            }
        }
        Ok(())
    }
}

/// The extent `[offset, offset + len)`, checked to lie inside `device`.
fn inside(device: &Path, offset: u64, len: u64) -> Result<Extent, SourceError> {
    let size = file_size(device)?;
    Extent::new(offset, len)
        .filter(|e| e.offset().saturating_add(e.len()) <= size)
        .ok_or_else(|| {
            SourceError::Invalid(format!(
                "{}: change of {len} bytes at {offset} outside the {size}-byte device",
                device.display()
            ))
        })
}

/// Writes `data` at `offset` of the file `device`.
fn write_file(device: &Path, offset: u64, data: &[u8]) -> Result<(), SourceError> {
    std::fs::OpenOptions::new()
        .write(true)
        .open(device)
        .and_then(|f| f.write_all_at(data, offset))
        .map_err(|e| SourceError::Invalid(format!("{}: {e}", device.display())))
}

fn gap_body(reason: GapReason) -> RecordBody {
    RecordBody::TrackingGap {
        reason,
        scope: GapScope::WholeDisk,
    }
}

fn file_size(device: &Path) -> Result<u64, SourceError> {
    std::fs::metadata(device)
        .map(|m| m.len())
        .map_err(|e| SourceError::Invalid(format!("{}: {e}", device.display())))
}

/// The id of the newest readable log in `dir`, so a chain keeps its disk's id.
fn existing_disk_id(dir: &Path) -> Option<DiskId> {
    let logs = hrl::chain::list_logs(dir).ok()?;
    logs.iter().rev().find_map(|(_, p)| {
        LogReader::open(p, RecoveryMode::TruncateTail)
            .ok()
            .map(|r| r.header().disk.id)
    })
}

impl ChangeSource for FakeSource {
    /// Any existing file: the fake's devices are regular files.
    fn check_device(&self, device: &Path) -> Result<(), SourceError> {
        file_size(device).map(|_| ())
    }

    fn add_device(&mut self, device: &Path, log_dir: &Path) -> Result<Added, SourceError> {
        let mut g = self.lock();
        if g.disks.contains_key(device) {
            return Err(SourceError::Invalid(format!(
                "{} is already tracked",
                device.display()
            )));
        }
        let size = file_size(device)?;
        let log = |source| SourceError::Log {
            device: device.to_owned(),
            source,
        };
        let id = match existing_disk_id(log_dir) {
            Some(id) => id,
            None => DiskId::random().map_err(|e| SourceError::Invalid(e.to_string()))?,
        };
        let spec = ChainSpec {
            disk: DiskIdentity {
                id,
                size,
                logical_block_size: BLOCK_SIZE,
            },
            journal: g.journal.is_some(),
            generation: Generation(1),
        };
        let cfg = WriterConfig {
            sync: SyncPolicy::Never,
            max_log_bytes: g.journal.unwrap_or(WriterConfig::default().max_log_bytes),
            ..WriterConfig::default()
        };
        let (writer, resume) = LogWriter::open(log_dir, spec, cfg).map_err(log)?;
        let missed = g.missed.remove(device);
        let gap = match (&resume, missed) {
            (Resume::Clean { .. }, false) => None,
            (Resume::Clean { .. }, true) => Some("the disk was written while not tracked"),
            (Resume::Fresh, _) => Some("no previous log (first start)"),
            (Resume::Recovered { .. }, _) => Some("no cleanly closed previous log (a crash)"),
        };
        let mut disk = Disk {
            writer,
            log_dir: log_dir.to_owned(),
            records: 0,
            queue_marks: false,
            cuts: 0,
        };
        if gap.is_some() {
            let reason = match resume {
                Resume::Clean { .. } => GapReason::NotTracking,
                _ => GapReason::NoCleanPredecessor,
            };
            disk.append(device, &gap_body(reason))?;
            disk.records += 1;
        }
        g.disks.insert(device.to_owned(), disk);
        Ok(Added {
            size,
            block_size: BLOCK_SIZE,
            gap: gap.map(str::to_string),
            // Its writes are performed in the same call that logs them.
            logged_before_performed: false,
        })
    }

    fn remove_device(&mut self, device: &Path) -> Result<(), SourceError> {
        let d = self
            .lock()
            .disks
            .remove(device)
            .ok_or_else(|| SourceError::NotTracked(device.to_owned()))?;
        d.writer.close().map_err(|source| SourceError::Log {
            device: device.to_owned(),
            source,
        })?;
        Ok(())
    }

    fn cut(&mut self, device: &Path) -> Result<Cut, SourceError> {
        self.cut_together(&[device])?
            .pop()
            .unwrap_or_else(|| Err(SourceError::NotTracked(device.to_owned())))
    }

    fn cut_together(
        &mut self,
        devices: &[&Path],
    ) -> Result<Vec<Result<Cut, SourceError>>, SourceError> {
        // One lock over all the devices: no write of the fake lands between two of them.
        let mut g = self.lock();
        let exact = !g.inexact;
        if let Some(d) = devices.iter().find(|d| !g.disks.contains_key(**d)) {
            return Err(SourceError::NotTracked((*d).to_owned()));
        }
        let time_ns = base::now_ns();
        Ok(devices
            .iter()
            .map(|device| {
                let d = g
                    .disks
                    .get_mut(*device)
                    .ok_or_else(|| SourceError::NotTracked((*device).to_owned()))?;
                let sealed = d.writer.rotate().map_err(|source| SourceError::Log {
                    device: (*device).to_owned(),
                    source,
                })?;
                d.cuts += 1;
                Ok(Cut {
                    seq: sealed.header.log_seq.0,
                    path: sealed.path,
                    time_ns,
                    exact,
                })
            })
            .collect())
    }

    fn mark(&mut self, device: &Path, tag: u64) -> Result<(), SourceError> {
        self.with_disk(device, |d, _| {
            let group = GroupId::NIL;
            d.append(device, &RecordBody::ConsistencyTag { group, tag })
        })
    }

    fn queue_marks(&mut self, device: &Path, on: bool) -> Result<(), SourceError> {
        self.with_disk(device, |d, _| {
            d.queue_marks = on;
            Ok(())
        })
    }

    fn records(&self, device: &Path) -> u64 {
        self.lock().disks.get(device).map_or(0, |d| d.records)
    }

    fn sealed(&self, device: &Path) -> Result<Vec<(u64, PathBuf)>, SourceError> {
        let dir = self.with_disk(device, |d, _| Ok(d.log_dir.clone()))?;
        sealed_in(&dir).map_err(|source| SourceError::Log {
            device: device.to_owned(),
            source,
        })
    }

    fn release(&mut self, device: &Path, path: &Path) -> Result<(), SourceError> {
        self.with_disk(device, |d, _| {
            release_in(&d.log_dir, path).map_err(|source| SourceError::Log {
                device: device.to_owned(),
                source,
            })
        })
    }

    fn stop(self: Box<Self>) -> Result<(), SourceError> {
        let devices: Vec<PathBuf> = self.lock().disks.keys().cloned().collect();
        let mut me = *self;
        let mut first = None;
        for dev in devices {
            if let Err(e) = me.remove_device(&dev) {
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }
}

#[cfg(test)]
mod tests;
