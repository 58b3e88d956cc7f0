//! Round trips for every frame kind, and the compression rule: data that compresses to at
//! most 15/16 goes out compressed, anything else goes out raw.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failures should panic

mod common;

use common::{random, zeroish};
use proptest::prelude::*;
use proto::{
    CopyState, CycleInfo, Decoder, EncodeOpts, Encoder, ErrorCode, Frame, MAX_DATA, Msg, decode,
    encode,
};

fn error_code() -> impl Strategy<Value = ErrorCode> {
    prop_oneof![
        Just(ErrorCode::VersionMismatch),
        Just(ErrorCode::Unauthorized),
        Just(ErrorCode::BrokenChain),
        Just(ErrorCode::DiskMismatch),
        Just(ErrorCode::BadRequest),
        Just(ErrorCode::NoSpace),
        Just(ErrorCode::Internal),
        Just(ErrorCode::FailedOver),
        Just(ErrorCode::SplitBrain),
    ]
}

fn msg() -> impl Strategy<Value = Msg> {
    let copy = proptest::option::of((any::<bool>(), any::<u64>(), any::<u64>()).prop_map(
        |(done, from_seq, cursor)| CopyState {
            done,
            from_seq,
            cursor,
        },
    ));
    let cycle = proptest::option::of(
        (any::<u64>(), any::<u64>()).prop_map(|(seq, cut_time_ns)| CycleInfo { seq, cut_time_ns }),
    );
    prop_oneof![
        (proptest::collection::vec(any::<u16>(), 0..8), ".{0,40}")
            .prop_map(|(versions, agent)| Msg::Hello { versions, agent }),
        (any::<u16>(), ".{0,40}").prop_map(|(version, server)| Msg::Welcome { version, server }),
        (
            error_code(),
            ".{0,80}",
            proptest::collection::vec(any::<u16>(), 0..4)
        )
            .prop_map(|(code, message, supported)| Msg::Error {
                code,
                message,
                supported
            }),
        (".{0,20}", any::<[u8; 16]>(), any::<u64>(), any::<u32>()).prop_map(
            |(disk, disk_id, size, block_size)| Msg::Attach {
                disk,
                disk_id,
                size,
                block_size
            }
        ),
        (copy, cycle, proptest::option::of(any::<u64>())).prop_map(
            |(copy, applied, expected_seq)| Msg::Attached {
                copy,
                applied,
                expected_seq
            }
        ),
        (any::<u64>(), any::<bool>())
            .prop_map(|(from_seq, restart)| Msg::CopyBegin { from_seq, restart }),
        any::<u64>().prop_map(|cursor| Msg::CopyCheckpoint { cursor }),
        any::<u64>().prop_map(|cursor| Msg::CopyAck { cursor }),
        any::<u64>().prop_map(|from_seq| Msg::CopyDone { from_seq }),
        (
            any::<u64>(),
            any::<[u8; 16]>(),
            any::<u64>(),
            any::<u64>(),
            any::<u64>()
        )
            .prop_map(
                |(seq, log_id, cut_time_ns, extents, data_bytes)| Msg::CycleBegin {
                    seq,
                    log_id,
                    cut_time_ns,
                    extents,
                    data_bytes
                }
            ),
        (any::<u64>(), any::<u64>(), any::<u64>()).prop_map(|(seq, frames, data_bytes)| {
            Msg::CycleEnd {
                seq,
                frames,
                data_bytes,
            }
        }),
        any::<u64>().prop_map(|seq| Msg::CycleAck { seq }),
        (any::<u64>(), any::<u64>())
            .prop_map(|(seq, cut_time_ns)| Msg::Applied { seq, cut_time_ns }),
        any::<u64>().prop_map(|nonce| Msg::Ping { nonce }),
        any::<u64>().prop_map(|nonce| Msg::Pong { nonce }),
        Just(Msg::Bye),
        (any::<u64>(), any::<bool>(), proptest::option::of(".{0,20}")).prop_map(
            |(seq, crash_consistent, label)| Msg::Verdict {
                seq,
                crash_consistent,
                label
            }
        ),
        (any::<u8>(), proptest::collection::vec(any::<u8>(), 0..256))
            .prop_map(|(algo, key)| Msg::DigestKey { algo, key }),
        (
            any::<u64>(),
            any::<bool>(),
            proptest::collection::vec((any::<u64>(), any::<u64>()), 0..64)
        )
            .prop_map(|(req, coarse, ranges)| Msg::DigestReq {
                req,
                coarse,
                ranges
            }),
        (
            any::<u64>(),
            proptest::collection::vec(any::<[u8; 16]>(), 0..64)
        )
            .prop_map(|(req, digests)| Msg::Digests { req, digests }),
        (any::<u64>(), any::<u64>()).prop_map(|(id, from_seq)| Msg::ResyncBegin { id, from_seq }),
        (any::<u64>(), any::<u64>()).prop_map(|(id, cursor)| Msg::ResyncReady { id, cursor }),
        any::<u64>().prop_map(|cursor| Msg::ResyncCommit { cursor }),
        any::<u64>().prop_map(|cursor| Msg::ResyncAck { cursor }),
        (any::<u64>(), any::<u64>()).prop_map(|(id, from_seq)| Msg::ResyncDone { id, from_seq }),
        any::<u64>().prop_map(|id| Msg::ResyncFinished { id }),
        any::<u64>().prop_map(|seq| Msg::PlannedFailover { seq }),
        (any::<u64>(), any::<u64>(), ".{0,40}", ".{0,40}").prop_map(
            |(point, cut_time_ns, device, image)| Msg::FailoverDone {
                point,
                cut_time_ns,
                device,
                image
            }
        ),
        (
            ".{0,20}",
            any::<[u8; 16]>(),
            any::<u64>(),
            any::<u32>(),
            any::<u64>(),
            any::<u64>(),
            any::<bool>()
        )
            .prop_map(
                |(disk, disk_id, size, block_size, fork_seq, from_seq, discard)| {
                    Msg::AttachReverse {
                        disk,
                        disk_id,
                        size,
                        block_size,
                        fork_seq,
                        from_seq,
                        discard_target_changes: discard,
                    }
                }
            ),
        (any::<u64>(), any::<u64>()).prop_map(|(crash_points_every_ns, retain_ns)| {
            Msg::PointPolicy {
                crash_points_every_ns,
                retain_ns,
            }
        }),
        any::<u64>().prop_map(|max_bytes| Msg::PointStorage { max_bytes }),
        (
            any::<u64>(),
            "[a-z0-9_-]{1,16}",
            any::<u64>(),
            proptest::collection::vec("[a-z0-9_-]{1,16}", 0..4)
        )
            .prop_map(|(seq, group, cut_id, members)| Msg::GroupVerdict {
                seq,
                group,
                cut_id,
                members,
            }),
        proptest::option::of("[a-z0-9_-]{1,16}").prop_map(|group| Msg::GroupMember { group }),
        ("[a-z0-9_-]{1,16}", any::<u64>(), any::<u8>())
            .prop_map(|(group, round, step)| Msg::GroupRound { group, round, step }),
        (
            "[a-z0-9_-]{1,16}",
            any::<u64>(),
            any::<u8>(),
            any::<u64>(),
            any::<bool>()
        )
            .prop_map(|(group, round, step, seq, quiet)| Msg::GroupRoundDone {
                group,
                round,
                step,
                seq,
                quiet,
            }),
    ]
}

/// Data of size 1..=64 KiB, either incompressible or mostly zero.
fn data() -> impl Strategy<Value = Vec<u8>> {
    (1usize..=65536, any::<u64>(), any::<bool>()).prop_map(|(n, seed, zeros)| {
        if zeros {
            zeroish(n, seed)
        } else {
            random(n, seed)
        }
    })
}

fn frame() -> impl Strategy<Value = Frame> {
    prop_oneof![
        msg().prop_map(Frame::Control),
        (0u64..1 << 50, data()).prop_map(|(offset, data)| Frame::Data { offset, data }),
        (0u64..1 << 50, 1u64..1 << 40).prop_map(|(offset, len)| Frame::Zero { offset, len }),
    ]
}

fn level() -> impl Strategy<Value = Option<i32>> {
    prop_oneof![Just(None), Just(Some(1)), Just(Some(3)), Just(Some(-5))]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn frames_round_trip(frames in proptest::collection::vec(frame(), 1..6), lvl in level()) {
        // A stream of frames through one reused encoder and decoder.
        let mut enc = Encoder::new(EncodeOpts { compress_level: lvl });
        let mut wire = Vec::new();
        let mut stats = Vec::new();
        for f in &frames {
            let before = wire.len();
            let s = enc.encode(f, &mut wire).unwrap();
            prop_assert_eq!(s.wire_bytes, (wire.len() - before) as u64);
            stats.push(s);
        }
        let mut dec = Decoder::new();
        let mut at = 0;
        for (f, s) in frames.iter().zip(&stats) {
            let (back, used) = dec.decode(&wire[at..]).unwrap().unwrap();
            prop_assert_eq!(&back, f);
            prop_assert_eq!(used as u64, s.wire_bytes);
            at += used;
        }
        prop_assert_eq!(at, wire.len());
    }

    #[test]
    fn compression_rule(data in data(), offset in any::<u32>(), lvl in level()) {
        let frame = Frame::Data { offset: u64::from(offset), data };
        let mut out = Vec::new();
        let s = encode(&frame, &EncodeOpts { compress_level: lvl }, &mut out).unwrap();
        let Frame::Data { data, .. } = &frame else { unreachable!() };
        let raw = 8 + data.len() as u64;
        prop_assert_eq!(s.raw_bytes, raw);
        if s.compressed {
            prop_assert!(lvl.is_some() && raw >= 4096);
            prop_assert!((s.wire_bytes - 16) * 16 <= raw * 15, "{:?}", s);
        } else {
            prop_assert_eq!(s.wire_bytes, raw + 16);
            // The only reasons to send raw: not allowed, too small, or it did not pay.
            if let Some(l) = lvl.filter(|_| raw >= 4096) {
                let z = zstd::bulk::compress(&out[16..], l).unwrap();
                prop_assert!(z.len() as u64 * 16 > raw * 15);
            }
        }
        prop_assert_eq!(decode(&out).unwrap().unwrap().0, frame);
    }
}

#[test]
fn incompressible_data_goes_raw_and_zeroish_data_compressed() {
    let opts = EncodeOpts::default();
    for n in [4088, 65536, MAX_DATA] {
        let mut out = Vec::new();
        let s = encode(
            &Frame::Data {
                offset: 0,
                data: random(n, 7),
            },
            &opts,
            &mut out,
        )
        .unwrap();
        assert!(!s.compressed, "{n} random bytes");
        assert_eq!(s.wire_bytes, 16 + 8 + n as u64);

        out.clear();
        let s = encode(
            &Frame::Data {
                offset: 0,
                data: zeroish(n, 7),
            },
            &opts,
            &mut out,
        )
        .unwrap();
        assert!(s.compressed, "{n} zero-ish bytes");
        assert!(s.wire_bytes < s.raw_bytes / 8, "{s:?}");
        assert_eq!(out[6], 1, "flags bit 0 set");
    }
    // Raw payload under 4096 bytes: never compressed, however well it would.
    let mut out = Vec::new();
    let s = encode(
        &Frame::Data {
            offset: 0,
            data: vec![0; 4087],
        },
        &opts,
        &mut out,
    )
    .unwrap();
    assert!(!s.compressed);
    // Compression off.
    let off = EncodeOpts {
        compress_level: None,
    };
    let s = encode(
        &Frame::Data {
            offset: 0,
            data: vec![0; 1 << 20],
        },
        &off,
        &mut out,
    )
    .unwrap();
    assert!(!s.compressed);
}

#[test]
fn control_frames_are_never_compressed() {
    let msg = Msg::Hello {
        versions: vec![1],
        agent: "x".repeat(100_000),
    };
    let mut out = Vec::new();
    let s = encode(&Frame::Control(msg), &EncodeOpts::default(), &mut out).unwrap();
    assert!(!s.compressed);
    assert_eq!(out[6..8], [0, 0]);
}
