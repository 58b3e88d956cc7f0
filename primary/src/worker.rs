//! One protected disk's task: the retry loop around its sessions, and each session's course —
//! connect and attach, then the copy, the resync, the cycles and the requests they hand back
//! (verify, planned failover), in one place. Each phase lives in its own file and knows
//! none of the others (`copy`, `resync`, `cycles`, `planned`; `session` and `sealed` below
//! them).

use std::sync::Arc;

use hrl::chain::list_logs;
use proto::{CopyState, EncodeOpts, Msg};

use super::copy::run_copy;
use super::cycles::{CycleTimers, CyclesEnd, run_cycles};
use super::owner::{Owner, VerifyRequest};
use super::reason::ResyncCause;
use super::resync::ResyncEnd;
use super::session::Session;
pub use super::session::{
    CHECKPOINT_BYTES, CHECKPOINTS_IN_FLIGHT, GRANULE, PING_EVERY, SCHEDULED_MAX_FREEZE,
};
use super::state::log_dir;
use super::{Agent, DiskRt, lock};
use crate::backoff::{self, Backoff};
use base::net::ReplError;
use base::status::JobState;

/// Why a session ended without an error.
enum Ended {
    /// Stop requested.
    Stopped,
}

/// Runs disk `rt` until it is stopped.
pub(crate) async fn run(agent: Arc<Agent>, rt: Arc<DiskRt>, mut own: Owner) {
    let clock = agent.clock.clone();
    let mut backoff = Backoff::new(agent.opts.retry_unit);
    let quick_until = clock
        .now_ns()
        .saturating_add(u64::try_from(backoff::QUICK_WINDOW.as_nanos()).unwrap_or(u64::MAX));
    let quick_step = backoff::QUICK_STEP.min(agent.opts.retry_unit);
    // Whether a session of this disk ever reached the server (see `backoff::QUICK_STEP`).
    let mut reached = false;
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
        reached |= rt.snapshot().connected;
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
                let why = ResyncCause::BrokenChain { message };
                if let Err(e) = agent.require_resync(&rt, &why, None) {
                    tracing::error!("{e}");
                }
            }
            Err(e) => {
                let name = lock(&rt.prot).name.clone();
                let msg = format!("disk {name}: {e}");
                if e.recoverable() {
                    let now = clock.now_ns();
                    let quick = !reached && now < quick_until && matches!(e, ReplError::Net(_));
                    let retry = if quick {
                        backoff.quick_retry_at(now, quick_step)
                    } else {
                        backoff.retry_at(now)
                    };
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

async fn session(agent: &Agent, rt: &DiskRt, own: &mut Owner) -> Result<Ended, ReplError> {
    let prot = lock(&rt.prot).clone();
    let (mut s, server_name) = Session::connect(
        agent.connector.as_ref(),
        &prot.to,
        &agent.name,
        agent.opts.max_rate,
        agent.opts.compress_auto,
    )
    .await?;
    let res = async {
        let (server_copy, expected) =
            attach(agent, rt, &mut s, &prot, server_name.as_deref()).await?;
        drive(agent, rt, &mut s, server_copy, expected, own).await
    }
    .await;
    match res {
        // The server often says why (NoSpace, ...) and closes while we are still sending:
        // its refusal is then waiting behind the broken pipe.
        Err(ReplError::Net(n)) => Err(s.pending_refusal().await.unwrap_or(ReplError::Net(n))),
        r => r,
    }
}

/// Attaches the disk; returns the server's copy and the cycle it expects next.
async fn attach(
    agent: &Agent,
    rt: &DiskRt,
    s: &mut Session,
    prot: &super::state::Protection,
    server_name: Option<&str>,
) -> Result<(Option<CopyState>, Option<u64>), ReplError> {
    let size = rt.size;
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
    let (server_copy, applied, expected) = match s.answer(rt).await? {
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
    // Protocol 3: the disk's recovery-point policy, on every attach (the server keeps it
    // and enforces it within its own floor). A v2 server keeps its defaults.
    if s.version >= 3 {
        s.msg(Msg::PointPolicy {
            crash_points_every_ns: prot.points.crash_points_every_ns(),
            retain_ns: prot.points.retain_ns(),
        })
        .await?;
    }
    // Protocol 4: the disk's point storage cap right after (0: none); a v3 server keeps no
    // cap.
    if s.version >= 4 {
        s.msg(Msg::PointStorage {
            max_bytes: prot.points.max_point_storage_bytes.unwrap_or(0),
        })
        .await?;
    }
    // Protocol 5: the disk's consistency group (a cross-host group's rounds reach it).
    if s.version >= 5 {
        s.msg(Msg::GroupMember {
            group: prot.group.clone(),
        })
        .await?;
        s.declared = Some(prot.group.clone());
    }
    record_server_name(agent, rt, server_name);
    reconcile_copy(agent, rt, server_copy.as_ref());
    // Logs piled up past the threshold (a long outage): a resync of their ranges is cheaper
    // than shipping them, and drops them at once.
    if lock(&rt.prot).copy.done && lock(&rt.prot).resync.is_none() {
        check_log_threshold(agent, rt, expected)?;
    }
    Ok((server_copy, expected))
}

/// The server is the authority on what it holds: if it lost the copy (a new store), or it
/// belongs to another copy, start over.
fn reconcile_copy(agent: &Agent, rt: &DiskRt, server_copy: Option<&CopyState>) {
    let mut p = rt.prot_mut();
    let server_ok =
        server_copy.is_some_and(|c| c.from_seq == p.copy.from_seq && (c.done || !p.copy.done));
    if let Some(c) = server_copy
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

/// Runs the session's phases until it stops, fails over, or fails.
async fn drive(
    agent: &Agent,
    rt: &DiskRt,
    s: &mut Session,
    server_copy: Option<CopyState>,
    mut expected: Option<u64>,
    own: &mut Owner,
) -> Result<Ended, ReplError> {
    // Kept while the cycles hand back requests, new after a copy or a resync.
    let mut timers: Option<CycleTimers> = None;
    loop {
        let plan = lock(&rt.prot).copy;
        if !plan.done {
            timers = None;
            let cursor = if plan.restart {
                None
            } else {
                server_copy
                    .as_ref()
                    .filter(|c| c.from_seq == plan.from_seq && !c.done)
                    .map(|c| c.cursor)
            };
            if run_copy(agent, rt, s, plan, cursor, own).await? {
                return Ok(Ended::Stopped);
            }
            expected = Some(plan.from_seq);
        }
        if lock(&rt.prot).resync.is_some() {
            timers = None;
            match super::resync::run(agent, rt, s, own).await? {
                ResyncEnd::Stopped => return bye(s).await,
                ResyncEnd::Done(from) => expected = Some(from),
                ResyncEnd::Again => {}
            }
            continue;
        }
        let t = timers.get_or_insert_with(|| CycleTimers::new(rt));
        match run_cycles(agent, rt, s, &mut expected, own, t).await? {
            CyclesEnd::Stopped => return bye(s).await,
            CyclesEnd::Resync(why) => {
                timers = None;
                if let Some(why) = why {
                    agent.require_resync(rt, &why, None)?;
                }
            }
            CyclesEnd::Planned(req) => {
                if super::planned::run(agent, rt, s, &mut expected, own, req).await? {
                    // Active on the secondary now: replication from here is over.
                    s.w.shutdown().await;
                    return Ok(Ended::Stopped);
                }
            }
            CyclesEnd::Verify(v) => verify(agent, rt, s, own, expected, v).await?,
        }
    }
}

/// Runs a `sitrep verify` between cycles and answers it.
async fn verify(
    agent: &Agent,
    rt: &DiskRt,
    s: &mut Session,
    own: &mut Owner,
    expected: Option<u64>,
    v: VerifyRequest,
) -> Result<(), ReplError> {
    let r = super::resync::verify(agent, rt, s, own, expected).await;
    let (reply, res) = match r {
        Ok(rep) => (Ok(rep), Ok(())),
        Err(e) => (Err(e.to_string()), Err(e)),
    };
    let _ = v.reply.send(reply);
    res
}

/// Ends the session cleanly (a stop was asked).
async fn bye(s: &mut Session) -> Result<Ended, ReplError> {
    let _ = s.msg(Msg::Bye).await;
    s.w.shutdown().await;
    Ok(Ended::Stopped)
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
            &ResyncCause::PendingLogs {
                bytes,
                pct,
                size: rt.size,
            },
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
