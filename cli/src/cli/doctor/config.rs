//! `agent-config` / `server-config`: the daemon's config file loads as the daemon would read
//! it at start (every key known, every value accepted by its flag; the agent's `[[disk]]`
//! entries valid) — a typo found before a restart, not by a unit that fails to start.

use std::ffi::OsString;
use std::path::Path;

use super::check::Check;

/// The check of `daemon`'s (`agent` or `server`) config file at `path`.
pub(crate) fn config(id: &'static str, daemon: &str, path: &Path) -> Check {
    let title = format!("{daemon} config file");
    let argv: Vec<OsString> = ["sitrep", daemon, "--config"]
        .iter()
        .map(OsString::from)
        .chain([path.as_os_str().to_os_string()])
        .collect();
    let fix = format!(
        "edit {} (`sitrep generate config {daemon}` prints every key with its default)",
        path.display()
    );
    let flags = match crate::settings::merge(argv) {
        Ok(a) => a.len() - 4,
        Err(e) => return Check::fail(id, title, e, fix),
    };
    let mut detail = format!("{}: {flags} setting(s) loaded", path.display());
    if daemon == "agent" {
        match base::config::PolicyFile::load(path) {
            Ok(p) => detail.push_str(&format!(", {} disk(s) declared", p.disk.len())),
            Err(e) => return Check::fail(id, title, format!("{e:#}"), fix),
        }
    }
    Check::ok(id, title, detail)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::cli::doctor::check::Status;

    #[test]
    fn a_good_file_passes_and_a_typo_fails_with_the_key() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("agent.toml");
        std::fs::write(
            &p,
            "[agent]\nmax_rate = \"5M\"\n[[disk]]\ndevice = \"/dev/x\"\nto = \"h:1\"\n",
        )
        .unwrap();
        let c = config("agent-config", "agent", &p);
        assert_eq!(c.status, Status::Ok, "{c:?}");
        assert!(
            c.detail.contains("1 setting(s)") && c.detail.contains("1 disk(s)"),
            "{c:?}"
        );
        std::fs::write(&p, "[agent]\nmax_rat = \"5M\"\n").unwrap();
        let c = config("agent-config", "agent", &p);
        assert_eq!(c.status, Status::Fail, "{c:?}");
        assert!(c.detail.contains("`max_rat`"), "{c:?}");
        std::fs::write(&p, "[[disk]]\ndevice = \"/dev/x\"\n").unwrap();
        let c = config("agent-config", "agent", &p);
        assert_eq!(c.status, Status::Fail, "{c:?}");
    }
}
