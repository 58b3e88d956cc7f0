//! Fuzzes the frame decoder: whatever the bytes, decoding must return frames, `None` or a
//! typed error — never panic, hang, or allocate past the caps. Every decoded frame must
//! re-encode (compressed or not) and decode to itself, and the async reader must agree
//! with the slice decoder on the same bytes.
//!
//! Input byte 0 picks the shape: even → the rest is a raw byte stream; odd → the rest is
//! re-framed into frames with correct lengths and crcs (`kind, flags, len u16, payload`
//! chunks; optionally zstd-compressed, optionally with a wrong raw_len), so the payload
//! decoders and the decompressor are reached on almost every run instead of stopping at
//! the crc.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use proto::{EncodeOpts, Frame, FrameReader, ProtoError, decode, encode};

fuzz_target!(|data: &[u8]| {
    let Some((&shape, rest)) = data.split_first() else {
        return;
    };
    let stream = if shape & 1 == 0 {
        rest.to_vec()
    } else {
        reframe(rest)
    };
    let frames = decode_all(&stream);
    for f in &frames {
        for level in [None, Some(1)] {
            let mut out = Vec::new();
            encode(
                f,
                &EncodeOpts {
                    compress_level: level,
                },
                &mut out,
            )
            .unwrap();
            let (back, used) = decode(&out).unwrap().unwrap();
            assert_eq!(&back, f);
            assert_eq!(used, out.len());
        }
    }
    check_async_agrees(&stream, &frames);
});

/// Decodes frames from the start of `buf` until it needs more bytes or fails.
fn decode_all(mut buf: &[u8]) -> Vec<Frame> {
    let mut frames = Vec::new();
    while let Ok(Some((f, used))) = decode(buf) {
        assert!(used >= 16 && used <= buf.len());
        buf = &buf[used..];
        frames.push(f);
    }
    frames
}

/// The streaming reader yields the same frames, then stops where the slice decoder did.
fn check_async_agrees(stream: &[u8], frames: &[Frame]) {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    let rt = RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
    });
    rt.block_on(async {
        let mut r = FrameReader::new();
        let mut src = stream;
        for f in frames {
            assert_eq!(&r.read(&mut src).await.unwrap(), f);
        }
        let rest_decodes = decode(src);
        match (r.read(&mut src).await, rest_decodes) {
            (Err(ProtoError::Closed), Ok(None)) => assert!(src.is_empty()),
            (Err(ProtoError::Io(_)), Ok(None)) => {}
            (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string()),
            (a, b) => panic!("async reader says {a:?}, decode says {b:?}"),
        }
    });
}

/// Frames arbitrary chunks with valid lengths and crcs.
fn reframe(mut rest: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while rest.len() >= 4 {
        let kind = 1 + u16::from(rest[0] % 4); // 4 is unknown
        let sel = rest[1];
        let len = usize::from(u16::from_le_bytes([rest[2], rest[3]]));
        rest = &rest[4..];
        let raw = &rest[..len.min(rest.len())];
        rest = &rest[raw.len()..];
        let (flags, payload) = if sel & 1 != 0 {
            (1u16, zstd::bulk::compress(raw, 1).unwrap())
        } else {
            (u16::from(sel & 0x80) << 1, raw.to_vec()) // sometimes an unknown flag
        };
        let skew = i64::from((sel >> 1) & 7) - 3; // sometimes a wrong raw_len
        let raw_len = if sel & 0x40 != 0 {
            raw.len() as i64 + skew
        } else {
            raw.len() as i64
        };
        let raw_len = raw_len.max(0) as u32;
        let mut h = Vec::new();
        h.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        h.extend_from_slice(&kind.to_le_bytes());
        h.extend_from_slice(&flags.to_le_bytes());
        h.extend_from_slice(&raw_len.to_le_bytes());
        let mut crc = crc32fast::Hasher::new();
        crc.update(&h);
        crc.update(&payload);
        h.extend_from_slice(&crc.finalize().to_le_bytes());
        out.extend_from_slice(&h);
        out.extend_from_slice(&payload);
    }
    out
}
