//! The cycle loop of a disk's session: cut sealed logs at the disk's frequency, ship each as a
//! cycle and judge it, and make the app-consistent points asked for (freeze, cut, thaw).

use std::path::Path;
use std::time::{Duration, Instant};

use hrl::chain::list_logs;
use proto::Msg;

use super::owner::{FrozenCycle, Owner, PointRequest};
use super::ship::{Item, STALL};
use super::state::log_dir;
use super::worker::{GRANULE, PING_EVERY, SCHEDULED_MAX_FREEZE, Session, send_frame};
use super::{Agent, DiskRt, lock};
use crate::config::Frequency;
use crate::cycle::read_cycle;
use crate::net::ReplError;

/// How often an idle session looks at the tracker's record count (commands wake it at once).
const RECORDS_TICK: Duration = Duration::from_millis(50);

pub(crate) enum CyclesEnd {
    Stopped,
    /// A planned failover activated the replica on the secondary: replication of this disk
    /// from here is over.
    FailedOver,
    /// A resync is required: planned already (`None`), or for this reason, whole disk.
    Resync(Option<String>),
}

/// Ships sealed logs as cycles, cutting new ones at the disk's frequency.
pub(super) async fn run_cycles(
    agent: &Agent,
    rt: &DiskRt,
    s: &mut Session,
    expected: &mut Option<u64>,
    own: &mut Owner,
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
        if let Some(end) = ship_sealed(agent, rt, s, expected, own).await? {
            return Ok(end);
        }
        agent.job_done_if_caught_up(rt);
        // 2. Wait for the next cut.
        loop {
            if own.is_stopped() {
                return Ok(CyclesEnd::Stopped);
            }
            if lock(&rt.prot).resync.is_some() || !lock(&rt.prot).copy.done {
                // A resync, or a full copy (`sitrep failback --mode full-download`), is
                // required: the session loop runs it.
                return Ok(CyclesEnd::Resync(None));
            }
            let planned = own.take_planned();
            if let Some(req) = planned {
                if super::planned::run(agent, rt, s, expected, own, req).await? {
                    return Ok(CyclesEnd::FailedOver);
                }
                break;
            }
            let verify = own.take_verify();
            if let Some(v) = verify {
                let r = super::resync::verify(agent, rt, s, own, *expected).await;
                let (reply, res) = match r {
                    Ok(rep) => (Ok(rep), Ok(())),
                    Err(e) => (Err(e.to_string()), Err(e)),
                };
                let _ = v.reply.send(reply);
                res?;
                break;
            }
            let idle_for_point = own.idle_for_point();
            if let Some(at) = next_app
                && Instant::now() >= at
                && idle_for_point
            {
                next_app = app_every.map(|d| Instant::now() + d);
                let (tx, rx) = tokio::sync::oneshot::channel();
                own.put_point(PointRequest {
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
            let req = own.take_point();
            if let Some(req) = req {
                if !req.precut && agent.records_since_cut(rt) > 0 {
                    // Ship what is pending first, so the frozen cycle is small.
                    own.put_point(PointRequest {
                        precut: true,
                        ..req
                    });
                    agent.cut(rt)?;
                    break;
                }
                if freeze_and_cut(agent, rt, own, &device, req)? {
                    break;
                }
                continue;
            }
            // A requested cut (`sitrep wait`) is made even if nothing seems recorded: the
            // tracker's drain and the log thread's queue are ordered before the seal, so the
            // sealed log holds every change completed before the request.
            let forced = own.take_cut();
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
            // Drain replies (Applied, Pong) while idle; a command wakes the loop at once.
            // (The tick is for the tracker's record count only: it has no wake-up to offer.)
            tokio::select! {
                m = s.recv(rt) => {
                    let m = m?;
                    return Err(ReplError::Protocol(format!("{} sent {} unprompted", s.peer, m.name())));
                }
                () = tokio::time::sleep(RECORDS_TICK) => {}
                () = own.next() => {}
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
    own: &mut Owner,
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
        ship_cycle(agent, rt, s, &device, &cyc, own).await?;
        let _ = std::fs::remove_file(&path);
        rt.forget_cached(seq);
        *expected = Some(seq + 1);
        rt.set(|st| {
            st.last_shipped_seq = Some(seq);
            st.pending_logs = st.pending_logs.saturating_sub(1);
            st.backlog_bytes = st.backlog_bytes.saturating_sub(cyc.bytes);
        });
        if own.is_stopped() {
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
    own: &mut Owner,
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
            () = own.stopped() => return Err(ReplError::Local("stopping".into())),
        };
        match item {
            Some(Item::Frame { bytes, data, zero }) => {
                let (waited, sending) = (waiting.elapsed(), Instant::now());
                send_frame(s, rt, &bytes, data, zero).await?;
                s.comp.note(waited, sending.elapsed());
                thaw_if(own, cyc.seq, true);
            }
            Some(Item::Mark(_)) => {}
            Some(Item::Failed(e)) => return Err(ReplError::Local(e)),
            Some(Item::Done { frames, data_bytes }) => {
                // Every range of the cycle is read: tag the log here, so the changes
                // recorded between the cut and now can be told from later ones — and only
                // then thaw a frozen filesystem, whose writes would otherwise race the tag.
                let tagged = agent.mark(rt, cyc.seq);
                thaw_if(own, cyc.seq, false);
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
            let app = own.frozen.take_if(|f| f.seq == cyc.seq);
            let label = app.as_ref().map(|f| {
                if f.frozen.is_none() && f.freeze_ms > f.max_freeze.as_secs_f64() * 1000.0 {
                    String::new()
                } else {
                    f.label.clone()
                }
            });
            let label = label
                .filter(|l| !l.is_empty())
                .map(|l| proto::clip_label(&l));
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

/// Freezes the filesystem mounted from `device` and cuts the cycle that will be read while it
/// stays frozen. Returns true if it cut (the caller ships the cycle), false if it answered
/// the request with an error instead.
fn freeze_and_cut(
    agent: &Agent,
    rt: &DiskRt,
    own: &mut Owner,
    device: &Path,
    req: PointRequest,
) -> Result<bool, ReplError> {
    let (name, pre, post) = {
        let p = lock(&rt.prot);
        (p.name.clone(), p.pre_hook.clone(), p.post_hook.clone())
    };
    let fail = |req: PointRequest, why: String| {
        let _ = req.reply.send(Err(format!("disk {name}: {why}")));
        Ok(false)
    };
    if let Some(pre) = pre {
        let quiesced = match super::freeze::Frozen::hooks(&pre, post) {
            Ok(q) => q,
            Err(e) => return fail(req, e.to_string()),
        };
        tracing::info!(disk = %name, "pre-hook ran for an app-consistent point");
        return cut_quiesced(agent, rt, own, req, quiesced, format!("pre-hook `{pre}`"));
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
    cut_quiesced(agent, rt, own, req, frozen, label)
}

/// Cuts the cycle to be read while the disk stays quiesced by `frozen`.
fn cut_quiesced(
    agent: &Agent,
    rt: &DiskRt,
    own: &mut Owner,
    req: PointRequest,
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
    own.frozen = Some(FrozenCycle {
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
fn thaw_if(own: &mut Owner, seq: u64, early: bool) {
    if let Some(f) = own.frozen.as_mut()
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
