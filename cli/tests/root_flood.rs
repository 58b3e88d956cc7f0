//! Root tier: the real `sitrep server` and `sitrep agent`, each limited to 128 open
//! descriptors (`prlimit`), flooded with idle connections — 300 on the server's TLS port and
//! 300 on each control socket, held for a few seconds. `sitrep status` must answer on both
//! daemons during the flood and after it (issue 19, item 1: before, an `EMFILE` ended the
//! control socket's task and `status` was refused until a restart). Also: a second daemon on
//! the same store or state directory refuses to start, naming the first one's pid (item 7).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{ctl, p, sitrep, sitrep_ok, try_ctl};
use serde_json::Value;
use sitrep_tests::{Need, require};

const CONNECTIONS: usize = 300;

/// A daemon under `prlimit --nofile=128:128`, killed on drop (its log printed on failure).
struct Limited {
    child: Child,
    log: PathBuf,
}

impl Limited {
    fn start(log: &Path, args: &[&str]) -> Self {
        let out = std::fs::File::create(log).unwrap();
        let child = Command::new("prlimit")
            .arg("--nofile=128:128")
            .arg(env!("CARGO_BIN_EXE_sitrep"))
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap();
        Self {
            child,
            log: log.to_path_buf(),
        }
    }
}

impl Drop for Limited {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let t = std::fs::read_to_string(&self.log).unwrap_or_default();
            let tail: Vec<&str> = t.lines().rev().take(30).collect();
            eprintln!("---- {} (last lines) ----", self.log.display());
            for l in tail.iter().rev() {
                eprintln!("{l}");
            }
        }
    }
}

fn listener(status: &Value, name: &str) -> Value {
    status["listeners"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["name"] == name)
        .cloned()
        .unwrap_or_else(|| panic!("no listener {name} in {status}"))
}

/// `sitrep status` must succeed now (the CLI's own 10 s answer timeout).
fn status_now(sock: &Path, when: &str) -> Value {
    try_ctl(sock, &["status"]).unwrap_or_else(|e| panic!("status {when}: {e}"))
}

/// A second daemon with `args` exits with an error naming `pid` and `lock`.
fn refused(args: &[&str], pid: u32, lock: &Path) {
    let out = sitrep().args(args).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a second daemon started: {err}");
    assert!(err.contains(&format!("pid {pid}")), "{err}");
    assert!(err.contains(&p(lock)), "{err}");
}

#[test]
fn both_daemons_answer_status_during_and_after_a_connection_flood() {
    if !require!(
        Need::Root,
        Need::Bpf,
        Need::Command("prlimit"),
        Need::Command("python3")
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    sitrep_ok(&[
        "certs",
        "init",
        "--dir",
        &p(&d.join("pki-b")),
        "--name",
        "siteb",
        "--san",
        "127.0.0.1",
    ]);
    sitrep_ok(&[
        "certs",
        "issue",
        "--ca",
        &p(&d.join("pki-b")),
        "--name",
        "sitea",
        "--out",
        &p(&d.join("pki-a")),
    ]);
    let (store, state) = (d.join("store"), d.join("state"));
    let (server_sock, agent_sock) = (d.join("server.sock"), d.join("agent.sock"));
    let server_args = [
        "server",
        "--listen",
        &listen,
        "--store",
        &p(&store),
        "--pki",
        &p(&d.join("pki-b")),
        "--socket",
        &p(&server_sock),
    ];
    let agent_args = [
        "agent",
        "--state",
        &p(&state),
        "--pki",
        &p(&d.join("pki-a")),
        "--socket",
        &p(&agent_sock),
    ];
    let server = Limited::start(&d.join("server.log"), &server_args);
    let agent = Limited::start(&d.join("agent.log"), &agent_args);
    ctl(&server_sock, &["status"]);
    ctl(&agent_sock, &["status"]);

    // Two daemons on one store or state directory: the second refuses, naming the first.
    let other = |s: &str| p(&d.join(s));
    refused(
        &[
            "server",
            "--listen",
            "127.0.0.1:0",
            "--store",
            &p(&store),
            "--pki",
            &p(&d.join("pki-b")),
            "--socket",
            &other("second-server.sock"),
        ],
        server.child.id(),
        &store.join("LOCK"),
    );
    refused(
        &[
            "agent",
            "--state",
            &p(&state),
            "--pki",
            &p(&d.join("pki-a")),
            "--socket",
            &other("second-agent.sock"),
        ],
        agent.child.id(),
        &state.join("LOCK"),
    );

    // The flood: idle connections, none sends a byte.
    let started = Instant::now();
    let tcp = TcpFlood::start(port, CONNECTIONS);
    let unix: Vec<_> = [&server_sock, &agent_sock]
        .iter()
        .flat_map(|s| {
            (0..CONNECTIONS).map(move |_| std::os::unix::net::UnixStream::connect(s).unwrap())
        })
        .collect();
    // During: both answer, and the server closed what is over its caps at once.
    status_now(&server_sock, "of the server during the flood");
    status_now(&agent_sock, "of the agent during the flood");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s = status_now(&server_sock, "of the server during the flood");
        let tls = listener(&s, "tls");
        if tls["accepted"].as_u64() >= Some(CONNECTIONS as u64) {
            assert!(tls["refused"].as_u64() > Some(0), "{tls}");
            break;
        }
        assert!(Instant::now() < deadline, "the flood was not accepted: {s}");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Hold it a few seconds in all, asking both daemons meanwhile.
    while started.elapsed() < Duration::from_secs(3) {
        status_now(&server_sock, "of the server during the flood");
        status_now(&agent_sock, "of the agent during the flood");
        std::thread::sleep(Duration::from_millis(200));
    }
    drop((tcp, unix));
    // After: both answer, and every slot comes back.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s = status_now(&server_sock, "of the server after the flood");
        let a = status_now(&agent_sock, "of the agent after the flood");
        if listener(&s, "tls")["open"] == 0
            && listener(&s, "control")["open"] == 1
            && listener(&a, "control")["open"] == 1
        {
            break;
        }
        assert!(Instant::now() < deadline, "slots not given back: {s} {a}");
        std::thread::sleep(Duration::from_millis(100));
    }
    drop((agent, server));
}

/// Idle TCP connections to 127.0.0.1:`port` from ten source addresses (127.0.0.2–11), so
/// the per-address caps do not stop the flood before the totals and the descriptor limit
/// are reached. Held by a Python child (std cannot bind before connecting) until dropped.
struct TcpFlood(Child);

impl TcpFlood {
    fn start(port: u16, n: usize) -> Self {
        const SCRIPT: &str = r#"
import socket, sys
port, n = int(sys.argv[1]), int(sys.argv[2])
held = []
for i in range(n):
    s = socket.socket()
    s.bind(("127.0.0.%d" % (2 + i % 10), 0))
    s.connect(("127.0.0.1", port))
    held.append(s)
print("flooding", len(held), flush=True)
sys.stdin.read()
"#;
        let mut child = Command::new("python3")
            .args(["-c", SCRIPT, &port.to_string(), &n.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 runs the TCP flood");
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.take().unwrap()),
            &mut line,
        )
        .unwrap();
        assert_eq!(
            line.trim(),
            format!("flooding {n}"),
            "the flood did not start"
        );
        Self(child)
    }
}

impl Drop for TcpFlood {
    fn drop(&mut self) {
        drop(self.0.stdin.take());
        let _ = self.0.wait();
    }
}
