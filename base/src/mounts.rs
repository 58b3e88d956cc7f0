//! Where a block device is mounted (from /proc/self/mountinfo): the agent freezes that
//! filesystem for app-consistent points; the server refuses to adopt a mounted disk.

use std::path::{Path, PathBuf};

/// Where `device` is mounted (the first mount of its major:minor in /proc/self/mountinfo).
///
/// # Errors
/// The device or mountinfo cannot be read.
pub fn mount_point(device: &Path) -> std::io::Result<Option<PathBuf>> {
    use std::os::unix::fs::MetadataExt;
    let rdev = std::fs::metadata(device)?.rdev();
    let want = format!(
        "{}:{}",
        nix::sys::stat::major(rdev),
        nix::sys::stat::minor(rdev)
    );
    let info = std::fs::read_to_string("/proc/self/mountinfo")?;
    Ok(info.lines().find_map(|l| {
        let f: Vec<&str> = l.split(' ').collect();
        if f.get(2) == Some(&want.as_str()) {
            f.get(4).map(|m| PathBuf::from(unescape(m)))
        } else {
            None
        }
    }))
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && let Ok(v) = u8::from_str_radix(&s[i + 1..i + 4], 8)
        {
            out.push(v);
            i += 4;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unescapes_mountinfo_paths() {
        assert_eq!(unescape("/mnt/a\\040b"), "/mnt/a b");
        assert_eq!(unescape("/plain"), "/plain");
        assert_eq!(unescape("/x\\134y"), "/x\\y");
    }
}
