//! Hostile peers that hold connections open (issue 19, items 1 and 8): idle TCP connections
//! that never start TLS, TLS connections that never say Hello or Attach, a peer that stops
//! reading, a flood of idle control-socket connections. The server must keep answering
//! `status`, serve an honest agent once the flood is over, and give every slot back.
//! Descriptor exhaustion itself is `hostile_fd_exhaustion.rs` (it lowers its process's
//! limit, so it runs alone in its own test binary).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::cast_possible_truncation
)]

mod common;

use std::time::{Duration, Instant};

use base::control::Request;
use common::{Client, Server, rt};
use proto::{Frame, Msg};
use serde_json::Value;

const SIZE: u64 = 1 << 20;

/// The counters of listener `name` (`tls`, `control`) in a status.
fn listener(status: &Value, name: &str) -> Value {
    status["listeners"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["name"] == name)
        .cloned()
        .unwrap_or_else(|| panic!("no listener {name} in {status}"))
}

/// Polls the status until `done` holds (panics after 20 s, naming `what`).
fn wait_status(server: &Server, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s = server.status();
        if done(&s) {
            return s;
        }
        assert!(Instant::now() < deadline, "{what}: {s}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether the server closed `c` (EOF or an error) within `limit`.
async fn closed_within(c: &mut Client, limit: Duration) -> bool {
    matches!(
        tokio::time::timeout(limit, proto::read_frame(&mut c.s)).await,
        Ok(Err(_))
    )
}

/// Long limits for the flood, so nothing is closed by a timer while the test looks.
fn patient(o: &mut secondary::server::ServerOptions) {
    o.limits.handshake_timeout = Duration::from_secs(120);
    o.limits.setup_timeout = Duration::from_secs(120);
}

#[test]
fn a_connection_flood_is_capped_status_answers_and_every_slot_comes_back() {
    let server = Server::start_with(patient);
    let limits = base::listen::Limits::default();
    let rt = rt();
    // 100 connections that complete TLS (a valid certificate) and then say nothing.
    let stalled: Vec<Client> = rt.block_on(async {
        let mut v = Vec::new();
        for _ in 0..100 {
            v.push(Client::tls(&server, "mallory").await);
        }
        v
    });
    // 300 that never start TLS.
    let idle: Vec<std::net::TcpStream> = (0..300)
        .map(|_| std::net::TcpStream::connect(&server.addr).unwrap())
        .collect();
    let s = wait_status(&server, "all 400 accepted", |s| {
        listener(s, "tls")["accepted"].as_u64() >= Some(400)
    });
    let tls = listener(&s, "tls");
    let held = limits.handshakes_per_ip as u64;
    assert_eq!(
        tls["handshaking"], held,
        "one address holds at most its cap: {tls}"
    );
    assert_eq!(tls["open"], 100 + held, "{tls}");
    assert_eq!(tls["refused"], 300 - held, "the rest closed at once: {tls}");
    // The control socket answers during the flood (it has its own limits).
    let r = server.call_within(&Request::Jobs, Duration::from_secs(3));
    assert!(r.ok, "{r:?}");
    drop(idle);
    drop(stalled);
    wait_status(&server, "every slot given back", |s| {
        listener(s, "tls")["open"] == 0
    });
    // An honest agent attaches and replicates a cycle after the flood.
    rt.block_on(async {
        let (mut c, r) = Client::attach(&server, "alice", "d", 1, SIZE).await;
        r.unwrap();
        c.copy(&vec![5u8; SIZE as usize], 1, false).await;
        c.cycle(
            1,
            &[Frame::Data {
                offset: 0,
                data: vec![9u8; 4096],
            }],
        )
        .await
        .unwrap();
    });
}

#[test]
fn a_peer_that_never_says_hello_or_attach_is_closed() {
    let server = Server::start_with(|o| o.limits.setup_timeout = Duration::from_millis(300));
    rt().block_on(async {
        let mut silent = Client::tls(&server, "mallory").await;
        assert!(
            closed_within(&mut silent, Duration::from_secs(20)).await,
            "a connection without Hello stayed open"
        );
        let mut no_attach = Client::hello(&server, "mallory").await;
        assert!(
            closed_within(&mut no_attach, Duration::from_secs(20)).await,
            "a connection without Attach stayed open"
        );
    });
    let s = wait_status(&server, "both slots given back", |s| {
        listener(s, "tls")["open"] == 0
    });
    assert_eq!(listener(&s, "tls")["timed_out"], 2, "{s}");
}

#[test]
fn a_peer_that_stops_reading_loses_its_session() {
    let server = Server::start_with(|o| o.limits.write_timeout = Duration::from_millis(500));
    let rt = rt();
    let c = rt.block_on(async {
        let (c, r) = Client::attach(&server, "alice", "d", 1, SIZE).await;
        r.unwrap();
        c
    });
    wait_status(&server, "attached", |s| s["disks"][0]["connected"] == true);
    // Pings, never reading the Pongs: once the socket buffers are full the server's writes
    // make no progress.
    let pinger = rt.spawn(async move {
        let mut c = c;
        for nonce in 0u64.. {
            if base::net::send(&mut c.s, Msg::Ping { nonce })
                .await
                .is_err()
            {
                break;
            }
        }
        c
    });
    wait_status(&server, "the session ended", |s| {
        s["disks"][0]["connected"] == false && listener(s, "tls")["open"] == 0
    });
    pinger.abort();
}

#[test]
fn idle_control_connections_cannot_lock_the_operator_out() {
    let server = Server::start();
    let cap = base::listen::CONTROL_CONNECTIONS;
    let idle: Vec<std::os::unix::net::UnixStream> = (0..300)
        .map(|_| std::os::unix::net::UnixStream::connect(&server.socket).unwrap())
        .collect();
    // Every status below needs a slot: the oldest idle connection gives it up.
    let s = wait_status(&server, "the flood accepted", |s| {
        listener(s, "control")["accepted"].as_u64() > Some(300)
    });
    let control = listener(&s, "control");
    assert!(control["open"].as_u64() <= Some(cap as u64), "{control}");
    assert!(
        control["evicted"].as_u64() >= Some(300 - cap as u64),
        "{control}"
    );
    drop(idle);
    wait_status(&server, "the idle slots given back", |s| {
        // The status asking holds one.
        listener(s, "control")["open"] == 1
    });
}
