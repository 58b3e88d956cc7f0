//! The reverse direction of the two sites: site A's server (adopting from site A's agent
//! state) and site B's agent, for the reverse replication and failback tests.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use sitrep_tests::netns::NetNsPair;

use serde_json::Value;

use super::{Daemon, PORT, Sites, ctl, p, sitrep, sitrep_ok};

/// The reverse direction's daemons: site A's server and site B's agent.
pub struct Reverse {
    _server_a: Daemon,
    _agent_b: Daemon,
    pub server_a: PathBuf,
    pub agent_b: PathBuf,
}

pub fn reverse_daemons(sites: &Sites, state_b: &Path) -> Reverse {
    let a = NetNsPair::ADDR_A.to_string();
    sitrep_ok(&[
        "certs",
        "issue",
        "--ca",
        &p(&sites.path("pki-b")),
        "--name",
        "sitea-server",
        "--san",
        &a,
        "--out",
        &p(&sites.path("pki-a-server")),
    ]);
    let server_a = Daemon::start(
        &sites.net.a,
        &sites.path("server-a.log"),
        &[
            "server".into(),
            "--listen".into(),
            format!("{a}:{PORT}"),
            "--store".into(),
            p(&sites.path("store-a")),
            "--pki".into(),
            p(&sites.path("pki-a-server")),
            "--socket".into(),
            p(&sites.path("server-a.sock")),
            "--adopt-from".into(),
            p(&sites.path("state-a")),
        ],
    );
    let agent_b = Daemon::start(
        &sites.net.b,
        &sites.path("agent-b.log"),
        &[
            "agent".into(),
            "--state".into(),
            p(state_b),
            "--pki".into(),
            p(&sites.path("pki-b")),
            "--socket".into(),
            p(&sites.path("agent-b.sock")),
            "--retry-unit".into(),
            "0.2".into(),
            "--resync-window".into(),
            "always".into(),
        ],
    );
    // Both answer before the test goes on.
    ctl(&sites.path("server-a.sock"), &["status"]);
    ctl(&sites.path("agent-b.sock"), &["status"]);
    Reverse {
        _server_a: server_a,
        _agent_b: agent_b,
        server_a: sites.path("server-a.sock"),
        agent_b: sites.path("agent-b.sock"),
    }
}

pub fn to_a() -> String {
    format!("{}:{PORT}", NetNsPair::ADDR_A)
}

/// A loop device detached on drop (a failover's device in a test).
pub struct Detach(pub String);

impl Drop for Detach {
    fn drop(&mut self) {
        let _ = std::process::Command::new("losetup")
            .args(["-d", &self.0])
            .status();
    }
}

/// Two sites whose site-B server adopts from site B's agent state (`state-b`, in the returned
/// temporary directory, kept alive by the caller): the reverse direction's set-up.
pub fn adopting_sites() -> (tempfile::TempDir, PathBuf, Sites) {
    let dir = tempfile::tempdir().unwrap();
    let state_b = dir.path().join("state-b");
    let sites = Sites::with_server_args(&["--adopt-from", &p(&state_b)]);
    (dir, state_b, sites)
}

/// `sitrep reverse WHAT… --to TO --json` (WHAT: a disk name, or `--group G`) against this
/// site's agent and server, continuous: Ok(its JSON) or Err(stderr).
pub fn reverse(
    agent: &Path,
    server: &Path,
    what: &[&str],
    to: &str,
    extra: &[&str],
) -> Result<Value, String> {
    let out = sitrep()
        .arg("reverse")
        .args(what)
        .args(["--to", to, "--json", "--frequency", "continuous"])
        .args(["--timeout", "300"])
        .args(["--socket", &p(agent), "--server-socket", &p(server)])
        .args(extra)
        .output()
        .unwrap();
    if out.status.success() {
        Ok(serde_json::from_slice(&out.stdout).unwrap())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}
