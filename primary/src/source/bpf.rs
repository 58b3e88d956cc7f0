//! The eBPF tracker as a [`ChangeSource`]: a thin layer over [`tracker_bpf::Tracker`],
//! which watches the block layer and writes each disk's HRL logs itself (see
//! `docs/tracking.md`). This layer only adds what the trait asks and the tracker does not
//! keep: which log directory each device logs into.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use tracker_bpf::{Tracker, TrackerConfig};

use super::{Added, ChangeSource, Cut, SourceError, release_in, sealed_in};

/// The eBPF tracker's change source.
pub struct BpfSource {
    tracker: Tracker,
    /// Device → its log directory.
    logs: BTreeMap<PathBuf, PathBuf>,
}

impl BpfSource {
    /// Loads and attaches the BPF program.
    ///
    /// # Errors
    /// The program cannot be loaded or attached (not root, no BTF, ...).
    pub fn start(cfg: TrackerConfig) -> Result<Self, SourceError> {
        Ok(Self {
            tracker: Tracker::start(cfg)?,
            logs: BTreeMap::new(),
        })
    }

    fn log_dir(&self, device: &Path) -> Result<&Path, SourceError> {
        self.logs
            .get(device)
            .map(PathBuf::as_path)
            .ok_or_else(|| SourceError::NotTracked(device.to_owned()))
    }

    fn log_err(device: &Path, source: hrl::Error) -> SourceError {
        SourceError::Log {
            device: device.to_owned(),
            source,
        }
    }
}

impl ChangeSource for BpfSource {
    fn add_device(&mut self, device: &Path, log_dir: &Path) -> Result<Added, SourceError> {
        let report = self.tracker.add_device(device, log_dir)?;
        self.logs.insert(device.to_owned(), log_dir.to_owned());
        Ok(Added {
            size: report.info.size,
            block_size: report.info.logical_block_size,
            gap: report.gap,
            logged_before_performed: false,
        })
    }

    fn remove_device(&mut self, device: &Path) -> Result<(), SourceError> {
        self.logs.remove(device);
        self.tracker.remove_device(device)?;
        Ok(())
    }

    fn cut(&mut self, device: &Path) -> Result<Cut, SourceError> {
        let cut = self.tracker.cut(device)?;
        Ok(Cut {
            seq: cut.sealed.header.log_seq.0,
            path: cut.sealed.path,
            time_ns: cut.time_ns,
            exact: cut.exact,
        })
    }

    fn cut_together(
        &mut self,
        devices: &[&Path],
    ) -> Result<Vec<Result<Cut, SourceError>>, SourceError> {
        let cuts = self.tracker.cut_together(devices)?;
        Ok(cuts
            .into_iter()
            .map(|c| {
                let c = c?;
                Ok(Cut {
                    seq: c.sealed.header.log_seq.0,
                    path: c.sealed.path,
                    time_ns: c.time_ns,
                    exact: c.exact,
                })
            })
            .collect())
    }

    fn mark(&mut self, device: &Path, tag: u64) -> Result<(), SourceError> {
        Ok(self.tracker.mark(device, tag)?)
    }

    fn queue_marks(&mut self, device: &Path, on: bool) -> Result<(), SourceError> {
        Ok(self.tracker.queue_marks(device, on)?)
    }

    fn records(&self, device: &Path) -> u64 {
        self.tracker
            .stats()
            .disks
            .into_iter()
            .find(|(p, _)| p == device)
            .map_or(0, |(_, s)| s.records)
    }

    fn describe(&self, device: &Path) -> Option<base::status::SourceStatus> {
        self.logs
            .contains_key(device)
            .then_some(base::status::SourceStatus {
                kind: base::status::SourceKind::Ebpf,
                log_bytes: None,
                log_cap: None,
                overflows: None,
            })
    }

    fn sealed(&self, device: &Path) -> Result<Vec<(u64, PathBuf)>, SourceError> {
        sealed_in(self.log_dir(device)?).map_err(|e| Self::log_err(device, e))
    }

    fn release(&mut self, device: &Path, path: &Path) -> Result<(), SourceError> {
        release_in(self.log_dir(device)?, path).map_err(|e| Self::log_err(device, e))
    }

    fn stop(self: Box<Self>) -> Result<(), SourceError> {
        self.tracker.stop()?;
        Ok(())
    }
}
