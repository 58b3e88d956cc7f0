//! A disk's connection to its server: the [`Session`] (frames out through the rate-limited
//! writer, messages in from a reader task), the counters every frame updates, and the
//! session's timing constants. A leaf: the phases (copy, cycles, resync, planned failover)
//! all talk to the server through it, and it knows none of them.

use std::time::{Duration, Instant};

use proto::{CycleInfo, Frame, Msg};
use tokio::io::{ReadHalf, WriteHalf};
use tokio::sync::mpsc;

use super::DiskRt;
use super::connect::{BoxStream, Connect};
use super::ship::{Compression, STALL, Wire};
use base::net::{self, ReplError};

/// Copy checkpoints: the server syncs the replica and records the cursor this often.
pub const CHECKPOINT_BYTES: u64 = 64 << 20;
/// Unacknowledged checkpoints allowed in flight.
pub const CHECKPOINTS_IN_FLIGHT: usize = 2;
/// Idle sessions ping this often (the server drops silent ones).
pub const PING_EVERY: Duration = Duration::from_secs(30);
/// Longest freeze of a scheduled app-consistent point.
pub const SCHEDULED_MAX_FREEZE: Duration = Duration::from_secs(10);
/// Read granule of cycles (O_DIRECT alignment).
pub const GRANULE: u64 = 4096;

/// One connection to the server: the rate-limited writer, the reader task's messages, and
/// the timing of both (pings, silence).
pub(crate) struct Session {
    pub(crate) w: Wire<WriteHalf<BoxStream>>,
    pub(crate) rx: mpsc::Receiver<Result<Msg, ReplError>>,
    pub(crate) peer: String,
    pub(crate) last_sent: Instant,
    pub(crate) last_heard: Instant,
    /// Whether cycle frames are compressed now (kept across the session's cycles).
    pub(crate) comp: Compression,
    /// The protocol version negotiated (what the server can decode).
    pub(crate) version: u16,
    /// The consistency group last declared to the server (`GroupMember`, protocol 5).
    pub(crate) declared: Option<Option<String>>,
    /// Answers to send before anything else (a group round's release, answered on receipt).
    pending: Vec<Msg>,
}

impl Session {
    /// The next message other than `Applied`/`Pong` (which update the status), waiting at
    /// most [`STALL`] for it.
    pub(crate) async fn answer(&mut self, rt: &DiskRt) -> Result<Msg, ReplError> {
        tokio::time::timeout(STALL, self.recv(rt))
            .await
            .map_err(|_| ReplError::Net(format!("{}: no answer for {STALL:?}", self.peer)))?
    }

    /// A message other than `Applied`/`Pong` if one has arrived, without waiting.
    pub(crate) fn try_recv(&mut self, rt: &DiskRt) -> Result<Option<Msg>, ReplError> {
        loop {
            let m = match self.rx.try_recv() {
                Ok(m) => m?,
                Err(mpsc::error::TryRecvError::Empty) => return Ok(None),
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    return Err(ReplError::Net("connection closed".into()));
                }
            };
            self.last_heard = Instant::now();
            if let Some(m) = note(rt, m, &mut self.pending) {
                return Ok(Some(m));
            }
        }
    }

    pub(crate) async fn recv(&mut self, rt: &DiskRt) -> Result<Msg, ReplError> {
        // Whatever is buffered may be what the answer waits for.
        self.w.flush().await?;
        loop {
            let m = self
                .rx
                .recv()
                .await
                .ok_or_else(|| ReplError::Net("connection closed".into()))??;
            self.last_heard = Instant::now();
            let m = note(rt, m, &mut self.pending);
            self.send_pending().await?;
            if let Some(m) = m {
                return Ok(m);
            }
        }
    }

    pub(crate) async fn expect_ack(
        &mut self,
        rt: &DiskRt,
        cursor: Option<u64>,
    ) -> Result<u64, ReplError> {
        match self.answer(rt).await? {
            Msg::CopyAck { cursor: c } if cursor.is_none_or(|x| x == c) => Ok(c),
            m => Err(ReplError::Protocol(format!(
                "{} sent {} where CopyAck{} was expected",
                self.peer,
                m.name(),
                cursor.map(|c| format!(" {c}")).unwrap_or_default()
            ))),
        }
    }

    /// The server's refusal, if one arrives within a second (after a network error: the
    /// server may have said why before closing).
    pub(crate) async fn pending_refusal(&mut self) -> Option<ReplError> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
        loop {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(Err(e @ ReplError::Refused { .. }))) => return Some(e),
                Ok(Some(Ok(_))) => {}
                Ok(Some(Err(_)) | None) | Err(_) => return None,
            }
        }
    }

    pub(crate) async fn msg(&mut self, m: Msg) -> Result<(), ReplError> {
        self.send_pending().await?;
        self.last_sent = Instant::now();
        self.w.msg(m).await
    }

    /// Sends the answers made while receiving (a round's release).
    async fn send_pending(&mut self) -> Result<(), ReplError> {
        for m in std::mem::take(&mut self.pending) {
            self.last_sent = Instant::now();
            self.w.msg(m).await?;
        }
        Ok(())
    }
}

/// Writes one encoded frame and counts it in the disk's status.
pub(crate) async fn send_frame(
    s: &mut Session,
    rt: &DiskRt,
    bytes: &[u8],
    data: u64,
    zero: u64,
) -> Result<(), ReplError> {
    s.w.bytes(bytes).await?;
    let wire = bytes.len() as u64;
    rt.set(|st| {
        st.bytes_shipped += data;
        st.zero_bytes += zero;
        st.wire_bytes += wire;
    });
    Ok(())
}

/// Applies `Applied`/`Pong` to the status, files a group round's cut for the disk's task and
/// answers its release into `pending`; returns any other message.
fn note(rt: &DiskRt, m: Msg, pending: &mut Vec<Msg>) -> Option<Msg> {
    match m {
        Msg::Applied { seq, cut_time_ns } => {
            rt.set(|s| {
                s.last_applied = Some(CycleInfo { seq, cut_time_ns });
                s.cycles_applied += 1;
                s.progress += 1;
            });
            None
        }
        Msg::Pong { .. } => None,
        // A cross-host group's round: the disk's task serves it between cycles.
        Msg::GroupRound {
            group,
            round,
            step: 2,
        } => {
            pending.push(crate::rounds::release(rt, group, round));
            None
        }
        Msg::GroupRound { group, round, step } => {
            let req = crate::rounds::RoundStep { group, round, step };
            let _ = rt.cmd.send(crate::owner::DiskCommand::GroupRound(req));
            None
        }
        other @ (Msg::CycleAck { .. }
        | Msg::CopyAck { .. }
        | Msg::ResyncAck { .. }
        | Msg::ResyncFinished { .. }
        | Msg::FailoverDone { .. }) => {
            rt.set(|s| s.progress += 1);
            Some(other)
        }
        other => Some(other),
    }
}

pub(crate) fn spawn_receiver(
    mut r: ReadHalf<BoxStream>,
    peer: String,
) -> mpsc::Receiver<Result<Msg, ReplError>> {
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let m = match proto::read_frame(&mut r).await {
                Ok(Frame::Control(Msg::Error { code, message, .. })) => Err(ReplError::Refused {
                    peer: peer.clone(),
                    code,
                    message,
                }),
                Ok(Frame::Control(m)) => Ok(m),
                Ok(_) => Err(ReplError::Protocol(format!("{peer} sent a data frame"))),
                Err(e) => Err(e.into()),
            };
            let end = m.is_err();
            if tx.send(m).await.is_err() || end {
                return;
            }
        }
    });
    rx
}

impl Session {
    /// Connects to `to` through `connector`, says Hello as `client`; returns the session
    /// and the server's certificate name.
    pub(crate) async fn connect(
        connector: &dyn Connect,
        to: &str,
        client: &str,
        max_rate: Option<u64>,
        compress_auto: bool,
    ) -> Result<(Self, Option<String>), ReplError> {
        let c = connector.connect(to).await?;
        let (mut stream, server_name) = (c.stream, c.server_name);
        let version = net::client_hello(&mut stream, client, to).await?;
        let (r, w) = tokio::io::split(stream);
        let s = Self {
            w: Wire::new(w, max_rate),
            rx: spawn_receiver(r, to.to_string()),
            peer: to.to_string(),
            last_sent: Instant::now(),
            last_heard: Instant::now(),
            comp: Compression::new(compress_auto),
            version,
            declared: None,
            pending: Vec::new(),
        };
        Ok((s, server_name))
    }
}
