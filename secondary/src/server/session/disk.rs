//! The disk's part of a session: after the attach, one frame at a time until the connection
//! ends. [`DiskSession::on_frame`] routes each (mode, frame) to one short method (here and in
//! `copy.rs`, `cycle.rs`, `resync.rs`); anything else is refused.
//!
//! The mode is a value moved through the loop — into the method that handles a frame and
//! back out as its [`Flow`] — rather than a field the methods mutate: a method that fails
//! (`?`) drops the mode it was given, and with it any cycle being staged
//! ([`super::staged::StagedCycle`] removes its file on `Drop`).

use std::sync::atomic::Ordering;

use proto::{CopyState, CycleInfo, Frame, Msg};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWrite};

use super::staged::StagedCycle;
use super::{Conn, or_refuse, refuse, with_disk};
use crate::server::{IDLE_TIMEOUT, Shared, Slot};
use crate::store::{self, Disk, StoreError};
use base::net::{ReplError, send};

/// Where the disk's session is between frames.
pub(super) enum Mode {
    /// Between cycles (and before the copy).
    Idle,
    /// Inside the initial copy.
    Copy,
    /// Inside a checksum resync.
    Resync,
    /// Receiving a cycle into its staging file.
    Cycle(StagedCycle),
    /// Receiving cycle `seq` again, applied already: its frames are read and dropped.
    Duplicate(u64),
}

impl Mode {
    /// Where a frame arrived, for a refusal.
    fn describe(&self) -> &'static str {
        match self {
            Self::Idle => "between cycles",
            Self::Copy => "during the copy",
            Self::Resync => "during a resync",
            Self::Cycle(_) => "inside a cycle",
            Self::Duplicate(_) => "inside a duplicate cycle",
        }
    }
}

/// What a frame leaves the session in.
pub(super) enum Flow {
    /// The next frame is read in this mode.
    Continue(Mode),
    /// The session ends cleanly (`Bye`, a planned failover done).
    End,
}

/// One attached disk's session: the connection, the disk's slot, the resync state.
pub(super) struct DiskSession<'a, R, W> {
    /// The server's state (store, policies, jobs).
    pub(super) shared: &'a Shared,
    /// The disk's slot: the open disk, the session epoch, the counters.
    pub(super) slot: &'a Slot,
    /// This session's number for the disk: a newer attach supersedes it.
    pub(super) epoch: u64,
    /// The disk's name.
    pub(super) name: &'a str,
    /// The connection to the agent.
    pub(super) c: &'a mut Conn<R, W>,
    /// The disk's size at the attach.
    pub(super) size: u64,
    /// The checksum resync's key, cached digests and uncommitted repairs.
    pub(super) rs: store::ResyncSession,
    /// One reader per session: it keeps its zstd context across frames.
    reader: proto::FrameReader,
}

impl<'a, R, W> DiskSession<'a, R, W>
where
    R: AsyncBufRead + Unpin,
    W: AsyncWrite + Unpin,
{
    /// The session of disk `name` (open in `slot`) for connection `c`, numbered `epoch`.
    pub(super) fn new(
        shared: &'a Shared,
        slot: &'a Slot,
        epoch: u64,
        name: &'a str,
        c: &'a mut Conn<R, W>,
    ) -> Self {
        Self {
            shared,
            slot,
            epoch,
            name,
            c,
            size: 0,
            rs: store::ResyncSession::default(),
            reader: proto::FrameReader::new(),
        }
    }

    /// Answers the attach with `Attached`, then serves frames until the connection ends.
    ///
    /// # Errors
    /// The peer's or the disk's error that ended the session.
    pub(super) async fn run(mut self) -> Result<(), ReplError> {
        self.send_attached().await?;
        tracing::info!(disk = self.name, client = %self.c.peer, "attached");
        self.size = with_disk(self.slot, |d| Ok(d.state().size)).unwrap_or(0);
        // Dropped on every way out of the loop, and with it a cycle being staged.
        let mut mode = Mode::Idle;
        // A cross-host group's coordinator sends its rounds through the slot
        // (`server/coordinate.rs`); they are written between frames.
        let (tx, mut rounds) = tokio::sync::mpsc::channel(8);
        *base::lock(&self.slot.rounds) = Some((self.epoch, tx));
        loop {
            // Rounds first: they are rare, and a disk streaming frames must not starve them.
            tokio::select! {
                biased;
                Some(m) = rounds.recv() => {
                    send(&mut self.c.w, m).await?;
                    continue;
                }
                ready = tokio::time::timeout(IDLE_TIMEOUT, self.c.r.fill_buf()) => {
                    if ready.is_err() {
                        let why = format!("{}: idle for {IDLE_TIMEOUT:?}", self.name);
                        return Err(ReplError::Net(why));
                    }
                }
            }
            let Some(frame) = self.next_frame().await? else {
                break;
            };
            mode = match self.on_frame(mode, frame).await? {
                Flow::Continue(m) => m,
                Flow::End => break,
            };
        }
        Ok(())
    }

    async fn send_attached(&mut self) -> Result<(), ReplError> {
        let attached = with_disk(self.slot, |d| {
            let st = d.state();
            Ok(Msg::Attached {
                copy: st.copy.map(|cp| CopyState {
                    done: cp.done,
                    from_seq: cp.from_seq,
                    cursor: cp.cursor,
                }),
                applied: st.applied.map(|a| CycleInfo {
                    seq: a.seq,
                    cut_time_ns: a.cut_time_ns,
                }),
                expected_seq: d.expected_seq()?,
            })
        });
        match attached {
            Ok(m) => send(&mut self.c.w, m).await,
            Err(e) => Err(refuse(self.c, e).await),
        }
    }

    /// The next frame; None when the peer closed the connection.
    ///
    /// # Errors
    /// A read error, a frame that does not decode, no frame for [`IDLE_TIMEOUT`], or a newer
    /// session of the disk (this one then ends without touching the disk).
    async fn next_frame(&mut self) -> Result<Option<Frame>, ReplError> {
        let frame = match tokio::time::timeout(IDLE_TIMEOUT, self.reader.read(&mut self.c.r)).await
        {
            Ok(Ok(f)) => f,
            Ok(Err(proto::ProtoError::Closed)) => return Ok(None),
            Ok(Err(e)) => return Err(e.into()),
            Err(_) => {
                let why = format!("{}: idle for {IDLE_TIMEOUT:?}", self.name);
                return Err(ReplError::Net(why));
            }
        };
        if self.slot.epoch.load(Ordering::SeqCst) != self.epoch {
            let why = format!("{}: superseded by a newer session", self.name);
            return Err(ReplError::Net(why));
        }
        let wire = frame_wire_estimate(&frame);
        self.slot.wire_bytes.fetch_add(wire, Ordering::Relaxed);
        Ok(Some(frame))
    }

    /// Routes `frame`, arrived in `mode`, to its method.
    async fn on_frame(&mut self, mode: Mode, frame: Frame) -> Result<Flow, ReplError> {
        use Frame::{Control, Data, Zero};
        use Mode::{Copy, Cycle, Duplicate, Idle, Resync};
        match (mode, frame) {
            (m, Control(Msg::Ping { nonce })) => self.on_ping(m, nonce).await,
            (_, Control(Msg::Bye)) => Ok(Flow::End),
            (
                m,
                Control(Msg::PointPolicy {
                    crash_points_every_ns,
                    retain_ns,
                }),
            ) => {
                self.on_point_policy(m, crash_points_every_ns, retain_ns)
                    .await
            }
            (m, Control(Msg::PointStorage { max_bytes })) => {
                self.on_point_storage(m, max_bytes).await
            }
            (Idle | Copy, Control(Msg::CopyBegin { from_seq, restart })) => {
                self.on_copy_begin(from_seq, restart).await
            }
            (Copy, Data { offset, data }) => self.on_copy_data(offset, &data).await,
            (Copy, Zero { offset, len }) => self.on_copy_zero(offset, len).await,
            (Copy, Control(Msg::CopyCheckpoint { cursor })) => {
                self.on_copy_checkpoint(cursor).await
            }
            (Copy, Control(Msg::CopyDone { from_seq })) => self.on_copy_done(from_seq).await,
            (m @ (Idle | Resync), Control(Msg::DigestKey { algo, key })) => {
                self.on_digest_key(m, algo, &key).await
            }
            (
                m @ (Idle | Resync),
                Control(Msg::DigestReq {
                    req,
                    coarse,
                    ranges,
                }),
            ) => self.on_digest_req(m, req, coarse, &ranges).await,
            (Idle, Control(Msg::PlannedFailover { seq })) => self.on_planned_failover(seq).await,
            (Idle, Control(Msg::ResyncBegin { id, from_seq })) => {
                self.on_resync_begin(id, from_seq).await
            }
            (Resync, f @ (Data { .. } | Zero { .. })) => self.on_resync_frame(f).await,
            (Resync, Control(Msg::ResyncCommit { cursor })) => self.on_resync_commit(cursor).await,
            (Resync, Control(Msg::ResyncDone { id, from_seq })) => {
                self.on_resync_done(id, from_seq).await
            }
            (Idle, Control(begin @ Msg::CycleBegin { seq, .. })) => {
                self.on_cycle_begin(seq, begin).await
            }
            (Cycle(s), f @ (Data { .. } | Zero { .. })) => self.on_cycle_frame(s, &f).await,
            (Cycle(s), Control(end @ Msg::CycleEnd { seq, .. })) => {
                self.on_cycle_end(s, seq, end).await
            }
            (
                Idle,
                Control(Msg::Verdict {
                    seq,
                    crash_consistent,
                    label,
                }),
            ) => self.on_verdict(seq, crash_consistent, label).await,
            (m, Control(Msg::GroupMember { group })) => self.on_group_member(m, group).await,
            (
                m,
                Control(Msg::GroupRoundDone {
                    group,
                    round,
                    step,
                    seq,
                    quiet,
                }),
            ) => {
                let disk = self.name;
                self.shared
                    .groups
                    .round_answer(&group, round, disk, step, seq, quiet);
                Ok(Flow::Continue(m))
            }
            (
                Idle,
                Control(Msg::GroupVerdict {
                    seq,
                    group,
                    cut_id,
                    members,
                }),
            ) => self.on_group_verdict(seq, group, cut_id, members).await,
            (Duplicate(seq), Data { .. } | Zero { .. }) => Ok(Flow::Continue(Duplicate(seq))),
            (Duplicate(seq), Control(Msg::CycleEnd { .. })) => self.on_duplicate_end(seq).await,
            (m, f) => Err(self.on_unexpected(m, &f).await),
        }
    }

    /// `Ping` in any mode: `Pong`.
    async fn on_ping(&mut self, mode: Mode, nonce: u64) -> Result<Flow, ReplError> {
        send(&mut self.c.w, Msg::Pong { nonce }).await?;
        Ok(Flow::Continue(mode))
    }

    /// A frame `mode` does not take: refused (a cycle being staged is dropped first).
    async fn on_unexpected(&mut self, mode: Mode, f: &Frame) -> ReplError {
        let e = StoreError::BadRequest {
            disk: self.name.into(),
            why: format!("unexpected {} {}", store::frame_name(f), mode.describe()),
        };
        drop(mode);
        refuse(self.c, e).await
    }

    /// Runs `f` on the disk; its error is sent to the peer as the refusal that ends the
    /// session.
    pub(super) async fn on_disk<T>(
        &mut self,
        f: impl FnOnce(&mut Disk) -> Result<T, StoreError>,
    ) -> Result<T, ReplError> {
        or_refuse(self.c, with_disk(self.slot, f)).await
    }
}

fn frame_wire_estimate(f: &Frame) -> u64 {
    proto::HEADER_LEN as u64
        + match f {
            Frame::Data { data, .. } => 8 + data.len() as u64,
            Frame::Zero { .. } => 16,
            Frame::Control(_) => 32,
        }
}
