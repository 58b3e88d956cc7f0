//! Golden bytes: frames built by hand from the layout in docs/protocol.md must equal what
//! `encode` produces, and decode back. If one of these fails, the wire format changed —
//! that needs a new protocol version, not a new expected value. Hello, Welcome and
//! Error(VersionMismatch) are frozen forever (every version must negotiate with them).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failures should panic

mod common;

use common::by_hand;
use proto::{EncodeOpts, ErrorCode, Frame, Msg, decode, encode};

/// `frame` encodes to `expected` (with and without compression allowed) and decodes back.
fn check(frame: &Frame, expected: &[u8], pinned_hex: &str) {
    for opts in [
        EncodeOpts::default(),
        EncodeOpts {
            compress_level: None,
        },
    ] {
        let mut out = vec![0xee]; // encode appends
        let stats = encode(frame, &opts, &mut out).unwrap();
        assert_eq!(&out[1..], expected, "{frame:?}");
        assert_eq!(stats.wire_bytes, expected.len() as u64);
        assert!(!stats.compressed);
    }
    assert_eq!(
        hex(expected),
        pinned_hex,
        "the hand-built bytes drifted: {frame:?}"
    );
    let (back, used) = decode(expected).unwrap().unwrap();
    assert_eq!(&back, frame);
    assert_eq!(used, expected.len());
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn data_frame() {
    let mut payload = 4096u64.to_le_bytes().to_vec();
    payload.extend_from_slice(b"abcdefgh");
    let expected = by_hand(2, 0, 16, &payload);
    let frame = Frame::Data {
        offset: 4096,
        data: b"abcdefgh".to_vec(),
    };
    check(
        &frame,
        &expected,
        "10000000020000001000000065ab7d2d00100000000000006162636465666768",
    );
}

#[test]
fn zero_frame() {
    let mut payload = (1u64 << 20).to_le_bytes().to_vec();
    payload.extend_from_slice(&65536u64.to_le_bytes());
    let expected = by_hand(3, 0, 16, &payload);
    check(
        &Frame::Zero {
            offset: 1 << 20,
            len: 65536,
        },
        &expected,
        "100000000300000010000000fd4b198e00001000000000000000010000000000",
    );
}

#[test]
fn hello_frame() {
    // postcard: variant 0, versions = [len 1, varint 1], agent = [len 1, 'a'].
    let payload = [0x00, 0x01, 0x01, 0x01, b'a'];
    let expected = by_hand(1, 0, 5, &payload);
    let msg = Msg::Hello {
        versions: vec![1],
        agent: "a".into(),
    };
    check(
        &Frame::Control(msg),
        &expected,
        "05000000010000000500000026ec90300001010161",
    );
}

#[test]
fn welcome_frame() {
    // postcard: variant 1, version = varint 1, server = [len 1, 's'].
    let payload = [0x01, 0x01, 0x01, b's'];
    let expected = by_hand(1, 0, 4, &payload);
    let msg = Msg::Welcome {
        version: 1,
        server: "s".into(),
    };
    check(
        &Frame::Control(msg),
        &expected,
        "040000000100000004000000d2590c4e01010173",
    );
}

#[test]
fn version_mismatch_frame() {
    // postcard: variant 2, code = VersionMismatch (0), message = [len 1, 'm'],
    // supported = [len 2, varint 1, varint 300 = 0xac 0x02].
    let payload = [0x02, 0x00, 0x01, b'm', 0x02, 0x01, 0xac, 0x02];
    let expected = by_hand(1, 0, 8, &payload);
    let msg = Msg::Error {
        code: ErrorCode::VersionMismatch,
        message: "m".into(),
        supported: vec![1, 300],
    };
    check(
        &Frame::Control(msg),
        &expected,
        "08000000010000000800000001fdc6950200016d0201ac02",
    );
}

#[test]
fn crc_is_ieee_crc32() {
    // The check value of CRC-32/ISO-HDLC, so other implementations know which CRC it is.
    assert_eq!(crc32fast::hash(b"123456789"), 0xcbf4_3926);
}

#[test]
fn negotiation() {
    assert_eq!(proto::negotiate(proto::SUPPORTED, &[1]), Some(1));
    assert_eq!(proto::negotiate(&[1, 2, 3], &[3, 2, 7]), Some(3));
    assert_eq!(proto::negotiate(&[1], &[2]), None);
    assert_eq!(proto::negotiate(&[], &[1]), None);
    assert!(proto::SUPPORTED.contains(&proto::VERSION));
}

/// Version 2's digest request, built from postcard's rules: variant index 18 (varint), `req`
/// varint, `coarse` one byte, the range count (varint), each range as two varints.
#[test]
fn digest_request_frame() {
    let payload = [
        18, // DigestReq
        7,  // req
        1,  // coarse
        2,  // two ranges
        0x80, 0x20, // 4096
        0x80, 0x80, 0x40, // 1 MiB
        0x80, 0x80, 0x80, 0x01, // 2 MiB
        0x80, 0x20, // 4096
    ];
    let expected = by_hand(1, 0, u32::try_from(payload.len()).unwrap(), &payload);
    let frame = Frame::Control(Msg::DigestReq {
        req: 7,
        coarse: true,
        ranges: vec![(4096, 1 << 20), (2 << 20, 4096)],
    });
    let enc = {
        let mut out = Vec::new();
        encode(&frame, &EncodeOpts::default(), &mut out).unwrap();
        out
    };
    assert_eq!(enc, expected);
    let (back, _) = decode(&expected).unwrap().unwrap();
    assert_eq!(back, frame);
}

/// Version 2's planned failover: `PlannedFailover` is variant 26 with `seq` as a varint;
/// `FailoverDone` is variant 27: two varints, then each string as a varint length and its
/// UTF-8 bytes.
#[test]
fn planned_failover_frames() {
    let cases: [(Msg, Vec<u8>); 2] = [
        (
            Msg::PlannedFailover { seq: 300 },
            vec![26, 0xac, 0x02], // 300
        ),
        (
            Msg::FailoverDone {
                point: 7,
                cut_time_ns: 128,
                device: "/dev/loop1".into(),
                image: "a".into(),
            },
            [&[27u8, 7, 0x80, 0x01, 10][..], b"/dev/loop1", &[1], b"a"].concat(),
        ),
    ];
    for (msg, payload) in cases {
        let expected = by_hand(1, 0, u32::try_from(payload.len()).unwrap(), &payload);
        let frame = Frame::Control(msg);
        let mut enc = Vec::new();
        encode(&frame, &EncodeOpts::default(), &mut enc).unwrap();
        assert_eq!(enc, expected, "{frame:?}");
        let (back, _) = decode(&expected).unwrap().unwrap();
        assert_eq!(back, frame);
    }
}

/// Version 3's `PointPolicy` is variant 29 with two varints (ns).
#[test]
fn point_policy_frame() {
    let msg = Msg::PointPolicy {
        crash_points_every_ns: 300,
        retain_ns: 1,
    };
    let payload = [29u8, 0xac, 0x02, 1];
    let expected = by_hand(1, 0, u32::try_from(payload.len()).unwrap(), &payload);
    let frame = Frame::Control(msg);
    let mut enc = Vec::new();
    encode(&frame, &EncodeOpts::default(), &mut enc).unwrap();
    assert_eq!(enc, expected, "{frame:?}");
    let (back, _) = decode(&expected).unwrap().unwrap();
    assert_eq!(back, frame);
}

/// Version 4's `PointStorage` is variant 30 with one varint (bytes; 0 = no cap).
#[test]
fn point_storage_frame() {
    for (max_bytes, payload) in [
        (0u64, vec![30u8, 0]),
        (1 << 30, vec![30u8, 0x80, 0x80, 0x80, 0x80, 0x04]),
        (
            u64::MAX,
            vec![
                30u8, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
            ],
        ),
    ] {
        let expected = by_hand(1, 0, u32::try_from(payload.len()).unwrap(), &payload);
        let frame = Frame::Control(Msg::PointStorage { max_bytes });
        let mut enc = Vec::new();
        encode(&frame, &EncodeOpts::default(), &mut enc).unwrap();
        assert_eq!(enc, expected, "{frame:?}");
        let (back, _) = decode(&expected).unwrap().unwrap();
        assert_eq!(back, frame);
    }
}

/// Version 5's `GroupVerdict` is variant 31: seq varint, group string, cut id varint,
/// members as a count and strings (postcard: a string is its length varint, then UTF-8).
#[test]
fn group_verdict_frame() {
    let msg = Msg::GroupVerdict {
        seq: 300,
        group: "db".into(),
        cut_id: 5,
        members: vec!["data".into(), "log".into()],
    };
    let payload = vec![
        31u8, 0xac, 0x02, 2, b'd', b'b', 5, 2, 4, b'd', b'a', b't', b'a', 3, b'l', b'o', b'g',
    ];
    let expected = by_hand(1, 0, u32::try_from(payload.len()).unwrap(), &payload);
    let frame = Frame::Control(msg);
    let mut enc = Vec::new();
    encode(&frame, &EncodeOpts::default(), &mut enc).unwrap();
    assert_eq!(enc, expected, "{frame:?}");
    let (back, _) = decode(&expected).unwrap().unwrap();
    assert_eq!(back, frame);
}

/// Version 5's cross-host round messages: `GroupMember` (32: an option, 0 or 1 then the
/// string), `GroupRound` (33: group, round varint, step byte), `GroupRoundDone` (34: group,
/// round, step, seq varint, quiet byte).
#[test]
fn group_round_frames() {
    for (msg, payload) in [
        (Msg::GroupMember { group: None }, vec![32u8, 0]),
        (
            Msg::GroupMember {
                group: Some("db".into()),
            },
            vec![32u8, 1, 2, b'd', b'b'],
        ),
        (
            Msg::GroupRound {
                group: "db".into(),
                round: 300,
                step: 1,
            },
            vec![33u8, 2, b'd', b'b', 0xac, 0x02, 1],
        ),
        (
            Msg::GroupRoundDone {
                group: "db".into(),
                round: 300,
                step: 0,
                seq: 7,
                quiet: true,
            },
            vec![34u8, 2, b'd', b'b', 0xac, 0x02, 0, 7, 1],
        ),
    ] {
        let expected = by_hand(1, 0, u32::try_from(payload.len()).unwrap(), &payload);
        let frame = Frame::Control(msg);
        let mut enc = Vec::new();
        encode(&frame, &EncodeOpts::default(), &mut enc).unwrap();
        assert_eq!(enc, expected, "{frame:?}");
        let (back, _) = decode(&expected).unwrap().unwrap();
        assert_eq!(back, frame);
    }
}

/// Version 5 is preferred; a v4 peer still negotiates 4 (and never receives `GroupVerdict`).
#[test]
fn version_5_is_preferred_and_a_v4_peer_gets_4() {
    assert_eq!(proto::VERSION, 5);
    assert_eq!(
        proto::negotiate(proto::SUPPORTED, &[1, 2, 3, 4, 5]),
        Some(5)
    );
    assert_eq!(proto::negotiate(proto::SUPPORTED, &[1, 2, 3, 4]), Some(4));
    assert_eq!(proto::negotiate(&[1, 2, 3, 4], proto::SUPPORTED), Some(4));
}
