//! Control messages: the payload of a [`FrameKind::Control`](crate::FrameKind) frame.
//!
//! Encoded with postcard (varint integers, a varint variant index for enums, a varint
//! length before strings and sequences). Postcard is not self-describing, so **the order
//! of variants and fields is the format**:
//! - never reorder, remove or change the fields of an existing variant; add new variants
//!   only at the end of [`Msg`] and [`ErrorCode`], and send them only on a connection whose
//!   negotiated version introduced them (an older peer cannot decode them);
//! - [`Msg::Hello`], [`Msg::Welcome`] and [`Msg::Error`] (variant indexes 0, 1, 2) and
//!   [`ErrorCode::VersionMismatch`] (index 0) are frozen forever: every version of sitrep
//!   must be able to exchange them to negotiate. `tests/golden.rs` pins their bytes.
//!
//! Why postcard and not the explicit layout used for the frame header: control messages are
//! small, rare and grow new fields with the protocol; a derived encoding keeps them honest
//! and cheap to extend, while the frame header (read for every 1 MiB of data, and by any
//! future version) stays a fixed little-endian layout.

use serde::{Deserialize, Serialize};

/// One control message. The doc comment of each variant says who sends it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Msg {
    /// Client, first frame of a connection: the protocol versions it speaks, and its name
    /// (host and build, for logs). Frozen (index 0).
    Hello {
        /// Every version the client supports.
        versions: Vec<u16>,
        /// Free text identifying the agent.
        agent: String,
    },
    /// Server, answer to `Hello`: the version chosen for this connection. Frozen (index 1).
    Welcome {
        /// The negotiated version (the highest both sides support).
        version: u16,
        /// Free text identifying the server.
        server: String,
    },
    /// Either side: a fatal error; the sender closes the connection after it. Frozen
    /// (index 2).
    Error {
        /// What kind of failure (decides retry vs operator action).
        code: ErrorCode,
        /// Human-readable cause, naming the object concerned.
        message: String,
        /// The sender's supported versions (filled in for `VersionMismatch`).
        supported: Vec<u16>,
    },
    /// Client: which disk this connection replicates.
    Attach {
        /// Disk name (for logs and the replica's directory).
        disk: String,
        /// The disk's stable identity (as in the HRL header).
        disk_id: [u8; 16],
        /// Disk size in bytes.
        size: u64,
        /// Logical block size in bytes.
        block_size: u32,
    },
    /// Server: where the replica stands.
    Attached {
        /// Progress of the initial copy, if one was ever started.
        copy: Option<CopyState>,
        /// The last cycle applied to the replica.
        applied: Option<CycleInfo>,
        /// The cycle sequence the server expects next.
        expected_seq: Option<u64>,
    },
    /// Client: an initial copy (or full re-copy) starts; `restart` discards any cursor.
    CopyBegin {
        /// The first cycle sequence that follows the copy.
        from_seq: u64,
        /// Start over instead of resuming at the server's cursor.
        restart: bool,
    },
    /// Client: everything before `cursor` has been sent; server makes it durable and acks.
    CopyCheckpoint {
        /// Byte offset on the disk.
        cursor: u64,
    },
    /// Server: everything before `cursor` is durable on the replica.
    CopyAck {
        /// Byte offset on the disk.
        cursor: u64,
    },
    /// Client: the copy is complete; cycles from `from_seq` follow.
    CopyDone {
        /// The first cycle sequence that follows.
        from_seq: u64,
    },
    /// Client: a cycle (one sealed log) starts; its Data/Zero frames follow.
    CycleBegin {
        /// Cycle sequence number.
        seq: u64,
        /// The sealed log's id.
        log_id: [u8; 16],
        /// When the log was cut (Unix ns): the recovery point's time.
        cut_time_ns: u64,
        /// Number of extents in the cycle.
        extents: u64,
        /// Data bytes the cycle carries.
        data_bytes: u64,
    },
    /// Client: the cycle's frames are all sent.
    CycleEnd {
        /// Cycle sequence number.
        seq: u64,
        /// Data and Zero frames sent for the cycle (the server checks the count).
        frames: u64,
        /// Data bytes sent for the cycle.
        data_bytes: u64,
    },
    /// Server: the cycle is staged durably (the source may delete its log).
    CycleAck {
        /// Cycle sequence number.
        seq: u64,
    },
    /// Server: the cycle is applied to the replica.
    Applied {
        /// Cycle sequence number.
        seq: u64,
        /// The recovery point's time (Unix ns).
        cut_time_ns: u64,
    },
    /// Either side: liveness probe.
    Ping {
        /// Echoed in the `Pong`.
        nonce: u64,
    },
    /// Either side: answer to `Ping`.
    Pong {
        /// The `Ping`'s nonce.
        nonce: u64,
    },
    /// Either side: orderly end of the session; the connection closes after it.
    Bye,
    /// Client: its judgement of an already shipped cycle — `crash_consistent` when no change
    /// recorded after the cycle's cut touched its ranges before they were read (the replica
    /// after it equals the source at its cut); `label` names the quiescing of an
    /// app-consistent point. The server turns consistent cycles into recovery points.
    Verdict {
        /// Cycle sequence number.
        seq: u64,
        /// Whether the replica after this cycle is the source at the cycle's cut.
        crash_consistent: bool,
        /// For an app-consistent point: how it was quiesced (e.g. `fsfreeze /mnt`).
        label: Option<String>,
    },
}

impl Msg {
    /// The variant's name, for logs and error messages.
    #[must_use]
    pub fn name(&self) -> &'static str {
        match self {
            Self::Hello { .. } => "Hello",
            Self::Welcome { .. } => "Welcome",
            Self::Error { .. } => "Error",
            Self::Attach { .. } => "Attach",
            Self::Attached { .. } => "Attached",
            Self::CopyBegin { .. } => "CopyBegin",
            Self::CopyCheckpoint { .. } => "CopyCheckpoint",
            Self::CopyAck { .. } => "CopyAck",
            Self::CopyDone { .. } => "CopyDone",
            Self::CycleBegin { .. } => "CycleBegin",
            Self::CycleEnd { .. } => "CycleEnd",
            Self::CycleAck { .. } => "CycleAck",
            Self::Applied { .. } => "Applied",
            Self::Ping { .. } => "Ping",
            Self::Pong { .. } => "Pong",
            Self::Bye => "Bye",
            Self::Verdict { .. } => "Verdict",
        }
    }
}

/// Why a peer sent [`Msg::Error`]. Append new codes at the end only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorCode {
    /// No common protocol version (frozen, index 0). `supported` lists the sender's.
    VersionMismatch,
    /// The peer's certificate is not allowed to do this. Not retried.
    Unauthorized,
    /// A cycle does not follow the previous one (sequence or log chain). Needs resync.
    BrokenChain,
    /// The disk does not match the replica (id, size or block size). Not retried.
    DiskMismatch,
    /// A message that is invalid in the current state. A bug; not retried.
    BadRequest,
    /// The server is out of space. Retried with back-off.
    NoSpace,
    /// Anything else on the sender's side. Retried with back-off.
    Internal,
}

impl ErrorCode {
    /// True for codes a client should retry with back-off (BRIEF §3.6).
    #[must_use]
    pub fn is_recoverable(self) -> bool {
        matches!(self, Self::NoSpace | Self::Internal)
    }
}

/// The replica's initial-copy progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CopyState {
    /// The copy finished (`CopyDone` was received).
    pub done: bool,
    /// The first cycle sequence that follows the copy.
    pub from_seq: u64,
    /// Everything before this disk offset is durable on the replica.
    pub cursor: u64,
}

/// An applied cycle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CycleInfo {
    /// Cycle sequence number.
    pub seq: u64,
    /// The cycle's cut time (Unix ns).
    pub cut_time_ns: u64,
}
