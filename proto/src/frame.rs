//! Frame types and the frame header layout: the part of the protocol every version shares.
//!
//! # Frame layout (all integers little-endian)
//!
//! ```text
//! offset size field
//!  0     4    len      u32  bytes of payload following the header on the wire
//!  4     2    kind     u16  FrameKind: 1 control, 2 data, 3 zero
//!  6     2    flags    u16  bit 0: payload is zstd-compressed (data frames only);
//!                           other bits must be zero
//!  8     4    raw_len  u32  payload length after decompression (== len if not compressed)
//! 12     4    crc      u32  CRC-32 (crc32fast, IEEE) over header bytes 0..12, then the
//!                           payload exactly as sent on the wire
//! 16   len    payload
//! ```
//!
//! Payloads (after decompression):
//! - **control** (1): postcard encoding of [`Msg`]; never compressed.
//! - **data** (2): `offset u64`, then `raw_len - 8` bytes of disk data to write at
//!   `offset` (1 ..= [`MAX_DATA`] bytes).
//! - **zero** (3): `offset u64`, `len u64` (exactly 16 bytes, `len > 0`): the range reads
//!   as zeros; the bytes are never sent.
//!
//! `len <= MAX_WIRE_PAYLOAD` and `raw_len <= MAX_RAW_PAYLOAD` are checked on the header
//! alone, before any payload byte is read or allocated; decompression is bounded by
//! `raw_len`. The checksum is verified before any other field is interpreted, so a damaged
//! frame reports [`ProtoError::Checksum`], not a misleading kind or flags error.

use crate::error::ProtoError;
use crate::msg::Msg;

/// Size of the frame header.
pub const HEADER_LEN: usize = 16;

/// Largest `len` (payload bytes on the wire) accepted.
pub const MAX_WIRE_PAYLOAD: usize = (4 << 20) + 4096;

/// Largest `raw_len` (payload bytes after decompression) accepted.
pub const MAX_RAW_PAYLOAD: usize = (4 << 20) + 4096;

/// Most data bytes in one Data frame; callers split larger extents.
pub const MAX_DATA: usize = 1 << 20;

/// Flags bit 0: the payload is zstd-compressed.
pub const FLAG_ZSTD: u16 = 1;

/// Raw payloads shorter than this are never compressed (not worth a zstd frame).
pub const COMPRESS_MIN: usize = 4096;

/// Size of a Data payload's `offset` prefix.
pub(crate) const DATA_PREFIX: usize = 8;

/// Size of a Zero payload.
pub(crate) const ZERO_PAYLOAD: usize = 16;

/// The `kind` field of a frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum FrameKind {
    /// A postcard-encoded [`Msg`].
    Control = 1,
    /// Disk bytes at an offset.
    Data = 2,
    /// A zero-filled range.
    Zero = 3,
}

impl FrameKind {
    /// The kind with wire value `v`, if any.
    #[must_use]
    pub fn from_u16(v: u16) -> Option<Self> {
        match v {
            1 => Some(Self::Control),
            2 => Some(Self::Data),
            3 => Some(Self::Zero),
            _ => None,
        }
    }

    /// The wire value.
    #[must_use]
    pub fn as_u16(self) -> u16 {
        self as u16
    }
}

impl std::fmt::Display for FrameKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Control => "control",
            Self::Data => "data",
            Self::Zero => "zero",
        })
    }
}

/// One decoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A control message.
    Control(Msg),
    /// `data` is to be written at disk byte `offset`.
    Data {
        /// Disk byte offset.
        offset: u64,
        /// The bytes (1 ..= [`MAX_DATA`]).
        data: Vec<u8>,
    },
    /// `len` bytes at `offset` are zero.
    Zero {
        /// Disk byte offset.
        offset: u64,
        /// Length in bytes (> 0).
        len: u64,
    },
}

impl Frame {
    /// The frame's kind.
    #[must_use]
    pub fn kind(&self) -> FrameKind {
        match self {
            Self::Control(_) => FrameKind::Control,
            Self::Data { .. } => FrameKind::Data,
            Self::Zero { .. } => FrameKind::Zero,
        }
    }
}

/// How frames are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EncodeOpts {
    /// zstd level for Data frames; `None` never compresses. Default `Some(1)`.
    pub compress_level: Option<i32>,
}

impl Default for EncodeOpts {
    fn default() -> Self {
        Self {
            compress_level: Some(1),
        }
    }
}

/// What encoding one frame cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FrameStats {
    /// Payload bytes before compression (`raw_len`).
    pub raw_bytes: u64,
    /// Bytes put on the wire: header plus payload as sent.
    pub wire_bytes: u64,
    /// The payload was sent zstd-compressed.
    pub compressed: bool,
}

/// A frame header, as read from the wire (see the module docs for the layout).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// Payload bytes on the wire.
    pub len: u32,
    /// Kind field (not yet validated).
    pub kind: u16,
    /// Flags field (not yet validated).
    pub flags: u16,
    /// Payload bytes after decompression.
    pub raw_len: u32,
    /// CRC-32 over header bytes 0..12 and the wire payload.
    pub crc: u32,
}

impl FrameHeader {
    /// Reads a header and checks the two length caps — the only checks that can be made
    /// before the payload is read, and the ones that keep a hostile peer from making us
    /// allocate. Everything else is checked after the checksum.
    pub fn parse(b: &[u8; HEADER_LEN]) -> Result<Self, ProtoError> {
        let h = Self {
            len: u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            kind: u16::from_le_bytes([b[4], b[5]]),
            flags: u16::from_le_bytes([b[6], b[7]]),
            raw_len: u32::from_le_bytes([b[8], b[9], b[10], b[11]]),
            crc: u32::from_le_bytes([b[12], b[13], b[14], b[15]]),
        };
        check_cap("frame payload", h.len as usize, MAX_WIRE_PAYLOAD)?;
        check_cap(
            "decompressed frame payload",
            h.raw_len as usize,
            MAX_RAW_PAYLOAD,
        )?;
        Ok(h)
    }

    /// The 16 header bytes.
    #[must_use]
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut b = [0; HEADER_LEN];
        b[0..4].copy_from_slice(&self.len.to_le_bytes());
        b[4..6].copy_from_slice(&self.kind.to_le_bytes());
        b[6..8].copy_from_slice(&self.flags.to_le_bytes());
        b[8..12].copy_from_slice(&self.raw_len.to_le_bytes());
        b[12..16].copy_from_slice(&self.crc.to_le_bytes());
        b
    }

    /// Payload bytes on the wire, as a length.
    #[must_use]
    pub fn wire_len(&self) -> usize {
        self.len as usize
    }

    /// The CRC the header should carry for this header (crc field ignored) and payload.
    #[must_use]
    pub fn compute_crc(&self, payload: &[&[u8]]) -> u32 {
        let mut h = crc32fast::Hasher::new();
        h.update(&self.to_bytes()[..12]);
        for p in payload {
            h.update(p);
        }
        h.finalize()
    }

    /// Validates what the checksum protects: checksum, kind, flags, and the length
    /// relation. Returns the kind and whether the payload is compressed.
    pub(crate) fn validate(&self, payload: &[&[u8]]) -> Result<(FrameKind, bool), ProtoError> {
        if self.compute_crc(payload) != self.crc {
            return Err(ProtoError::Checksum { kind: self.kind });
        }
        let kind = FrameKind::from_u16(self.kind).ok_or(ProtoError::UnknownKind(self.kind))?;
        let compressed = self.flags & FLAG_ZSTD != 0;
        if self.flags & !FLAG_ZSTD != 0 || (compressed && kind != FrameKind::Data) {
            return Err(ProtoError::BadFlags {
                kind: self.kind,
                flags: self.flags,
            });
        }
        if !compressed && self.raw_len != self.len {
            return Err(ProtoError::BadPayload {
                kind,
                why: format!(
                    "uncompressed payload of {} bytes but raw_len says {}",
                    self.len, self.raw_len
                ),
            });
        }
        Ok((kind, compressed))
    }
}

/// `Err(TooLarge)` if `len > max`.
pub(crate) fn check_cap(what: &'static str, len: usize, max: usize) -> Result<(), ProtoError> {
    if len > max {
        return Err(ProtoError::TooLarge {
            what,
            len: len as u64,
            max: max as u64,
        });
    }
    Ok(())
}
