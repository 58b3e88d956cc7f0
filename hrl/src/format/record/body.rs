//! What a record says: its kind, flags and typed content.

use crate::units::{Extent, GroupId, SeqNo};

/// What a record says happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[repr(u16)]
pub enum RecordKind {
    /// Ranges were written (data not logged: read it from the source disk when shipping).
    Write = 1,
    /// One range was written, and its data follows (journal mode).
    WriteData = 2,
    /// Ranges were discarded (TRIM/UNMAP): contents are now unspecified.
    Discard = 3,
    /// Ranges were securely erased.
    SecureErase = 4,
    /// Ranges were set to zeroes.
    WriteZeroes = 5,
    /// A flush barrier: every change before it was durable on the source when it completed.
    Flush = 6,
    /// A crash-consistent cut, shared by all disks of a consistency group.
    ConsistencyTag = 7,
    /// An app-consistent point: the application/filesystem was quiesced here.
    AppConsistentTag = 8,
    /// Changes were (or may have been) missed in these ranges: they must be resynced.
    TrackingGap = 9,
}

impl RecordKind {
    /// All kinds, in numeric order.
    pub const ALL: [RecordKind; 9] = [
        RecordKind::Write,
        RecordKind::WriteData,
        RecordKind::Discard,
        RecordKind::SecureErase,
        RecordKind::WriteZeroes,
        RecordKind::Flush,
        RecordKind::ConsistencyTag,
        RecordKind::AppConsistentTag,
        RecordKind::TrackingGap,
    ];

    /// The kind with this wire number.
    #[must_use]
    pub fn from_u16(v: u16) -> Option<Self> {
        Self::ALL.into_iter().find(|k| *k as u16 == v)
    }

    /// A short lowercase name for tools.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            RecordKind::Write => "write",
            RecordKind::WriteData => "write-data",
            RecordKind::Discard => "discard",
            RecordKind::SecureErase => "secure-erase",
            RecordKind::WriteZeroes => "write-zeroes",
            RecordKind::Flush => "flush",
            RecordKind::ConsistencyTag => "consistency-tag",
            RecordKind::AppConsistentTag => "app-consistent-tag",
            RecordKind::TrackingGap => "tracking-gap",
        }
    }
}

/// Per-record flags (the block layer's FUA and PREFLUSH as they arrived).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, serde::Serialize)]
pub struct RecordFlags(pub(super) u16);

impl RecordFlags {
    /// Forced unit access: the write was durable when it completed.
    pub const FUA: RecordFlags = RecordFlags(1);
    /// The device cache was flushed before this change.
    pub const PREFLUSH: RecordFlags = RecordFlags(2);
    pub(super) const KNOWN: u16 = 3;

    /// No flags.
    #[must_use]
    pub const fn empty() -> Self {
        RecordFlags(0)
    }
    /// Raw bits.
    #[must_use]
    pub const fn bits(self) -> u16 {
        self.0
    }
    /// Whether every flag in `other` is set.
    #[must_use]
    pub const fn contains(self, other: RecordFlags) -> bool {
        self.0 & other.0 == other.0
    }
    /// Both sets of flags.
    #[must_use]
    pub const fn union(self, other: RecordFlags) -> Self {
        RecordFlags(self.0 | other.0)
    }
}

/// Why a tracking gap was recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum GapReason {
    /// Tracking started with no cleanly closed predecessor log (first start, crash, reboot).
    NoCleanPredecessor,
    /// The interceptor lost events it could not account for.
    EventsLost,
    /// The log space cap was reached; changes went to a coarse bitmap.
    LogSpaceExhausted,
    /// The disk was written while it was not tracked.
    NotTracking,
    /// An operator asked for these ranges to be resynced.
    Operator,
    /// The kernel completed changes the tracker never saw complete (its completion counts
    /// fell short of the device's own); the scope is every range that could be theirs.
    CompletionsMissed,
    /// A reason this version does not name (still a gap: it must be resynced).
    Other(u16),
}

impl GapReason {
    /// Wire number.
    #[must_use]
    pub const fn to_u16(self) -> u16 {
        match self {
            GapReason::NoCleanPredecessor => 1,
            GapReason::EventsLost => 2,
            GapReason::LogSpaceExhausted => 3,
            GapReason::NotTracking => 4,
            GapReason::Operator => 5,
            GapReason::CompletionsMissed => 6,
            GapReason::Other(v) => v,
        }
    }
    /// From the wire number.
    #[must_use]
    pub const fn from_u16(v: u16) -> Self {
        match v {
            1 => GapReason::NoCleanPredecessor,
            2 => GapReason::EventsLost,
            3 => GapReason::LogSpaceExhausted,
            4 => GapReason::NotTracking,
            5 => GapReason::Operator,
            6 => GapReason::CompletionsMissed,
            v => GapReason::Other(v),
        }
    }
}

/// Which part of the disk a tracking gap covers.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub enum GapScope {
    /// Anything may have changed anywhere.
    WholeDisk,
    /// Only these ranges are suspect.
    Extents(Vec<Extent>),
}

/// A record's content.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub enum RecordBody {
    /// Ranges written.
    Write(Vec<Extent>),
    /// One range written, with its data.
    WriteData {
        /// Byte offset on the disk.
        offset: u64,
        /// The bytes written.
        #[serde(skip)]
        data: Vec<u8>,
    },
    /// Ranges discarded.
    Discard(Vec<Extent>),
    /// Ranges securely erased.
    SecureErase(Vec<Extent>),
    /// Ranges zeroed.
    WriteZeroes(Vec<Extent>),
    /// A flush barrier.
    Flush,
    /// A crash-consistent cut.
    ConsistencyTag {
        /// The consistency group.
        group: GroupId,
        /// The cut's id, the same on every disk of the group.
        tag: u64,
    },
    /// An app-consistent point.
    AppConsistentTag {
        /// The consistency group.
        group: GroupId,
        /// The point's id, the same on every disk of the group.
        tag: u64,
        /// Free text (e.g. which hook quiesced the app).
        label: String,
    },
    /// A tracking gap.
    TrackingGap {
        /// Why.
        reason: GapReason,
        /// Where.
        scope: GapScope,
    },
}

impl RecordBody {
    /// The record kind of this body.
    #[must_use]
    pub fn kind(&self) -> RecordKind {
        match self {
            RecordBody::Write(_) => RecordKind::Write,
            RecordBody::WriteData { .. } => RecordKind::WriteData,
            RecordBody::Discard(_) => RecordKind::Discard,
            RecordBody::SecureErase(_) => RecordKind::SecureErase,
            RecordBody::WriteZeroes(_) => RecordKind::WriteZeroes,
            RecordBody::Flush => RecordKind::Flush,
            RecordBody::ConsistencyTag { .. } => RecordKind::ConsistencyTag,
            RecordBody::AppConsistentTag { .. } => RecordKind::AppConsistentTag,
            RecordBody::TrackingGap { .. } => RecordKind::TrackingGap,
        }
    }

    /// The disk ranges this record changes or marks (empty for barriers and tags;
    /// `None` for a whole-disk gap).
    #[must_use]
    pub fn extents(&self) -> Option<Vec<Extent>> {
        Some(match self {
            RecordBody::Write(e)
            | RecordBody::Discard(e)
            | RecordBody::SecureErase(e)
            | RecordBody::WriteZeroes(e)
            | RecordBody::TrackingGap {
                scope: GapScope::Extents(e),
                ..
            } => e.clone(),
            RecordBody::WriteData { offset, data } => Extent::new(*offset, data.len() as u64)
                .into_iter()
                .collect(),
            RecordBody::TrackingGap {
                scope: GapScope::WholeDisk,
                ..
            } => return None,
            RecordBody::Flush
            | RecordBody::ConsistencyTag { .. }
            | RecordBody::AppConsistentTag { .. } => Vec::new(),
        })
    }
}

/// One decoded record.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Record {
    /// Sequence number.
    pub seq: SeqNo,
    /// When the change was observed, nanoseconds since the Unix epoch.
    pub timestamp_ns: u64,
    /// FUA / PREFLUSH.
    pub flags: RecordFlags,
    /// What happened.
    pub body: RecordBody,
}
