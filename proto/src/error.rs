//! The crate's one error type.
//!
//! The variants split into two groups a caller's retry policy can tell apart by type:
//! [`ProtoError::Io`] and [`ProtoError::Closed`] are the transport failing (recoverable:
//! reconnect with back-off); every other variant means the peer sent bytes that are not a
//! valid frame (or we were asked to send one), which a reconnect will not fix by itself —
//! the connection must be dropped because framing can no longer be trusted.

use std::fmt;
use std::io;

/// Everything that can go wrong encoding, decoding, reading or writing frames.
#[derive(Debug, thiserror::Error)]
pub enum ProtoError {
    /// The transport failed (including a connection closed in the middle of a frame).
    #[error("connection I/O: {0}")]
    Io(#[from] io::Error),

    /// The peer closed the connection cleanly, between two frames.
    #[error("connection closed by the peer")]
    Closed,

    /// A length in a frame header (or a frame being encoded) is over its cap. Checked
    /// before anything is allocated or read.
    #[error("{what} of {} exceeds the limit of {}", Bytes(*len), Bytes(*max))]
    TooLarge {
        /// Which length (`"frame payload"`, `"decompressed payload"`, `"data"`, ...).
        what: &'static str,
        /// The length found or requested.
        len: u64,
        /// The cap it exceeds.
        max: u64,
    },

    /// The CRC-32 over header and payload does not match: the frame was damaged in
    /// transit or the stream lost its framing.
    #[error("frame checksum mismatch (header says kind {kind}): header or payload damaged")]
    Checksum {
        /// The kind field as received (it may itself be the damaged part).
        kind: u16,
    },

    /// The flags field has a bit set that is unknown or not allowed for this kind.
    #[error(
        "frame of kind {kind} has invalid flags {flags:#06x} (known: bit 0 = zstd, on data frames only)"
    )]
    BadFlags {
        /// The kind field of the frame.
        kind: u16,
        /// The flags field as received.
        flags: u16,
    },

    /// The kind field names no frame kind this build knows.
    #[error("unknown frame kind {0} (this build knows 1 = control, 2 = data, 3 = zero)")]
    UnknownKind(u16),

    /// The payload does not have the shape its kind requires.
    #[error("invalid {kind} frame payload: {why}")]
    BadPayload {
        /// The frame kind.
        kind: crate::FrameKind,
        /// What exactly is wrong.
        why: String,
    },

    /// A compressed payload could not be decompressed within its declared size.
    #[error("zstd payload does not decompress: {0}")]
    Decompress(String),

    /// A frame could not be encoded (bad argument, or the compressor failed).
    #[error("cannot encode frame: {0}")]
    Encode(String),
}

impl ProtoError {
    /// True when the transport failed or closed; false when the bytes themselves were bad.
    #[must_use]
    pub fn is_transport(&self) -> bool {
        matches!(self, Self::Io(_) | Self::Closed)
    }
}

/// Displays a byte count exactly and, from 1 KiB up, in binary units too.
struct Bytes(u64);

impl fmt::Display for Bytes {
    #[allow(clippy::cast_precision_loss)] // display only
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0;
        if n >= 1 << 30 {
            write!(f, "{n} bytes ({:.1} GiB)", n as f64 / f64::from(1u32 << 30))
        } else if n >= 1 << 20 {
            write!(f, "{n} bytes ({:.1} MiB)", n as f64 / f64::from(1u32 << 20))
        } else if n >= 1 << 10 {
            write!(f, "{n} bytes ({:.1} KiB)", n as f64 / 1024.0)
        } else {
            write!(f, "{n} bytes")
        }
    }
}
