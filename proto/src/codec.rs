//! Encoding and decoding frames to and from bytes: pure, no IO.
//!
//! [`Encoder`] and [`Decoder`] keep their zstd contexts and scratch buffers between frames;
//! the free functions [`encode`] and [`decode`] make a fresh one per call (fine for control
//! traffic and tests, wasteful for a stream of 1 MiB data frames).

use crate::error::ProtoError;
use crate::frame::{
    COMPRESS_MIN, DATA_PREFIX, EncodeOpts, FLAG_ZSTD, Frame, FrameHeader, FrameKind, FrameStats,
    HEADER_LEN, MAX_DATA, MAX_RAW_PAYLOAD, MAX_WIRE_PAYLOAD, ZERO_PAYLOAD, check_cap,
};

/// Appends one encoded frame to `out`; returns what it cost. On error `out` is unchanged.
pub fn encode(
    frame: &Frame,
    opts: &EncodeOpts,
    out: &mut Vec<u8>,
) -> Result<FrameStats, ProtoError> {
    Encoder::new(*opts).encode(frame, out)
}

/// Decodes exactly one frame from the start of `buf`: `Ok(Some((frame, consumed)))`, or
/// `Ok(None)` if `buf` holds less than one whole frame (and no cap is already exceeded).
pub fn decode(buf: &[u8]) -> Result<Option<(Frame, usize)>, ProtoError> {
    Decoder::new().decode(buf)
}

/// After this many data frames in a row that did not compress, an [`Encoder`] stops trying
/// for a while (see [`Encoder::encode`]).
pub const INCOMPRESSIBLE_STREAK: u32 = 8;
/// The longest pause in compression attempts, in data frames.
pub const MAX_SKIP: u32 = 256;

/// A frame encoder that reuses its zstd context and scratch buffer.
pub struct Encoder {
    opts: EncodeOpts,
    zstd: Option<zstd::bulk::Compressor<'static>>,
    scratch: Vec<u8>,
    /// Data frames in a row that did not compress.
    misses: u32,
    /// Data frames still to send without trying to compress them.
    skip: u32,
    /// The next pause (doubles while the data stays incompressible, up to [`MAX_SKIP`]).
    pause: u32,
}

impl std::fmt::Debug for Encoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Encoder")
            .field("opts", &self.opts)
            .finish_non_exhaustive()
    }
}

impl Encoder {
    /// An encoder with these options; the zstd context is made on first use.
    #[must_use]
    pub fn new(opts: EncodeOpts) -> Self {
        Self {
            opts,
            zstd: None,
            scratch: Vec::new(),
            misses: 0,
            skip: 0,
            pause: INCOMPRESSIBLE_STREAK,
        }
    }

    /// The options in use.
    #[must_use]
    pub fn opts(&self) -> EncodeOpts {
        self.opts
    }

    /// Appends one encoded frame to `out`. On error `out` is unchanged.
    ///
    /// Data frames are compressed when that pays (see `try_compress`). On a stream of
    /// incompressible data (encrypted or already compressed blocks), trying costs more CPU
    /// than anything else on the path, so after [`INCOMPRESSIBLE_STREAK`] misses in a row the
    /// encoder sends the next frames raw without trying — 8, then 16, ... up to
    /// [`MAX_SKIP`] frames — and tries again; one success resets it. Either form is a valid
    /// frame, so this only changes the wire size, never the data.
    pub fn encode(&mut self, frame: &Frame, out: &mut Vec<u8>) -> Result<FrameStats, ProtoError> {
        let start = out.len();
        let r = self.encode_inner(frame, out, start);
        if r.is_err() {
            out.truncate(start);
        }
        r
    }

    fn encode_inner(
        &mut self,
        frame: &Frame,
        out: &mut Vec<u8>,
        start: usize,
    ) -> Result<FrameStats, ProtoError> {
        out.extend_from_slice(&[0; HEADER_LEN]);
        let payload = start + HEADER_LEN;
        match frame {
            Frame::Control(msg) => {
                postcard::to_io(msg, &mut *out).map_err(|e| {
                    ProtoError::Encode(format!("control message {}: {e}", msg.name()))
                })?;
                check_cap("control message", out.len() - payload, MAX_RAW_PAYLOAD)?;
            }
            Frame::Data { offset, data } => {
                check_data(*offset, data.len()).map_err(ProtoError::Encode)?;
                out.extend_from_slice(&offset.to_le_bytes());
                out.extend_from_slice(data);
            }
            Frame::Zero { offset, len } => {
                check_zero(*offset, *len).map_err(ProtoError::Encode)?;
                out.extend_from_slice(&offset.to_le_bytes());
                out.extend_from_slice(&len.to_le_bytes());
            }
        }
        let raw_len = out.len() - payload;
        let compressed = frame.kind() == FrameKind::Data && self.adaptive_compress(out, payload)?;
        let wire_len = out.len() - payload;
        // Both lengths were checked against caps far below u32::MAX above.
        let to_u32 = |n: usize| {
            u32::try_from(n).map_err(|_| ProtoError::Encode(format!("payload of {n} bytes")))
        };
        let mut h = FrameHeader {
            len: to_u32(wire_len)?,
            kind: frame.kind().as_u16(),
            flags: if compressed { FLAG_ZSTD } else { 0 },
            raw_len: to_u32(raw_len)?,
            crc: 0,
        };
        h.crc = h.compute_crc(&[&out[payload..]]);
        out[start..payload].copy_from_slice(&h.to_bytes());
        Ok(FrameStats {
            raw_bytes: raw_len as u64,
            wire_bytes: (HEADER_LEN + wire_len) as u64,
            compressed,
        })
    }

    /// [`Self::try_compress`], unless a run of incompressible frames says to skip it.
    fn adaptive_compress(&mut self, out: &mut Vec<u8>, payload: usize) -> Result<bool, ProtoError> {
        if self.skip > 0 {
            self.skip -= 1;
            return Ok(false);
        }
        let done = self.try_compress(out, payload)?;
        if done {
            self.misses = 0;
            self.pause = INCOMPRESSIBLE_STREAK;
        } else if out.len() - payload >= COMPRESS_MIN {
            self.misses += 1;
            if self.misses >= INCOMPRESSIBLE_STREAK {
                self.misses = 0;
                self.skip = self.pause;
                self.pause = (self.pause * 2).min(MAX_SKIP);
            }
        }
        Ok(done)
    }

    /// Replaces the raw payload at `out[payload..]` by its zstd form when that pays:
    /// the raw payload is at least [`COMPRESS_MIN`] bytes and the compressed form at most
    /// 15/16 of it. Returns whether it did.
    fn try_compress(&mut self, out: &mut Vec<u8>, payload: usize) -> Result<bool, ProtoError> {
        let Some(level) = self.opts.compress_level else {
            return Ok(false);
        };
        let raw = out.len() - payload;
        if raw < COMPRESS_MIN {
            return Ok(false);
        }
        let zstd = match &mut self.zstd {
            Some(z) => z,
            None => self.zstd.insert(
                zstd::bulk::Compressor::new(level)
                    .map_err(|e| ProtoError::Encode(format!("zstd level {level}: {e}")))?,
            ),
        };
        // The destination holds at most 15/16 of the raw size, so zstd gives up early
        // ("destination too small") on data that does not compress enough. Any failure
        // just means the frame goes out raw, which is always correct.
        let limit = raw / 16 * 15 + raw % 16 * 15 / 16;
        self.scratch.clear();
        self.scratch.reserve_exact(limit);
        match zstd.compress_to_buffer(&out[payload..], &mut self.scratch) {
            Ok(n) if n <= limit => {
                out.truncate(payload);
                out.extend_from_slice(&self.scratch[..n]);
                Ok(true)
            }
            _ => Ok(false),
        }
    }
}

/// A frame decoder that reuses its zstd context.
#[derive(Default)]
pub struct Decoder {
    zstd: Option<zstd::bulk::Decompressor<'static>>,
}

impl std::fmt::Debug for Decoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decoder").finish_non_exhaustive()
    }
}

impl Decoder {
    /// A decoder; the zstd context is made on the first compressed frame.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Decodes exactly one frame from the start of `buf` (see [`decode`]).
    pub fn decode(&mut self, buf: &[u8]) -> Result<Option<(Frame, usize)>, ProtoError> {
        let Some(hb) = buf.first_chunk::<HEADER_LEN>() else {
            return Ok(None);
        };
        let h = FrameHeader::parse(hb)?;
        let end = HEADER_LEN + h.wire_len();
        let Some(payload) = buf.get(HEADER_LEN..end) else {
            return Ok(None);
        };
        Ok(Some((self.finish(&h, payload)?, end)))
    }

    /// Checks a frame whose header and wire payload have been read, and decodes it.
    pub(crate) fn finish(&mut self, h: &FrameHeader, payload: &[u8]) -> Result<Frame, ProtoError> {
        let (kind, compressed) = h.validate(&[payload])?;
        if compressed {
            let raw = self.decompress(payload, h.raw_len as usize)?;
            return parse_owned(kind, raw);
        }
        parse(kind, payload)
    }

    /// Decompresses `payload`, which must produce exactly `raw_len` bytes; never more is
    /// allocated or written.
    pub(crate) fn decompress(
        &mut self,
        payload: &[u8],
        raw_len: usize,
    ) -> Result<Vec<u8>, ProtoError> {
        let zstd = match &mut self.zstd {
            Some(z) => z,
            None => self.zstd.insert(
                zstd::bulk::Decompressor::new()
                    .map_err(|e| ProtoError::Decompress(format!("zstd context: {e}")))?,
            ),
        };
        let mut raw = Vec::with_capacity(raw_len);
        let n = zstd.decompress_to_buffer(payload, &mut raw).map_err(|e| {
            ProtoError::Decompress(format!(
                "{e} (header says {raw_len} bytes after decompression)"
            ))
        })?;
        if n != raw_len {
            return Err(ProtoError::Decompress(format!(
                "decompressed to {n} bytes but the header says {raw_len}"
            )));
        }
        Ok(raw)
    }
}

/// Decodes a checked, uncompressed payload.
pub(crate) fn parse(kind: FrameKind, p: &[u8]) -> Result<Frame, ProtoError> {
    let bad = |why: String| ProtoError::BadPayload { kind, why };
    match kind {
        FrameKind::Control => {
            let (msg, rest) = postcard::take_from_bytes(p)
                .map_err(|e| bad(format!("not a control message: {e}")))?;
            if !rest.is_empty() {
                return Err(bad(format!(
                    "{} trailing bytes after the message",
                    rest.len()
                )));
            }
            Ok(Frame::Control(msg))
        }
        FrameKind::Data => {
            let offset = data_offset(p)?;
            let data = &p[DATA_PREFIX..];
            check_data(offset, data.len()).map_err(bad)?;
            Ok(Frame::Data {
                offset,
                data: data.to_vec(),
            })
        }
        FrameKind::Zero => {
            // Exactly 16 bytes: offset, then len.
            let fields = p
                .split_first_chunk::<8>()
                .and_then(|(o, rest)| Some((*o, <[u8; 8]>::try_from(rest).ok()?)));
            let Some((o, l)) = fields else {
                return Err(bad(format!(
                    "{} bytes, must be exactly {ZERO_PAYLOAD}",
                    p.len()
                )));
            };
            let (offset, len) = (u64::from_le_bytes(o), u64::from_le_bytes(l));
            check_zero(offset, len).map_err(bad)?;
            Ok(Frame::Zero { offset, len })
        }
    }
}

/// Decodes a checked, decompressed payload, reusing its buffer for Data.
fn parse_owned(kind: FrameKind, mut raw: Vec<u8>) -> Result<Frame, ProtoError> {
    if kind != FrameKind::Data {
        return parse(kind, &raw);
    }
    let offset = data_offset(&raw)?;
    check_data(offset, raw.len() - DATA_PREFIX)
        .map_err(|why| ProtoError::BadPayload { kind, why })?;
    raw.drain(..DATA_PREFIX);
    Ok(Frame::Data { offset, data: raw })
}

/// The `offset` prefix of a Data payload.
pub(crate) fn data_offset(p: &[u8]) -> Result<u64, ProtoError> {
    match p.first_chunk::<DATA_PREFIX>() {
        Some(o) => Ok(u64::from_le_bytes(*o)),
        None => Err(ProtoError::BadPayload {
            kind: FrameKind::Data,
            why: format!("{} bytes, shorter than the 8-byte offset", p.len()),
        }),
    }
}

/// The rules for a Data extent, shared by encoder and decoder.
pub(crate) fn check_data(offset: u64, len: usize) -> Result<(), String> {
    if len == 0 {
        return Err(format!(
            "no data bytes at offset {offset} (a data frame carries 1 or more)"
        ));
    }
    if len > MAX_DATA {
        return Err(format!(
            "{len} data bytes at offset {offset}, more than MAX_DATA ({MAX_DATA})"
        ));
    }
    if offset.checked_add(len as u64).is_none() {
        return Err(format!("{len} data bytes at offset {offset} overflow u64"));
    }
    Ok(())
}

/// The rules for a Zero extent, shared by encoder and decoder.
pub(crate) fn check_zero(offset: u64, len: u64) -> Result<(), String> {
    if len == 0 {
        return Err(format!("empty zero range at offset {offset}"));
    }
    if offset.checked_add(len).is_none() {
        return Err(format!(
            "zero range of {len} bytes at offset {offset} overflows u64"
        ));
    }
    Ok(())
}

// MAX_WIRE_PAYLOAD must hold any raw payload sent uncompressed.
const _: () = assert!(MAX_WIRE_PAYLOAD >= MAX_RAW_PAYLOAD);
const _: () = assert!(MAX_DATA + DATA_PREFIX <= MAX_RAW_PAYLOAD);

#[cfg(test)]
mod adaptive_tests {
    use super::*;

    fn data(seed: u64, compressible: bool) -> Frame {
        let mut x = seed | 1;
        let data = (0..4096u32)
            .map(|i| {
                if compressible {
                    (i % 7) as u8
                } else {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x.to_le_bytes()[0]
                }
            })
            .collect();
        Frame::Data { offset: 0, data }
    }

    #[test]
    fn incompressible_runs_pause_attempts_and_compressible_data_resumes_them() {
        let mut e = Encoder::new(EncodeOpts {
            compress_level: Some(3),
        });
        let mut out = Vec::new();
        for i in 0..INCOMPRESSIBLE_STREAK {
            e.encode(&data(u64::from(i) + 1, false), &mut out).unwrap();
        }
        assert_eq!(
            e.skip, INCOMPRESSIBLE_STREAK,
            "a streak of misses pauses attempts"
        );
        // Paused: even compressible data goes raw (and decodes the same).
        out.clear();
        let f = data(0, true);
        assert!(!e.encode(&f, &mut out).unwrap().compressed);
        assert_eq!(decode(&out).unwrap().unwrap().0, f);
        for _ in 1..INCOMPRESSIBLE_STREAK {
            e.encode(&f, &mut Vec::new()).unwrap();
        }
        // The pause is over: the next attempt succeeds and resets the schedule.
        out.clear();
        assert!(e.encode(&f, &mut out).unwrap().compressed);
        assert_eq!(decode(&out).unwrap().unwrap().0, f);
        assert_eq!((e.skip, e.misses, e.pause), (0, 0, INCOMPRESSIBLE_STREAK));
    }
}
