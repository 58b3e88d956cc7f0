//! The daemons themselves: does the control socket answer a `Status` request, and — under
//! systemd — are the units active and enabled.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use base::control::Request;

use super::check::Check;
use super::devices::on_path;

/// How long a daemon may take to answer `Status`.
const ASK_TIMEOUT: Duration = Duration::from_secs(2);

/// A daemon: its check ids, its unit and its command.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Daemon {
    /// `agent` or `server`.
    pub(crate) role: &'static str,
    /// Id of the socket check.
    pub(crate) socket_id: &'static str,
    /// Id of the unit check.
    pub(crate) unit_id: &'static str,
    /// The systemd unit.
    pub(crate) unit: &'static str,
}

/// The agent.
pub(crate) const AGENT: Daemon = Daemon {
    role: "agent",
    socket_id: "agent-socket",
    unit_id: "agent-unit",
    unit: "sitrep-agent.service",
};

/// The server.
pub(crate) const SERVER: Daemon = Daemon {
    role: "server",
    socket_id: "server-socket",
    unit_id: "server-unit",
    unit: "sitrep-server.service",
};

/// Whether PID 1 is systemd (what `sd_booted()` checks).
pub(crate) fn systemd_running() -> bool {
    Path::new("/run/systemd/system").is_dir()
}

fn start_fix(d: Daemon) -> String {
    if systemd_running() {
        format!("systemctl enable --now {}", d.unit)
    } else {
        format!("start `sitrep {}` (see `sitrep {} --help`)", d.role, d.role)
    }
}

/// `agent-socket` / `server-socket`: the daemon answers on its control socket.
pub(crate) fn socket(d: Daemon, path: &Path) -> Check {
    let title = format!("{} control socket", d.role);
    if !path.exists() {
        return Check::warn(
            d.socket_id,
            title,
            format!("{}: absent (the {} is not running)", path.display(), d.role),
            start_fix(d),
        );
    }
    match base::control::call(path, &Request::Status, ASK_TIMEOUT) {
        Ok(r) if r.ok => Check::ok(d.socket_id, title, format!("{}: answers", path.display())),
        Ok(r) => Check::warn(
            d.socket_id,
            title,
            format!(
                "{}: refused status: {}",
                path.display(),
                r.error.unwrap_or_default()
            ),
            format!("look at the {}'s log", d.role),
        ),
        Err(e) => Check::warn(d.socket_id, title, format!("{e:#}"), start_fix(d)),
    }
}

/// The verdict on a unit from `systemctl is-active` and `is-enabled` outputs.
pub(crate) fn unit_verdict(d: Daemon, active: &str, enabled: &str) -> Check {
    let (active, enabled) = (active.trim(), enabled.trim());
    let title = format!("unit {}", d.unit);
    let u = d.unit;
    let detail = format!("{active}, {enabled}");
    if enabled == "not-found" || (enabled.is_empty() && active == "inactive") {
        return Check::warn(
            d.unit_id,
            title,
            "not installed".to_owned(),
            "install the sitrep package (apt install ./sitrep_*.deb)",
        );
    }
    match (active, enabled) {
        ("active" | "reloading" | "activating", "enabled" | "static" | "alias" | "indirect") => {
            Check::ok(d.unit_id, title, detail)
        }
        ("active" | "reloading" | "activating", _) => Check::warn(
            d.unit_id,
            title,
            format!("{detail}: will not start at boot"),
            format!("systemctl enable {u}"),
        ),
        ("failed", _) => Check::fail(
            d.unit_id,
            title,
            format!("{detail}: the {} stopped with an error", d.role),
            format!("journalctl -u {u} -e (then systemctl restart {u})"),
        ),
        _ => Check::warn(
            d.unit_id,
            title,
            format!("{detail} (fine if this host is not a {})", d.role),
            format!("systemctl enable --now {u}"),
        ),
    }
}

fn systemctl(args: &[&str]) -> String {
    Command::new("systemctl")
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

/// `agent-unit` / `server-unit`.
pub(crate) fn unit(d: Daemon) -> Check {
    let title = format!("unit {}", d.unit);
    if on_path("systemctl").is_none() {
        return Check::skip(d.unit_id, title, "no systemctl on PATH");
    }
    if !systemd_running() {
        return Check::skip(
            d.unit_id,
            title,
            "PID 1 is not systemd (/run/systemd/system missing)",
        );
    }
    let active = systemctl(&["is-active", d.unit]);
    let enabled = systemctl(&["is-enabled", d.unit]);
    unit_verdict(d, &active, &enabled)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::cli::doctor::check::Status;

    #[test]
    fn units() {
        assert_eq!(
            unit_verdict(AGENT, "active\n", "enabled\n").status,
            Status::Ok
        );
        let c = unit_verdict(AGENT, "active", "disabled");
        assert_eq!(c.status, Status::Warn);
        assert_eq!(
            c.fix.as_deref(),
            Some("systemctl enable sitrep-agent.service")
        );
        assert_eq!(
            unit_verdict(SERVER, "failed", "enabled").status,
            Status::Fail
        );
        let c = unit_verdict(SERVER, "inactive", "disabled");
        assert_eq!(c.status, Status::Warn);
        assert_eq!(
            c.fix.as_deref(),
            Some("systemctl enable --now sitrep-server.service")
        );
        assert_eq!(
            unit_verdict(AGENT, "inactive", "not-found").detail,
            "not installed"
        );
    }

    /// A daemon's control socket answering one request with `answer`.
    fn fake_daemon(path: &Path, answer: &'static str) -> std::thread::JoinHandle<()> {
        use std::io::{BufRead, BufReader, Write};
        let l = std::os::unix::net::UnixListener::bind(path).unwrap();
        std::thread::spawn(move || {
            let (s, _) = l.accept().unwrap();
            let mut line = String::new();
            BufReader::new(&s).read_line(&mut line).unwrap();
            assert!(line.contains("\"status\""), "{line}");
            (&s).write_all(answer.as_bytes()).unwrap();
        })
    }

    #[test]
    fn a_daemon_that_answers() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("server.sock");
        let t = fake_daemon(&p, "{\"ok\":true,\"data\":{}}\n");
        assert_eq!(socket(SERVER, &p).status, Status::Ok);
        t.join().unwrap();
        let p = d.path().join("agent.sock");
        let t = fake_daemon(&p, "{\"ok\":false,\"error\":\"busy\"}\n");
        let c = socket(AGENT, &p);
        assert_eq!(c.status, Status::Warn);
        assert!(c.detail.ends_with("refused status: busy"), "{}", c.detail);
        t.join().unwrap();
    }

    #[test]
    fn a_missing_socket_is_a_warning() {
        let d = tempfile::tempdir().unwrap();
        let c = socket(AGENT, &d.path().join("agent.sock"));
        assert_eq!((c.id, c.status), ("agent-socket", Status::Warn));
    }
}
