//! `sitrep server --config FILE`: a daemon's settings from its config file, through the real
//! binary — the file's settings take effect, a flag on the command line wins, and a typo or a
//! bad value is refused with the file and the key before anything starts.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failures should panic

use std::path::Path;
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

fn sitrep() -> Command {
    Command::new(env!("CARGO_BIN_EXE_sitrep"))
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A server configured by `dir/server.toml` (store, pki, a loopback listener, a socket in
/// `dir` and a 1 GiB store quota), run with `extra` flags.
struct Server {
    child: Child,
    sock: std::path::PathBuf,
}

impl Server {
    fn start(dir: &Path, extra: &[&str]) -> Self {
        let sock = dir.join("s.sock");
        let _ = std::fs::remove_file(&sock);
        let child = sitrep()
            .args(["server", "--config", s(&dir.join("server.toml"))])
            .args(extra)
            .stderr(std::fs::File::create(dir.join("server.log")).unwrap())
            .spawn()
            .unwrap();
        Self { child, sock }
    }

    /// `sitrep status --json` once the server serves.
    fn status(&self) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let out = sitrep()
                .args(["status", "--json", "--socket", s(&self.sock)])
                .output()
                .unwrap();
            if out.status.success() {
                return serde_json::from_slice(&out.stdout).unwrap();
            }
            assert!(Instant::now() < deadline, "the server never served");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn setup() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    let pki = d.path().join("pki");
    let out = sitrep()
        .args([
            "certs",
            "init",
            "--dir",
            s(&pki),
            "--name",
            "b",
            "--san",
            "127.0.0.1",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = format!(
        "[server]\nstore = \"{}\"\npki = \"{}\"\nlisten = \"127.0.0.1:0\"\nsocket = \"{}\"\nmax_store_bytes = \"1G\"\n",
        s(&d.path().join("store")),
        s(&pki),
        s(&d.path().join("s.sock")),
    );
    std::fs::write(d.path().join("server.toml"), text).unwrap();
    d
}

fn refused(dir: &Path, line: &str) -> Output {
    let f = dir.join("bad.toml");
    let text = std::fs::read_to_string(dir.join("server.toml")).unwrap();
    std::fs::write(&f, format!("{text}{line}\n")).unwrap();
    sitrep()
        .args(["server", "--config", s(&f)])
        .output()
        .unwrap()
}

#[test]
fn the_server_runs_from_its_file_and_a_flag_wins() {
    let d = setup();
    {
        let srv = Server::start(d.path(), &[]);
        let st = srv.status();
        assert_eq!(st["store"]["quota_bytes"], 1u64 << 30, "{st}");
        assert_eq!(st["role"], "server", "{st}");
    }
    let srv = Server::start(d.path(), &["--max-store-bytes", "2G"]);
    let st = srv.status();
    assert_eq!(st["store"]["quota_bytes"], 2u64 << 30, "{st}");
}

#[test]
fn a_typo_or_a_bad_value_is_refused_with_the_file_and_the_key() {
    let d = setup();
    let out = refused(d.path(), "retian = \"7d\"");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("bad.toml") && err.contains("`retian`"),
        "{err}"
    );
    let out = refused(d.path(), "retain = \"a week\"");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("retain = \"a week\""), "{err}");
    // Nothing started: no store was made.
    assert!(!d.path().join("store").exists());
}
