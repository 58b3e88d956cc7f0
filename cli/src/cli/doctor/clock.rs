//! Clock synchronisation: cut times, recovery points' times and retention are wall-clock
//! times taken on two hosts, so both clocks should be disciplined by NTP.
//!
//! Asks systemd (`timedatectl show -p NTPSynchronized`) when PID 1 is systemd, else the
//! kernel (adjtimex(2) with no modes: `STA_UNSYNC` is cleared by an NTP daemon that
//! disciplines the clock, and set again when it stops). Both are read-only.

use std::path::Path;
use std::process::Command;

use super::check::Check;

const T: &str = "clock synchronised";
const FIX: &str = "enable NTP: timedatectl set-ntp true (systemd-timesyncd), or run chrony/ntpd";

/// Whether the output of `timedatectl show -p NTPSynchronized --value` says synchronised.
pub(crate) fn parse_timedatectl(out: &str) -> Option<bool> {
    match out.trim() {
        "yes" => Some(true),
        "no" => Some(false),
        _ => None,
    }
}

/// Whether an adjtimex(2) `status` word says the clock is synchronised.
pub(crate) fn synced_from_status(status: i32) -> bool {
    status & libc::STA_UNSYNC == 0
}

fn timedatectl() -> Option<bool> {
    if !Path::new("/run/systemd/system").exists() {
        return None;
    }
    let out = Command::new("timedatectl")
        .args(["show", "-p", "NTPSynchronized", "--value"])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    parse_timedatectl(&String::from_utf8_lossy(&out.stdout))
}

/// The kernel's clock status word, read without changing anything.
fn adjtimex_status() -> std::io::Result<i32> {
    // SAFETY: `timex` is a plain C struct for which all-zero bytes are valid (modes = 0
    // asks for a read only).
    let mut tx: libc::timex = unsafe { std::mem::zeroed() };
    // SAFETY: `tx` is a valid, writable timex; with modes 0 the call only fills it in.
    let rc = unsafe { libc::adjtimex(&mut tx) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(tx.status)
}

/// `clock-sync`.
pub(crate) fn clock_sync() -> Check {
    if let Some(synced) = timedatectl() {
        return verdict(synced, "timedatectl: NTPSynchronized");
    }
    match adjtimex_status() {
        Ok(status) => verdict(synced_from_status(status), "kernel (adjtimex)"),
        Err(e) => Check::skip("clock-sync", T, format!("adjtimex: {e}")),
    }
}

fn verdict(synced: bool, source: &str) -> Check {
    if synced {
        Check::ok("clock-sync", T, format!("{source}: synchronised"))
    } else {
        Check::warn(
            "clock-sync",
            T,
            format!(
                "{source}: not synchronised (cut times, points' times and retention are wall-clock times)"
            ),
            FIX,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timedatectl_output() {
        assert_eq!(parse_timedatectl("yes\n"), Some(true));
        assert_eq!(parse_timedatectl("no\n"), Some(false));
        assert_eq!(parse_timedatectl(""), None);
        assert_eq!(parse_timedatectl("Failed to connect to bus"), None);
    }

    #[test]
    fn adjtimex_status_word() {
        assert!(synced_from_status(0));
        assert!(synced_from_status(libc::STA_PLL));
        assert!(!synced_from_status(libc::STA_UNSYNC));
        assert!(!synced_from_status(libc::STA_UNSYNC | libc::STA_PLL));
    }
}
