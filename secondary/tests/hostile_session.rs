//! Hostile peers against the server's session (issue 20, item 4): however a session ends
//! inside a cycle — a failed write of a reply included — the partly received cycle's staging
//! file is removed. The harness (`common`) runs the real server with real TLS.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::cast_possible_truncation
)]

mod common;

use std::time::Duration;

use common::{Client, Server, rt, staged_files, wait_for_status};
use proto::{EncodeOpts, Frame, Msg};
use tokio::io::AsyncWriteExt;

const SIZE: u64 = 1 << 20;

/// `count` Ping frames, encoded back to back (one TLS write carries them all).
fn pings(count: u64) -> Vec<u8> {
    let mut out = Vec::new();
    for nonce in 0..count {
        proto::encode(
            &Frame::Control(Msg::Ping { nonce }),
            &EncodeOpts {
                compress_level: None,
            },
            &mut out,
        )
        .unwrap();
    }
    out
}

#[test]
fn a_failed_pong_inside_a_cycle_leaves_no_staged_file() {
    // The session's writes fail once the peer has accepted no byte for 300 ms.
    let server = Server::start_with(|o| o.limits.write_timeout = Duration::from_millis(300));
    let rt = rt();
    let c = rt.block_on(async {
        let (mut c, r) = Client::attach(&server, "alice", "d", 1, SIZE).await;
        r.unwrap();
        c.copy_zero(SIZE).await;
        c.send(Msg::CycleBegin {
            seq: 1,
            log_id: [1; 16],
            cut_time_ns: 1,
            extents: 2,
            data_bytes: 8192,
        })
        .await;
        c.frame(&Frame::Data {
            offset: 0,
            data: vec![1; 4096],
        })
        .await
        .unwrap();
        c
    });
    wait_for_status(&server, "cycle 1 staged", |_| {
        !staged_files(&server.store_dir(), "d").is_empty()
    });
    // Pings inside the cycle, never reading the Pongs: once the socket buffers are full the
    // server's Pong write fails (write timeout) while cycle 1 is staged.
    let pinger = rt.spawn(async move {
        let mut c = c;
        let batch = pings(4096);
        while c.s.write_all(&batch).await.is_ok() {}
        c
    });
    wait_for_status(&server, "the session ended", |s| {
        s["disks"][0]["connected"] == false
    });
    pinger.abort();
    // The session has returned: whatever it staged is gone (a leak stays until a restart).
    let left = staged_files(&server.store_dir(), "d");
    assert!(left.is_empty(), "staged files left behind: {left:?}");
}
