//! Where a protected disk's changes come from: the [`ChangeSource`] seam.
//!
//! The agent does not care *how* changes are observed — by the eBPF tracker watching the
//! block layer ([`bpf::BpfSource`]), by a ublk target logging its own writes
//! ([`ublk::UblkSource`]; [`route::Routed`] picks one of the two per disk), or by a test injecting writes (`fake::FakeSource`, built for tests and with the `test-support` feature). It needs the same five
//! things from each: start a disk (and learn whether anything was missed since last time),
//! cut its changes into a sealed log, find the sealed logs in order, tag a log after
//! everything completed so far, and stop cleanly.
//!
//! **The log directory convention.** Every source writes HRL logs (the `hrl` crate's
//! chain) into the directory the agent gives [`ChangeSource::add_device`],
//! `STATE/disks/NAME/logs` ([`super::state::log_dir`]): one file per log, named by its
//! sequence, the newest being the one written. The agent's cycle reader
//! (`crate::cycle::read_cycle`), the consistency verdict (`crate::cycle::raced`) and the
//! server's reverse-replication check read them from there, whatever the source. That is
//! why the seam is a log *producer* and not a stream of extents: the log is the durable
//! hand-off that survives an agent crash, and one reader serves every source.
//!
//! **Who calls.** The agent holds its source behind one mutex and calls it from blocking
//! context (`block_in_place`): methods are synchronous, and a call may wait for a log
//! commit to reach the disk. [`ChangeSource::records`] alone must be cheap — `status` reads
//! it (and never waits for the mutex: while a cut holds it, the last count stands).
//!
//! Alternative rejected: an async trait. The tracker is a set of threads with blocking
//! channels, and an async seam would need boxing for object safety with nothing to gain.

pub mod bpf;
#[cfg(any(test, feature = "test-support"))]
pub mod fake;
pub mod route;
pub mod ublk;

use std::path::{Path, PathBuf};

/// What went wrong in a change source. The agent reports these as local errors (the
/// message is what the operator sees, so each variant keeps its cause's text).
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The device is not tracked by this source: add it first.
    #[error("{} is not tracked", .0.display())]
    NotTracked(PathBuf),
    /// The request is not valid now (the device is missing or already tracked, ...): fix
    /// the cause, then retry.
    #[error("{0}")]
    Invalid(String),
    /// The disk's log failed (IO, space, corruption): see the log error for what to do.
    #[error("{}: log: {source}", device.display())]
    Log {
        /// The device whose log failed.
        device: PathBuf,
        /// The log error.
        #[source]
        source: hrl::Error,
    },
    /// The eBPF tracker's error, unchanged (its text is what `status` has always shown).
    #[error(transparent)]
    Tracker(#[from] tracker_bpf::Error),
}

/// A disk the source started tracking ([`ChangeSource::add_device`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Added {
    /// The device's size in bytes.
    pub size: u64,
    /// Its logical block size in bytes.
    pub block_size: u32,
    /// `None` if tracking continues the previous chain with nothing missed; otherwise why
    /// it does not (first start, a crash, writes while untracked, a reboot). The current
    /// log then starts with a whole-disk tracking gap record, so the gap is in the logs
    /// too — reported here once, for the agent to decide on a resync before shipping.
    pub gap: Option<String>,
    /// The source logs a change *before* it is performed (a ublk target): a log it sealed
    /// by itself may name changes still in flight, so the agent reads the device for a log
    /// only after one of its own cuts — which waits for them — sealed it or a later one.
    pub logged_before_performed: bool,
}

/// A sealed log ([`ChangeSource::cut`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cut {
    /// The sealed log's sequence: the cycle's sequence. Strictly increasing per disk.
    pub seq: u64,
    /// Where the sealed log is (in the disk's log directory).
    pub path: PathBuf,
    /// The cut's instant (ns since the epoch, realtime clock): every change reported
    /// complete before it is in this log or an earlier one.
    pub time_ns: u64,
    /// The logs up to this one hold exactly the changes completed before `time_ns` (plus
    /// some still in flight then). Only an exact cut can be a crash-consistent point.
    pub exact: bool,
}

/// What a disk's changes come from. See the module docs for the log directory convention
/// and who calls. Object safe: the agent holds a `Box<dyn ChangeSource>`.
///
/// Disks are named by their device path (as `protection.json` names them).
pub trait ChangeSource: Send {
    /// Whether this source can track `device`, asked before a protection is made. The
    /// default accepts block devices only (all the eBPF tracker and a ublk target can track).
    ///
    /// # Errors
    /// [`SourceError::Invalid`] saying why not (its text is the refusal `protect` shows).
    fn check_device(&self, device: &Path) -> Result<(), SourceError> {
        let shown = device.display();
        let meta =
            std::fs::metadata(device).map_err(|e| SourceError::Invalid(format!("{shown}: {e}")))?;
        if std::os::unix::fs::FileTypeExt::is_block_device(&meta.file_type()) {
            Ok(())
        } else {
            Err(SourceError::Invalid(format!(
                "{shown} is not a block device"
            )))
        }
    }

    /// Starts tracking `device`, logging into `log_dir` (which exists). If the directory
    /// holds an earlier chain of the same disk, the chain continues (the disk keeps its id);
    /// [`Added::gap`] says whether changes may have been missed since that chain's last
    /// log. Everything written to the device after this returns is logged.
    ///
    /// # Errors
    /// The device is missing or already tracked, or the log directory is unusable (locked
    /// by another writer, another disk's logs).
    fn add_device(&mut self, device: &Path, log_dir: &Path) -> Result<Added, SourceError>;

    /// Stops tracking `device` cleanly: its current log is sealed, and a later
    /// [`add_device`](Self::add_device) continues the chain without a gap if nothing can
    /// have been written in between.
    ///
    /// # Errors
    /// The device is not tracked, or its log could not be sealed.
    fn remove_device(&mut self, device: &Path) -> Result<(), SourceError>;

    /// Seals the device's current log and opens the next one. Every change that completed
    /// before the call is in the sealed log or an earlier one; a change in flight may be in
    /// either (and then also in a later one). Sequences of successive cuts strictly
    /// increase, with no holes: a missing sequence in the directory means a lost log.
    ///
    /// # Errors
    /// The device is not tracked, or the log failed (nothing sealed).
    fn cut(&mut self, device: &Path) -> Result<Cut, SourceError>;

    /// One cut of several devices at one instant (a consistency group's members): each
    /// device's log is sealed as by [`cut`](Self::cut), all with the same `time_ns` and
    /// `exact` — every change reported complete before that instant on any of them is in
    /// its sealed log or an earlier one. One result per device, in order. The default
    /// refuses: a source that cannot cut devices together offers no group points.
    ///
    /// # Errors
    /// A device is not tracked (nothing cut), or the source cannot cut together.
    fn cut_together(
        &mut self,
        devices: &[&Path],
    ) -> Result<Vec<Result<Cut, SourceError>>, SourceError> {
        let _ = devices;
        Err(SourceError::Invalid(
            "this change source cannot cut several disks at one instant".into(),
        ))
    }

    /// Appends consistency tag `tag` (a cycle's sequence) to the device's current log, after
    /// every change that completed before the call, and commits it: the verdict
    /// (`crate::cycle::raced`) reads the changes between a cut and its tag.
    ///
    /// # Errors
    /// The device is not tracked, or the log failed.
    fn mark(&mut self, device: &Path, tag: u64) -> Result<(), SourceError>;

    /// Also logs the device's changes when they are *queued* (on), not only when they
    /// complete (off, the default) — on between a cut and its tag, so a write queued after
    /// the cut that lands before the cycle's data is read is seen before the tag. A source
    /// that logs at submission anyway accepts and ignores it.
    ///
    /// # Errors
    /// The device is not tracked.
    fn queue_marks(&mut self, device: &Path, on: bool) -> Result<(), SourceError>;

    /// Change records (gaps included, tags not) logged for `device` since it was added;
    /// monotonic; 0 if it is not tracked. Must be cheap: `status` calls it.
    fn records(&self, device: &Path) -> u64;

    /// Where the device's changes come from, for `status` (with the log space of a source
    /// that has one). Must be cheap like [`records`](Self::records); `None` if the device is
    /// not tracked.
    fn describe(&self, device: &Path) -> Option<base::status::SourceStatus> {
        let _ = device;
        None
    }

    /// The device's sealed logs, oldest first (the current log excluded), as
    /// `(sequence, path)` in its log directory.
    ///
    /// # Errors
    /// The device is not tracked, or the directory cannot be read.
    fn sealed(&self, device: &Path) -> Result<Vec<(u64, PathBuf)>, SourceError>;

    /// Deletes sealed log `path` of `device` once it is shipped and applied (or covered by a
    /// copy). A log already gone is not an error; the current log is refused.
    ///
    /// # Errors
    /// `path` is the current log, or IO.
    fn release(&mut self, device: &Path, path: &Path) -> Result<(), SourceError>;

    /// Stops every device cleanly (as [`remove_device`](Self::remove_device)) and the
    /// source itself.
    ///
    /// # Errors
    /// The first device that could not be stopped cleanly (the others are still stopped).
    fn stop(self: Box<Self>) -> Result<(), SourceError>;
}

/// The sealed logs in `log_dir`, oldest first: every log but the newest (the one being
/// written). The directory convention every source follows (see the module docs).
///
/// # Errors
/// The directory cannot be read.
pub fn sealed_in(log_dir: &Path) -> Result<Vec<(u64, PathBuf)>, hrl::Error> {
    let mut logs = hrl::chain::list_logs(log_dir)?;
    logs.pop();
    Ok(logs.into_iter().map(|(s, p)| (s.0, p)).collect())
}

/// Deletes sealed log `path` (already gone is fine), refusing the newest log in its
/// directory (the current one).
///
/// # Errors
/// `path` is the current log, or IO.
pub fn release_in(log_dir: &Path, path: &Path) -> Result<(), hrl::Error> {
    let logs = hrl::chain::list_logs(log_dir)?;
    if logs.last().is_some_and(|(_, p)| p == path) {
        return Err(hrl::Error::Config(format!(
            "{} is the open log; cut before releasing it",
            path.display()
        )));
    }
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(hrl::Error::Io {
            path: path.to_owned(),
            op: "remove",
            source: e,
        }),
        _ => Ok(()),
    }
}
