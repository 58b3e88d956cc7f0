//! One protected disk's replication: connect, attach, copy if needed, then cycles — and on
//! failure, the retry rules.

use std::sync::Arc;
use std::time::{Duration, Instant};

use hrl::chain::list_logs;
use proto::{CycleInfo, EncodeOpts, Frame, Msg};
use tokio::io::{ReadHalf, WriteHalf};
use tokio::sync::mpsc;

use super::cycles::{CyclesEnd, run_cycles};
use super::jobs::JobStep;
use super::owner::Owner;
use super::ship::{Item, STALL, Wire, spawn_reader};
use super::state::{CopyPlan, log_dir};
use super::{Agent, DiskRt, lock};
use crate::backoff::{Backoff, Clock, SystemClock};
use crate::net::{self, ClientStream, ReplError};
use crate::status::JobState;

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

/// Why a session ended without an error.
enum Ended {
    /// Stop requested.
    Stopped,
}

/// Runs disk `rt` until it is stopped.
pub(crate) async fn run(agent: Arc<Agent>, rt: Arc<DiskRt>, mut own: Owner) {
    let clock = SystemClock;
    let mut backoff = Backoff::new(agent.opts.retry_unit);
    loop {
        if own.is_stopped() {
            return;
        }
        let progress = rt.snapshot().progress;
        let res = session(&agent, &rt, &mut own).await;
        // The schedule starts over only if the server confirmed real work in the session
        // (a staged cycle, a copy or resync checkpoint, ...): a server that accepts the
        // attach but fails every cycle (out of space) is retried 1, 2, 4, ... units apart.
        if rt.snapshot().progress != progress {
            backoff.reset();
        }
        rt.set(|s| s.connected = false);
        // Never leave a filesystem frozen behind a failed session (dropping thaws it, and
        // the requester hears that replication stopped).
        drop(own.frozen.take());
        match res {
            Ok(Ended::Stopped) => return,
            Err(ReplError::Refused {
                code: proto::ErrorCode::BrokenChain,
                message,
                ..
            }) if lock(&rt.prot).copy.done => {
                // The server lost the chain: a checksum resync of the whole disk repairs it.
                let why = format!("the server reports a broken chain ({message})");
                if let Err(e) = agent.require_resync(&rt, &why, None) {
                    tracing::error!("{e}");
                }
            }
            Err(e) => {
                let name = lock(&rt.prot).name.clone();
                let msg = format!("disk {name}: {e}");
                if e.recoverable() {
                    let retry = backoff.retry_at(clock.now_ns());
                    tracing::warn!("{msg}; retrying in {:?}", retry.delay);
                    rt.set(|s| {
                        s.error = Some(msg.clone());
                        s.critical = false;
                        s.action = None;
                        s.next_retry_ns = Some(retry.due_ns);
                    });
                    tokio::select! {
                        () = clock.sleep(retry.delay) => {}
                        () = own.stopped() => {
                            rt.set(|s| s.next_retry_ns = None);
                            return;
                        }
                    }
                    // The attempt starts: no longer waiting (the error stays until it
                    // attaches).
                    rt.set(|s| {
                        s.next_retry_ns = None;
                        s.retries += 1;
                    });
                } else {
                    let action = e.operator_action(&name);
                    match &action {
                        Some(a) => tracing::error!("{msg}; not retried: {a}"),
                        None => tracing::error!("{msg}; not retried: operator action needed"),
                    }
                    rt.set(|s| {
                        s.error = Some(msg.clone());
                        s.critical = true;
                        s.next_retry_ns = None;
                        s.action = action;
                    });
                    if let ReplError::Refused {
                        code: proto::ErrorCode::FailedOver,
                        message,
                        ..
                    } = &e
                    {
                        agent.record_failed_over_elsewhere(&rt, message);
                    }
                    agent.job_fail(&rt, &msg);
                    // Non-recoverable: wait for the operator (unprotect, or restart the agent).
                    own.stopped().await;
                    return;
                }
            }
        }
    }
}

pub(crate) struct Session {
    pub(crate) w: Wire<WriteHalf<ClientStream>>,
    rx: mpsc::Receiver<Result<Msg, ReplError>>,
    pub(crate) peer: String,
    pub(crate) last_sent: Instant,
    pub(super) last_heard: Instant,
    /// Whether cycle frames are compressed now (kept across the session's cycles).
    pub(crate) comp: super::ship::Compression,
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
    fn try_recv(&mut self, rt: &DiskRt) -> Result<Option<Msg>, ReplError> {
        loop {
            let m = match self.rx.try_recv() {
                Ok(m) => m?,
                Err(mpsc::error::TryRecvError::Empty) => return Ok(None),
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    return Err(ReplError::Net("connection closed".into()));
                }
            };
            self.last_heard = Instant::now();
            if let Some(m) = note(rt, m) {
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
            if let Some(m) = note(rt, m) {
                return Ok(m);
            }
        }
    }

    async fn expect_ack(&mut self, rt: &DiskRt, cursor: Option<u64>) -> Result<u64, ReplError> {
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
    async fn pending_refusal(&mut self) -> Option<ReplError> {
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
        self.last_sent = Instant::now();
        self.w.msg(m).await
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

/// Applies `Applied`/`Pong` to the status; returns any other message.
fn note(rt: &DiskRt, m: Msg) -> Option<Msg> {
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

fn spawn_receiver(
    mut r: ReadHalf<ClientStream>,
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

async fn session(agent: &Agent, rt: &DiskRt, own: &mut Owner) -> Result<Ended, ReplError> {
    let prot = lock(&rt.prot).clone();
    let size = rt.size;
    let cfg = agent.client_cfg.clone();
    let mut stream = net::connect(&prot.to, cfg, Duration::from_secs(10)).await?;
    let server_name = pki::peer_name(stream.get_ref().1);
    net::client_hello(&mut stream, &agent.name, &prot.to).await?;
    let (r, w) = tokio::io::split(stream);
    let mut s = Session {
        w: Wire::new(w, agent.opts.max_rate),
        rx: spawn_receiver(r, prot.to.clone()),
        peer: prot.to.clone(),
        last_sent: Instant::now(),
        last_heard: Instant::now(),
        comp: super::ship::Compression::new(agent.opts.compress_auto),
    };
    let res = async {
        s.msg(match prot.reverse {
            Some(r) => Msg::AttachReverse {
                disk: prot.name.clone(),
                disk_id: prot.disk_id_bytes(),
                size,
                block_size: rt.block_size,
                fork_seq: r.fork_seq,
                from_seq: prot.copy.from_seq,
                discard_target_changes: r.discard_target_changes,
            },
            None => Msg::Attach {
                disk: prot.name.clone(),
                disk_id: prot.disk_id_bytes(),
                size,
                block_size: rt.block_size,
            },
        })
        .await?;
        let (server_copy, applied, mut expected) = match s.answer(rt).await? {
            Msg::Attached {
                copy,
                applied,
                expected_seq,
            } => (copy, applied, expected_seq),
            m => {
                return Err(ReplError::Protocol(format!(
                    "{} answered Attach with {}",
                    prot.to,
                    m.name()
                )));
            }
        };
        rt.set(|st| {
            st.connected = true;
            st.error = None;
            st.critical = false;
            if applied.is_some() {
                st.last_applied = applied;
            }
        });
        tracing::info!(disk = %prot.name, server = %prot.to, "attached");
        record_server_name(agent, rt, server_name.as_deref());
        // The server is the authority on what it holds: if it lost the copy (a new store), or it
        // belongs to another copy, start over.
        {
            let mut p = rt.prot_mut();
            let server_ok = server_copy
                .as_ref()
                .is_some_and(|c| c.from_seq == p.copy.from_seq && (c.done || !p.copy.done));
            if let Some(c) = &server_copy
                && c.done
                && c.from_seq == p.copy.from_seq
                && !p.copy.done
                && !p.copy.restart
            {
                // The server completed the copy; its last acknowledgement was lost with the
                // connection.
                p.copy.done = true;
                let _ = p.save(&agent.opts.state);
            } else if !server_ok && (p.copy.done || server_copy.is_some()) {
                tracing::warn!(disk = %p.name, "the server's copy does not match ours: copying again");
                p.copy.done = false;
                p.copy.restart = true;
                let _ = p.save(&agent.opts.state);
            }
        }
        // Logs piled up past the threshold (a long outage): a resync of their ranges is cheaper
        // than shipping them, and drops them at once.
        if lock(&rt.prot).copy.done && lock(&rt.prot).resync.is_none() {
            check_log_threshold(agent, rt, expected)?;
        }
        loop {
            let plan = lock(&rt.prot).copy;
            if !plan.done {
                let cursor = if plan.restart {
                    None
                } else {
                    server_copy
                        .as_ref()
                        .filter(|c| c.from_seq == plan.from_seq && !c.done)
                        .map(|c| c.cursor)
                };
                if run_copy(agent, rt, &mut s, plan, cursor, own).await? {
                    return Ok(Ended::Stopped);
                }
                expected = Some(plan.from_seq);
            }
            if lock(&rt.prot).resync.is_some() {
                match super::resync::run(agent, rt, &mut s, own).await? {
                    super::resync::ResyncEnd::Stopped => {
                        let _ = s.msg(Msg::Bye).await;
                        s.w.shutdown().await;
                        return Ok(Ended::Stopped);
                    }
                    super::resync::ResyncEnd::Done(from) => expected = Some(from),
                    super::resync::ResyncEnd::Again => {}
                }
                continue;
            }
            match run_cycles(agent, rt, &mut s, &mut expected, own).await? {
                CyclesEnd::Stopped => {
                    let _ = s.msg(Msg::Bye).await;
                    s.w.shutdown().await;
                    return Ok(Ended::Stopped);
                }
                CyclesEnd::FailedOver => {
                    s.w.shutdown().await;
                    return Ok(Ended::Stopped);
                }
                CyclesEnd::Resync(why) => {
                    if let Some(why) = why {
                        agent.require_resync(rt, &why, None)?;
                    }
                }
            }
        }
    }
    .await;
    match res {
        // The server often says why (NoSpace, ...) and closes while we are still sending:
        // its refusal is then waiting behind the broken pipe.
        Err(ReplError::Net(n)) => Err(s.pending_refusal().await.unwrap_or(ReplError::Net(n))),
        r => r,
    }
}

/// Records the certificate name of the server the disk attached to: after a failover, the
/// client this site's server lets adopt the disk for reverse replication
/// (`server/reverse.rs`).
fn record_server_name(agent: &Agent, rt: &DiskRt, name: Option<&str>) {
    let Some(name) = name else { return };
    let mut p = rt.prot_mut();
    if p.server_name.as_deref() == Some(name) {
        return;
    }
    p.server_name = Some(name.to_string());
    if let Err(e) = p.save(&agent.opts.state) {
        tracing::warn!(disk = %p.name, "recording the server's name: {e}");
    }
}

/// Copies the whole device (from `cursor`), then tells the server the copy is done.
/// Returns true if stopped.
async fn run_copy(
    agent: &Agent,
    rt: &DiskRt,
    s: &mut Session,
    plan: CopyPlan,
    cursor: Option<u64>,
    own: &mut Owner,
) -> Result<bool, ReplError> {
    let size = rt.size;
    let name = lock(&rt.prot).name.clone();
    s.msg(Msg::CopyBegin {
        from_seq: plan.from_seq,
        restart: cursor.is_none(),
    })
    .await?;
    let start = s.expect_ack(rt, None).await?;
    if start > size || (start % GRANULE != 0 && start != size) {
        return Err(ReplError::Protocol(format!(
            "the server's copy cursor {start} is not a valid position on the {size}-byte disk"
        )));
    }
    if plan.restart {
        let mut p = rt.prot_mut();
        p.copy.restart = false;
        p.save(&agent.opts.state)
            .map_err(|e| ReplError::Local(format!("disk {name}: saving state: {e}")))?;
    }
    tracing::info!(disk = %name, from = start, size, "initial copy");
    agent.job_step(rt, JobStep::InitialReplication, start, size);
    rt.set(|st| {
        st.copy = Some(super::snapshot::CopyRun {
            cursor: start,
            size,
            started: Instant::now(),
            started_cursor: start,
            done: false,
        });
    });
    let mut ranges = Vec::new();
    let mut at = start;
    while at < size {
        let end = (at + CHECKPOINT_BYTES).min(size);
        ranges.push((at, end));
        at = end;
    }
    let device = lock(&rt.prot).device.clone();
    let mut rx = spawn_reader(device, size, ranges, agent.encode_opts());
    let mut in_flight = 0usize;
    loop {
        let item = tokio::select! {
            i = rx.recv() => i,
            () = own.stopped() => return Ok(true),
        };
        match item {
            Some(Item::Frame { bytes, data, zero }) => {
                send_frame(s, rt, &bytes, data, zero).await?;
                // Take acknowledgements as they come, for an accurate progress.
                while in_flight > 0
                    && let Some(m) = s.try_recv(rt)?
                {
                    match m {
                        Msg::CopyAck { cursor } => {
                            in_flight -= 1;
                            copy_progress(agent, rt, cursor, size);
                        }
                        m => {
                            return Err(ReplError::Protocol(format!(
                                "{} sent {} during the copy",
                                s.peer,
                                m.name()
                            )));
                        }
                    }
                }
            }
            Some(Item::Mark(c)) => {
                s.msg(Msg::CopyCheckpoint { cursor: c }).await?;
                in_flight += 1;
                while in_flight > CHECKPOINTS_IN_FLIGHT {
                    let acked = s.expect_ack(rt, None).await?;
                    in_flight -= 1;
                    copy_progress(agent, rt, acked, size);
                }
            }
            Some(Item::Failed(e)) => return Err(ReplError::Local(format!("disk {name}: {e}"))),
            Some(Item::Done { .. }) | None => break,
        }
    }
    while in_flight > 0 {
        let acked = s.expect_ack(rt, None).await?;
        in_flight -= 1;
        copy_progress(agent, rt, acked, size);
    }
    s.msg(Msg::CopyDone {
        from_seq: plan.from_seq,
    })
    .await?;
    s.expect_ack(rt, Some(size)).await?;
    {
        let mut p = rt.prot_mut();
        p.copy.done = true;
        p.save(&agent.opts.state)
            .map_err(|e| ReplError::Local(format!("disk {name}: saving state: {e}")))?;
    }
    rt.set(|st| {
        if let Some(c) = &mut st.copy {
            c.cursor = size;
            c.done = true;
        }
    });
    tracing::info!(disk = %name, "initial copy complete; shipping the changes made during it");
    agent.job_step(rt, JobStep::ShipChangesDuringCopy, 0, 0);
    Ok(false)
}

fn copy_progress(agent: &Agent, rt: &DiskRt, cursor: u64, size: u64) {
    rt.set(|st| {
        if let Some(c) = &mut st.copy {
            c.cursor = cursor;
        }
    });
    agent.job_step(rt, JobStep::InitialReplication, cursor, size);
}

/// Plans a resync when the pending logs name more than the threshold of the disk.
fn check_log_threshold(agent: &Agent, rt: &DiskRt, expected: Option<u64>) -> Result<(), ReplError> {
    let pct = agent.opts.resync_log_threshold_pct;
    if pct >= 100 {
        return Ok(());
    }
    // What piled up while disconnected is still in the open log: seal it to count it.
    if agent.records_since_cut(rt) > 0 {
        agent.cut(rt)?;
    }
    let name = lock(&rt.prot).name.clone();
    let from = lock(&rt.prot).copy.from_seq.max(expected.unwrap_or(0));
    let logs = log_dir(&agent.opts.state, &name);
    let listed = list_logs(&logs)
        .map_err(|e| ReplError::Local(format!("disk {name}: listing logs: {e}")))?;
    let sealed = &listed[..listed.len().saturating_sub(1)];
    let mut bytes = 0u64;
    for (seq, path) in sealed {
        if seq.0 >= from
            && let Some(b) = rt.cached_bytes(seq.0, path, rt.size)
        {
            bytes += b;
        }
    }
    let limit = rt.size / 100 * u64::from(pct);
    if bytes > limit {
        agent.require_resync(
            rt,
            &format!(
                "the pending logs name {bytes} bytes, more than {pct} % of the {}-byte disk",
                rt.size
            ),
            Some(Vec::new()),
        )?;
    }
    Ok(())
}

impl Agent {
    pub(crate) fn encode_opts(&self) -> EncodeOpts {
        EncodeOpts {
            compress_level: self.opts.compress_level,
        }
    }

    /// Marks the enable-protection job finished once the first cycles after the copy shipped.
    pub(crate) fn job_done_if_caught_up(&self, rt: &DiskRt) {
        let done = lock(&rt.prot).copy.done;
        if done {
            self.job_finish(rt, JobState::Succeeded, None);
        }
    }
}
