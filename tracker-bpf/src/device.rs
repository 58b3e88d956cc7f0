//! What the kernel says about a block device: its `dev_t`, size, partition start, and I/O
//! counters — read from the device node, ioctls and sysfs.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// The kernel's in-kernel `dev_t` encoding (`MKDEV`): major in the top 12 bits, minor in the
/// low 20. Userspace `st_rdev` uses glibc's different encoding; never compare the two raw.
#[must_use]
pub fn kernel_dev(major: u32, minor: u32) -> u32 {
    (major << 20) | (minor & 0xf_ffff)
}

/// A block device as the tracker needs to know it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DeviceInfo {
    /// The path the operator gave.
    pub path: PathBuf,
    /// Major number.
    pub major: u32,
    /// Minor number.
    pub minor: u32,
    /// Size in bytes.
    pub size: u64,
    /// Logical block size in bytes.
    pub logical_block_size: u32,
    /// First sector on the whole disk, for a partition (0 for a whole disk).
    pub start_sect: u64,
    /// The device (or, for a partition, its disk) has no request queue — device-mapper, md:
    /// its changes complete at `block_bio_complete`, not `block_rq_complete`.
    pub bio_based: bool,
}

impl DeviceInfo {
    /// Reads the device at `path`.
    ///
    /// # Errors
    /// [`Error::Device`] if it is missing, not a block device, or cannot be queried.
    pub fn probe(path: &Path) -> Result<Self> {
        let err = |why: String| Error::Device {
            path: path.to_owned(),
            why,
        };
        let meta = std::fs::metadata(path).map_err(|e| err(e.to_string()))?;
        if !meta.file_type().is_block_device() {
            return Err(err("not a block device".into()));
        }
        let rdev = meta.rdev();
        let (major, minor) = (libc::major(rdev), libc::minor(rdev));
        let f = File::open(path).map_err(|e| err(format!("open: {e}")))?;
        let mut size: u64 = 0;
        // SAFETY: BLKGETSIZE64 writes one u64 through the pointer, which points to `size`.
        let rc = unsafe { libc::ioctl(f.as_raw_fd(), BLKGETSIZE64, &raw mut size) };
        if rc != 0 {
            return Err(err(format!(
                "BLKGETSIZE64: {}",
                std::io::Error::last_os_error()
            )));
        }
        let mut lbs: libc::c_int = 0;
        // SAFETY: BLKSSZGET writes one int through the pointer, which points to `lbs`.
        let rc = unsafe { libc::ioctl(f.as_raw_fd(), BLKSSZGET, &raw mut lbs) };
        if rc != 0 {
            return Err(err(format!(
                "BLKSSZGET: {}",
                std::io::Error::last_os_error()
            )));
        }
        let sys = sysfs_dir(major, minor);
        let start_sect = match std::fs::read_to_string(sys.join("start")) {
            Ok(s) => s
                .trim()
                .parse()
                .map_err(|_| err(format!("bad {}/start", sys.display())))?,
            Err(_) => 0,
        };
        Ok(Self {
            path: path.to_owned(),
            major,
            minor,
            size,
            logical_block_size: u32::try_from(lbs).map_err(|_| err(format!("block size {lbs}")))?,
            start_sect,
            bio_based: is_bio_based(&sys),
        })
    }

    /// The kernel `dev_t` the BPF program sees in `bio->bi_bdev->bd_dev`.
    #[must_use]
    pub fn kernel_dev(&self) -> u32 {
        kernel_dev(self.major, self.minor)
    }

    /// The device's I/O counters now.
    ///
    /// # Errors
    /// If sysfs cannot be read.
    pub fn io_counters(&self) -> Result<IoCounters> {
        let p = sysfs_dir(self.major, self.minor).join("stat");
        let text = std::fs::read_to_string(&p).map_err(|e| Error::Device {
            path: self.path.clone(),
            why: format!("{}: {e}", p.display()),
        })?;
        IoCounters::parse(&text).ok_or_else(|| Error::Device {
            path: self.path.clone(),
            why: format!("unexpected format of {}", p.display()),
        })
    }
}

impl DeviceInfo {
    /// Whether the kernel keeps I/O statistics for the device (`queue/iostats` of the disk,
    /// or of a partition's disk): the missed-completion check compares with them.
    #[must_use]
    pub fn iostats(&self) -> bool {
        let sys = sysfs_dir(self.major, self.minor);
        let disk = if sys.join("partition").exists() {
            sys.join("..")
        } else {
            sys
        };
        std::fs::read_to_string(disk.join("queue/iostats")).is_ok_and(|s| s.trim() == "1")
    }

    /// The device's `stat` file in sysfs.
    #[must_use]
    pub fn stat_path(&self) -> PathBuf {
        sysfs_dir(self.major, self.minor).join("stat")
    }

    /// Whether the device is a whole disk with partitions: their writes carry their own
    /// `dev_t` (not seen while the disk is tracked) but count in the disk's statistics.
    #[must_use]
    pub fn has_partitions(&self) -> bool {
        std::fs::read_dir(sysfs_dir(self.major, self.minor))
            .is_ok_and(|d| d.flatten().any(|e| e.path().join("partition").exists()))
    }
}

impl DeviceInfo {
    /// A name for the device that survives a reboot (its `dev_t` may not), to recognise it
    /// after one (`continuity.rs`): the disk's WWN or serial number, a device-mapper UUID, or
    /// a loop device's backing file (path, inode and offset); a partition adds its number to
    /// its disk's. `None` when the device has none of these: then no clean stop is trusted
    /// across a reboot.
    #[must_use]
    pub fn identity(&self) -> Option<String> {
        let sys = sysfs_dir(self.major, self.minor);
        if sys.join("partition").exists() {
            let part = read_trimmed(&sys.join("partition"))?;
            return disk_identity(&sys.join(".."), self.major, self.minor)
                .map(|d| format!("{d}:part{part}"));
        }
        disk_identity(&sys, self.major, self.minor)
    }
}

impl DeviceInfo {
    /// The kernel's `diskseq` of the device's disk: a number the kernel gives a disk each
    /// time it appears (a loop device attached again, a disk plugged in) and never reuses in
    /// one boot. `None` before Linux 5.15.
    #[must_use]
    pub fn diskseq(&self) -> Option<u64> {
        let sys = sysfs_dir(self.major, self.minor);
        let disk = if sys.join("partition").exists() {
            sys.join("..")
        } else {
            sys
        };
        read_trimmed(&disk.join("diskseq")).and_then(|s| s.parse().ok())
    }
}

/// The identity of the whole disk at `sys` (see [`DeviceInfo::identity`]).
fn disk_identity(sys: &Path, major: u32, minor: u32) -> Option<String> {
    if let Some(w) = read_trimmed(&sys.join("device/wwid")) {
        return Some(format!("wwid:{w}"));
    }
    for f in ["serial", "device/serial"] {
        if let Some(s) = read_trimmed(&sys.join(f)) {
            return Some(format!("serial:{s}"));
        }
    }
    if let Some(u) = read_trimmed(&sys.join("dm/uuid")) {
        return Some(format!("dm:{u}"));
    }
    if let Some(file) = read_trimmed(&sys.join("loop/backing_file")) {
        // A deleted backing file reads as `PATH (deleted)`: its metadata is not found.
        let m = std::fs::metadata(&file).ok()?;
        let offset = read_trimmed(&sys.join("loop/offset")).unwrap_or_else(|| "0".into());
        return Some(format!("loop:{file}:{}:{}@{offset}", m.dev(), m.ino()));
    }
    // udev's database, for disks whose driver exposes neither (ID_WWN, ID_SERIAL).
    let db = std::fs::read_to_string(format!("/run/udev/data/b{major}:{minor}")).ok()?;
    ["E:ID_WWN=", "E:ID_SERIAL="].iter().find_map(|k| {
        db.lines()
            .find_map(|l| l.strip_prefix(k))
            .filter(|v| !v.trim().is_empty())
            .map(|v| format!("udev:{v}"))
    })
}

/// A sysfs attribute's text, trimmed; `None` if unreadable or empty.
fn read_trimmed(p: &Path) -> Option<String> {
    let s = std::fs::read_to_string(p).ok()?;
    let s = s.trim();
    (!s.is_empty()).then(|| s.to_string())
}

const BLKGETSIZE64: libc::c_ulong = 0x8008_1272;
const BLKSSZGET: libc::c_ulong = 0x1268;

/// Whether the disk behind `sys` (`/sys/dev/block/M:m`) is bio-based: blk-mq disks have an
/// `mq` directory; a partition asks its disk (`..` resolves after the symlink, in the kernel).
fn is_bio_based(sys: &Path) -> bool {
    let disk = if sys.join("partition").exists() {
        sys.join("..")
    } else {
        sys.to_owned()
    };
    !disk.join("mq").exists()
}

fn sysfs_dir(major: u32, minor: u32) -> PathBuf {
    PathBuf::from(format!("/sys/dev/block/{major}:{minor}"))
}

/// The change-related counters of `/sys/dev/block/M:m/stat` (Documentation/block/stat.rst).
/// They only grow while the system is up, so equal counters at two instants, with nothing in
/// flight, mean no change was completed in between.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct IoCounters {
    /// Write requests completed (write-zeroes count as writes).
    pub writes: u64,
    /// Sectors written.
    pub write_sectors: u64,
    /// Discard requests completed.
    pub discards: u64,
    /// Sectors discarded.
    pub discard_sectors: u64,
    /// Requests in flight.
    pub in_flight: u64,
}

impl IoCounters {
    /// Parses the `stat` file's fields.
    #[must_use]
    pub fn parse(text: &str) -> Option<Self> {
        let f: Vec<u64> = text
            .split_whitespace()
            .map(str::parse)
            .collect::<Result<_, _>>()
            .ok()?;
        Some(Self {
            writes: *f.get(4)?,
            write_sectors: *f.get(6)?,
            in_flight: *f.get(8)?,
            discards: f.get(11).copied().unwrap_or(0),
            discard_sectors: f.get(13).copied().unwrap_or(0),
        })
    }

    /// The same counters, ignoring what is in flight.
    #[must_use]
    pub fn completed(&self) -> (u64, u64, u64, u64) {
        (
            self.writes,
            self.write_sectors,
            self.discards,
            self.discard_sectors,
        )
    }
}

/// This boot's id (`/proc/sys/kernel/random/boot_id`): counters are only comparable within
/// one boot.
///
/// # Errors
/// If procfs cannot be read.
pub fn boot_id() -> Result<String> {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_owned())
        .map_err(|e| Error::Device {
            path: "/proc/sys/kernel/random/boot_id".into(),
            why: e.to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_dev_encoding() {
        assert_eq!(kernel_dev(7, 0), 7 << 20);
        assert_eq!(kernel_dev(259, 1), (259 << 20) | 1);
    }

    #[test]
    fn parses_stat() {
        let s = "  100 0 800 10  42 3 336 7  0 20 30  5 0 2048 1  9 2\n";
        let c = IoCounters::parse(s).unwrap();
        assert_eq!(
            c,
            IoCounters {
                writes: 42,
                write_sectors: 336,
                discards: 5,
                discard_sectors: 2048,
                in_flight: 0
            }
        );
        assert_eq!(IoCounters::parse("1 2 3"), None);
    }
}
