//! Hostile peer: the protected host cannot destroy its history on the secondary
//! (issue 19, item 13). The harness (`common`) runs the real server with real TLS.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::cast_possible_truncation
)]

mod common;

use common::{Client, Server, points, rt};
use proto::Frame;

const SIZE: u64 = 1 << 20;

/// An honest session: copy, two cycles judged consistent → two recovery points.
async fn replicate_two_points(server: &Server) {
    let (mut c, r) = Client::attach(server, "alice", "d", 1, SIZE).await;
    r.unwrap();
    c.copy(&vec![7u8; SIZE as usize], 1, false).await;
    for seq in 1..=2u64 {
        c.cycle(
            seq,
            &[Frame::Data {
                offset: 4096 * seq,
                data: vec![seq as u8; 4096],
            }],
        )
        .await
        .unwrap();
        c.consistent(seq).await;
    }
    c.send(proto::Msg::Bye).await;
}

#[test]
fn the_harness_replicates_and_offers_points() {
    let server = Server::start();
    rt().block_on(replicate_two_points(&server));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while points(&server, "d").len() < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "{:?}",
            points(&server, "d")
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}
