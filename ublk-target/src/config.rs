//! What the operator asks for: one tracked disk over one backing file or device.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Largest queue count accepted (ublk's own limit is higher; more queues than CPUs only
/// adds threads).
pub const MAX_QUEUES: u16 = 64;
/// Largest queue depth accepted (the ublk driver's limit).
pub const MAX_DEPTH: u16 = 4096;
/// The log space cap of a disk by default (`--log-cap`): 1 GiB.
pub const DEFAULT_LOG_CAP: u64 = 1 << 30;
/// The smallest log space cap accepted: one log's worth (16 MiB).
pub const MIN_LOG_CAP: u64 = 16 << 20;

/// What the log records for a write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogMode {
    /// Only the ranges written; the data is read from the disk when shipping.
    Extents,
    /// The ranges and the data, so a replica can be rebuilt in exact write order.
    Journal,
}

impl LogMode {
    /// The name used on the command line and in `disk list`.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            LogMode::Extents => "extents",
            LogMode::Journal => "journal",
        }
    }
}

/// When a change's log record must be durable (see docs/ublk.md, "Durability").
///
/// In both modes a change's record is *written* to the log (one `pwrite`, so it survives a
/// crash of the server process) before the change is performed, and a flush or FUA write
/// completes only once the log is durable. They differ in what a power loss costs:
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// The log is synced at the disk's own flushes and FUA writes, exactly when the disk
    /// promises its data is durable. After a host crash or power loss the records written
    /// since the last flush may be lost while their data reached the backing, so the next
    /// start records a whole-disk tracking gap (a checksum resync), as Hyper-V Replica does
    /// after an unexpected host shutdown.
    #[default]
    Flush,
    /// The log is synced before *every* change is performed (group commit): nothing is ever
    /// missing from the log, even after power loss, at the cost of one log sync in series
    /// with each batch of writes.
    Write,
}

impl Durability {
    /// The name used on the command line and in `disk list`.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Durability::Flush => "flush",
            Durability::Write => "write",
        }
    }
}

/// One tracked disk, as `sitrep disk add` describes it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskConfig {
    /// The backing regular file (sparse is fine) or block device.
    pub backing: PathBuf,
    /// Size of the virtual disk in bytes; default the backing's size. Must fit in it.
    pub size: Option<u64>,
    /// Hardware queues (one server thread each).
    pub queues: u16,
    /// Queue depth (in-flight I/Os per queue).
    pub depth: u16,
    /// What the log records.
    pub mode: LogMode,
    /// When the log is made durable.
    #[serde(default)]
    pub durability: Durability,
    /// The log directory; default `BACKING.hrl/` beside the backing file (created if
    /// missing). An explicitly given directory must exist.
    pub log_dir: Option<PathBuf>,
    /// The most bytes the disk's logs may take (`hrl::WriterConfig::max_total_bytes`;
    /// default [`DEFAULT_LOG_CAP`], `None`: no cap). Past it a change is recorded as an
    /// extents-only tracking gap (the agent reads those ranges from the disk) and still
    /// performed; a consistency tag is refused.
    #[serde(default = "default_log_cap")]
    pub log_cap: Option<u64>,
}

/// The cap of a config that does not name one (serde's `default`).
fn default_log_cap() -> Option<u64> {
    Some(DEFAULT_LOG_CAP)
}

impl DiskConfig {
    /// A config with defaults: 1 queue, depth 128, extents mode, log beside the backing, a
    /// log space cap of [`DEFAULT_LOG_CAP`].
    #[must_use]
    pub fn new(backing: impl Into<PathBuf>) -> Self {
        Self {
            backing: backing.into(),
            size: None,
            queues: 1,
            depth: 128,
            mode: LogMode::Extents,
            durability: Durability::Flush,
            log_dir: None,
            log_cap: default_log_cap(),
        }
    }

    /// Checks the numbers (not the files).
    ///
    /// # Errors
    /// [`Error::Config`] naming the bad value.
    pub fn validate(&self) -> Result<()> {
        if self.queues == 0 || self.queues > MAX_QUEUES {
            return Err(Error::Config(format!(
                "--queues {} is out of range 1..={MAX_QUEUES}",
                self.queues
            )));
        }
        if self.depth == 0 || self.depth > MAX_DEPTH {
            return Err(Error::Config(format!(
                "--depth {} is out of range 1..={MAX_DEPTH}",
                self.depth
            )));
        }
        if let Some(size) = self.size
            && (size == 0 || size % crate::BLOCK_SIZE != 0)
        {
            return Err(Error::Config(format!(
                "--size {size} must be a non-zero multiple of {} bytes",
                crate::BLOCK_SIZE
            )));
        }
        if let Some(cap) = self.log_cap
            && cap < MIN_LOG_CAP
        {
            return Err(Error::Config(format!(
                "--log-cap {cap} is below the minimum of {MIN_LOG_CAP} bytes (16M, one log)"
            )));
        }
        Ok(())
    }

    /// The log directory this disk uses: `--log-dir`, or `BACKING.hrl` beside the backing.
    #[must_use]
    pub fn effective_log_dir(&self) -> PathBuf {
        self.log_dir
            .clone()
            .unwrap_or_else(|| default_log_dir(&self.backing))
    }
}

/// `disk.img` → `disk.img.hrl` (beside the disk, as Hyper-V keeps its logs).
#[must_use]
pub fn default_log_dir(backing: &Path) -> PathBuf {
    let mut s = backing.as_os_str().to_owned();
    s.push(".hrl");
    PathBuf::from(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_log_dir_is_beside_the_backing() {
        assert_eq!(
            default_log_dir(Path::new("/srv/disk.img")),
            PathBuf::from("/srv/disk.img.hrl")
        );
    }

    #[test]
    fn the_log_cap_defaults_to_1_gib_and_null_means_none() {
        assert_eq!(DiskConfig::new("/x").log_cap, Some(DEFAULT_LOG_CAP));
        let mut v = serde_json::to_value(DiskConfig::new("/x")).unwrap();
        v.as_object_mut().unwrap().remove("log_cap");
        let c: DiskConfig = serde_json::from_value(v.clone()).unwrap();
        assert_eq!(c.log_cap, Some(1 << 30), "a config without one");
        v["log_cap"] = serde_json::Value::Null;
        let c: DiskConfig = serde_json::from_value(v).unwrap();
        assert_eq!(c.log_cap, None);
        assert!(c.validate().is_ok());
        let small = DiskConfig {
            log_cap: Some(MIN_LOG_CAP - 1),
            ..DiskConfig::new("/x")
        };
        assert!(
            small
                .validate()
                .unwrap_err()
                .to_string()
                .contains("--log-cap")
        );
    }

    #[test]
    fn validation_names_the_bad_value() {
        let mut c = DiskConfig::new("/x");
        assert!(c.validate().is_ok());
        c.queues = 0;
        assert!(c.validate().unwrap_err().to_string().contains("--queues 0"));
        c.queues = 1;
        c.size = Some(1000);
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("--size 1000")
        );
    }
}
