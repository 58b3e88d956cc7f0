//! The history budget: how much undo data one disk may keep, and the free space the store
//! keeps in reserve — checked before a cycle is acknowledged.
//!
//! Undo data is what keeps recovery points exportable. It is freed only when the oldest
//! point it serves retires, and points retire only as newer ones are made — so a primary
//! that keeps writing but stops offering points (a compromised host stops sending verdicts;
//! a workload whose cuts are never proved consistent) makes a disk's undo grow with every
//! byte it writes, until the store's filesystem is full and every other disk stops too.
//!
//! Two caps, both checked before `CycleAck` from the undo file the cycle will need at most
//! ([`crate::undo::estimate`]: the replica's allocated bytes under the cycle's ranges —
//! holes cost nothing):
//!
//! - **per disk**: the disk's undo data may not pass its budget ([`HistoryBudget`], default
//!   [`DEFAULT_MULTIPLE`] × the disk size, at least [`MIN_BUDGET`]; `sitrep server
//!   --history-budget`). Past it the cycle is refused with `NoSpace`: the agent retries with
//!   back-off, the disk shows the cause, **nothing is deleted** — points are the history the
//!   primary must not be able to destroy, so running out of room stops replication of that
//!   disk, not retention. The operator raises the budget (or, once issue 21's time-based
//!   retention lands, old points age out).
//! - **per store**: a cycle is refused (`NoSpace`) if its undo data would leave the store's
//!   filesystem with less than [`reserve`] free ([`FREE_SPACE_RESERVE`], 1/1024 of a small
//!   filesystem), so the daemon's own state files can still be written and one disk's
//!   history cannot take the last byte from the others. (The replica's own growth when a
//!   cycle fills holes is not counted: space another writer takes between the ack and the
//!   apply has to be handled there anyway — the cycle stays staged, the disk shows the
//!   fault, the apply is retried before the next cycle.)
//!
//! Rejected: dropping the oldest points to make room (Zerto's journal hard limit). It keeps
//! replication going, but it hands the primary a way to erase history at will by writing.

use std::path::Path;

use super::{Disk, Result, StoreError};
use crate::undo;

/// Default budget: this many times the disk's size of undo data per disk.
pub const DEFAULT_MULTIPLE: u64 = 16;
/// The default budget is never below this (small disks still get room for many points).
pub const MIN_BUDGET: u64 = 4 << 30;
/// Free space the store's filesystem keeps after a cycle's undo is saved (less on a small
/// filesystem: [`reserve`]).
pub const FREE_SPACE_RESERVE: u64 = 1 << 30;

/// How much undo data one disk may keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HistoryBudget {
    /// `N` × the disk's size (at least [`MIN_BUDGET`]).
    Multiple(u64),
    /// A fixed number of bytes.
    Bytes(u64),
}

impl Default for HistoryBudget {
    fn default() -> Self {
        Self::Multiple(DEFAULT_MULTIPLE)
    }
}

impl HistoryBudget {
    /// Parses `16x` (times the disk size) or a size (`500G`, `2T`; see
    /// [`base::config::parse_size`]).
    ///
    /// # Errors
    /// Neither form, or zero.
    pub fn parse(s: &str) -> std::result::Result<Self, String> {
        let b = match s.strip_suffix(['x', 'X']) {
            Some(n) => Self::Multiple(n.trim().parse().map_err(|_| {
                format!("history budget '{s}': expected N x (times the disk size) or a size")
            })?),
            None => Self::Bytes(base::config::parse_size(s)?),
        };
        if matches!(b, Self::Multiple(0) | Self::Bytes(0)) {
            return Err(format!("history budget '{s}' must be above zero"));
        }
        Ok(b)
    }

    /// The budget in bytes for a disk of `size` bytes.
    #[must_use]
    pub fn bytes(self, size: u64) -> u64 {
        match self {
            Self::Multiple(n) => size.saturating_mul(n).max(MIN_BUDGET),
            Self::Bytes(b) => b,
        }
    }
}

impl Disk {
    /// Sets the disk's history budget (checked at the next cycle).
    pub fn set_history_budget(&mut self, b: HistoryBudget) {
        self.budget = b;
    }

    /// Refuses cycle `seq` if the undo it may need (`need`) does not fit the disk's budget or
    /// the store's free space (see the module docs).
    ///
    /// # Errors
    /// [`StoreError::HistoryFull`] (sent as `NoSpace`), or the free space cannot be read.
    pub(super) fn check_history_room(&self, seq: u64, need: undo::Estimate) -> Result<()> {
        let name = self.name();
        let held = self.points_bytes();
        let limit = self.budget.bytes(self.state.size);
        let need = need.file_bytes();
        if held.saturating_add(need) > limit {
            return Err(StoreError::HistoryFull {
                disk: name.into(),
                why: format!(
                    "its recovery-point history (undo data) holds {held} bytes of its {limit}-byte budget and cycle {seq} may add {need}; cycles wait and are retried, no point is deleted — raise `sitrep server --history-budget`"
                ),
            });
        }
        let (free, total) = space(&self.dir).map_err(super::io_err(name, "reading free space"))?;
        let reserve = reserve(total);
        if free < need.saturating_add(reserve) {
            return Err(StoreError::HistoryFull {
                disk: name.into(),
                why: format!(
                    "the store's filesystem has {free} bytes free; cycle {seq} may need {need} for its undo data and {reserve} stay in reserve — make room on the store's filesystem"
                ),
            });
        }
        Ok(())
    }
}

/// The free space kept on a store's filesystem of `total` bytes: [`FREE_SPACE_RESERVE`], or
/// 1/1024 of a small filesystem (a 64 MiB test store keeps 64 KiB).
#[must_use]
pub fn reserve(total: u64) -> u64 {
    FREE_SPACE_RESERVE.min(total / 1024)
}

/// `(free, total)` bytes of the filesystem holding `dir`; free as an unprivileged writer
/// could use it (root may use the reserved blocks too; the reserve above is on top of
/// those).
fn space(dir: &Path) -> std::io::Result<(u64, u64)> {
    let st = nix::sys::statvfs::statvfs(dir).map_err(std::io::Error::from)?;
    let f = st.fragment_size();
    Ok((
        st.blocks_available().saturating_mul(f),
        st.blocks().saturating_mul(f),
    ))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn budgets_parse_as_multiples_or_sizes() {
        assert_eq!(HistoryBudget::parse("16x"), Ok(HistoryBudget::Multiple(16)));
        assert_eq!(
            HistoryBudget::parse("2G"),
            Ok(HistoryBudget::Bytes(2 << 30))
        );
        assert!(HistoryBudget::parse("0x").is_err());
        assert!(HistoryBudget::parse("x").is_err());
        assert!(HistoryBudget::parse("lots").is_err());
        assert_eq!(HistoryBudget::Multiple(16).bytes(1 << 20), MIN_BUDGET);
        assert_eq!(HistoryBudget::Multiple(16).bytes(1 << 40), 16 << 40);
        assert_eq!(HistoryBudget::Bytes(5).bytes(1 << 40), 5);
        assert_eq!(HistoryBudget::Multiple(u64::MAX).bytes(2), u64::MAX);
        assert_eq!(reserve(64 << 20), 64 << 10);
        assert_eq!(reserve(1 << 50), FREE_SPACE_RESERVE);
    }
}
