//! The guard of a cycle being staged: whatever ends the session early removes the file.

use proto::Frame;

use crate::store::{self, StoreError};

/// A cycle being received into its staging file. Dropped before it was committed — the
/// session refused it, failed or ended — it removes the file: nothing was acknowledged.
#[derive(Debug)]
pub(super) struct StagedCycle(Option<store::Staging>);

impl StagedCycle {
    /// Guards `s` from now on.
    pub(super) fn new(s: store::Staging) -> Self {
        Self(Some(s))
    }

    /// Appends a Data or Zero frame ([`store::Staging::push`]).
    pub(super) fn push(&mut self, disk: &str, size: u64, f: &Frame) -> Result<(), StoreError> {
        match self.0.as_mut() {
            Some(s) => s.push(disk, size, f),
            None => Err(committed(disk)),
        }
    }

    /// The staging file, handed over to be committed: the guard no longer removes it.
    pub(super) fn commit(mut self, disk: &str) -> Result<store::Staging, StoreError> {
        self.0.take().ok_or_else(|| committed(disk))
    }
}

/// The error of a guard used after its commit (the guard is consumed by it: never seen).
fn committed(disk: &str) -> StoreError {
    StoreError::BadRequest {
        disk: disk.into(),
        why: "the cycle was committed already".into(),
    }
}

impl Drop for StagedCycle {
    fn drop(&mut self) {
        if let Some(s) = self.0.take() {
            s.abandon();
        }
    }
}
