//! The run marker: which boot of the host, and which [`Durability`], the last server of a
//! disk ran with — so a restart can tell a crash of the *server* (the page cache, and every
//! record written to it, survived) from a crash of the *host* (records written since the
//! last log sync may be gone while their data reached the backing).
//!
//! `LOGDIR/ublk-run`, written (synced, then renamed into place, then the directory synced)
//! before the device serves any I/O:
//!
//! ```text
//! sitrep-ublk-run 1
//! boot_id 0f4e1c52-4f8b-4bd3-9d2e-3a2bb0d1c8e7
//! durability flush
//! ```
//!
//! Lines are `key value`; unknown keys are ignored, a missing or unreadable marker reads as
//! "no marker". The hrl chain ignores the file (it lists only log files).

use std::io::Write;
use std::path::Path;

use crate::config::Durability;

/// The marker's file name in the log directory.
pub(crate) const FILE_NAME: &str = "ublk-run";
const MAGIC: &str = "sitrep-ublk-run 1";
/// Where Linux names the current boot (a random UUID per boot).
const BOOT_ID: &str = "/proc/sys/kernel/random/boot_id";

/// What the last server recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RunMarker {
    pub(crate) boot_id: String,
    pub(crate) durability: Durability,
}

/// This boot's id.
pub(crate) fn current_boot_id() -> std::io::Result<String> {
    Ok(std::fs::read_to_string(BOOT_ID)?.trim().to_owned())
}

/// The marker in `dir`, if there is a readable one.
pub(crate) fn read(dir: &Path) -> Option<RunMarker> {
    let text = std::fs::read_to_string(dir.join(FILE_NAME)).ok()?;
    parse(&text)
}

fn parse(text: &str) -> Option<RunMarker> {
    let mut lines = text.lines();
    if lines.next()? != MAGIC {
        return None;
    }
    let (mut boot_id, mut durability) = (None, None);
    for line in lines {
        match line.split_once(' ') {
            Some(("boot_id", v)) => boot_id = Some(v.trim().to_owned()),
            Some(("durability", "flush")) => durability = Some(Durability::Flush),
            Some(("durability", "write")) => durability = Some(Durability::Write),
            _ => {}
        }
    }
    Some(RunMarker {
        boot_id: boot_id?,
        durability: durability?,
    })
}

fn render(m: &RunMarker) -> String {
    format!(
        "{MAGIC}\nboot_id {}\ndurability {}\n",
        m.boot_id,
        m.durability.name()
    )
}

/// Records `m` in `dir`, durably.
pub(crate) fn write(dir: &Path, m: &RunMarker) -> std::io::Result<()> {
    let tmp = dir.join(format!("{FILE_NAME}.tmp"));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(render(m).as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, dir.join(FILE_NAME))?;
    std::fs::File::open(dir)?.sync_all()
}

/// Whether a log found unsealed may be missing records whose changes reached the backing:
/// only if the previous server synced its log at flushes (not before every change) and the
/// host has rebooted since. A missing marker means a server from before the marker existed,
/// which synced before every change.
pub(crate) fn unsealed_log_may_be_short(prev: Option<&RunMarker>, boot_id: &str) -> bool {
    prev.is_some_and(|m| m.durability == Durability::Flush && m.boot_id != boot_id)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn the_marker_round_trips_and_pins_its_bytes() {
        let m = RunMarker {
            boot_id: "0f4e1c52-4f8b-4bd3-9d2e-3a2bb0d1c8e7".into(),
            durability: Durability::Flush,
        };
        let text = render(&m);
        assert_eq!(
            text,
            "sitrep-ublk-run 1\nboot_id 0f4e1c52-4f8b-4bd3-9d2e-3a2bb0d1c8e7\ndurability flush\n"
        );
        assert_eq!(parse(&text), Some(m.clone()));
        let d = tempfile::tempdir().unwrap();
        write(d.path(), &m).unwrap();
        assert_eq!(read(d.path()), Some(m));
        assert!(!d.path().join("ublk-run.tmp").exists());
    }

    #[test]
    fn bad_markers_read_as_none() {
        for t in [
            "",
            "sitrep-ublk-run 2\nboot_id x\ndurability flush\n",
            "sitrep-ublk-run 1\nboot_id x\n",
            "sitrep-ublk-run 1\nboot_id x\ndurability sometimes\n",
            "sitrep-ublk-run 1\ndurability write\n",
        ] {
            assert_eq!(parse(t), None, "{t:?}");
        }
        assert_eq!(read(Path::new("/nonexistent")), None);
    }

    #[test]
    fn only_a_host_crash_under_flush_durability_loses_records() {
        let m = |b: &str, d| RunMarker {
            boot_id: b.into(),
            durability: d,
        };
        let flush = m("boot-a", Durability::Flush);
        let write = m("boot-a", Durability::Write);
        assert!(
            !unsealed_log_may_be_short(Some(&flush), "boot-a"),
            "server crash"
        );
        assert!(
            unsealed_log_may_be_short(Some(&flush), "boot-b"),
            "host crash"
        );
        assert!(
            !unsealed_log_may_be_short(Some(&write), "boot-b"),
            "synced per write"
        );
        assert!(!unsealed_log_may_be_short(None, "boot-b"), "older server");
        assert!(current_boot_id().unwrap().len() >= 32);
    }
}
