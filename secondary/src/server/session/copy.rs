//! A session's initial copy: `CopyBegin` (or its resume), the disk's Data/Zero frames written
//! in place, `CopyCheckpoint`s made durable and acknowledged, `CopyDone`.

use tokio::io::{AsyncBufRead, AsyncWrite};

use super::disk::{DiskSession, Flow, Mode};
use base::net::{ReplError, send};
use proto::Msg;

impl<R, W> DiskSession<'_, R, W>
where
    R: AsyncBufRead + Unpin,
    W: AsyncWrite + Unpin,
{
    /// `CopyBegin`: the copy starts (or resumes); `CopyAck` says from where.
    pub(super) async fn on_copy_begin(
        &mut self,
        from_seq: u64,
        restart: bool,
    ) -> Result<Flow, ReplError> {
        let cp = self.on_disk(|d| d.copy_begin(from_seq, restart)).await?;
        send(&mut self.c.w, Msg::CopyAck { cursor: cp.cursor }).await?;
        Ok(Flow::Continue(Mode::Copy))
    }

    /// A Data frame of the copy: written to the replica.
    pub(super) async fn on_copy_data(
        &mut self,
        offset: u64,
        data: &[u8],
    ) -> Result<Flow, ReplError> {
        self.on_disk(|d| d.write_data(offset, data)).await?;
        Ok(Flow::Continue(Mode::Copy))
    }

    /// A Zero frame of the copy: the range zeroed on the replica.
    pub(super) async fn on_copy_zero(&mut self, offset: u64, len: u64) -> Result<Flow, ReplError> {
        self.on_disk(|d| d.write_zero(offset, len)).await?;
        Ok(Flow::Continue(Mode::Copy))
    }

    /// `CopyCheckpoint`: the copy is durable up to `cursor`; `CopyAck` says so.
    pub(super) async fn on_copy_checkpoint(&mut self, cursor: u64) -> Result<Flow, ReplError> {
        self.on_disk(|d| d.copy_checkpoint(cursor)).await?;
        send(&mut self.c.w, Msg::CopyAck { cursor }).await?;
        Ok(Flow::Continue(Mode::Copy))
    }

    /// `CopyDone`: the copy is complete; cycles from log `from_seq` follow.
    pub(super) async fn on_copy_done(&mut self, from_seq: u64) -> Result<Flow, ReplError> {
        self.on_disk(|d| d.copy_done(from_seq)).await?;
        tracing::info!(disk = self.name, "initial copy complete");
        send(&mut self.c.w, Msg::CopyAck { cursor: self.size }).await?;
        Ok(Flow::Continue(Mode::Idle))
    }
}
