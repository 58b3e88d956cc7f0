//! Devices and tools only some features need: ublk (tracked virtual disks), loop devices and
//! `losetup` (failover and test failover on the server), `fsfreeze` (app-consistent points
//! and planned failover on the agent). Each is a warning when missing, never a failure: a
//! host that uses none of those features replicates without them.

use std::path::{Path, PathBuf};

use super::check::Check;

/// Where `program` is found on `PATH` (the daemons run tools by name).
pub(crate) fn on_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

/// How a kernel module is available, from `/sys/module` and the module index of the running
/// kernel (`modules.builtin`, `modules.dep`), without loading anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Module {
    /// Loaded (or built in and initialised).
    Loaded,
    /// In the module index of the running kernel, not loaded.
    Loadable,
    /// Not found.
    Missing,
}

/// Whether the module index `text` (`modules.dep` or `modules.builtin`) lists `name`.
pub(crate) fn index_lists(text: &str, name: &str) -> bool {
    let file = format!("{name}.ko");
    text.lines().any(|l| {
        let path = l.split(':').next().unwrap_or_default();
        let base = path.rsplit('/').next().unwrap_or_default();
        base == file || base.starts_with(&format!("{file}."))
    })
}

fn module(name: &str) -> Module {
    if Path::new("/sys/module").join(name).exists() {
        return Module::Loaded;
    }
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let dir = Path::new("/lib/modules").join(release.trim());
    let listed = ["modules.builtin", "modules.dep"]
        .iter()
        .filter_map(|f| std::fs::read_to_string(dir.join(f)).ok())
        .any(|t| index_lists(&t, name));
    if listed {
        Module::Loadable
    } else {
        Module::Missing
    }
}

/// `ublk`: the ublk driver, for `sitrep disk` virtual disks.
pub(crate) fn ublk() -> Check {
    const T: &str = "ublk driver";
    if Path::new("/dev/ublk-control").exists() {
        return Check::ok("ublk", T, "/dev/ublk-control present");
    }
    match module("ublk_drv") {
        Module::Loaded => Check::warn(
            "ublk",
            T,
            "ublk_drv loaded but /dev/ublk-control is missing",
            "check udev / devtmpfs (ls -l /dev/ublk-control)",
        ),
        Module::Loadable => Check::warn(
            "ublk",
            T,
            "ublk_drv not loaded (only tracked ublk disks need it)",
            "modprobe ublk_drv (and add ublk_drv to /etc/modules-load.d/sitrep.conf)",
        ),
        Module::Missing => Check::warn(
            "ublk",
            T,
            "no ublk_drv in this kernel (only tracked ublk disks need it)",
            "boot a kernel 6.0 or newer with CONFIG_BLK_DEV_UBLK",
        ),
    }
}

/// `loop-devices`: /dev/loop-control and `losetup`, for failover and test failover.
pub(crate) fn loop_devices() -> Check {
    const T: &str = "loop devices";
    let control = Path::new("/dev/loop-control").exists();
    let losetup = on_path("losetup");
    match (control, losetup) {
        (true, Some(p)) => Check::ok(
            "loop-devices",
            T,
            format!("/dev/loop-control, {}", p.display()),
        ),
        (false, _) => Check::warn(
            "loop-devices",
            T,
            "/dev/loop-control missing (failover and test failover attach points as loop devices)",
            "modprobe loop",
        ),
        (true, None) => Check::warn(
            "loop-devices",
            T,
            "losetup not on PATH (failover and test failover run it)",
            "apt install util-linux (or your distribution's equivalent)",
        ),
    }
}

/// `fsfreeze`: the tool the agent runs for app-consistent points and planned failover.
pub(crate) fn fsfreeze() -> Check {
    const T: &str = "fsfreeze";
    match on_path("fsfreeze") {
        Some(p) => Check::ok("fsfreeze", T, p.display().to_string()),
        None => Check::warn(
            "fsfreeze",
            T,
            "not on PATH (app-consistent points and planned failover freeze filesystems with it)",
            "apt install util-linux (or your distribution's equivalent)",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_index() {
        let dep = "kernel/drivers/block/ublk_drv.ko.zst: \nkernel/drivers/block/loop.ko:\n";
        assert!(index_lists(dep, "ublk_drv"));
        assert!(index_lists(dep, "loop"));
        assert!(!index_lists(dep, "nbd"));
        assert!(index_lists(
            "kernel/drivers/block/ublk_drv.ko\n",
            "ublk_drv"
        ));
        assert!(!index_lists(
            "kernel/drivers/block/ublk_drv_x.ko\n",
            "ublk_drv"
        ));
    }
}
