//! One protected disk's replication: connect, attach, copy if needed, then cycles — and on
//! failure, the retry rules.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hrl::chain::list_logs;
use proto::{CycleInfo, EncodeOpts, Frame, Msg};
use tokio::io::{ReadHalf, WriteHalf};
use tokio::sync::mpsc;

use super::ship::{Item, STALL, Wire, spawn_reader};
use super::state::{CopyPlan, log_dir};
use super::{Agent, DiskRt, lock};
use crate::backoff::{Backoff, Clock, SystemClock};
use crate::config::Frequency;
use crate::cycle::read_cycle;
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
pub(crate) async fn run(agent: Arc<Agent>, rt: Arc<DiskRt>) {
    let clock = SystemClock;
    let mut backoff = Backoff::new(agent.opts.retry_unit);
    let mut stop = rt.stop.subscribe();
    loop {
        if *stop.borrow() {
            return;
        }
        let progress = lock(&rt.st).progress;
        let res = session(&agent, &rt).await;
        // The schedule starts over only if the server confirmed real work in the session
        // (a staged cycle, a copy or resync checkpoint, ...): a server that accepts the
        // attach but fails every cycle (out of space) is retried 1, 2, 4, ... units apart.
        if lock(&rt.st).progress != progress {
            backoff.reset();
        }
        rt.set(|s| s.connected = false);
        // Never leave a filesystem frozen behind a failed session (dropping thaws it, and
        // the requester hears that replication stopped).
        drop(lock(&rt.frozen).take());
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
                        _ = stop.changed() => {
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
                    let _ = stop.changed().await;
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
    last_heard: Instant,
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

async fn session(agent: &Agent, rt: &DiskRt) -> Result<Ended, ReplError> {
    let prot = lock(&rt.prot).clone();
    let size = rt.size;
    let cfg = agent.client_cfg.clone();
    let mut stream = net::connect(&prot.to, cfg, Duration::from_secs(10)).await?;
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
        // The server is the authority on what it holds: if it lost the copy (a new store), or it
        // belongs to another copy, start over.
        {
            let mut p = lock(&rt.prot);
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
        let mut stop = rt.stop.subscribe();
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
                if run_copy(agent, rt, &mut s, plan, cursor, &mut stop).await? {
                    return Ok(Ended::Stopped);
                }
                expected = Some(plan.from_seq);
            }
            if lock(&rt.prot).resync.is_some() {
                match super::resync::run(agent, rt, &mut s, &mut stop).await? {
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
            match run_cycles(agent, rt, &mut s, &mut expected, &mut stop).await? {
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

/// Copies the whole device (from `cursor`), then tells the server the copy is done.
/// Returns true if stopped.
async fn run_copy(
    agent: &Agent,
    rt: &DiskRt,
    s: &mut Session,
    plan: CopyPlan,
    cursor: Option<u64>,
    stop: &mut tokio::sync::watch::Receiver<bool>,
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
        let mut p = lock(&rt.prot);
        p.copy.restart = false;
        p.save(&agent.opts.state)
            .map_err(|e| ReplError::Local(format!("disk {name}: saving state: {e}")))?;
    }
    tracing::info!(disk = %name, from = start, size, "initial copy");
    agent.job_step(rt, "initial-replication", start, size);
    rt.set(|st| {
        st.copy = Some(super::CopyRun {
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
            _ = stop.changed() => return Ok(true),
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
        let mut p = lock(&rt.prot);
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
    agent.job_step(rt, "ship-changes-during-copy", 0, 0);
    Ok(false)
}

fn copy_progress(agent: &Agent, rt: &DiskRt, cursor: u64, size: u64) {
    rt.set(|st| {
        if let Some(c) = &mut st.copy {
            c.cursor = cursor;
        }
    });
    agent.job_step(rt, "initial-replication", cursor, size);
}

pub(crate) enum CyclesEnd {
    Stopped,
    /// A planned failover activated the replica on the secondary: replication of this disk
    /// from here is over.
    FailedOver,
    /// A resync is required: planned already (`None`), or for this reason, whole disk.
    Resync(Option<String>),
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

/// Ships sealed logs as cycles, cutting new ones at the disk's frequency.
async fn run_cycles(
    agent: &Agent,
    rt: &DiskRt,
    s: &mut Session,
    expected: &mut Option<u64>,
    stop: &mut tokio::sync::watch::Receiver<bool>,
) -> Result<CyclesEnd, ReplError> {
    let (name, device, frequency) = {
        let p = lock(&rt.prot);
        (p.name.clone(), p.device.clone(), p.frequency)
    };
    let mut next_cut = Instant::now();
    let app_every = lock(&rt.prot)
        .app_consistent_every_secs
        .map(Duration::from_secs);
    let mut next_app = app_every.map(|d| Instant::now() + d);
    loop {
        // 1. Ship every sealed log, oldest first.
        if let Some(end) = ship_sealed(agent, rt, s, expected, stop).await? {
            return Ok(end);
        }
        agent.job_done_if_caught_up(rt);
        // 2. Wait for the next cut.
        loop {
            if *stop.borrow() {
                return Ok(CyclesEnd::Stopped);
            }
            if lock(&rt.prot).resync.is_some() || !lock(&rt.prot).copy.done {
                // A resync, or a full copy (`sitrep failback --mode full-download`), is
                // required: the session loop runs it.
                return Ok(CyclesEnd::Resync(None));
            }
            let planned = lock(&rt.planned_req).take();
            if let Some(req) = planned {
                if super::planned::run(agent, rt, s, expected, stop, req).await? {
                    return Ok(CyclesEnd::FailedOver);
                }
                break;
            }
            let verify = lock(&rt.verify_req).take();
            if let Some(v) = verify {
                let r = super::resync::verify(agent, rt, s, stop, *expected).await;
                let (reply, res) = match r {
                    Ok(rep) => (Ok(rep), Ok(())),
                    Err(e) => (Err(e.to_string()), Err(e)),
                };
                let _ = v.reply.send(reply);
                res?;
                break;
            }
            let idle_for_point = lock(&rt.point_req).is_none();
            if let Some(at) = next_app
                && Instant::now() >= at
                && idle_for_point
            {
                next_app = app_every.map(|d| Instant::now() + d);
                let (tx, rx) = tokio::sync::oneshot::channel();
                *lock(&rt.point_req) = Some(super::PointRequest {
                    reply: tx,
                    max_freeze: SCHEDULED_MAX_FREEZE,
                    precut: false,
                });
                let disk = name.clone();
                tokio::spawn(async move {
                    match rx.await {
                        Ok(Ok(r)) => tracing::info!(
                            disk = %disk, seq = r.seq, freeze_ms = r.freeze_ms,
                            "scheduled app-consistent point"
                        ),
                        Ok(Err(e)) => tracing::warn!("scheduled app-consistent point: {e}"),
                        Err(_) => {
                            tracing::warn!(disk = %disk, "scheduled app-consistent point abandoned")
                        }
                    }
                });
            }
            // (Taken in its own statement: the guard must not live into the block, which
            // locks it again.)
            let req = lock(&rt.point_req).take();
            if let Some(req) = req {
                if !req.precut && agent.records_since_cut(rt) > 0 {
                    // Ship what is pending first, so the frozen cycle is small.
                    *lock(&rt.point_req) = Some(super::PointRequest {
                        precut: true,
                        ..req
                    });
                    agent.cut(rt)?;
                    break;
                }
                if freeze_and_cut(agent, rt, &device, req)? {
                    break;
                }
                continue;
            }
            // A requested cut (`sitrep wait`) is made even if nothing seems recorded: the
            // tracker's drain and the log thread's queue are ordered before the seal, so the
            // sealed log holds every change completed before the request.
            let forced = rt.take_cut_request();
            let records = agent.records_since_cut(rt);
            let due = match frequency {
                Frequency::Continuous => true,
                Frequency::Every(_) => Instant::now() >= next_cut,
            };
            if forced || (records > 0 && due) {
                let sealed = agent.cut(rt)?;
                if let Frequency::Every(d) = frequency {
                    next_cut = Instant::now() + d;
                }
                tracing::debug!(disk = %name, seq = sealed, "cycle cut");
                break;
            }
            if s.last_heard.elapsed() > PING_EVERY + STALL {
                return Err(ReplError::Net(format!(
                    "{}: silent for {:?} (pings unanswered)",
                    s.peer,
                    s.last_heard.elapsed()
                )));
            }
            if s.last_sent.elapsed() > PING_EVERY {
                s.msg(Msg::Ping { nonce: 0 }).await?;
            }
            // Drain replies (Applied, Pong) while idle.
            tokio::select! {
                m = s.recv(rt) => {
                    let m = m?;
                    return Err(ReplError::Protocol(format!("{} sent {} unprompted", s.peer, m.name())));
                }
                () = tokio::time::sleep(Duration::from_millis(50)) => {}
                _ = stop.changed() => return Ok(CyclesEnd::Stopped),
            }
        }
    }
}

/// Ships every sealed log of the disk, oldest first (logs covered by the copy or already
/// acknowledged are deleted). `Some` when the caller must end the cycles: stopped, or a
/// resync is needed (a missing log, a tracking gap).
pub(crate) async fn ship_sealed(
    agent: &Agent,
    rt: &DiskRt,
    s: &mut Session,
    expected: &mut Option<u64>,
    stop: &mut tokio::sync::watch::Receiver<bool>,
) -> Result<Option<CyclesEnd>, ReplError> {
    let (name, device, from_seq) = {
        let p = lock(&rt.prot);
        (p.name.clone(), p.device.clone(), p.copy.from_seq)
    };
    let logs = log_dir(&agent.opts.state, &name);
    let listed = list_logs(&logs)
        .map_err(|e| ReplError::Local(format!("disk {name}: listing logs: {e}")))?;
    let sealed = &listed[..listed.len().saturating_sub(1)];
    let mut pending_bytes = 0u64;
    let mut pending = Vec::new();
    for (seq, path) in sealed {
        let seq = seq.0;
        if seq < from_seq || expected.is_some_and(|e| seq < e) {
            // Covered by the copy, or acknowledged by the server.
            let _ = std::fs::remove_file(path);
            continue;
        }
        pending.push((seq, path.clone()));
    }
    for (seq, path) in &pending {
        if let Some(c) = rt.cached_bytes(*seq, path, rt.size) {
            pending_bytes += c;
        }
    }
    rt.set(|st| {
        st.pending_logs = pending.len();
        st.backlog_bytes = pending_bytes;
    });
    for (seq, path) in pending {
        if let Some(e) = *expected
            && seq != e
        {
            return Ok(Some(CyclesEnd::Resync(Some(format!(
                "log {seq} follows acknowledged cycle {} (logs in between are missing)",
                e.saturating_sub(1)
            )))));
        }
        let cyc = tokio::task::block_in_place(|| read_cycle(&path, rt.size, GRANULE))
            .map_err(|e| ReplError::Local(format!("disk {name}: {e}")))?;
        if let Some(why) = cyc.whole_disk_gap {
            return Ok(Some(CyclesEnd::Resync(Some(format!(
                "log {seq} records a tracking gap ({why})"
            )))));
        }
        ship_cycle(agent, rt, s, &device, &cyc, stop).await?;
        let _ = std::fs::remove_file(&path);
        rt.forget_cached(seq);
        *expected = Some(seq + 1);
        rt.set(|st| {
            st.last_shipped_seq = Some(seq);
            st.pending_logs = st.pending_logs.saturating_sub(1);
            st.backlog_bytes = st.backlog_bytes.saturating_sub(cyc.bytes);
        });
        if *stop.borrow() {
            return Ok(Some(CyclesEnd::Stopped));
        }
    }
    Ok(None)
}

async fn ship_cycle(
    agent: &Agent,
    rt: &DiskRt,
    s: &mut Session,
    device: &Path,
    cyc: &crate::cycle::CycleExtents,
    stop: &mut tokio::sync::watch::Receiver<bool>,
) -> Result<(), ReplError> {
    // The cut's instant if this agent cut the log (exact or not); else the seal time (a log
    // sealed by auto-rotation or crash recovery: never a point).
    let cut = lock(&rt.cuts).get(&cyc.seq).copied();
    let t0 = Instant::now();
    s.msg(Msg::CycleBegin {
        seq: cyc.seq,
        log_id: cyc.log_id,
        cut_time_ns: cut.map_or(cyc.cut_time_ns, |c| c.0),
        extents: cyc.ranges.len() as u64,
        data_bytes: cyc.bytes,
    })
    .await?;
    let mut rx = super::ship::spawn_readers(
        device.to_path_buf(),
        rt.size,
        cyc.ranges.clone(),
        agent.encode_opts(),
        super::ship::CYCLE_READERS,
        Some(s.comp.flag()),
    );
    let (frames, data_bytes) = loop {
        let waiting = Instant::now();
        let item = tokio::select! {
            i = rx.recv() => i,
            _ = stop.changed() => return Err(ReplError::Local("stopping".into())),
        };
        match item {
            Some(Item::Frame { bytes, data, zero }) => {
                let (waited, sending) = (waiting.elapsed(), Instant::now());
                send_frame(s, rt, &bytes, data, zero).await?;
                s.comp.note(waited, sending.elapsed());
                thaw_if(rt, cyc.seq, true);
            }
            Some(Item::Mark(_)) => {}
            Some(Item::Failed(e)) => return Err(ReplError::Local(e)),
            Some(Item::Done { frames, data_bytes }) => {
                // Every range of the cycle is read: tag the log here, so the changes
                // recorded between the cut and now can be told from later ones — and only
                // then thaw a frozen filesystem, whose writes would otherwise race the tag.
                let tagged = agent.mark(rt, cyc.seq);
                thaw_if(rt, cyc.seq, false);
                tagged?;
                break (frames, data_bytes);
            }
            None => return Err(ReplError::Local("device reader stopped".into())),
        }
    };
    let t_sent = t0.elapsed();
    s.msg(Msg::CycleEnd {
        seq: cyc.seq,
        frames,
        data_bytes,
    })
    .await?;
    match s.answer(rt).await? {
        Msg::CycleAck { seq } if seq == cyc.seq => {
            let t_ack = t0.elapsed();
            let logs = log_dir(&agent.opts.state, &lock(&rt.prot).name);
            let exact = cut.is_some_and(|c| c.1) && cyc.seq >= lock(&rt.prot).points_from_seq;
            let consistent = agent.opts.offer_every_cycle
                || (exact
                    && tokio::task::block_in_place(|| {
                        crate::cycle::raced(&logs, cyc.seq, &cyc.ranges)
                    })
                    .map_err(|e| ReplError::Local(format!("{}: {e}", logs.display())))?
                        == Some(false));
            lock(&rt.cuts).remove(&cyc.seq);
            let app = lock(&rt.frozen).take_if(|f| f.seq == cyc.seq);
            let label = app.as_ref().map(|f| {
                if f.frozen.is_none() && f.freeze_ms > f.max_freeze.as_secs_f64() * 1000.0 {
                    String::new()
                } else {
                    f.label.clone()
                }
            });
            let label = label.filter(|l| !l.is_empty());
            if let Some(f) = app {
                let report = crate::status::AppPointReport {
                    disk: lock(&rt.prot).name.clone(),
                    seq: cyc.seq,
                    cut_time_unix_ns: cut.map_or(cyc.cut_time_ns, |c| c.0),
                    label: f.label.clone(),
                    freeze_ms: f.freeze_ms,
                    consistent: consistent && label.is_some(),
                };
                let _ = f.reply.send(if report.consistent {
                    Ok(report)
                } else if label.is_none() {
                    Err(format!(
                        "disk {}: reading the frozen cycle took longer than the {} ms freeze limit; no app-consistent point",
                        report.disk,
                        f.max_freeze.as_millis()
                    ))
                } else {
                    Err(format!(
                        "disk {}: the frozen cycle {} could not be proved consistent; no app-consistent point",
                        report.disk, cyc.seq
                    ))
                });
            }
            tracing::debug!(
                disk = %lock(&rt.prot).name, seq = cyc.seq, extents = cyc.ranges.len(),
                bytes = cyc.bytes, sent_ms = t_sent.as_millis(), acked_ms = t_ack.as_millis(),
                judged_ms = t0.elapsed().as_millis(), "cycle shipped"
            );
            rt.set(|st| {
                st.cycles_judged += 1;
                if consistent {
                    st.cycles_consistent += 1;
                }
            });
            s.msg(Msg::Verdict {
                seq: cyc.seq,
                crash_consistent: consistent,
                label,
            })
            .await
        }
        m => Err(ReplError::Protocol(format!(
            "{} sent {} where CycleAck {} was expected",
            s.peer,
            m.name(),
            cyc.seq
        ))),
    }
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

/// Freezes the filesystem mounted from `device` and cuts the cycle that will be read while it
/// stays frozen. Returns true if it cut (the caller ships the cycle), false if it answered
/// the request with an error instead.
fn freeze_and_cut(
    agent: &Agent,
    rt: &DiskRt,
    device: &Path,
    req: super::PointRequest,
) -> Result<bool, ReplError> {
    let (name, pre, post) = {
        let p = lock(&rt.prot);
        (p.name.clone(), p.pre_hook.clone(), p.post_hook.clone())
    };
    let fail = |req: super::PointRequest, why: String| {
        let _ = req.reply.send(Err(format!("disk {name}: {why}")));
        Ok(false)
    };
    if let Some(pre) = pre {
        let quiesced = match super::freeze::Frozen::hooks(&pre, post) {
            Ok(q) => q,
            Err(e) => return fail(req, e.to_string()),
        };
        tracing::info!(disk = %name, "pre-hook ran for an app-consistent point");
        return cut_quiesced(agent, rt, req, quiesced, format!("pre-hook `{pre}`"));
    }
    let mount = match super::freeze::mount_point(device) {
        Ok(Some(m)) => m,
        Ok(None) => {
            return fail(
                req,
                format!(
                    "no filesystem is mounted from {} and no --pre-hook is set: nothing to quiesce",
                    device.display()
                ),
            );
        }
        Err(e) => return fail(req, format!("reading the mounts: {e}")),
    };
    let frozen = match super::freeze::Frozen::new(&mount) {
        Ok(f) => f,
        Err(e) => return fail(req, e.to_string()),
    };
    tracing::info!(disk = %name, mount = %mount.display(), "frozen for an app-consistent point");
    let label = format!("fsfreeze {}", mount.display());
    cut_quiesced(agent, rt, req, frozen, label)
}

/// Cuts the cycle to be read while the disk stays quiesced by `frozen`.
fn cut_quiesced(
    agent: &Agent,
    rt: &DiskRt,
    req: super::PointRequest,
    frozen: super::freeze::Frozen,
    label: String,
) -> Result<bool, ReplError> {
    let seq = match agent.cut(rt) {
        Ok(s) => s,
        Err(e) => {
            drop(frozen);
            let name = lock(&rt.prot).name.clone();
            let _ = req.reply.send(Err(format!("disk {name}: {e}")));
            return Err(e);
        }
    };
    *lock(&rt.frozen) = Some(super::FrozenCycle {
        seq,
        frozen: Some(frozen),
        label,
        freeze_ms: 0.0,
        max_freeze: req.max_freeze,
        reply: req.reply,
    });
    Ok(true)
}

/// Thaws the filesystem frozen for cycle `seq`: when its reads are done, or (`early`) once it
/// has been frozen longer than allowed.
fn thaw_if(rt: &DiskRt, seq: u64, early: bool) {
    let mut g = lock(&rt.frozen);
    if let Some(f) = g.as_mut()
        && f.seq == seq
        && let Some(fz) = f
            .frozen
            .take_if(|fz| !early || fz.frozen_for() > f.max_freeze)
    {
        f.freeze_ms = fz.thaw();
        if early {
            tracing::warn!(
                "thawed after {:.0} ms, past the limit: the point will not be app-consistent",
                f.freeze_ms
            );
        }
    }
}
