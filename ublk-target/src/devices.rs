//! Finding, listing and removing the ublk devices this crate serves.
//!
//! libublk exports every device it starts as a json file under `/run/ublksrvd/`; our target stores
//! [`TargetData`] under `target_data.sitrep` there, so `disk list`, `disk del` and a
//! restarting server (looking for a quiesced device to recover) all find a disk by its
//! backing file without a registry of our own that could go stale.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use libublk::ctrl::UblkCtrl;
use libublk::sys;

use crate::config::{Durability, LogMode};
use crate::error::{Error, Result};

/// What the server records about itself in the device's libublk json.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TargetData {
    /// Canonical path of the backing file or device.
    pub backing: PathBuf,
    /// The log directory.
    pub log_dir: PathBuf,
    /// What the log records.
    pub mode: LogMode,
    /// When the log is made durable (absent in the json of older servers: `write`).
    #[serde(default = "durability_of_older_servers")]
    pub durability: Durability,
    /// The disk id in the log headers (32 hex digits).
    pub disk_id: String,
    /// The target's control socket ([`crate::control`]; absent in the json of older
    /// servers, which had none).
    #[serde(default)]
    pub control: Option<PathBuf>,
}

fn durability_of_older_servers() -> Durability {
    Durability::Write
}

/// One tracked disk, as `sitrep disk list` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ListedDisk {
    /// The ublk device id (N in `/dev/ublkbN`).
    pub id: u32,
    /// `/dev/ublkbN`.
    pub device: PathBuf,
    /// Size in bytes.
    pub size: u64,
    /// `live`, `quiesced` (server died; a restart recovers it), `dead`, or `unknown`.
    pub state: &'static str,
    /// The serving process, if the kernel knows one.
    pub pid: i32,
    /// Whether that process is alive.
    pub server_alive: bool,
    /// Queues and depth.
    pub queues: u16,
    /// Queue depth.
    pub depth: u16,
    /// Our own record.
    #[serde(flatten)]
    pub target: TargetData,
}

/// Every sitrep disk the kernel knows, by id.
#[must_use]
pub fn list() -> Vec<ListedDisk> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir("/sys/class/ublk-char") else {
        return out;
    };
    for entry in rd.flatten() {
        let name = entry.file_name();
        let Some(id) = name
            .to_str()
            .and_then(|n| n.strip_prefix("ublkc"))
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if let Some(d) = describe(id) {
            out.push(d);
        }
    }
    out.sort_by_key(|d| d.id);
    out
}

/// The disk with ublk id `id`, if it is one of ours.
#[must_use]
pub fn describe(id: u32) -> Option<ListedDisk> {
    // `new_simple` reloads the device's json export and asks the kernel for its info.
    let ctrl = UblkCtrl::new_simple(i32::try_from(id).ok()?).ok()?;
    let data = ctrl.get_target_data_from_json()?;
    let target: TargetData = serde_json::from_value(data.get("sitrep")?.clone()).ok()?;
    let size = ctrl.get_target_from_json().map_or(0, |t| t.dev_size);
    let info = ctrl.read_dev_info().ok().map(|_| ctrl.dev_info());
    let (state, pid, queues, depth) = info.map_or(("unknown", 0, 0, 0), |i| {
        (
            state_name(i.state),
            i.ublksrv_pid,
            i.nr_hw_queues,
            i.queue_depth,
        )
    });
    Some(ListedDisk {
        id,
        device: PathBuf::from(format!("/dev/ublkb{id}")),
        size,
        state,
        pid,
        server_alive: pid > 0 && process_alive(pid),
        queues,
        depth,
        target,
    })
}

fn dev_info(id: u32) -> Option<sys::ublksrv_ctrl_dev_info> {
    let ctrl = UblkCtrl::new_simple(i32::try_from(id).ok()?).ok()?;
    ctrl.read_dev_info().ok()?;
    Some(ctrl.dev_info())
}

/// The kernel's state of device `id` (`UBLK_S_DEV_*`), if it exists.
pub(crate) fn dev_state(id: u32) -> Option<u16> {
    dev_info(id).map(|i| i.state)
}

fn state_name(s: u16) -> &'static str {
    match u32::from(s) {
        sys::UBLK_S_DEV_LIVE => "live",
        sys::UBLK_S_DEV_QUIESCED => "quiesced",
        sys::UBLK_S_DEV_DEAD => "dead",
        _ => "unknown",
    }
}

pub(crate) fn process_alive(pid: i32) -> bool {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok()
}

/// The device already serving `backing` (canonical path), if any.
pub(crate) fn find_by_backing(backing: &Path) -> Option<ListedDisk> {
    list().into_iter().find(|d| d.target.backing == backing)
}

/// Where `/dev/ublkbN` is mounted, if it is (from `/proc/self/mountinfo`).
#[must_use]
pub fn mount_point(id: u32) -> Option<String> {
    let dev = format!("/dev/ublkb{id}");
    let rdev = std::fs::metadata(&dev).ok().map(|m| {
        use std::os::unix::fs::MetadataExt;
        m.rdev()
    })?;
    let (maj, min) = (libc::major(rdev), libc::minor(rdev));
    let wanted = format!("{maj}:{min}");
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().find_map(|l| {
        let mut f = l.split(' ');
        let majmin = f.nth(2)?;
        let mnt = f.nth(1)?;
        (majmin == wanted).then(|| mnt.to_owned())
    })
}

/// Removes disk `id`: asks its server to stop (SIGTERM: it seals the log and deletes the
/// device), or deletes the device directly if no server is alive. Refuses while the device
/// is mounted unless `force`.
///
/// # Errors
/// [`Error::Config`] if `id` is not a sitrep disk or is mounted; [`Error::Ublk`] if the
/// kernel refuses; a timeout waiting for the server.
pub fn delete(id: u32, force: bool, timeout: Duration) -> Result<ListedDisk> {
    let d = describe(id).ok_or_else(|| {
        Error::Config(format!(
            "/dev/ublkb{id} is not a sitrep disk (see `sitrep disk list`)"
        ))
    })?;
    if let Some(mnt) = mount_point(id)
        && !force
    {
        return Err(Error::Config(format!(
            "/dev/ublkb{id} is mounted on {mnt}; unmount it first, or use --force \
             (the filesystem then sees I/O errors)"
        )));
    }
    if d.server_alive {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(d.pid),
            nix::sys::signal::Signal::SIGTERM,
        )
        .map_err(|e| Error::io(format!("pid {}", d.pid), "signal", e.into()))?;
        let deadline = Instant::now() + timeout;
        while process_alive(d.pid) {
            if Instant::now() >= deadline {
                return Err(Error::Config(format!(
                    "the server of /dev/ublkb{id} (pid {}) did not stop within {timeout:?}",
                    d.pid
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    // Gone already if the server deleted it; otherwise (no server, or it died) do it here.
    if dev_state(id).is_some() {
        let ctrl = UblkCtrl::new_simple(i32::try_from(id).unwrap_or(i32::MAX))
            .map_err(|e| Error::ublk("open device", &e))?;
        ctrl.kill_dev()
            .map_err(|e| Error::ublk("stop device", &e))?;
        ctrl.del_dev()
            .map_err(|e| Error::ublk("delete device", &e))?;
    }
    Ok(d)
}
