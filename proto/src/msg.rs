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
    /// Client: an initial copy (or full re-copy) starts; `restart` discards any cursor. It
    /// never deletes recovery points: over a replica that has some, the server retires the
    /// whole entry (kept until its operator removes it) and copies into a fresh one, or
    /// refuses with `NoSpace` while too many retired copies are kept.
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
        /// For an app-consistent point: how it was quiesced (e.g. `fsfreeze /mnt`); at most
        /// [`MAX_LABEL_LEN`] bytes.
        label: Option<String>,
    },
    // ---- version 2: checksum resync and online verify ----------------------------------
    /// Client (v2): the digest algorithm and this session's secret key for every following
    /// `DigestReq`. A fresh random key per session: digests are never comparable across
    /// sessions, and nobody who does not know the key can craft colliding blocks.
    DigestKey {
        /// 0 = XXH3-128 with a 192-byte secret, 1 = keyed BLAKE3 with a 32-byte key.
        algo: u8,
        /// The key (at most [`MAX_KEY_LEN`] bytes; its length must match `algo`).
        key: Vec<u8>,
    },
    /// Client (v2): the digests of the replica over `ranges` — one per 1 MiB piece of each
    /// range (`coarse`) or one per 4 KiB block (fine), pieces counted from each range's start.
    /// The server answers `Digests` with the same `req`, in request order.
    DigestReq {
        /// Request id, echoed.
        req: u64,
        /// Coarse (1 MiB) or fine (4 KiB) digests.
        coarse: bool,
        /// `(offset, len)` ranges, 4 KiB aligned, sorted, at most [`MAX_DIGEST_RANGES`],
        /// together at most [`MAX_DIGEST_BYTES`].
        ranges: Vec<(u64, u64)>,
    },
    /// Server (v2): the answer to `DigestReq` `req`: 16-byte digests in range order.
    Digests {
        /// The request id.
        req: u64,
        /// The digests.
        digests: Vec<[u8; 16]>,
    },
    /// Client (v2): a checksum resync `id` starts (or resumes); the cycles that follow it
    /// begin at `from_seq`. Cycles are refused until `ResyncDone`. Data/Zero frames between
    /// this and `ResyncDone` are repairs, made durable (with undo data) at each
    /// `ResyncCommit`.
    ResyncBegin {
        /// The resync's id (a new id discards the server's cursor).
        id: u64,
        /// The first cycle after the resync.
        from_seq: u64,
    },
    /// Server (v2): where resync `id` stands: everything in its scope before `cursor` is
    /// repaired and durable (0 for a new resync).
    ResyncReady {
        /// The resync's id.
        id: u64,
        /// The durable cursor (a disk offset).
        cursor: u64,
    },
    /// Client (v2): make the repairs sent so far durable and record `cursor`.
    ResyncCommit {
        /// Everything in scope before this offset is repaired.
        cursor: u64,
    },
    /// Server (v2): the repairs before `ResyncCommit{cursor}` are durable.
    ResyncAck {
        /// The committed cursor.
        cursor: u64,
    },
    /// Client (v2): resync `id` is complete and confirmed; cycles from `from_seq` follow.
    ResyncDone {
        /// The resync's id.
        id: u64,
        /// The first cycle after the resync.
        from_seq: u64,
    },
    /// Server (v2): the answer to `ResyncDone`: the server now expects cycle `from_seq`.
    ResyncFinished {
        /// The resync's id.
        id: u64,
    },
    // ---- version 2: planned failover ---------------------------------------------------
    /// Client (v2): planned failover. The source is quiesced, cycle `seq` is its last (sent,
    /// judged, and compared equal to the replica by digests): activate the recovery point
    /// `seq` as the disk on the secondary. The server answers `FailoverDone`, or `Error`
    /// when the replica is not exactly at `seq` or `seq` is not a recovery point; from then
    /// on the disk takes no more cycles (`ErrorCode::FailedOver`).
    PlannedFailover {
        /// The last cycle of the source.
        seq: u64,
    },
    /// Server (v2): the answer to `PlannedFailover`: the point activated and where.
    FailoverDone {
        /// The recovery point's id (the cycle `seq`).
        point: u64,
        /// Its source-side cut time (Unix ns).
        cut_time_ns: u64,
        /// The block device it is attached to on the secondary (at most
        /// [`MAX_PATH_LEN`] bytes).
        device: String,
        /// The image file behind it (at most [`MAX_PATH_LEN`] bytes).
        image: String,
    },
    // ---- version 2: reverse replication ------------------------------------------------
    /// Client (v2), instead of `Attach`: reverse replication of a disk that failed over to
    /// the client's site, into the server's own (old primary) device. Only the owner of the
    /// server's entry of this name may (whatever `disk_id`), or — when it has none — the
    /// server the local agent replicated the disk to, or a client the server site's
    /// operator allowed (`sitrep reverse-accept NAME --from CN`); else `Error{Unauthorized}`
    /// with nothing touched. The server adopts the disk its local agent protected under
    /// this name — after checking that this site did not write it since the failover (else
    /// `Error{SplitBrain}`, unless the server site's operator chose to discard its changes)
    /// — and answers `Attached` with the copy done at `from_seq`; the client then compares
    /// the whole disk by digests (a resync) and sends only what differs. A previous entry
    /// is retired, not deleted. A later session for the same disk id is a plain attach.
    AttachReverse {
        /// Disk name.
        disk: String,
        /// The client's id for this (reverse) relationship.
        disk_id: [u8; 16],
        /// Disk size in bytes (must equal the old primary's device).
        size: u64,
        /// Logical block size in bytes.
        block_size: u32,
        /// The recovery point the client's site activated (the last cycle of the old
        /// direction it holds).
        fork_seq: u64,
        /// The first cycle that follows.
        from_seq: u64,
        /// Ignored by the server since issue 19 (kept for wire compatibility; sitrep's agent
        /// sends false): a peer never decides what the server's site discards — that site's
        /// operator does, with `sitrep reverse-accept NAME --discard-local-changes`.
        discard_target_changes: bool,
    },
    // ---- version 3: per-disk recovery-point policy --------------------------------------
    /// Client (v3), right after `Attached`, on every session: the recovery-point policy the
    /// disk's operator asked for (`sitrep protect --crash-points-every --retain`). Not
    /// answered. The server clamps it — the slot to 1 s..1 h, the span to at least its own
    /// `--min-retain` and one slot — keeps it with the disk, and applies it from the next
    /// point: a peer cannot shorten the history the server keeps below the server's floor.
    PointPolicy {
        /// Keep one crash-consistent point per slot this wide (ns).
        crash_points_every_ns: u64,
        /// Keep points this long (ns).
        retain_ns: u64,
    },
    // ---- version 4: per-disk point storage cap ----------------------------------------------
    /// Client (v4), right after `PointPolicy`, on every session: the most bytes the disk's
    /// operator wants its recovery points' undo data to take on the server (`sitrep protect
    /// --max-point-storage`; the replica itself is not counted); 0: no cap. Not answered. Index 30; payload: the index, then
    /// `max_bytes` as a varint. The server keeps it with the disk and, past it, retires the
    /// disk's oldest points — only points older than its own `--min-retain` and never the
    /// newest, so a peer cannot erase the history the server's floor protects; a disk that
    /// stays over its cap is shown so in the server's status.
    PointStorage {
        /// The cap in bytes of the disk's point storage (0: none).
        max_bytes: u64,
    },
    // ---- version 5: consistency groups ---------------------------------------------------
    /// Client (v5), right after the `Verdict` of a cycle that was cut together with other
    /// disks of a consistency group (one instant for all of them): which group and cut.
    /// Not answered. Index 31; payload: the index, `seq` varint, `group` string, `cut_id`
    /// varint, then `members` as a varint count and strings. The server records, per group
    /// and cut, each member's point; when every member named has reported a point for the
    /// same cut, that set is one **group point** (`sitrep points --group G`). Caps: `group`
    /// and each member a valid disk name, at most [`MAX_GROUP_MEMBERS`] members, and the
    /// reporting disk among them — else `BadRequest`.
    GroupVerdict {
        /// The cycle (its `Verdict` came just before).
        seq: u64,
        /// The consistency group's name.
        group: String,
        /// The cut's id, the same for every member cut at that instant (the agent uses the
        /// cut's time in ns since the epoch).
        cut_id: u64,
        /// Every disk cut at that instant, this one included (sorted, no duplicates).
        members: Vec<String>,
    },
    /// Client (v5), right after `PointStorage` on every session: the consistency group the
    /// disk belongs to (`None`: none). Not answered. Index 32. The server keeps each group's
    /// members; a group whose members are on more than one client (allowed by the secondary's
    /// operator) gets its points from rounds the server coordinates (`GroupRound`).
    GroupMember {
        /// The group (a valid disk name), if any.
        group: Option<String>,
    },
    /// Server (v5), at any time on the session of a member of a cross-host group: a step of a
    /// coordinated round. Step 0 (*prepare*): answer at the next moment between cycles, then
    /// hold the disk's own cuts (bounded) for the round's cut. Step 1 (*cut*, once every
    /// member is prepared): cut the disk and answer with the cut's cycle. Step 2 (*release*,
    /// once every member cut): say at once whether any change was recorded on the disk since
    /// that cut. Index 33.
    GroupRound {
        /// The group.
        group: String,
        /// The round's id.
        round: u64,
        /// 0: prepare, 1: cut, 2: release.
        step: u8,
    },
    /// Client (v5): the answer to a `GroupRound` step. Index 34.
    GroupRoundDone {
        /// The group.
        group: String,
        /// The round's id.
        round: u64,
        /// The step answered.
        step: u8,
        /// Steps 1 and 2: the cycle the round's cut sealed (0: the disk did not cut for this
        /// round).
        seq: u64,
        /// Step 2: no change was recorded on the disk between the round's cut and now.
        quiet: bool,
    },
}

/// Most disks in one consistency group's cut (`GroupVerdict::members`).
pub const MAX_GROUP_MEMBERS: usize = 64;

/// Longest device or image path in a `FailoverDone`.
pub const MAX_PATH_LEN: usize = 4096;

/// Longest label in a `Verdict`, in bytes: how an app-consistent point was quiesced
/// (`fsfreeze /mnt`), shown to operators and stored with the point. A server refuses a longer
/// one; an agent clips its labels to it ([`clip_label`]).
pub const MAX_LABEL_LEN: usize = 256;

/// `label` cut to at most [`MAX_LABEL_LEN`] bytes, at a character boundary.
#[must_use]
pub fn clip_label(label: &str) -> String {
    let mut end = label.len().min(MAX_LABEL_LEN);
    while !label.is_char_boundary(end) {
        end -= 1;
    }
    label[..end].to_string()
}

/// Longest digest key in a `DigestKey`.
pub const MAX_KEY_LEN: usize = 256;
/// Most ranges in one `DigestReq`.
pub const MAX_DIGEST_RANGES: usize = 4096;
/// Most bytes one `DigestReq` may cover (so a `Digests` answer stays far below the frame
/// cap: 64 MiB / 4 KiB = 16384 fine digests = 256 KiB).
pub const MAX_DIGEST_BYTES: u64 = 64 << 20;

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
            Self::DigestKey { .. } => "DigestKey",
            Self::DigestReq { .. } => "DigestReq",
            Self::Digests { .. } => "Digests",
            Self::ResyncBegin { .. } => "ResyncBegin",
            Self::ResyncReady { .. } => "ResyncReady",
            Self::ResyncCommit { .. } => "ResyncCommit",
            Self::ResyncAck { .. } => "ResyncAck",
            Self::ResyncDone { .. } => "ResyncDone",
            Self::ResyncFinished { .. } => "ResyncFinished",
            Self::PlannedFailover { .. } => "PlannedFailover",
            Self::FailoverDone { .. } => "FailoverDone",
            Self::AttachReverse { .. } => "AttachReverse",
            Self::PointPolicy { .. } => "PointPolicy",
            Self::PointStorage { .. } => "PointStorage",
            Self::GroupVerdict { .. } => "GroupVerdict",
            Self::GroupMember { .. } => "GroupMember",
            Self::GroupRound { .. } => "GroupRound",
            Self::GroupRoundDone { .. } => "GroupRoundDone",
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
    /// (v2) The disk failed over to the secondary site: its replica is the active disk now
    /// and takes no more cycles. Not retried (reverse replication is the next step).
    FailedOver,
    /// (v2) Reverse replication refused: both sites wrote the disk since the failover.
    /// Nothing was overwritten; the operator must choose. Not retried.
    SplitBrain,
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
