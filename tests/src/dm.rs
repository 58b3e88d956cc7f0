//! [`DmDevice`]: a device-mapper device made with `dmsetup create`, removed on drop.
//!
//! We pass `--noudevsync` and address the device as `/dev/dm-N` (found through sysfs):
//! devtmpfs creates that node by itself, so the tests need neither udev rules nor
//! `/dev/mapper/<name>` symlinks, which minimal VMs may lack.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::Context;

use crate::cmd::try_run;
use crate::loopdev::wait_for_path;

static NEXT_ID: AtomicU32 = AtomicU32::new(0);

/// A device-mapper device; removed on drop.
#[derive(Debug)]
pub struct DmDevice {
    name: String,
    path: PathBuf,
}

impl DmDevice {
    /// Creates a device from a dmsetup `table` (e.g. from [`linear_table`]).
    pub fn create(table: &str) -> anyhow::Result<Self> {
        let name = format!(
            "sitrep-{}-{}",
            std::process::id(),
            NEXT_ID.fetch_add(1, Ordering::Relaxed)
        );
        try_run(
            "dmsetup",
            &["create", &name, "--noudevsync", "--table", table],
        )?;
        // From here on, Drop removes the device even if finding its node fails.
        let mut dev = Self {
            name,
            path: PathBuf::new(),
        };
        let minor = try_run(
            "dmsetup",
            &["info", "--noheadings", "-c", "-o", "minor", &dev.name],
        )?;
        let minor: u32 = minor
            .trim()
            .parse()
            .with_context(|| format!("dmsetup minor {minor:?}"))?;
        dev.path = PathBuf::from(format!("/dev/dm-{minor}"));
        wait_for_path(&dev.path, Duration::from_secs(5))?;
        Ok(dev)
    }

    /// The dm name (`dmsetup ls`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/dev/dm-N`.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for DmDevice {
    fn drop(&mut self) {
        if let Err(e) = try_run("dmsetup", &["remove", "--noudevsync", &self.name]) {
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr(),
                "warning: could not remove dm device: {e:#}"
            );
        }
    }
}

/// A one-segment `linear` table: `sectors` 512-byte sectors of `device` from `start_sector`.
pub fn linear_table(sectors: u64, device: &Path, start_sector: u64) -> String {
    format!("0 {sectors} linear {} {start_sector}", device.display())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linear_table_format() {
        assert_eq!(
            linear_table(2048, Path::new("/dev/loop0"), 8),
            "0 2048 linear /dev/loop0 8"
        );
    }
}
