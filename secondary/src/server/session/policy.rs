//! A session's `PointPolicy` (protocol 3): the recovery-point policy the disk's agent asks
//! for, recorded with the disk and applied from its next point — within the server's floor
//! (`sitrep server --min-retain`), so a peer cannot shorten the history kept (see
//! `crate::store::AskedPolicy`); and its `PointStorage` (protocol 4): the disk's point
//! storage cap, recorded likewise and honoured by the quota task (`server/quota.rs`), which
//! retires only points older than that same floor.

use tokio::io::{AsyncBufRead, AsyncWrite};

use super::disk::{DiskSession, Flow, Mode};
use crate::store::AskedPolicy;
use base::net::ReplError;

impl<R, W> DiskSession<'_, R, W>
where
    R: AsyncBufRead + Unpin,
    W: AsyncWrite + Unpin,
{
    /// `PointPolicy` in any mode (not answered): clamped, kept in `policy.json`, applied.
    pub(super) async fn on_point_policy(
        &mut self,
        mode: Mode,
        crash_points_every_ns: u64,
        retain_ns: u64,
    ) -> Result<Flow, ReplError> {
        let asked = AskedPolicy::from_peer(crash_points_every_ns, retain_ns, base::now_ns());
        let effective = self.shared.retention.for_disk(Some(asked.pair()));
        let (every, retain) = (effective.every_ns, effective.retain_ns);
        self.on_disk(|d| d.set_asked_policy(asked, effective))
            .await?;
        tracing::info!(
            disk = self.name,
            every_s = every / 1_000_000_000,
            retain_s = retain / 1_000_000_000,
            "recovery-point policy"
        );
        Ok(Flow::Continue(mode))
    }

    /// `PointStorage` in any mode (not answered): kept in `policy.json`, in force at once;
    /// the quota task looks at the disk again.
    pub(super) async fn on_point_storage(
        &mut self,
        mode: Mode,
        max_bytes: u64,
    ) -> Result<Flow, ReplError> {
        let (sh, slot) = (self.shared, self.slot);
        self.on_disk(|d| {
            d.set_asked_point_cap(max_bytes, base::now_ns())?;
            crate::server::quota::noted(sh, slot, d);
            Ok(())
        })
        .await?;
        tracing::info!(disk = self.name, max_bytes, "point storage cap (0: none)");
        Ok(Flow::Continue(mode))
    }
}
