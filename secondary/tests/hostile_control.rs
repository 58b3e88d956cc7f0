//! The control plane against a busy disk and a second daemon (issue 19, items 5 and 7):
//! `status` and `points` answer while one disk's operation holds it for a long time, and a
//! second server can neither share the store nor take over a live control socket.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::cast_possible_truncation
)]

mod common;

use std::time::Duration;

use base::control::Request;
use common::{Client, Server, points, rt};
use proto::{Frame, Msg};
use serde_json::Value;
use tokio::io::AsyncWriteExt as _;

const MIB: u64 = 1 << 20;
/// Repairs held until one `ResyncCommit`: writing them, their undo data and the syncs takes
/// the disk's mutex for a long while (seconds on a slow store).
const REPAIR_MIB: u64 = 200;
const SIZE: u64 = 256 * MIB;

/// Wire bytes the server counts for a frame (`frame_wire_estimate` in session.rs).
const DATA_FRAME_WIRE: u64 = proto::HEADER_LEN as u64 + 8 + MIB;
const CONTROL_FRAME_WIRE: u64 = proto::HEADER_LEN as u64 + 32;

fn disk(status: &Value) -> Value {
    status["disks"][0].clone()
}

/// A replica with a copy done and one recovery point, then a resync with `REPAIR_MIB` of
/// repairs received and not yet committed.
async fn resync_with_pending_repairs(server: &Server) -> Client {
    let (mut c, r) = Client::attach(server, "alice", "d", 1, SIZE).await;
    r.unwrap();
    c.copy_zero(SIZE).await;
    c.cycle(
        1,
        &[Frame::Data {
            offset: 0,
            data: vec![1u8; 4096],
        }],
    )
    .await
    .unwrap();
    c.consistent(1).await;
    c.send(Msg::ResyncBegin { id: 7, from_seq: 2 }).await;
    assert!(matches!(c.recv().await.unwrap(), Msg::ResyncReady { .. }));
    c
}

#[test]
fn status_and_points_answer_while_a_disk_commits_a_long_resync() {
    let server = Server::start();
    let rt = rt();
    let mut c = rt.block_on(resync_with_pending_repairs(&server));
    assert_eq!(
        points(&server, "d").len(),
        1,
        "one point, so the commit writes undo data"
    );
    let before = disk(&server.status());
    let shipped = before["bytes_shipped"].as_u64().unwrap();
    let data_end = before["wire_bytes"].as_u64().unwrap() + REPAIR_MIB * DATA_FRAME_WIRE;
    rt.block_on(async {
        let block: Vec<u8> = (0..MIB).map(|i| (i % 251) as u8 + 1).collect();
        for i in 0..REPAIR_MIB {
            c.frame(&Frame::Data {
                offset: i * MIB,
                data: block.clone(),
            })
            .await
            .unwrap();
        }
        // What TLS still buffers must reach the server before the test waits for it.
        c.s.flush().await.unwrap();
    });
    // Every repair received (the server counts a frame's wire bytes as it reads it).
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while disk(&server.status())["wire_bytes"].as_u64() < Some(data_end) {
        assert!(
            std::time::Instant::now() < deadline,
            "repairs not received: {} of {data_end}",
            disk(&server.status())
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    rt.block_on(async {
        c.send(Msg::ResyncCommit { cursor: SIZE }).await;
        c.s.flush().await.unwrap();
    });
    // As soon as the server has read the commit (it then holds the disk until the commit is
    // durable), status must answer — from before the commit: the commit's writes are not
    // published yet, i.e. the operation had not finished when status answered.
    let during = loop {
        let s = server.call_within(&Request::Status, Duration::from_secs(3));
        assert!(s.ok, "{s:?}");
        if disk(&s.data)["wire_bytes"].as_u64() >= Some(data_end + CONTROL_FRAME_WIRE) {
            break disk(&s.data);
        }
    };
    let pts = server.call_within(
        &Request::Points { name: "d".into() },
        Duration::from_secs(3),
    );
    assert!(pts.ok, "{pts:?}");
    assert_eq!(
        during["bytes_shipped"], shipped,
        "status waited for the commit to finish: {during}"
    );
    // The commit completes, and its result is published.
    rt.block_on(async {
        assert!(matches!(c.recv().await.unwrap(), Msg::ResyncAck { .. }));
    });
    let after = disk(&server.status());
    assert_eq!(
        after["bytes_shipped"].as_u64(),
        Some(shipped + REPAIR_MIB * MIB),
        "{after}"
    );
}

/// Runs a second server with `opts` (the first one's identity); its error.
fn second_server(
    first: &Server,
    tweak: impl FnOnce(&mut secondary::server::ServerOptions),
) -> String {
    let mut opts = secondary::server::ServerOptions {
        listen: format!("127.0.0.1:{}", common::free_port()),
        store: first.store_dir(),
        socket: first.socket.clone(),
        retention: base::points::Retention::default(),
        metrics: None,
        adopt_from: None,
        history_budget: secondary::store::HistoryBudget::default(),
        max_store_bytes: None,
        group_points_every: Duration::from_secs(1),
        limits: base::listen::Limits::default(),
    };
    tweak(&mut opts);
    let id = pki::Identity::load(&first.pki.server_dir()).unwrap();
    let r = rt().block_on(async {
        tokio::time::timeout(
            Duration::from_secs(20),
            secondary::server::run(opts, &id, std::future::pending()),
        )
        .await
    });
    match r {
        Ok(Err(e)) => format!("{e:#}"),
        Ok(Ok(())) => panic!("the second server ran and stopped"),
        Err(_) => panic!("the second server started"),
    }
}

#[test]
fn a_second_server_on_the_same_store_is_refused_naming_the_holder() {
    let first = Server::start();
    let other = tempfile::tempdir().unwrap();
    let e = second_server(&first, |o| o.socket = other.path().join("second.sock"));
    assert!(
        e.contains(&format!("pid {}", std::process::id())),
        "names the holder: {e}"
    );
    assert!(
        e.contains(&first.store_dir().join("LOCK").display().to_string()),
        "names the lock: {e}"
    );
    assert!(
        !other.path().join("second.sock").exists(),
        "touched nothing"
    );
    assert!(
        first.call(&Request::Status).ok,
        "the first one still answers"
    );
}

#[test]
fn a_live_control_socket_is_not_taken_over() {
    let first = Server::start();
    let store = tempfile::tempdir().unwrap();
    // Another server's socket: refused by its lock, naming the holder.
    let e = second_server(&first, |o| o.store = store.path().join("store"));
    assert!(
        e.contains(&format!("{}.lock", first.socket.display())),
        "names the socket's lock: {e}"
    );
    assert!(
        e.contains(&format!("pid {}", std::process::id())),
        "names the holder: {e}"
    );
    // Anything else that answers on the path (an older daemon, another program) too.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("busy.sock");
    let live = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let e = second_server(&first, |o| {
        o.store = store.path().join("store");
        o.socket = path.clone();
    });
    assert!(
        e.contains(&format!("another daemon answers on {}", path.display())),
        "{e}"
    );
    drop(live);
    assert!(
        first.call(&Request::Status).ok,
        "the first one still answers"
    );
}

#[test]
fn a_stale_control_socket_is_replaced() {
    // A socket file nobody listens on any more (a daemon killed with SIGKILL leaves one).
    let server = Server::start_with(|o| {
        drop(std::os::unix::net::UnixListener::bind(&o.socket).unwrap());
        assert!(o.socket.exists());
    });
    assert!(server.call(&Request::Status).ok);
}
