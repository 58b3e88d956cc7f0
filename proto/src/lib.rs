//! The sitrep wire protocol between the agent (client, primary site) and the server
//! (secondary site). docs/protocol.md is the human-readable specification; the byte
//! layouts are documented next to their types ([`frame`] for the frame header and
//! payloads, [`msg`] for control messages) and pinned by `tests/golden.rs`.
//!
//! A connection carries a stream of checksummed, length-prefixed frames: control messages
//! (postcard), disk data at an offset (zstd-compressed when it pays), and zero ranges.
//! Framing is an explicit little-endian header so that every future version can still read
//! it and negotiate; only control message contents may evolve per version.
//!
//! Layers: [`frame`] (types, header layout, caps), [`codec`] (pure encode/decode),
//! [`io`] (async read/write over tokio streams).
//!
//! # Versions (the changelog)
//! - **1** (sitrep 0.1): frames kinds 1–3, messages `Hello` … `Verdict`.
//! - **2**: checksum resync and online verify: `DigestKey` … `ResyncFinished` (17–25);
//!   planned failover: `PlannedFailover`, `FailoverDone` (26, 27); reverse replication:
//!   `AttachReverse` (28), `ErrorCode::SplitBrain` (8).
//! - **3**: per-disk recovery-point policy: `PointPolicy` (29), sent by the client after
//!   `Attached`.
//! - **4**: per-disk point storage cap: `PointStorage` (30), sent by the client right after
//!   `PointPolicy` (a v3 peer never sees it: the client sends it only when version 4 was
//!   negotiated, and a v3 server keeps no cap).
//! - **5**: consistency groups: `GroupVerdict` (31), sent by the client right after the
//!   `Verdict` of a cycle cut together with a group's other disks (only when version 5 was
//!   negotiated: a v4 server keeps per-disk points only).

pub mod codec;
mod error;
pub mod frame;
pub mod io;
pub mod msg;

pub use codec::{Decoder, Encoder, decode, encode};
pub use error::ProtoError;
pub use frame::{
    EncodeOpts, Frame, FrameHeader, FrameKind, FrameStats, HEADER_LEN, MAX_DATA, MAX_RAW_PAYLOAD,
    MAX_WIRE_PAYLOAD,
};
pub use io::{FrameReader, FrameWriter, read_frame, write_frame};
pub use msg::{
    CopyState, CycleInfo, ErrorCode, MAX_DIGEST_BYTES, MAX_DIGEST_RANGES, MAX_GROUP_MEMBERS,
    MAX_KEY_LEN, MAX_LABEL_LEN, MAX_PATH_LEN, Msg, clip_label,
};

/// The protocol version this build prefers.
pub const VERSION: u16 = 5;

/// Every protocol version this build speaks.
pub const SUPPORTED: &[u16] = &[1, 2, 3, 4, 5];

/// The highest version both sides support, if any.
#[must_use]
pub fn negotiate(ours: &[u16], theirs: &[u16]) -> Option<u16> {
    ours.iter().filter(|v| theirs.contains(v)).max().copied()
}
