//! The async helpers over an in-memory duplex stream.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failures should panic

mod common;

use std::time::Duration;

use common::{by_hand, header_only, random, zeroish};
use proto::{
    EncodeOpts, Frame, FrameReader, FrameWriter, MAX_DATA, Msg, ProtoError, read_frame, write_frame,
};
use tokio::io::AsyncWriteExt;

fn frames() -> Vec<Frame> {
    vec![
        Frame::Control(Msg::Hello {
            versions: vec![1],
            agent: "agent".into(),
        }),
        Frame::Data {
            offset: 0,
            data: random(MAX_DATA, 1),
        },
        Frame::Data {
            offset: 1 << 20,
            data: zeroish(MAX_DATA, 2),
        },
        Frame::Data {
            offset: 77,
            data: vec![5],
        },
        Frame::Data {
            offset: 4096,
            data: random(4000, 3),
        },
        Frame::Zero {
            offset: 1 << 21,
            len: 1 << 30,
        },
        Frame::Control(Msg::Bye),
    ]
}

#[tokio::test]
async fn frames_cross_a_stream() {
    // A small pipe, so writer and reader must interleave.
    let (mut a, mut b) = tokio::io::duplex(64 << 10);
    let sent = frames();
    let to_send = sent.clone();
    let writer = tokio::spawn(async move {
        let mut w = FrameWriter::new(EncodeOpts::default());
        let mut compressed = 0;
        for f in &to_send {
            compressed += usize::from(w.write(&mut a, f).await.unwrap().compressed);
        }
        // The one-shot helper too.
        write_frame(
            &mut a,
            &Frame::Control(Msg::Ping { nonce: 9 }),
            &EncodeOpts::default(),
        )
        .await
        .unwrap();
        compressed
    });
    let mut r = FrameReader::new();
    for f in &sent {
        assert_eq!(&r.read(&mut b).await.unwrap(), f);
    }
    assert_eq!(
        read_frame(&mut b).await.unwrap(),
        Frame::Control(Msg::Ping { nonce: 9 })
    );
    assert_eq!(writer.await.unwrap(), 1, "only the zero-ish MiB compresses");
    // The writer half is dropped: a clean close between frames.
    assert!(matches!(r.read(&mut b).await, Err(ProtoError::Closed)));
}

#[tokio::test]
async fn close_inside_a_frame_is_an_io_error() {
    let mut wire = Vec::new();
    proto::encode(
        &Frame::Data {
            offset: 0,
            data: random(100, 4),
        },
        &EncodeOpts::default(),
        &mut wire,
    )
    .unwrap();
    for cut in [1, 15, 16, 20, wire.len() - 1] {
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        a.write_all(&wire[..cut]).await.unwrap();
        drop(a);
        let err = read_frame(&mut b).await.unwrap_err();
        let ProtoError::Io(e) = &err else {
            panic!("cut {cut}: {err:?}")
        };
        assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof, "cut {cut}");
        assert!(
            err.to_string().contains("connection closed inside"),
            "{err}"
        );
    }
}

#[tokio::test]
async fn oversize_header_is_refused_without_waiting_for_the_payload() {
    let (mut a, mut b) = tokio::io::duplex(1 << 16);
    a.write_all(&header_only(64 << 20, 2, 0, 64 << 20))
        .await
        .unwrap();
    // `a` stays open: if the reader tried to read the payload it would hang.
    let r = tokio::time::timeout(Duration::from_secs(5), read_frame(&mut b))
        .await
        .unwrap();
    assert!(
        matches!(
            r,
            Err(ProtoError::TooLarge {
                what: "frame payload",
                ..
            })
        ),
        "{r:?}"
    );
    drop(a);
}

#[tokio::test]
async fn damaged_frames_are_refused() {
    let mut wire = Vec::new();
    let frame = Frame::Data {
        offset: 8,
        data: random(5000, 5),
    };
    proto::encode(&frame, &EncodeOpts::default(), &mut wire).unwrap();
    let last = wire.len() - 1;
    wire[last] ^= 0x10;
    let (mut a, mut b) = tokio::io::duplex(1 << 16);
    a.write_all(&wire).await.unwrap();
    assert!(matches!(
        read_frame(&mut b).await,
        Err(ProtoError::Checksum { kind: 2 })
    ));
    // Every other check runs on the streaming path too.
    for (bytes, want) in [
        (by_hand(9, 0, 1, &[0]), "unknown frame kind 9"),
        (by_hand(2, 4, 9, &[0; 9]), "invalid flags 0x0004"),
        (by_hand(2, 0, 8, &[0; 8]), "no data bytes"),
        (by_hand(3, 0, 9, &[0; 9]), "must be exactly 16"),
    ] {
        a.write_all(&bytes).await.unwrap();
        let err = read_frame(&mut b).await.unwrap_err();
        assert!(err.to_string().contains(want), "{err}");
    }
}
