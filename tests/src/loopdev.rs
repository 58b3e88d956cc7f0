//! [`LoopDevice`]: a loop device over a sparse temporary file, detached when dropped.
//!
//! Attaching goes through `losetup --find --show`, which picks a free device atomically
//! (LOOP_CTL_GET_FREE + LOOP_CONFIGURE, retried on a race), so tests may attach in parallel.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::cmd::try_run;

/// Options for [`LoopDevice::new`].
#[derive(Debug, Clone, Copy, Default)]
pub struct LoopOptions {
    /// `--direct-io=on`: the loop driver reads/writes its backing file with O_DIRECT.
    /// Best effort — if the backing filesystem refuses, losetup falls back to buffered IO;
    /// check [`LoopDevice::direct_io`].
    pub direct_io: bool,
    /// `--partscan`: the kernel scans the device for a partition table (`/dev/loopNpM`).
    pub partscan: bool,
    /// `--sector-size`: logical block size in bytes (512 if `None`).
    pub sector_size: Option<u32>,
}

/// An attached loop device; detached (and its backing file deleted) on drop.
#[derive(Debug)]
pub struct LoopDevice {
    path: PathBuf,
    backing: PathBuf,
    // Holds the backing file's directory; removed after the device is detached.
    _dir: Option<tempfile::TempDir>,
}

impl LoopDevice {
    /// Attaches a loop device over a new sparse file of `size` bytes in a temporary directory.
    pub fn new(size: u64, opts: LoopOptions) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix("sitrep-loop-").tempdir()?;
        let backing = dir.path().join("backing.img");
        File::create(&backing)
            .and_then(|f| f.set_len(size))
            .with_context(|| format!("create sparse {} of {size} bytes", backing.display()))?;
        let mut dev = Self::over_file(&backing, opts)?;
        dev._dir = Some(dir);
        Ok(dev)
    }

    /// Attaches a loop device over an existing file or block device `backing` (not deleted).
    pub fn over_file(backing: &Path, opts: LoopOptions) -> anyhow::Result<Self> {
        let backing_str = backing.to_str().context("backing path is not UTF-8")?;
        let args = losetup_args(backing_str, opts);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let path = PathBuf::from(try_run("losetup", &args)?);
        Ok(Self {
            path,
            backing: backing.to_owned(),
            _dir: None,
        })
    }

    /// `/dev/loopN`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The backing file.
    pub fn backing(&self) -> &Path {
        &self.backing
    }

    /// `loopN`: the name under `/sys/block`.
    pub fn name(&self) -> &str {
        self.path
            .file_name()
            .and_then(|n| n.to_str())
            .expect("loop device path has a name")
    }

    /// Whether the loop driver really uses direct IO on the backing file (`.../loop/dio`).
    pub fn direct_io(&self) -> bool {
        std::fs::read_to_string(format!("/sys/block/{}/loop/dio", self.name()))
            .is_ok_and(|s| s.trim() == "1")
    }

    /// `/dev/loopNpM` for partition `m` (1-based).
    pub fn partition(&self, m: u32) -> PathBuf {
        partition_path(&self.path, m)
    }

    /// Waits up to `timeout` for partition `m`'s device node to appear (devtmpfs creates it
    /// asynchronously after the partition scan), and returns its path.
    pub fn wait_partition(&self, m: u32, timeout: Duration) -> anyhow::Result<PathBuf> {
        let part = self.partition(m);
        wait_for_path(&part, timeout)?;
        Ok(part)
    }

    /// Re-reads the partition table (`blockdev --rereadpt`).
    ///
    /// BLKRRPART fails with EBUSY while anything else holds the device open — typically udev
    /// probing it right after the partition table was written — so it is retried for a few
    /// seconds (a VM-tier run once failed on exactly this race).
    pub fn reread_partitions(&self) {
        let path = self.path.to_str().expect("UTF-8 loop path");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match try_run("blockdev", &["--rereadpt", path]) {
                Ok(_) => return,
                Err(e) if Instant::now() < deadline && format!("{e:#}").contains("busy") => {
                    let _ = try_run("udevadm", &["settle", "--timeout=2"]);
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => panic!("re-reading the partition table of {path}: {e:#}"),
            }
        }
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        let path = self.path.to_string_lossy().into_owned();
        if let Err(e) = try_run("losetup", &["--detach", &path]) {
            // Do not panic in drop (it may run during a panic); leave a trace instead.
            use std::io::Write;
            let _ = writeln!(std::io::stderr(), "warning: could not detach {path}: {e:#}");
        }
    }
}

/// The arguments of the `losetup` call that attaches `backing` with `opts`.
pub fn losetup_args(backing: &str, opts: LoopOptions) -> Vec<String> {
    let mut args = vec!["--find".to_owned(), "--show".to_owned()];
    if opts.direct_io {
        args.push("--direct-io=on".to_owned());
    }
    if opts.partscan {
        args.push("--partscan".to_owned());
    }
    if let Some(size) = opts.sector_size {
        args.push(format!("--sector-size={size}"));
    }
    args.push(backing.to_owned());
    args
}

/// The device node of partition `m` of whole disk `disk`: the kernel appends `pM` when the
/// disk name ends in a digit (`loop0p1`, `nvme0n1p2`) and just `M` otherwise (`vdb1`).
pub fn partition_path(disk: &Path, m: u32) -> PathBuf {
    let s = disk.to_string_lossy();
    if s.ends_with(|c: char| c.is_ascii_digit()) {
        PathBuf::from(format!("{s}p{m}"))
    } else {
        PathBuf::from(format!("{s}{m}"))
    }
}

/// Polls until `path` exists, or fails after `timeout` naming the path.
pub fn wait_for_path(path: &Path, timeout: Duration) -> anyhow::Result<()> {
    let start = Instant::now();
    while !path.exists() {
        if start.elapsed() > timeout {
            anyhow::bail!("{} did not appear within {timeout:?}", path.display());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn losetup_args_follow_options() {
        assert_eq!(
            losetup_args("/f", LoopOptions::default()),
            ["--find", "--show", "/f"]
        );
        let all = LoopOptions {
            direct_io: true,
            partscan: true,
            sector_size: Some(4096),
        };
        assert_eq!(
            losetup_args("/f", all),
            [
                "--find",
                "--show",
                "--direct-io=on",
                "--partscan",
                "--sector-size=4096",
                "/f"
            ]
        );
    }

    #[test]
    fn partition_names_follow_the_kernel_rule() {
        assert_eq!(
            partition_path(Path::new("/dev/loop3"), 1),
            Path::new("/dev/loop3p1")
        );
        assert_eq!(
            partition_path(Path::new("/dev/nvme0n1"), 2),
            Path::new("/dev/nvme0n1p2")
        );
        assert_eq!(
            partition_path(Path::new("/dev/vdb"), 1),
            Path::new("/dev/vdb1")
        );
    }

    #[test]
    fn wait_for_path_times_out_with_the_name() {
        let err = wait_for_path(Path::new("/nonexistent/sitrep"), Duration::from_millis(50))
            .unwrap_err()
            .to_string();
        assert!(err.contains("/nonexistent/sitrep did not appear"), "{err}");
        wait_for_path(Path::new("/"), Duration::ZERO).unwrap();
    }
}
