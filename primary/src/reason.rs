//! Why a disk needs a checksum resync (or a re-copy): the [`ResyncCause`] enum.
//!
//! Each cause renders to the sentence `status` shows (`resync_reason`, `resync.reason`) and
//! `protection.json` keeps (`resync.reason`) — the strings are part of the `--json` schema
//! and of the file format, so they stay exactly what they were when the causes were
//! strings. A plan's reason is its causes joined by `; `, in the order they arose.

use std::fmt;

/// Why a resync is required.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ResyncCause {
    /// The tracker started with a gap (a crash, a lost log): `gap` says which.
    TrackingInterrupted {
        /// The tracker's description of the gap.
        gap: String,
    },
    /// The server refused a cycle with `BrokenChain`.
    BrokenChain {
        /// The server's message.
        message: String,
    },
    /// The logs waiting to ship name more than the threshold of the disk.
    PendingLogs {
        /// Bytes the pending logs name.
        bytes: u64,
        /// The threshold, percent of the disk.
        pct: u32,
        /// The disk's size.
        size: u64,
    },
    /// `sitrep verify` found differences no recorded change explains.
    VerifyMismatch {
        /// Bytes that differ.
        bytes: u64,
        /// In this many ranges.
        ranges: usize,
    },
    /// A whole-disk gap appeared in the logs cut during the resync's confirmation.
    LostDuringResync,
    /// `sitrep resync NAME`.
    Operator,
    /// `sitrep failback NAME --mode full-download`.
    OperatorFullCopy,
    /// Reverse replication starts by comparing the whole disk.
    Reverse,
    /// A sealed log does not follow the last acknowledged cycle.
    MissingLogs {
        /// The log found.
        seq: u64,
        /// The last acknowledged cycle.
        acked: u64,
    },
    /// A sealed log records a whole-disk tracking gap.
    TrackingGap {
        /// The log.
        seq: u64,
        /// The gap's description.
        why: String,
    },
}

impl fmt::Display for ResyncCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TrackingInterrupted { gap } => write!(f, "tracking was interrupted ({gap})"),
            Self::BrokenChain { message } => {
                write!(f, "the server reports a broken chain ({message})")
            }
            Self::PendingLogs { bytes, pct, size } => write!(
                f,
                "the pending logs name {bytes} bytes, more than {pct} % of the {size}-byte disk"
            ),
            Self::VerifyMismatch { bytes, ranges } => {
                write!(
                    f,
                    "verify found {bytes} bytes in {ranges} ranges that differ"
                )
            }
            Self::LostDuringResync => f.write_str("tracking lost changes during the resync"),
            Self::Operator => f.write_str("requested by the operator"),
            Self::OperatorFullCopy => f.write_str("full copy requested by the operator"),
            Self::Reverse => {
                f.write_str("reverse replication: the whole disk is compared with the other site's")
            }
            Self::MissingLogs { seq, acked } => write!(
                f,
                "log {seq} follows acknowledged cycle {acked} (logs in between are missing)"
            ),
            Self::TrackingGap { seq, why } => {
                write!(f, "log {seq} records a tracking gap ({why})")
            }
        }
    }
}

impl ResyncCause {
    /// `reason` (a pending plan's causes, joined by `; `) with this cause added, unless it
    /// is there already. The persisted reason is text (`protection.json`), so the test is on
    /// the rendered cause — one place, instead of at every caller.
    pub(crate) fn merged_into(&self, reason: &str) -> String {
        let cause = self.to_string();
        if reason.contains(&cause) {
            reason.to_string()
        } else {
            format!("{reason}; {cause}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn causes_render_as_the_reasons_status_has_always_shown() {
        let cases = [
            (
                ResyncCause::TrackingInterrupted {
                    gap: "crash".into(),
                },
                "tracking was interrupted (crash)",
            ),
            (
                ResyncCause::BrokenChain {
                    message: "m".into(),
                },
                "the server reports a broken chain (m)",
            ),
            (
                ResyncCause::PendingLogs {
                    bytes: 5,
                    pct: 50,
                    size: 8,
                },
                "the pending logs name 5 bytes, more than 50 % of the 8-byte disk",
            ),
            (
                ResyncCause::VerifyMismatch {
                    bytes: 4096,
                    ranges: 1,
                },
                "verify found 4096 bytes in 1 ranges that differ",
            ),
            (
                ResyncCause::LostDuringResync,
                "tracking lost changes during the resync",
            ),
            (ResyncCause::Operator, "requested by the operator"),
            (
                ResyncCause::OperatorFullCopy,
                "full copy requested by the operator",
            ),
            (
                ResyncCause::Reverse,
                "reverse replication: the whole disk is compared with the other site's",
            ),
            (
                ResyncCause::MissingLogs { seq: 9, acked: 6 },
                "log 9 follows acknowledged cycle 6 (logs in between are missing)",
            ),
            (
                ResyncCause::TrackingGap {
                    seq: 3,
                    why: "lost".into(),
                },
                "log 3 records a tracking gap (lost)",
            ),
        ];
        for (cause, text) in cases {
            assert_eq!(cause.to_string(), text);
        }
    }

    #[test]
    fn a_cause_is_merged_once() {
        let r = ResyncCause::Operator.merged_into("tracking was interrupted (crash)");
        assert_eq!(
            r,
            "tracking was interrupted (crash); requested by the operator"
        );
        assert_eq!(ResyncCause::Operator.merged_into(&r), r);
    }
}
