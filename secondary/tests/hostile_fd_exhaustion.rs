//! Descriptor exhaustion (issue 19, item 1): the server runs with a soft limit of 128 open
//! descriptors and 300 connections arrive at once — 200 on the TLS port, 100 on the control
//! socket. `accept` then fails with `EMFILE` until connections close. Before the fix the TLS
//! loop retried without pause (100 % CPU, a log line per attempt) and the control socket's
//! task ended at its first error, so `status` was refused until a restart.
//!
//! Alone in its own test binary: the limit is its whole process's. The flood comes from a
//! child process (this binary again, running `flood_child`) so that its own descriptors do
//! not count against the limit.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::cast_possible_truncation
)]

mod common;

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use base::control::{self, Request};
use common::Server;
use serde_json::Value;

/// Set in the child's environment: `ADDR SOCKET`.
const FLOOD_ENV: &str = "SITREP_FLOOD_TARGET";
const TCP_FLOOD: usize = 200;
const CONTROL_FLOOD: usize = 100;
/// The soft descriptor limit of this process.
const LIMIT: u64 = 128;

/// The flooding child: opens the connections, says so, holds them until stdin closes.
#[test]
fn flood_child() {
    let Ok(target) = std::env::var(FLOOD_ENV) else {
        return; // Not the child: nothing to do.
    };
    let (addr, sock) = target.split_once(' ').unwrap();
    let _ = base::listen::raise_descriptor_limit();
    let tcp: Vec<_> = (0..TCP_FLOOD)
        .filter_map(|_| std::net::TcpStream::connect(addr).ok())
        .collect();
    let unix: Vec<_> = (0..CONTROL_FLOOD)
        .filter_map(|_| std::os::unix::net::UnixStream::connect(sock).ok())
        .collect();
    println!("flood-ready {} {}", tcp.len(), unix.len());
    let mut rest = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut rest);
    drop((tcp, unix));
}

fn set_soft_limit(soft: u64) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read or write one rlimit that lives across each call.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut lim), 0);
        lim.rlim_cur = soft.min(lim.rlim_max);
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &raw const lim), 0);
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

/// The status, retried while this process is short of descriptors (up to 30 s).
fn status_when_answered(server: &Server, until: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let last = match control::call(&server.socket, &Request::Status, Duration::from_secs(3)) {
            Ok(r) if r.ok && until(&r.data) => return r.data,
            Ok(r) => format!("{r:?}"),
            Err(e) => format!("{e:#}"),
        };
        assert!(
            Instant::now() < deadline,
            "the control socket did not answer after the flood: {last}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn out_of_descriptors_the_listeners_pause_and_the_control_socket_survives() {
    if std::env::var(FLOOD_ENV).is_ok() {
        return; // The child runs only `flood_child`.
    }
    let server = Server::start_with(|o| {
        // Caps above the descriptor limit: this test is about running out of descriptors.
        o.limits.handshakes_total = 1000;
        o.limits.handshakes_per_ip = 1000;
        o.limits.handshake_timeout = Duration::from_secs(120);
    });
    set_soft_limit(LIMIT);
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "flood_child", "--nocapture", "--test-threads=1"])
        .env(
            FLOOD_ENV,
            format!("{} {}", server.addr, server.socket.display()),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    // The test harness prints its own words before the child's on the same line.
    let ready = lines
        .find_map(|l| Some(l.ok()?.split_once("flood-ready")?.1.trim().to_string()))
        .expect("the flooding child did not start");
    assert_eq!(
        ready,
        format!("{TCP_FLOOD} {CONTROL_FLOOD}"),
        "the child opened every connection"
    );
    // The flood lasts a while: long enough for a loop without pause to spin millions of
    // times.
    std::thread::sleep(Duration::from_secs(2));
    drop(child.stdin.take());
    child.wait().unwrap();
    // Every slot given back, and the control socket answers.
    let s = status_when_answered(&server, |s| {
        listener(s, "tls")["open"] == 0 && listener(s, "control")["open"] == 1
    });
    let tls = listener(&s, "tls");
    let control = listener(&s, "control");
    let errors = |l: &Value| l["accept_errors"].as_u64().unwrap();
    assert!(
        errors(&tls) > 0,
        "the flood did not exhaust the descriptors, so it tested nothing: {s}"
    );
    // A pause of 10 ms doubling to 1 s: about ten failed accepts per listener in the
    // flood's few seconds.
    assert!(errors(&tls) <= 50, "the TLS accept loop spun: {tls}");
    assert!(
        errors(&control) <= 50,
        "the control accept loop spun: {control}"
    );
    set_soft_limit(u64::MAX);
}
