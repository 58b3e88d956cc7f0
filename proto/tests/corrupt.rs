//! Every kind of damage is rejected with its own error (docs/protocol.md, "Errors"), and
//! the encoder refuses frames the decoder would reject.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failures should panic

mod common;

use common::{by_hand, data_payload, header_only, random, zeroish};
use proto::{
    EncodeOpts, ErrorCode, Frame, FrameKind, MAX_DATA, MAX_RAW_PAYLOAD, MAX_WIRE_PAYLOAD, Msg,
    ProtoError, decode, encode,
};

fn enc(frame: &Frame) -> Vec<u8> {
    let mut out = Vec::new();
    encode(frame, &EncodeOpts::default(), &mut out).unwrap();
    out
}

fn samples() -> Vec<Frame> {
    vec![
        Frame::Data {
            offset: 512,
            data: random(300, 1),
        },
        Frame::Data {
            offset: 1 << 30,
            data: zeroish(6000, 2),
        }, // compressed
        Frame::Zero {
            offset: 4096,
            len: 8192,
        },
        Frame::Control(Msg::Error {
            code: ErrorCode::DiskMismatch,
            message: "disk vdb: size differs".into(),
            supported: vec![1],
        }),
    ]
}

#[test]
fn every_flipped_bit_is_detected() {
    for frame in samples() {
        let good = enc(&frame);
        let payload_len = good.len() - 16;
        for bit in 0..good.len() * 8 {
            let mut bad = good.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            let len = u32::from_le_bytes(bad[0..4].try_into().unwrap()) as usize;
            let raw_len = u32::from_le_bytes(bad[8..12].try_into().unwrap()) as usize;
            let r = decode(&bad);
            let ok = match &r {
                Err(ProtoError::TooLarge { what, .. }) if *what == "frame payload" => {
                    len > MAX_WIRE_PAYLOAD
                }
                Err(ProtoError::TooLarge { .. }) => raw_len > MAX_RAW_PAYLOAD,
                Ok(None) => len > payload_len, // waits for bytes that will never match
                Err(ProtoError::Checksum { .. }) => {
                    len <= MAX_WIRE_PAYLOAD && raw_len <= MAX_RAW_PAYLOAD && len <= payload_len
                }
                _ => false,
            };
            assert!(ok, "{:?}: bit {bit} flipped gave {r:?}", frame.kind());
        }
    }
}

#[test]
fn caps_are_checked_on_the_header_alone() {
    let over = u32::try_from(MAX_WIRE_PAYLOAD + 1).unwrap();
    let err = decode(&header_only(over, 2, 0, 16)).unwrap_err();
    assert!(
        matches!(err, ProtoError::TooLarge { what: "frame payload", len, max }
            if len == u64::from(over) && max == MAX_WIRE_PAYLOAD as u64),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "frame payload of 4198401 bytes (4.0 MiB) exceeds the limit of 4198400 bytes (4.0 MiB)"
    );
    let err = decode(&header_only(9 << 20, 1, 0, 9 << 20)).unwrap_err();
    assert!(err.to_string().contains("(9.0 MiB) exceeds"), "{err}");

    let over = u32::try_from(MAX_RAW_PAYLOAD + 1).unwrap();
    let err = decode(&header_only(100, 2, 1, over)).unwrap_err();
    assert!(
        matches!(
            err,
            ProtoError::TooLarge {
                what: "decompressed frame payload",
                ..
            }
        ),
        "{err:?}"
    );
    // At the caps exactly, the header is fine: decode just wants the payload.
    let at = u32::try_from(MAX_WIRE_PAYLOAD).unwrap();
    assert!(decode(&header_only(at, 2, 0, at)).unwrap().is_none());
}

#[test]
fn unknown_kind() {
    for kind in [0u16, 4, 0xffff] {
        let f = by_hand(kind, 0, 16, &[0; 16]);
        let err = decode(&f).unwrap_err();
        assert!(
            matches!(err, ProtoError::UnknownKind(k) if k == kind),
            "{err:?}"
        );
        assert!(
            err.to_string()
                .contains(&format!("unknown frame kind {kind}"))
        );
    }
}

#[test]
fn bad_flags() {
    let p = data_payload(0, b"x");
    for (kind, flags, payload) in [
        (2u16, 2u16, &p[..]),
        (2, 0x8001, &p[..]),
        (1, 1, &[0x1f][..]),    // control frames are never compressed
        (3, 1, &[0u8; 16][..]), // nor zero frames
    ] {
        let f = by_hand(kind, flags, u32::try_from(payload.len()).unwrap(), payload);
        let err = decode(&f).unwrap_err();
        assert!(
            matches!(err, ProtoError::BadFlags { kind: k, flags: fl } if k == kind && fl == flags),
            "kind {kind} flags {flags:#x}: {err:?}"
        );
    }
}

#[test]
fn compressed_payload_that_expands_beyond_raw_len() {
    let raw = data_payload(0, &zeroish(10_000, 3));
    let z = zstd::bulk::compress(&raw, 1).unwrap();
    // Honest raw_len decodes.
    let good = by_hand(2, 1, u32::try_from(raw.len()).unwrap(), &z);
    assert!(matches!(
        decode(&good).unwrap().unwrap().0,
        Frame::Data { offset: 0, .. }
    ));
    // Claims fewer bytes than it expands to: refused without writing past raw_len.
    let short = by_hand(2, 1, 5000, &z);
    let err = decode(&short).unwrap_err();
    assert!(matches!(err, ProtoError::Decompress(_)), "{err:?}");
    assert!(
        err.to_string().contains("5000 bytes after decompression"),
        "{err}"
    );
    // Claims more bytes than it expands to.
    let long = by_hand(2, 1, u32::try_from(raw.len() + 1).unwrap(), &z);
    let err = decode(&long).unwrap_err();
    assert!(
        err.to_string()
            .contains("decompressed to 10008 bytes but the header says 10009")
    );
    // Not zstd at all.
    let junk = by_hand(2, 1, 100, b"definitely not zstd");
    assert!(matches!(
        decode(&junk).unwrap_err(),
        ProtoError::Decompress(_)
    ));
}

#[test]
fn truncated_input_wants_more() {
    for frame in samples() {
        let good = enc(&frame);
        for cut in 0..good.len() {
            assert!(
                decode(&good[..cut]).unwrap().is_none(),
                "{:?} cut at {cut}",
                frame.kind()
            );
        }
        // And extra bytes after a frame are left alone.
        let mut two = good.clone();
        two.extend_from_slice(&good);
        let (f, used) = decode(&two).unwrap().unwrap();
        assert_eq!((f, used), (frame, good.len()));
    }
}

fn bad_payload(f: &[u8]) -> (FrameKind, String) {
    match decode(f) {
        Err(ProtoError::BadPayload { kind, why }) => (kind, why),
        other => panic!("expected BadPayload, got {other:?}"),
    }
}

#[test]
fn data_payload_shapes() {
    for n in 0..8u32 {
        let (kind, why) = bad_payload(&by_hand(2, 0, n, &vec![0; n as usize]));
        assert_eq!(kind, FrameKind::Data);
        assert!(why.contains("shorter than the 8-byte offset"), "{why}");
    }
    let (_, why) = bad_payload(&by_hand(2, 0, 8, &[0; 8]));
    assert!(why.contains("no data bytes"), "{why}");
    let (_, why) = bad_payload(&by_hand(2, 0, 9, &data_payload(u64::MAX, b"x")));
    assert!(why.contains("overflow"), "{why}");
    let big = data_payload(0, &vec![1; MAX_DATA + 1]);
    let (_, why) = bad_payload(&by_hand(2, 0, u32::try_from(big.len()).unwrap(), &big));
    assert!(why.contains("more than MAX_DATA"), "{why}");
    // raw_len must equal len when not compressed.
    let mut f = by_hand(2, 0, 10, &data_payload(0, b"ab"));
    f[8] = 11;
    let fixed = by_hand(2, 0, 11, &data_payload(0, b"ab"));
    f[12..16].copy_from_slice(&fixed[12..16]);
    let (_, why) = bad_payload(&f);
    assert!(why.contains("raw_len says 11"), "{why}");
}

#[test]
fn zero_payload_shapes() {
    for n in [0usize, 8, 15, 17, 24] {
        let (kind, why) = bad_payload(&by_hand(3, 0, u32::try_from(n).unwrap(), &vec![1; n]));
        assert_eq!(kind, FrameKind::Zero);
        assert!(why.contains("must be exactly 16"), "{n}: {why}");
    }
    let mut p = 4096u64.to_le_bytes().to_vec();
    p.extend_from_slice(&0u64.to_le_bytes());
    assert!(
        bad_payload(&by_hand(3, 0, 16, &p))
            .1
            .contains("empty zero range")
    );
    let mut p = u64::MAX.to_le_bytes().to_vec();
    p.extend_from_slice(&1u64.to_le_bytes());
    assert!(bad_payload(&by_hand(3, 0, 16, &p)).1.contains("overflows"));
}

#[test]
fn control_payload_shapes() {
    let (kind, why) = bad_payload(&by_hand(1, 0, 1, &[0x7f])); // no such variant
    assert_eq!(kind, FrameKind::Control);
    assert!(why.contains("not a control message"), "{why}");
    let (_, why) = bad_payload(&by_hand(1, 0, 0, &[]));
    assert!(why.contains("not a control message"), "{why}");
    // Bye (index 15) plus a stray byte.
    let (_, why) = bad_payload(&by_hand(1, 0, 2, &[15, 0]));
    assert!(why.contains("1 trailing bytes"), "{why}");
    assert_eq!(
        decode(&by_hand(1, 0, 1, &[15])).unwrap().unwrap().0,
        Frame::Control(Msg::Bye)
    );
}

#[test]
fn encoder_refuses_what_the_decoder_would() {
    let opts = EncodeOpts::default();
    let cases = [
        (
            Frame::Data {
                offset: 0,
                data: vec![],
            },
            "no data bytes",
        ),
        (
            Frame::Data {
                offset: 0,
                data: vec![0; MAX_DATA + 1],
            },
            "more than MAX_DATA",
        ),
        (
            Frame::Data {
                offset: u64::MAX - 1,
                data: vec![0; 2],
            },
            "overflow",
        ),
        (Frame::Zero { offset: 0, len: 0 }, "empty zero range"),
        (
            Frame::Zero {
                offset: u64::MAX,
                len: 1,
            },
            "overflows",
        ),
    ];
    for (frame, want) in cases {
        let mut out = vec![9, 9];
        let err = encode(&frame, &opts, &mut out).unwrap_err();
        assert!(matches!(err, ProtoError::Encode(_)), "{err:?}");
        assert!(err.to_string().contains(want), "{err}");
        assert_eq!(out, [9, 9], "out must be unchanged on error");
    }
    // Exactly MAX_DATA is fine.
    let frame = Frame::Data {
        offset: 0,
        data: random(MAX_DATA, 4),
    };
    let mut out = Vec::new();
    encode(&frame, &opts, &mut out).unwrap();
    assert_eq!(decode(&out).unwrap().unwrap().0, frame);
    // A control message over the raw cap.
    let huge = Frame::Control(Msg::Hello {
        versions: vec![1],
        agent: "a".repeat(MAX_RAW_PAYLOAD),
    });
    let err = encode(&huge, &opts, &mut out).unwrap_err();
    assert!(
        matches!(
            err,
            ProtoError::TooLarge {
                what: "control message",
                ..
            }
        ),
        "{err:?}"
    );
}
