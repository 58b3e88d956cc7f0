//! A session's cycles: `CycleBegin` admitted (staged, or read and dropped as a duplicate),
//! its Data/Zero frames staged, `CycleEnd` made durable, acknowledged and applied; the
//! source's `Verdict` on an applied cycle.

use proto::{Frame, Msg};
use tokio::io::{AsyncBufRead, AsyncWrite};

use super::disk::{DiskSession, Flow, Mode};
use super::staged::StagedCycle;
use super::{refuse, with_disk};
use crate::store::Admit;
use base::net::{ReplError, send};

impl<R, W> DiskSession<'_, R, W>
where
    R: AsyncBufRead + Unpin,
    W: AsyncWrite + Unpin,
{
    /// `CycleBegin` between cycles: staged if it is the next cycle, read and dropped if it
    /// was applied already, refused if cycles are missing.
    pub(super) async fn on_cycle_begin(&mut self, seq: u64, begin: Msg) -> Result<Flow, ReplError> {
        match with_disk(self.slot, |d| d.cycle_admit(seq)) {
            Ok(Admit::Duplicate) => Ok(Flow::Continue(Mode::Duplicate(seq))),
            Ok(Admit::Stage) => {
                let epoch = self.epoch;
                let s = self.on_disk(|d| d.stage_begin(seq, epoch, &begin)).await?;
                Ok(Flow::Continue(Mode::Cycle(StagedCycle::new(s))))
            }
            Err(e) => {
                tracing::error!("{e}");
                Err(refuse(self.c, e).await)
            }
        }
    }

    /// A Data or Zero frame of the cycle being staged.
    pub(super) async fn on_cycle_frame(
        &mut self,
        mut s: StagedCycle,
        f: &Frame,
    ) -> Result<Flow, ReplError> {
        // A frame goes into the staging file's 1 MiB buffer: a copy, and a page-cache write
        // once per MiB. Handing the worker thread over (`block_in_place`) for every frame
        // cost more than that (a third of the time of a 4 KiB frame).
        if let Err(e) = s.push(self.name, self.size, f) {
            // The file goes before the refusal does.
            drop(s);
            return Err(refuse(self.c, e).await);
        }
        Ok(Flow::Continue(Mode::Cycle(s)))
    }

    /// `CycleEnd`: the staged cycle made durable, acknowledged (`CycleAck`), applied
    /// (`Applied`).
    pub(super) async fn on_cycle_end(
        &mut self,
        s: StagedCycle,
        seq: u64,
        end: Msg,
    ) -> Result<Flow, ReplError> {
        let name = self.name;
        let path = self
            .on_disk(|d| d.stage_commit(s.commit(name)?, &end))
            .await?;
        send(&mut self.c.w, Msg::CycleAck { seq }).await?;
        self.rs.forget_digests();
        let (sh, slot) = (self.shared, self.slot);
        let applied = with_disk(slot, |d| {
            let a = d.apply_staged(seq, &path)?;
            crate::server::quota::noted(sh, slot, d);
            Ok(a)
        });
        match applied {
            Ok(a) => {
                let applied = Msg::Applied {
                    seq,
                    cut_time_ns: a.cut_time_ns,
                };
                send(&mut self.c.w, applied).await?;
                Ok(Flow::Continue(Mode::Idle))
            }
            Err(e) => {
                tracing::error!("{e}");
                Err(refuse(self.c, e).await)
            }
        }
    }

    /// `CycleEnd` of a cycle applied already: acknowledged again, and `Applied` again if the
    /// disk holds it (or a newer one).
    pub(super) async fn on_duplicate_end(&mut self, seq: u64) -> Result<Flow, ReplError> {
        send(&mut self.c.w, Msg::CycleAck { seq }).await?;
        let applied = with_disk(self.slot, |d| Ok(d.state().applied))
            .ok()
            .flatten();
        if let Some(a) = applied.filter(|a| a.seq >= seq) {
            let applied = Msg::Applied {
                seq: a.seq,
                cut_time_ns: a.cut_time_ns,
            };
            send(&mut self.c.w, applied).await?;
        }
        Ok(Flow::Continue(Mode::Idle))
    }

    /// The source's `Verdict` on applied cycle `seq`: a recovery point if it was consistent.
    pub(super) async fn on_verdict(
        &mut self,
        seq: u64,
        crash_consistent: bool,
        label: Option<String>,
    ) -> Result<Flow, ReplError> {
        let now = base::now_ns();
        let (sh, slot) = (self.shared, self.slot);
        let point = self
            .on_disk(|d| {
                let before = d.points().len();
                let p = d.verdict(seq, crash_consistent, label, now)?;
                let gone = (before + usize::from(p.is_some())).saturating_sub(d.points().len());
                slot.space.retired_by_retention(gone as u64);
                crate::server::quota::noted(sh, slot, d);
                Ok(p)
            })
            .await?;
        if let Some(p) = point {
            tracing::info!(disk = self.name, point = p.id, kind = ?p.kind, "recovery point");
        }
        Ok(Flow::Continue(Mode::Idle))
    }
}
