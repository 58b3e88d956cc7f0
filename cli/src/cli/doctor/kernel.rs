//! What the agent's eBPF tracker needs from the kernel: root (or the BPF capabilities), a
//! recent kernel with BTF, the three block tracepoints, and — the one true test — loading
//! and attaching the tracker's programs (then detaching them at once).

use std::path::Path;
use std::time::Instant;

use super::check::Check;

const BTF: &str = "/sys/kernel/btf/vmlinux";
/// The tracepoints the tracker attaches to (docs/tracking.md).
const TRACEPOINTS: [&str; 3] = ["block_rq_complete", "block_bio_complete", "block_bio_queue"];
/// Where tracefs shows tracepoints, when it is mounted.
const TRACEFS: [&str; 2] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];
/// The oldest kernel whose BPF has what the tracker uses (the BPF ring buffer: 5.8).
const MIN_KERNEL: (u32, u32) = (5, 8);

/// Whether this process runs as root.
pub(crate) fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// `root`: BPF, loop devices and fsfreeze need it.
pub(crate) fn root(root: bool) -> Check {
    const T: &str = "running as root";
    if root {
        Check::ok("root", T, "uid 0")
    } else {
        Check::warn(
            "root",
            T,
            "not root: the checks that need root are skipped",
            "run `sudo sitrep doctor` (the daemons run as root: BPF, loop devices and fsfreeze need it)",
        )
    }
}

/// `(major, minor)` of a kernel release string such as `6.12.0-31-amd64`.
pub(crate) fn parse_release(release: &str) -> Option<(u32, u32)> {
    let mut it = release.trim().split(['.', '-', '+']);
    let major = it.next()?.parse().ok()?;
    let minor = it.next()?.parse().ok()?;
    Some((major, minor))
}

/// `kernel-version`.
pub(crate) fn kernel_version() -> Check {
    const T: &str = "kernel version";
    let release = match std::fs::read_to_string("/proc/sys/kernel/osrelease") {
        Ok(r) => r.trim().to_owned(),
        Err(e) => return Check::skip("kernel-version", T, format!("osrelease: {e}")),
    };
    match parse_release(&release) {
        Some(v) if v >= MIN_KERNEL => Check::ok("kernel-version", T, release),
        Some(_) => Check::fail(
            "kernel-version",
            T,
            format!(
                "{release}: older than {}.{} (the BPF ring buffer)",
                MIN_KERNEL.0, MIN_KERNEL.1
            ),
            "boot a kernel 5.8 or newer (6.0 or newer for ublk disks)",
        ),
        None => Check::warn(
            "kernel-version",
            T,
            format!("{release}: not a version this check understands"),
            "check the kernel is 5.8 or newer",
        ),
    }
}

/// `kernel-btf`: the tracker's CO-RE programs are relocated against the kernel's BTF.
pub(crate) fn kernel_btf() -> Check {
    const T: &str = "kernel BTF";
    match std::fs::metadata(BTF) {
        Ok(m) => Check::ok("kernel-btf", T, format!("{BTF} ({} bytes)", m.len())),
        Err(e) => Check::fail(
            "kernel-btf",
            T,
            format!("{BTF}: {e} (the tracker's CO-RE programs need the kernel's BTF)"),
            "boot a kernel built with CONFIG_DEBUG_INFO_BTF=y (most distributions' kernels are)",
        ),
    }
}

/// `tracepoints`: the three block tracepoints exist. Read from tracefs when it is mounted,
/// else from the names of their BTF types (`btf_trace_NAME`, what `tp_btf` attaches by).
pub(crate) fn tracepoints() -> Check {
    const T: &str = "block tracepoints";
    let events = TRACEFS
        .iter()
        .map(|d| Path::new(d).join("events/block"))
        .find(|d| d.is_dir());
    let (missing, source): (Vec<&str>, String) = if let Some(dir) = events {
        let missing = TRACEPOINTS
            .iter()
            .copied()
            .filter(|t| !dir.join(t).is_dir())
            .collect();
        (missing, dir.display().to_string())
    } else {
        match std::fs::read(BTF) {
            Ok(btf) => (missing_in_btf(&btf), format!("{BTF} (tracefs not mounted)")),
            Err(_) => {
                return Check::skip(
                    "tracepoints",
                    T,
                    "neither tracefs nor kernel BTF to look them up in",
                );
            }
        }
    };
    if missing.is_empty() {
        Check::ok(
            "tracepoints",
            T,
            format!("{} in {source}", TRACEPOINTS.join(", ")),
        )
    } else {
        Check::fail(
            "tracepoints",
            T,
            format!("missing in {source}: {}", missing.join(", ")),
            "boot a kernel with CONFIG_BLK_DEV_IO_TRACE / block tracepoints (any distribution kernel)",
        )
    }
}

/// The tracepoints whose `btf_trace_NAME` type name is not in the BTF blob `btf`.
pub(crate) fn missing_in_btf(btf: &[u8]) -> Vec<&'static str> {
    // BTF's string section is NUL-separated names: one pass over the blob (~5 MiB).
    let mut found = [false; TRACEPOINTS.len()];
    for s in btf.split(|&b| b == 0) {
        if let Some(name) = s.strip_prefix(b"btf_trace_")
            && let Some(i) = TRACEPOINTS.iter().position(|t| t.as_bytes() == name)
        {
            found[i] = true;
        }
    }
    TRACEPOINTS
        .iter()
        .zip(found)
        .filter(|(_, f)| !f)
        .map(|(t, _)| *t)
        .collect()
}

const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// Whether the effective capabilities in a `/proc/PID/status` text allow loading and
/// attaching tracing BPF programs: CAP_SYS_ADMIN, or CAP_BPF with CAP_PERFMON.
pub(crate) fn caps_allow_bpf(status: &str) -> Option<bool> {
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))?
        .trim();
    let caps = u64::from_str_radix(hex, 16).ok()?;
    let has = |c: u32| caps & (1u64 << c) != 0;
    Some(has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON)))
}

/// `bpf-capability`.
pub(crate) fn bpf_capability() -> Check {
    const T: &str = "BPF capabilities";
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    match caps_allow_bpf(&status) {
        Some(true) => Check::ok(
            "bpf-capability",
            T,
            "CAP_SYS_ADMIN or CAP_BPF+CAP_PERFMON effective",
        ),
        Some(false) => Check::fail(
            "bpf-capability",
            T,
            "neither CAP_SYS_ADMIN nor CAP_BPF+CAP_PERFMON is effective",
            "run as root, without a capability bounding set that drops CAP_SYS_ADMIN/CAP_BPF",
        ),
        None => Check::skip("bpf-capability", T, "no CapEff in /proc/self/status"),
    }
}

/// `bpffs`: a BPF filesystem at /sys/fs/bpf, where the agent pins its crash sentinel.
pub(crate) fn bpffs() -> Check {
    const T: &str = "bpffs at /sys/fs/bpf";
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    if bpffs_mounted(&mounts) {
        Check::ok("bpffs", T, "mounted")
    } else {
        Check::warn(
            "bpffs",
            T,
            "not mounted: the agent mounts one for its crash sentinel, but inside its unit's \
             private mount namespace it dies with the agent, and an agent crash costs a resync",
            "mount -t bpf bpf /sys/fs/bpf (systemd mounts it at boot)",
        )
    }
}

/// Whether a `/proc/mounts` text has a `bpf` filesystem on /sys/fs/bpf.
pub(crate) fn bpffs_mounted(mounts: &str) -> bool {
    mounts.lines().any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.get(1) == Some(&"/sys/fs/bpf") && f.get(2) == Some(&"bpf")
    })
}

/// `bpf-load`: starts a tracker with no devices (loads and attaches its programs, with the
/// smallest maps) and stops it: the programs and maps go away with it, nothing is pinned.
pub(crate) fn bpf_load(root: bool) -> Check {
    const T: &str = "BPF tracker load";
    if !root {
        return Check::skip("bpf-load", T, "needs root");
    }
    let cfg = tracker_bpf::TrackerConfig {
        ring_bytes: 4096,
        write_bitmap_bytes: 4096,
        ..tracker_bpf::TrackerConfig::default()
    };
    let t0 = Instant::now();
    match tracker_bpf::Tracker::start(cfg) {
        Ok(t) => {
            let how = match t.attached() {
                tracker_bpf::Attached::TpBtf => "tp_btf",
                tracker_bpf::Attached::RawTp => "raw_tp",
            };
            let stopped = t.stop();
            let ms = t0.elapsed().as_millis();
            match stopped {
                Ok(_) => Check::ok(
                    "bpf-load",
                    T,
                    format!("loaded, attached ({how}) and detached in {ms} ms"),
                ),
                Err(e) => Check::warn(
                    "bpf-load",
                    T,
                    format!("loaded, attached ({how}), but stopping failed: {e}"),
                    "report this as a bug",
                ),
            }
        }
        Err(e) => Check::fail(
            "bpf-load",
            T,
            e.to_string(),
            "see kernel-btf, tracepoints and bpf-capability; `dmesg` shows the verifier's reason",
        ),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn release_versions() {
        assert_eq!(parse_release("6.12.0-31-amd64\n"), Some((6, 12)));
        assert_eq!(parse_release("5.8.0"), Some((5, 8)));
        assert_eq!(parse_release("6.18.44-fc-v1272"), Some((6, 18)));
        assert_eq!(parse_release("6.1+debian"), Some((6, 1)));
        assert_eq!(parse_release("weird"), None);
        assert!(parse_release("5.4.0").unwrap() < MIN_KERNEL);
    }

    #[test]
    fn capabilities() {
        let all = "Name:\tx\nCapEff:\t000001ffffffffff\n";
        assert_eq!(caps_allow_bpf(all), Some(true));
        assert_eq!(caps_allow_bpf("CapEff:\t0000000000000000\n"), Some(false));
        // CAP_BPF + CAP_PERFMON without CAP_SYS_ADMIN.
        let bpf_perfmon = format!("CapEff:\t{:016x}\n", (1u64 << 39) | (1u64 << 38));
        assert_eq!(caps_allow_bpf(&bpf_perfmon), Some(true));
        let bpf_only = format!("CapEff:\t{:016x}\n", 1u64 << 39);
        assert_eq!(caps_allow_bpf(&bpf_only), Some(false));
        assert_eq!(caps_allow_bpf("Name: x\n"), None);
    }

    #[test]
    fn bpffs_in_mounts() {
        let m = "sysfs /sys sysfs rw 0 0\nbpf /sys/fs/bpf bpf rw,nosuid 0 0\n";
        assert!(bpffs_mounted(m));
        assert!(!bpffs_mounted("sysfs /sys sysfs rw 0 0\n"));
        assert!(!bpffs_mounted("tmpfs /sys/fs/bpf tmpfs rw 0 0\n"));
    }

    #[test]
    fn tracepoints_by_btf_type_name() {
        let btf = b"\0btf_trace_block_rq_complete\0btf_trace_block_bio_queue\0";
        assert_eq!(missing_in_btf(btf), vec!["block_bio_complete"]);
        // A longer name with the same prefix does not count.
        let btf = b"\0btf_trace_block_rq_complete_x\0";
        assert_eq!(missing_in_btf(btf).len(), 3);
    }
}
