//! A session's checksum resync (digests compared, differing ranges repaired in committed
//! batches) and the planned failover a source asks for between cycles.

use proto::{ErrorCode, Frame, Msg};
use tokio::io::{AsyncBufRead, AsyncWrite};

use super::disk::{DiskSession, Flow, Mode};
use super::{or_refuse, with_disk};
use crate::server::failover;
use base::net::{ReplError, send, send_error};

impl<R, W> DiskSession<'_, R, W>
where
    R: AsyncBufRead + Unpin,
    W: AsyncWrite + Unpin,
{
    /// `DigestKey`: the key the following digests are made with.
    pub(super) async fn on_digest_key(
        &mut self,
        mode: Mode,
        algo: u8,
        key: &[u8],
    ) -> Result<Flow, ReplError> {
        or_refuse(self.c, self.rs.set_key(self.name, algo, key)).await?;
        Ok(Flow::Continue(mode))
    }

    /// `DigestReq`: the replica's digests of `ranges` (`coarse`: one per range).
    pub(super) async fn on_digest_req(
        &mut self,
        mode: Mode,
        req: u64,
        coarse: bool,
        ranges: &[(u64, u64)],
    ) -> Result<Flow, ReplError> {
        let digests = with_disk(self.slot, |d| d.digests(&mut self.rs, coarse, ranges));
        let digests = or_refuse(self.c, digests).await?;
        send(&mut self.c.w, Msg::Digests { req, digests }).await?;
        Ok(Flow::Continue(mode))
    }

    /// `ResyncBegin`: resync `id` starts (or resumes); `ResyncReady` says from where.
    pub(super) async fn on_resync_begin(
        &mut self,
        id: u64,
        from_seq: u64,
    ) -> Result<Flow, ReplError> {
        let cursor = self.on_disk(|d| d.resync_begin(id, from_seq)).await?;
        tracing::info!(disk = self.name, id, from_seq, cursor, "checksum resync");
        send(&mut self.c.w, Msg::ResyncReady { id, cursor }).await?;
        Ok(Flow::Continue(Mode::Resync))
    }

    /// A Data or Zero frame of the resync: a repair, held until the next commit.
    pub(super) async fn on_resync_frame(&mut self, f: Frame) -> Result<Flow, ReplError> {
        let put = with_disk(self.slot, |d| d.resync_put(&mut self.rs, f));
        or_refuse(self.c, put).await?;
        Ok(Flow::Continue(Mode::Resync))
    }

    /// `ResyncCommit`: the repairs so far written and made durable up to `cursor`.
    pub(super) async fn on_resync_commit(&mut self, cursor: u64) -> Result<Flow, ReplError> {
        let committed = with_disk(self.slot, |d| d.resync_commit(&mut self.rs, cursor));
        or_refuse(self.c, committed).await?;
        send(&mut self.c.w, Msg::ResyncAck { cursor }).await?;
        Ok(Flow::Continue(Mode::Resync))
    }

    /// `ResyncDone`: resync `id` is complete; cycles from log `from_seq` follow.
    pub(super) async fn on_resync_done(
        &mut self,
        id: u64,
        from_seq: u64,
    ) -> Result<Flow, ReplError> {
        let done = with_disk(self.slot, |d| d.resync_done(&mut self.rs, id, from_seq));
        or_refuse(self.c, done).await?;
        tracing::info!(disk = self.name, id, from_seq, "checksum resync complete");
        send(&mut self.c.w, Msg::ResyncFinished { id }).await?;
        Ok(Flow::Continue(Mode::Idle))
    }

    /// `PlannedFailover` at cycle `seq`: the replica brought up as a point; `FailoverDone`
    /// ends the session.
    pub(super) async fn on_planned_failover(&mut self, seq: u64) -> Result<Flow, ReplError> {
        tracing::info!(disk = self.name, seq, client = %self.c.peer, "planned failover requested");
        let shared = self.shared;
        let name = self.name;
        match tokio::task::block_in_place(|| failover::planned(shared, name, seq)) {
            Ok(r) => {
                let done = Msg::FailoverDone {
                    point: r.point.id,
                    cut_time_ns: r.point.cut_time_ns,
                    device: r.device,
                    image: r.image.display().to_string(),
                };
                send(&mut self.c.w, done).await?;
                Ok(Flow::End)
            }
            Err(e) => {
                let msg = format!("{e:#}");
                tracing::warn!("{msg}");
                send_error(&mut self.c.w, ErrorCode::Internal, msg.clone()).await;
                Err(ReplError::Refused {
                    peer: self.c.peer.clone(),
                    code: ErrorCode::Internal,
                    message: msg,
                })
            }
        }
    }
}
