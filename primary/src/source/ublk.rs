//! A sitrep ublk target as a [`ChangeSource`]: the disk's own HRL logs, shipped as they are.
//!
//! A ublk disk (`sitrep disk add`) is served by a target process that appends every change
//! to its log *before* performing it (`docs/ublk.md`), so nothing has to watch the block
//! layer: the agent only asks the target, through its control socket
//! (`ublk_target::control`), to cut (seal the current log, exactly: every I/O completed
//! before the cut has its record in the sealed log or an earlier one) and to tag. In journal
//! mode the logs also carry the data, so a cycle needs no read of the device and every log
//! boundary is a crash-consistent point (`crate::cycle`).
//!
//! **Where the logs are.** The agent reads every disk's logs from `STATE/disks/NAME/logs`
//! (`source.rs`, the log directory convention). For a ublk disk that path is made a
//! symbolic link to the target's own log directory: the target keeps writing where it
//! always does (its chain survives its own restarts, `disk del` and `disk add`), and the
//! agent's listing, shipping, releasing and verdicts read the same files. Unprotecting
//! removes the link, never the target's logs.
//!
//! **Continuity.** The target's chain has no holes by construction (a change is logged
//! before it is performed; a host crash under `flush` durability is recorded by the target
//! itself as a whole-disk gap in the log). So [`Added::gap`] is `None` whenever the link
//! already pointed at this target's directory (an agent restart or crash: the chain
//! continues from the sealed logs on disk), and says why otherwise (first protection, or the
//! logs came from elsewhere before).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use hrl::{LogReader, RecoveryMode};
use ublk_target::control::{Client, ControlStats};

use super::{Added, ChangeSource, Cut, SourceError, release_in, sealed_in};

/// The ublk targets' change source.
#[derive(Default)]
pub struct UblkSource {
    disks: BTreeMap<PathBuf, UblkDisk>,
}

struct UblkDisk {
    /// The agent's log directory (a link to `target_dir`).
    log_dir: PathBuf,
    /// The target's control socket (named after the disk id, so the same after the target
    /// restarts; looked up again only if connecting fails).
    socket: PathBuf,
    /// The connection to the target's control socket; made again after any failure (the
    /// target may have restarted, with user recovery, since).
    client: Option<Client>,
    /// Change records seen since the disk was added (monotonic across target restarts).
    records: Mutex<Records>,
}

/// The target's record counter restarts with the target; the agent's must not.
#[derive(Default)]
struct Records {
    /// Records counted before the target's counter last restarted.
    base: u64,
    /// The target's counter when last read.
    last: u64,
    /// The target's counters when last read (`status`).
    stats: Option<ControlStats>,
}

impl Records {
    fn update(&mut self, now: u64) -> u64 {
        if now < self.last {
            // The target restarted: its counter began again from 0.
            self.base += self.last;
        }
        self.last = now;
        self.base + now
    }

    fn total(&self) -> u64 {
        self.base + self.last
    }
}

/// Whether `device` is served by a sitrep ublk target with a control socket, i.e. whether
/// [`UblkSource`] can track it.
#[must_use]
pub fn serves(device: &Path) -> bool {
    ublk_target::control::find(device).is_some()
}

fn invalid(device: &Path, why: impl std::fmt::Display) -> SourceError {
    SourceError::Invalid(format!("{}: {why}", device.display()))
}

impl UblkDisk {
    /// The control connection, connecting (again) if needed.
    fn client(&mut self, device: &Path) -> Result<&mut Client, SourceError> {
        if self.client.is_none() {
            let c = match Client::connect(&self.socket) {
                Ok(c) => c,
                Err(_) => {
                    let (socket, _) = ublk_target::control::find(device).ok_or_else(|| {
                        invalid(
                            device,
                            "no sitrep ublk target serves it now (stopped or crashed? \
                             `sitrep disk list`)",
                        )
                    })?;
                    self.socket = socket;
                    Client::connect(&self.socket).map_err(|e| {
                        invalid(
                            device,
                            format!("target control {}: {e}", self.socket.display()),
                        )
                    })?
                }
            };
            self.client = Some(c);
        }
        self.client
            .as_mut()
            .ok_or_else(|| invalid(device, "no control connection"))
    }

    /// Runs `f` on the control connection; a failure drops the connection (the next call
    /// connects again) and is reported with the device's name.
    fn call<T>(
        &mut self,
        device: &Path,
        what: &str,
        f: impl FnOnce(&mut Client) -> std::io::Result<T>,
    ) -> Result<T, SourceError> {
        let r = f(self.client(device)?);
        r.map_err(|e| {
            self.client = None;
            invalid(device, format!("ublk target: {what}: {e}"))
        })
    }

    fn note_stats(&self, s: &ControlStats) -> u64 {
        self.records.lock().map_or(0, |mut r| {
            r.stats = Some(s.clone());
            r.update(s.records)
        })
    }
}

/// Makes `log_dir` a link to `target_dir`. Returns why the chain does not simply continue
/// (`None` if the link was already there).
fn link_logs(log_dir: &Path, target_dir: &Path) -> Result<Option<String>, String> {
    let shown = log_dir.display();
    match std::fs::read_link(log_dir) {
        Ok(t) if t == target_dir => return Ok(None),
        Ok(_) => {
            std::fs::remove_file(log_dir).map_err(|e| format!("{shown}: {e}"))?;
        }
        Err(_) if log_dir.is_dir() => {
            // Logs of an earlier source (the eBPF tracker): they describe the same device,
            // but the target's chain is another one; the agent resyncs across the switch.
            std::fs::remove_dir_all(log_dir).map_err(|e| format!("{shown}: {e}"))?;
        }
        Err(_) => {}
    }
    std::os::unix::fs::symlink(target_dir, log_dir)
        .map_err(|e| format!("linking {shown} to {}: {e}", target_dir.display()))?;
    Ok(Some(
        "first shipment of the ublk target's own logs".to_string(),
    ))
}

/// The disk's size and logical block size, from the header of its newest log.
fn geometry(target_dir: &Path) -> Result<(u64, u32), String> {
    let logs = hrl::chain::list_logs(target_dir).map_err(|e| e.to_string())?;
    let (_, newest) = logs
        .last()
        .ok_or_else(|| format!("{}: no log", target_dir.display()))?;
    let r = LogReader::open(newest, RecoveryMode::TruncateTail).map_err(|e| e.to_string())?;
    let d = r.header().disk;
    Ok((d.size, d.logical_block_size))
}

impl UblkSource {
    fn disk(&mut self, device: &Path) -> Result<&mut UblkDisk, SourceError> {
        self.disks
            .get_mut(device)
            .ok_or_else(|| SourceError::NotTracked(device.to_owned()))
    }

    fn log_err(device: &Path, source: hrl::Error) -> SourceError {
        SourceError::Log {
            device: device.to_owned(),
            source,
        }
    }
}

impl ChangeSource for UblkSource {
    fn check_device(&self, device: &Path) -> Result<(), SourceError> {
        if serves(device) {
            Ok(())
        } else {
            Err(invalid(device, "not served by a sitrep ublk target"))
        }
    }

    fn add_device(&mut self, device: &Path, log_dir: &Path) -> Result<Added, SourceError> {
        if self.disks.contains_key(device) {
            return Err(invalid(device, "already tracked"));
        }
        let (socket, target) = ublk_target::control::find(device)
            .ok_or_else(|| invalid(device, "not served by a sitrep ublk target"))?;
        let target_dir = std::fs::canonicalize(&target.log_dir).map_err(|e| {
            invalid(
                device,
                format!("target log directory {}: {e}", target.log_dir.display()),
            )
        })?;
        let (size, block_size) = geometry(&target_dir).map_err(|e| invalid(device, e))?;
        let gap = link_logs(log_dir, &target_dir).map_err(|e| invalid(device, e))?;
        let mut disk = UblkDisk {
            log_dir: log_dir.to_owned(),
            socket,
            client: None,
            records: Mutex::new(Records::default()),
        };
        let stats = disk.call(device, "stats", Client::stats)?;
        disk.note_stats(&stats);
        tracing::info!(
            device = %device.display(), logs = %target_dir.display(), journal = stats.journal,
            continues = gap.is_none(), "shipping the ublk target's own logs"
        );
        self.disks.insert(device.to_owned(), disk);
        Ok(Added {
            size,
            block_size,
            gap,
            logged_before_performed: true,
        })
    }

    fn remove_device(&mut self, device: &Path) -> Result<(), SourceError> {
        // The target keeps serving and logging; the chain continues at the next add.
        self.disks
            .remove(device)
            .map(|_| ())
            .ok_or_else(|| SourceError::NotTracked(device.to_owned()))
    }

    fn cut(&mut self, device: &Path) -> Result<Cut, SourceError> {
        let disk = self.disk(device)?;
        let c = disk.call(device, "cut", Client::cut)?;
        // The same file, named through the agent's link (the convention's path).
        let name = c
            .path
            .file_name()
            .ok_or_else(|| invalid(device, format!("the target sealed {}", c.path.display())))?;
        Ok(Cut {
            seq: c.seq,
            path: disk.log_dir.join(name),
            time_ns: c.time_ns,
            exact: true,
        })
    }

    fn mark(&mut self, device: &Path, tag: u64) -> Result<(), SourceError> {
        self.disk(device)?.call(device, "tag", |c| c.mark(tag))
    }

    fn queue_marks(&mut self, device: &Path, _on: bool) -> Result<(), SourceError> {
        // The target logs a change before performing it: there is no later completion to
        // wait for.
        self.disk(device).map(|_| ())
    }

    fn records(&self, device: &Path) -> u64 {
        let Some(disk) = self.disks.get(device) else {
            return 0;
        };
        let cached = disk.records.lock().map_or(0, |r| r.total());
        // `records` takes `&self` and must be cheap: one short-lived connection, no retry
        // and no lookup (while the target is down, the last count stands).
        match Client::connect(&disk.socket).and_then(|mut c| c.stats()) {
            Ok(s) => disk.note_stats(&s),
            Err(_) => cached,
        }
    }

    fn describe(&self, device: &Path) -> Option<base::status::SourceStatus> {
        let r = self.disks.get(device)?.records.lock().ok()?;
        let s = r.stats.as_ref()?;
        Some(base::status::SourceStatus {
            kind: if s.journal {
                base::status::SourceKind::UblkJournal
            } else {
                base::status::SourceKind::UblkExtents
            },
            log_bytes: Some(s.log_bytes),
            log_cap: s.log_cap,
            overflows: Some(s.overflows),
        })
    }

    fn sealed(&self, device: &Path) -> Result<Vec<(u64, PathBuf)>, SourceError> {
        let disk = self
            .disks
            .get(device)
            .ok_or_else(|| SourceError::NotTracked(device.to_owned()))?;
        sealed_in(&disk.log_dir).map_err(|e| Self::log_err(device, e))
    }

    fn release(&mut self, device: &Path, path: &Path) -> Result<(), SourceError> {
        let dir = self.disk(device)?.log_dir.clone();
        release_in(&dir, path).map_err(|e| Self::log_err(device, e))
    }

    fn stop(self: Box<Self>) -> Result<(), SourceError> {
        // Nothing to seal: each target seals its own log when it stops.
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_record_count_survives_a_target_restart() {
        let mut r = Records::default();
        assert_eq!(r.update(5), 5);
        assert_eq!(r.update(9), 9);
        // The target restarted and logged 2 changes since.
        assert_eq!(r.update(2), 11);
        assert_eq!(r.total(), 11);
    }

    #[test]
    fn linking_continues_an_existing_link_and_replaces_anything_else() {
        let t = tempfile::tempdir().unwrap();
        let target = t.path().join("target");
        std::fs::create_dir(&target).unwrap();
        let logs = t.path().join("logs");
        // An earlier source's logs.
        std::fs::create_dir(&logs).unwrap();
        std::fs::write(logs.join("x"), b"old").unwrap();
        assert!(link_logs(&logs, &target).unwrap().is_some());
        assert_eq!(std::fs::read_link(&logs).unwrap(), target);
        // The agent restarted: the chain continues.
        assert_eq!(link_logs(&logs, &target).unwrap(), None);
        // The target moved its logs: a new chain.
        let moved = t.path().join("moved");
        std::fs::create_dir(&moved).unwrap();
        assert!(link_logs(&logs, &moved).unwrap().is_some());
        assert_eq!(std::fs::read_link(&logs).unwrap(), moved);
        assert!(
            target.is_dir(),
            "the target's own directory is never removed"
        );
    }
}
