//! Which bytes a staged cycle really changes: compared with the replica before it is applied,
//! so that undo data holds pre-images of *changed* bytes only.
//!
//! A cycle can name bytes whose contents do not change: the tracker, after missing a
//! completion, records a gap over every range the missed write can be in and the agent
//! ships them all again (measured: 100+ MiB cycles of a 128 MiB disk under churn, each
//! adding that much undo data); a block rewritten with what it held. Their pre-image is the
//! bytes the cycle writes, so no point needs it. During the check pass of a staged cycle
//! ([`super::Disk::apply_staged`]) each frame's bytes outside the interval's coverage (those
//! would be saved) are compared with the replica, [`GRAIN`] at a time; only differing grains
//! are saved. The cost: one read of the replica for bytes the undo writer reads next anyway.
//!
//! Crash safety: an undo file, once written, is never recomputed (`ensure_undo`). Without one
//! (nothing needed saving), a crash mid-apply leaves some bytes already written — each equal
//! to the cycle's, so compared again they are "unchanged", as they were: the same nothing is
//! computed again.

use std::fs::File;
use std::os::unix::fs::FileExt;

use base::ranges::{Range, normalize, subtract};

/// Comparison granule.
pub(super) const GRAIN: u64 = 4096;

/// What the check pass collects about changed bytes.
#[derive(Debug)]
pub(super) struct Changes {
    /// Bytes not to compare: what the cycle's interval has saved already.
    covered: Vec<Range>,
    /// Grains outside `covered` whose new contents differ from the replica's.
    changed: Vec<Range>,
    /// Scratch for replica reads.
    buf: Vec<u8>,
}

impl Changes {
    /// Compares outside `covered` (normalized).
    pub(super) fn new(covered: Vec<Range>) -> Self {
        Self {
            covered,
            changed: Vec::new(),
            buf: Vec::new(),
        }
    }

    /// The changed grains (normalized).
    pub(super) fn into_changed(self) -> Vec<Range> {
        normalize(self.changed)
    }

    /// A Data frame: `data` at `offset`.
    ///
    /// # Errors
    /// Reading the replica failed.
    pub(super) fn data(&mut self, replica: &File, offset: u64, data: &[u8]) -> std::io::Result<()> {
        for (s, l) in subtract(&[(offset, data.len() as u64)], &self.covered) {
            let at = usize::try_from(s - offset).map_err(std::io::Error::other)?;
            let n = usize::try_from(l).map_err(std::io::Error::other)?;
            self.compare(replica, s, |b, i| b == &data[at + i..at + i + b.len()], n)?;
        }
        Ok(())
    }

    /// A Zero frame over `[offset, offset + len)`.
    ///
    /// # Errors
    /// Reading the replica failed.
    pub(super) fn zero(&mut self, replica: &File, offset: u64, len: u64) -> std::io::Result<()> {
        for (s, l) in subtract(&[(offset, len)], &self.covered) {
            // Holes are zero already: only the replica's data runs can change.
            let end = s + l;
            let mut at = s;
            while let Some((a, b)) = crate::undo::data_run(replica, at, end) {
                let n = usize::try_from(b - a).map_err(std::io::Error::other)?;
                self.compare(replica, a, |x, _| base::devread::is_zero(x), n)?;
                at = b;
            }
        }
        Ok(())
    }

    /// Reads `n` bytes of the replica at `s`, a MiB at a time, and records every grain for
    /// which `same(replica bytes, index from s)` is false.
    fn compare(
        &mut self,
        replica: &File,
        s: u64,
        same: impl Fn(&[u8], usize) -> bool,
        n: usize,
    ) -> std::io::Result<()> {
        const PIECE: usize = 1 << 20;
        let mut done = 0usize;
        while done < n {
            let k = (n - done).min(PIECE);
            self.buf.resize(k, 0);
            let pos = s + done as u64;
            replica.read_exact_at(&mut self.buf[..k], pos)?;
            let mut i = 0usize;
            while i < k {
                // Grains aligned to the disk, so neighbouring frames share them.
                let g_end = ((pos + i as u64) / GRAIN + 1) * GRAIN;
                let j = usize::try_from(g_end - pos).map_or(k, |e| e.min(k));
                if !same(&self.buf[i..j], done + i) {
                    self.changed.push((pos + i as u64, (j - i) as u64));
                }
                i = j;
            }
            done += k;
        }
        Ok(())
    }
}
