//! What a disk's task alone owns: the typed command channel it is driven by, the requests
//! taken from it that wait for their turn, and the cycle cut while a filesystem is frozen.
//!
//! The control socket's handlers send a [`DiskCommand`] and await its reply; the disk's task
//! files each command as it arrives ([`Owner::file`]) — at every point where it waits
//! (reading the device, a retry's delay, an idle session) it selects on the channel, so a
//! duplicate request is refused at once and `--now`, `stop` or a cut wake it immediately.
//! Each phase takes the requests it serves (`take_point`, `take_verify`, ...) between
//! cycles. The alternative this replaced — one `Mutex<Option<_>>` per request kind and
//! atomics polled every 50 ms — let any thread change what the task was about to act on.

use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use super::freeze;
use base::status::{AppPointReport, PlannedReport, VerifyReport};

/// The answer to an app-consistent point request.
pub(crate) type PointReply = oneshot::Sender<Result<AppPointReport, String>>;

/// An app-consistent point asked for.
pub(crate) struct PointRequest {
    pub(crate) reply: PointReply,
    pub(crate) max_freeze: Duration,
    /// Pending changes were already cut and shipped (so the frozen cycle is small).
    pub(crate) precut: bool,
}

/// A `sitrep verify` request waiting for the disk's session.
pub(crate) struct VerifyRequest {
    pub(crate) reply: oneshot::Sender<Result<VerifyReport, String>>,
}

/// A pending `sitrep failover NAME --planned`.
pub(crate) struct PlannedRequest {
    pub(crate) reply: oneshot::Sender<Result<PlannedReport, String>>,
}

/// The cycle cut while the filesystem was frozen.
pub(crate) struct FrozenCycle {
    pub(crate) seq: u64,
    pub(crate) frozen: Option<freeze::Frozen>,
    pub(crate) label: String,
    pub(crate) freeze_ms: f64,
    pub(crate) max_freeze: Duration,
    pub(crate) reply: PointReply,
}

/// What the control side asks a disk's task to do.
pub(crate) enum DiskCommand {
    /// `sitrep point create` (or a scheduled point).
    Point(PointRequest),
    /// `sitrep verify`.
    Verify(VerifyRequest),
    /// `sitrep failover NAME --planned`.
    PlannedFailover(PlannedRequest),
    /// `sitrep resync --now`: start the required resync outside its window.
    ResyncNow,
    /// `sitrep wait`: cut the log even if nothing seems recorded.
    Cut,
    /// A step of a cross-host group round (the server asked, `group.rs`).
    GroupRound(crate::rounds::RoundStep),
    /// Stop the disk (unprotect, agent shutdown): seal and end the session cleanly.
    Stop,
}

/// The sending end, kept in the disk's `DiskRt`.
pub(crate) type Commands = mpsc::UnboundedSender<DiskCommand>;

/// The disk task's end of the channel and what it has taken from it.
pub(crate) struct Owner {
    name: String,
    rx: mpsc::UnboundedReceiver<DiskCommand>,
    stopped: bool,
    point: Option<PointRequest>,
    verify: Option<VerifyRequest>,
    planned: Option<PlannedRequest>,
    resync_now: bool,
    cut: bool,
    round: Option<crate::rounds::RoundStep>,
    /// The cycle being cut and read while the filesystem is frozen.
    pub(crate) frozen: Option<FrozenCycle>,
}

impl Owner {
    /// A channel for disk `name`: the sender for the control side, the owner for its task.
    pub(crate) fn channel(name: &str) -> (Commands, Self) {
        let (tx, rx) = mpsc::unbounded_channel();
        let own = Self {
            name: name.to_string(),
            rx,
            stopped: false,
            point: None,
            verify: None,
            planned: None,
            resync_now: false,
            cut: false,
            round: None,
            frozen: None,
        };
        (tx, own)
    }

    /// Files one command: a second request of a kind already waiting is refused at once.
    pub(crate) fn file(&mut self, cmd: DiskCommand) {
        let name = &self.name;
        match cmd {
            DiskCommand::Point(req) => {
                if self.point.is_some() || self.frozen.is_some() {
                    let _ = req.reply.send(Err(format!(
                        "disk {name}: an app-consistent point is already being made"
                    )));
                } else {
                    self.point = Some(req);
                }
            }
            DiskCommand::Verify(req) => {
                if self.verify.is_some() {
                    let _ = req
                        .reply
                        .send(Err(format!("disk {name}: a verify is already running")));
                } else {
                    self.verify = Some(req);
                }
            }
            DiskCommand::PlannedFailover(req) => {
                if self.planned.is_some() {
                    let _ = req.reply.send(Err(format!(
                        "disk {name}: a planned failover is already running"
                    )));
                } else {
                    self.planned = Some(req);
                }
            }
            DiskCommand::ResyncNow => self.resync_now = true,
            DiskCommand::Cut => self.cut = true,
            // A newer step replaces an unserved one (the server moved on).
            DiskCommand::GroupRound(r) => self.round = Some(r),
            DiskCommand::Stop => self.stopped = true,
        }
    }

    /// Files every command waiting, without blocking.
    fn drain(&mut self) {
        while let Ok(cmd) = self.rx.try_recv() {
            self.file(cmd);
        }
    }

    /// Whether a stop was asked (every sender gone counts as one).
    pub(crate) fn is_stopped(&mut self) -> bool {
        self.drain();
        self.stopped
    }

    /// Resolves when a command arrives (filed by then). Cancel-safe: a select may drop it.
    pub(crate) async fn next(&mut self) {
        match self.rx.recv().await {
            Some(cmd) => self.file(cmd),
            None => {
                self.stopped = true;
                // Nothing more will arrive: the caller sees the stop.
            }
        }
    }

    /// Resolves once a stop is asked, filing every other command meanwhile. Cancel-safe.
    pub(crate) async fn stopped(&mut self) {
        while !self.is_stopped() {
            self.next().await;
        }
    }

    /// The group round step asked for, if any.
    pub(crate) fn take_round(&mut self) -> Option<crate::rounds::RoundStep> {
        self.drain();
        self.round.take()
    }

    /// The planned failover asked for, if any.
    pub(crate) fn take_planned(&mut self) -> Option<PlannedRequest> {
        self.drain();
        self.planned.take()
    }

    /// The verify asked for, if any.
    pub(crate) fn take_verify(&mut self) -> Option<VerifyRequest> {
        self.drain();
        self.verify.take()
    }

    /// Whether no app-consistent point request is waiting.
    pub(crate) fn idle_for_point(&mut self) -> bool {
        self.drain();
        self.point.is_none()
    }

    /// The app-consistent point asked for, if any.
    pub(crate) fn take_point(&mut self) -> Option<PointRequest> {
        self.drain();
        self.point.take()
    }

    /// Puts a point request back (it waits for the pending changes to ship first).
    pub(crate) fn put_point(&mut self, req: PointRequest) {
        self.point = Some(req);
    }

    /// Whether a cut was asked since the last call.
    pub(crate) fn take_cut(&mut self) -> bool {
        self.drain();
        std::mem::take(&mut self.cut)
    }

    /// Whether `--now` was asked since the last call.
    pub(crate) fn resync_now(&mut self) -> bool {
        self.drain();
        self.resync_now
    }

    /// The resync started: a later `--now` is for the next one.
    pub(crate) fn clear_resync_now(&mut self) {
        self.resync_now = false;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[tokio::test]
    async fn a_second_request_of_a_kind_is_refused_and_the_first_waits() {
        let (tx, mut own) = Owner::channel("d");
        let (a, mut ra) = oneshot::channel();
        let (b, rb) = oneshot::channel();
        for reply in [a, b] {
            tx.send(DiskCommand::Verify(VerifyRequest { reply }))
                .unwrap();
        }
        tx.send(DiskCommand::Cut).unwrap();
        assert!(!own.is_stopped());
        assert_eq!(
            rb.await.unwrap().unwrap_err(),
            "disk d: a verify is already running"
        );
        assert!(ra.try_recv().is_err());
        assert!(own.take_verify().is_some());
        assert!(own.take_verify().is_none());
        assert!(own.take_cut());
        assert!(!own.take_cut());
        tx.send(DiskCommand::ResyncNow).unwrap();
        tx.send(DiskCommand::Stop).unwrap();
        own.stopped().await;
        assert!(own.resync_now());
        own.clear_resync_now();
        assert!(!own.resync_now());
    }

    #[tokio::test]
    async fn dropping_every_sender_stops_the_task() {
        let (tx, mut own) = Owner::channel("d");
        drop(tx);
        own.stopped().await;
        assert!(own.is_stopped());
    }
}
