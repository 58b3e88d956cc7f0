//! The agent's change source: each disk routed to the source that can track it best.
//!
//! A device served by a sitrep ublk target ships the target's own logs ([`UblkSource`]:
//! no block-layer tracking, and in journal mode no re-read of the device and a point at
//! every log boundary); every other block device — and a ublk disk too when the agent runs
//! with `--ship-ublk-logs false` — is tracked by the eBPF tracker. The choice is made when a
//! disk is added and holds until it is removed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::ublk::{UblkSource, serves};
use super::{Added, ChangeSource, Cut, SourceError};

/// Which source tracks a disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Which {
    Tracker,
    Ublk,
}

/// The eBPF tracker and, if enabled, the ublk targets, behind one [`ChangeSource`].
pub struct Routed {
    tracker: Box<dyn ChangeSource>,
    ublk: Option<UblkSource>,
    disks: BTreeMap<PathBuf, Which>,
}

impl Routed {
    /// Routes ublk disks to their targets' logs when `ublk` is true, everything else to
    /// `tracker`.
    #[must_use]
    pub fn new(tracker: Box<dyn ChangeSource>, ublk: bool) -> Self {
        Self {
            tracker,
            ublk: ublk.then(UblkSource::default),
            disks: BTreeMap::new(),
        }
    }

    fn which(&self, device: &Path) -> Result<Which, SourceError> {
        self.disks
            .get(device)
            .copied()
            .ok_or_else(|| SourceError::NotTracked(device.to_owned()))
    }

    fn get(&mut self, device: &Path) -> Result<&mut dyn ChangeSource, SourceError> {
        Ok(match self.which(device)? {
            Which::Tracker => self.tracker.as_mut(),
            Which::Ublk => self
                .ublk
                .as_mut()
                .ok_or_else(|| SourceError::NotTracked(device.to_owned()))?,
        })
    }

    fn get_ref(&self, device: &Path) -> Option<&dyn ChangeSource> {
        match self.disks.get(device)? {
            Which::Tracker => Some(self.tracker.as_ref()),
            Which::Ublk => self.ublk.as_ref().map(|u| u as &dyn ChangeSource),
        }
    }

    /// Where a new disk goes.
    fn choose(&self, device: &Path) -> Which {
        if self.ublk.is_some() && serves(device) {
            Which::Ublk
        } else {
            Which::Tracker
        }
    }
}

impl ChangeSource for Routed {
    fn check_device(&self, device: &Path) -> Result<(), SourceError> {
        match (self.choose(device), &self.ublk) {
            (Which::Ublk, Some(u)) => u.check_device(device),
            _ => self.tracker.check_device(device),
        }
    }

    fn add_device(&mut self, device: &Path, log_dir: &Path) -> Result<Added, SourceError> {
        if self.disks.contains_key(device) {
            return Err(SourceError::Invalid(format!(
                "{} is already tracked",
                device.display()
            )));
        }
        let which = self.choose(device);
        let added = match (which, self.ublk.as_mut()) {
            (Which::Ublk, Some(u)) => u.add_device(device, log_dir)?,
            _ => self.tracker.add_device(device, log_dir)?,
        };
        self.disks.insert(device.to_owned(), which);
        Ok(added)
    }

    fn remove_device(&mut self, device: &Path) -> Result<(), SourceError> {
        let r = self.get(device)?.remove_device(device);
        self.disks.remove(device);
        r
    }

    fn cut(&mut self, device: &Path) -> Result<Cut, SourceError> {
        self.get(device)?.cut(device)
    }

    fn cut_together(
        &mut self,
        devices: &[&Path],
    ) -> Result<Vec<Result<Cut, SourceError>>, SourceError> {
        // One disk is the ordinary cut, whatever its source.
        if let [d] = devices {
            return Ok(vec![self.cut(d)]);
        }
        for d in devices {
            if self.which(d)? != Which::Tracker {
                return Err(SourceError::Invalid(format!(
                    "{} ships its ublk target's logs, which cannot be cut at one instant with \
                     other disks",
                    d.display()
                )));
            }
        }
        self.tracker.cut_together(devices)
    }

    fn mark(&mut self, device: &Path, tag: u64) -> Result<(), SourceError> {
        self.get(device)?.mark(device, tag)
    }

    fn queue_marks(&mut self, device: &Path, on: bool) -> Result<(), SourceError> {
        self.get(device)?.queue_marks(device, on)
    }

    fn records(&self, device: &Path) -> u64 {
        self.get_ref(device).map_or(0, |s| s.records(device))
    }

    fn describe(&self, device: &Path) -> Option<base::status::SourceStatus> {
        self.get_ref(device)?.describe(device)
    }

    fn sealed(&self, device: &Path) -> Result<Vec<(u64, PathBuf)>, SourceError> {
        self.get_ref(device)
            .ok_or_else(|| SourceError::NotTracked(device.to_owned()))?
            .sealed(device)
    }

    fn release(&mut self, device: &Path, path: &Path) -> Result<(), SourceError> {
        self.get(device)?.release(device, path)
    }

    fn stop(self: Box<Self>) -> Result<(), SourceError> {
        let tracker = self.tracker.stop();
        let ublk = self.ublk.map_or(Ok(()), |u| Box::new(u).stop());
        tracker.and(ublk)
    }
}
