//! The state directory (agent) and the store (server): room on their filesystems, and
//! modes that keep disk contents and progress readable by root only (`base::modes`).

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use super::check::{Check, Status};

const GIB: u64 = 1 << 30;

/// The verdict on `free` of `total` bytes: fail under 1 %, warn under 10 % or 1 GiB.
pub(crate) fn bytes_status(free: u64, total: u64) -> Status {
    if total == 0 {
        return Status::Ok;
    }
    let pct = u128::from(free) * 100;
    if pct < u128::from(total) {
        Status::Fail
    } else if pct < u128::from(total) * 10 || free < GIB {
        Status::Warn
    } else {
        Status::Ok
    }
}

/// The verdict on `free` of `total` inodes: fail under 1 %, warn under 10 %. Filesystems
/// without an inode limit (btrfs) report 0 and pass.
pub(crate) fn inodes_status(free: u64, total: u64) -> Status {
    if total == 0 {
        return Status::Ok;
    }
    let pct = u128::from(free) * 100;
    if pct < u128::from(total) {
        Status::Fail
    } else if pct < u128::from(total) * 10 {
        Status::Warn
    } else {
        Status::Ok
    }
}

/// `ID` (`state-space` / `store-space`): free bytes and inodes of the filesystem holding
/// `dir`.
pub(crate) fn space(id: &'static str, title: &str, dir: &Path) -> Check {
    let st = match nix::sys::statvfs::statvfs(dir) {
        Ok(s) => s,
        Err(e) => return Check::skip(id, title, format!("{}: {e}", dir.display())),
    };
    let f = st.fragment_size();
    let (free, total) = (
        st.blocks_available().saturating_mul(f),
        st.blocks().saturating_mul(f),
    );
    let (ifree, itotal) = (st.files_available(), st.files());
    let status = worse(bytes_status(free, total), inodes_status(ifree, itotal));
    let detail = format!(
        "{}: {} free of {} ({}%), {} of {} inodes free",
        dir.display(),
        crate::human::bytes(free),
        crate::human::bytes(total),
        percent(free, total),
        ifree,
        itotal
    );
    let fix = format!(
        "free space on the filesystem of {} (or move it to a larger one); the server's \
         --max-store-bytes keeps the store under a quota",
        dir.display()
    );
    match status {
        Status::Ok => Check::ok(id, title, detail),
        Status::Warn => Check::warn(id, title, detail, fix),
        _ => Check::fail(id, title, detail, fix),
    }
}

fn percent(part: u64, total: u64) -> u128 {
    if total == 0 {
        return 100;
    }
    u128::from(part) * 100 / u128::from(total)
}

fn worse(a: Status, b: Status) -> Status {
    let rank = |s| match s {
        Status::Fail => 3,
        Status::Warn => 2,
        Status::Skip => 1,
        Status::Ok => 0,
    };
    if rank(a) >= rank(b) { a } else { b }
}

/// What is wrong with a data directory's mode and owner (None: 0700 or stricter, root's).
pub(crate) fn mode_problem(mode: u32, uid: u32) -> Option<String> {
    let mut p = Vec::new();
    if mode & 0o077 != 0 {
        p.push(format!(
            "mode {:04o} (group/others have access)",
            mode & 0o7777
        ));
    }
    if uid != 0 {
        p.push(format!("owned by uid {uid}, not root"));
    }
    (!p.is_empty()).then(|| p.join(", "))
}

/// `ID` (`state-mode` / `store-mode`): `dir` is 0700 and root's.
pub(crate) fn mode(id: &'static str, title: &str, dir: &Path) -> Check {
    let m = match std::fs::metadata(dir) {
        Ok(m) => m,
        Err(e) => return Check::skip(id, title, format!("{}: {e}", dir.display())),
    };
    match mode_problem(m.mode(), m.uid()) {
        None => Check::ok(
            id,
            title,
            format!("{}: {:04o}, root", dir.display(), m.mode() & 0o7777),
        ),
        Some(p) => Check::warn(
            id,
            title,
            format!("{}: {p}", dir.display()),
            format!(
                "chown root:root {0} && chmod 0700 {0} (the daemon makes everything below it \
                 root-only when it starts)",
                dir.display()
            ),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_thresholds() {
        let t = 100 * GIB;
        assert_eq!(bytes_status(50 * GIB, t), Status::Ok);
        assert_eq!(bytes_status(10 * GIB, t), Status::Ok);
        assert_eq!(bytes_status(10 * GIB - 1, t), Status::Warn);
        assert_eq!(bytes_status(GIB, t), Status::Warn); // exactly 1 %: fails only below
        assert_eq!(bytes_status(GIB - 1, t), Status::Fail);
        // A small filesystem: 50 % free but under 1 GiB is a warning.
        assert_eq!(bytes_status(GIB / 2, GIB), Status::Warn);
        assert_eq!(bytes_status(0, 0), Status::Ok);
    }

    #[test]
    fn inode_thresholds() {
        assert_eq!(inodes_status(500, 1000), Status::Ok);
        assert_eq!(inodes_status(99, 1000), Status::Warn);
        assert_eq!(inodes_status(9, 1000), Status::Fail);
        assert_eq!(inodes_status(0, 0), Status::Ok);
    }

    #[test]
    fn modes() {
        assert_eq!(mode_problem(0o40700, 0), None);
        assert_eq!(mode_problem(0o40500, 0), None);
        assert!(mode_problem(0o40755, 0).unwrap().contains("0755"));
        assert!(mode_problem(0o40700, 1000).unwrap().contains("uid 1000"));
    }
}
