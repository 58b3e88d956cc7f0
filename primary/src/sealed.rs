//! Shipping sealed logs as cycles: each log's ranges read from the device and sent, the log
//! tagged once they are read, the cycle judged (crash-consistent or not) and the verdict
//! sent — with the app-consistent point (or planned failover) waiting on that cycle answered.
//!
//! A journal log's pieces whose content the log holds (`crate::cycle`, *Journal-mode
//! semantics*) are sent from the log, after the device ranges (the two are disjoint, so the
//! order does not matter to the server; reading first keeps the window between the cut and
//! the tag, which the race rule judges, as short as it is today). A cycle with no device
//! range at all ([`CycleExtents::logged_only`]) reads nothing: its log is not tagged (no
//! read for a change to race), a frozen filesystem is thawed at once, and it is judged
//! without the race rule ([`judge`]).

use std::path::Path;
use std::time::Instant;

use hrl::chain::list_logs;
use proto::Msg;

use super::owner::Owner;
use super::reason::ResyncCause;
use super::session::{GRANULE, Session, send_frame};
use super::ship::Item;
use super::state::log_dir;
use super::{Agent, DiskRt, lock};
use crate::cycle::{CycleExtents, MAX_LOGGED_DATA, read_cycle_logged};
use base::net::ReplError;

/// Why shipping stopped before the last sealed log.
pub(crate) enum ShipEnd {
    /// Stop requested.
    Stopped,
    /// A resync of the whole disk is required, for this reason (a missing log, a gap).
    Resync(ResyncCause),
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
) -> Result<Option<ShipEnd>, ReplError> {
    let (name, device, from_seq) = {
        let p = lock(&rt.prot);
        (p.name.clone(), p.device.clone(), p.copy.from_seq)
    };
    let logs = log_dir(&agent.opts.state, &name);
    let list = || {
        list_logs(&logs).map_err(|e| ReplError::Local(format!("disk {name}: listing logs: {e}")))
    };
    let mut listed = list()?;
    if rt.logged_before_performed && sealed_after_last_cut(rt, &listed) {
        // A log the source sealed by itself (a ublk target's rotation) may name changes
        // still in flight: an agent cut waits for them to be performed, so that a read of
        // the device for this cycle — ranges logged without data — sees them.
        agent.cut(rt)?;
        listed = list()?;
    }
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
    // Every log listed above was sealed before any read below: a cycle of this pass that
    // read the device and was not proved consistent may have read changes newer than the
    // later logs' seals (`judge`).
    let mut stale = false;
    for (seq, path) in pending {
        if let Some(e) = *expected
            && seq != e
        {
            return Ok(Some(ShipEnd::Resync(ResyncCause::MissingLogs {
                seq,
                acked: e.saturating_sub(1),
            })));
        }
        let mut cyc = tokio::task::block_in_place(|| {
            read_cycle_logged(&path, rt.size, GRANULE, MAX_LOGGED_DATA)
        })
        .map_err(|e| ReplError::Local(format!("disk {name}: {e}")))?;
        if let Some(why) = cyc.whole_disk_gap {
            return Ok(Some(ShipEnd::Resync(ResyncCause::TrackingGap { seq, why })));
        }
        if cyc.capped {
            tracing::info!(
                disk = %name, seq,
                "journal log past the memory or frame cap: some of its data is read from the device"
            );
        }
        let shipped = cyc.bytes + cyc.logged_bytes;
        let consistent = ship_cycle(agent, rt, s, &device, &mut cyc, own, stale).await?;
        stale |= !consistent && !cyc.ranges.is_empty();
        let _ = std::fs::remove_file(&path);
        rt.forget_cached(seq);
        *expected = Some(seq + 1);
        rt.set(|st| {
            st.last_shipped_seq = Some(seq);
            st.pending_logs = st.pending_logs.saturating_sub(1);
            st.backlog_bytes = st.backlog_bytes.saturating_sub(shipped);
        });
        if own.is_stopped() {
            return Ok(Some(ShipEnd::Stopped));
        }
    }
    Ok(None)
}

/// Whether a sealed log in `listed` (every log but the newest is sealed) came after the
/// agent's last cut of the disk (or no cut was made by this agent yet).
fn sealed_after_last_cut(rt: &DiskRt, listed: &[(hrl::LogSeq, std::path::PathBuf)]) -> bool {
    let newest_sealed = listed.iter().rev().nth(1).map(|(s, _)| s.0);
    let last_cut = rt.snapshot().last_cut.map(|(seq, _)| seq);
    newest_sealed.is_some_and(|n| last_cut.is_none_or(|c| n > c))
}

/// Ships one cycle and sends its verdict (its logged pieces are moved out to be sent);
/// returns the verdict. `stale`: see [`judge`].
async fn ship_cycle(
    agent: &Agent,
    rt: &DiskRt,
    s: &mut Session,
    device: &Path,
    cyc: &mut CycleExtents,
    own: &mut Owner,
    stale: bool,
) -> Result<bool, ReplError> {
    // The cut's instant if this agent cut the log (exact or not); else the seal time (a log
    // sealed by auto-rotation or crash recovery: a point only from a journal, `judge`).
    let cut = lock(&rt.cuts).get(&cyc.seq).copied();
    let t0 = Instant::now();
    s.msg(Msg::CycleBegin {
        seq: cyc.seq,
        log_id: cyc.log_id,
        cut_time_ns: cut.map_or(cyc.cut_time_ns, |c| c.0),
        extents: (cyc.ranges.len() + cyc.logged.len()) as u64,
        data_bytes: cyc.bytes + cyc.logged_bytes,
    })
    .await?;
    let (frames, data_bytes) = send_ranges(agent, rt, s, device, cyc, own).await?;
    let t_sent = t0.elapsed();
    s.msg(Msg::CycleEnd {
        seq: cyc.seq,
        frames,
        data_bytes,
    })
    .await?;
    match s.answer(rt).await? {
        Msg::CycleAck { seq } if seq == cyc.seq => {}
        m => {
            return Err(ReplError::Protocol(format!(
                "{} sent {} where CycleAck {} was expected",
                s.peer,
                m.name(),
                cyc.seq
            )));
        }
    }
    let t_ack = t0.elapsed();
    let consistent = judge(agent, rt, cyc, cut, stale)?;
    lock(&rt.cuts).remove(&cyc.seq);
    let label = answer_point(rt, own, cyc, cut, consistent);
    tracing::debug!(
        disk = %lock(&rt.prot).name, seq = cyc.seq, extents = cyc.ranges.len(),
        bytes = cyc.bytes, logged = cyc.logged_bytes, sent_ms = t_sent.as_millis(),
        acked_ms = t_ack.as_millis(), judged_ms = t0.elapsed().as_millis(), "cycle shipped"
    );
    s.msg(Msg::Verdict {
        seq: cyc.seq,
        crash_consistent: consistent,
        label,
    })
    .await?;
    // A cycle cut together with its group's other disks: which cut (protocol 5).
    let group = lock(&rt.group_cuts).remove(&cyc.seq);
    if let Some(g) = group
        && s.version >= 5
    {
        s.msg(Msg::GroupVerdict {
            seq: cyc.seq,
            group: g.group,
            cut_id: g.cut_id,
            members: g.members,
        })
        .await?;
    }
    rt.set(|st| {
        st.cycles_judged += 1;
        if consistent {
            st.cycles_consistent += 1;
        }
        st.points
            .judged(cut.map_or(cyc.cut_time_ns, |c| c.0), consistent);
    });
    Ok(consistent)
}

/// Sends the cycle's frames: its device ranges, read — the log tagged once they are all
/// read — then its pieces known from the log (moved out of `cyc.logged`). A cycle without
/// device ranges reads nothing and is not tagged. Returns the frames and data bytes sent.
async fn send_ranges(
    agent: &Agent,
    rt: &DiskRt,
    s: &mut Session,
    device: &Path,
    cyc: &mut CycleExtents,
    own: &mut Owner,
) -> Result<(u64, u64), ReplError> {
    let logged = std::mem::take(&mut cyc.logged);
    let mut sent = (0, 0);
    if cyc.logged_only() {
        // Everything comes from the log, complete since its seal: the cycle's data is
        // produced already, so a frozen filesystem may thaw now.
        thaw_if(own, cyc.seq, false);
    } else {
        let rx = super::ship::spawn_readers(
            device.to_path_buf(),
            rt.size,
            cyc.ranges.clone(),
            agent.encode_opts(),
            super::ship::CYCLE_READERS,
            Some(s.comp.flag()),
        );
        sent = relay(rt, s, rx, own, cyc.seq).await?;
        // Every range of the cycle is read: tag the log here, so the changes recorded
        // between the cut and now can be told from later ones — and only then thaw a
        // frozen filesystem, whose writes would otherwise race the tag.
        let tagged = agent.mark(rt, cyc.seq);
        thaw_if(own, cyc.seq, false);
        tagged?;
    }
    if !logged.is_empty() {
        let rx = super::ship::spawn_logged(logged, agent.encode_opts(), Some(s.comp.flag()));
        let (frames, data_bytes) = relay(rt, s, rx, own, cyc.seq).await?;
        sent = (sent.0 + frames, sent.1 + data_bytes);
    }
    Ok(sent)
}

/// Sends the frames `rx` produces until it is done; returns its frames and data bytes.
async fn relay(
    rt: &DiskRt,
    s: &mut Session,
    mut rx: tokio::sync::mpsc::Receiver<Item>,
    own: &mut Owner,
    seq: u64,
) -> Result<(u64, u64), ReplError> {
    loop {
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
                thaw_if(own, seq, true);
            }
            Some(Item::Mark(_)) => {}
            Some(Item::Failed(e)) => return Err(ReplError::Local(e)),
            Some(Item::Done { frames, data_bytes }) => return Ok((frames, data_bytes)),
            None => {
                return Err(ReplError::Local(
                    "the cycle's frame producer stopped".into(),
                ));
            }
        }
    }
}

/// Whether the acknowledged cycle is crash-consistent, at or after the points' floor:
/// - all from its journal log ([`CycleExtents::logged_only`]): the log's prefix state, so a
///   point at its cut (or seal) if the replica it lands on holds nothing newer than that.
///   Not if a cycle shipped before it in the same pass (`stale`) read the device without
///   being proved consistent: those reads ran after this log was sealed. Otherwise, if
///   - the cycle follows the previous one, judged consistent ([`follows_a_point`]) — a log
///     sealed by the target itself (rotation, crash recovery) too; or
///   - the agent cut the log: cuts are made between cycles and after the copy, so every
///     earlier read feeding the replica was done by then;
/// - otherwise: cut exactly by this agent, and no change raced its reads.
fn judge(
    agent: &Agent,
    rt: &DiskRt,
    cyc: &CycleExtents,
    cut: Option<(u64, bool)>,
    stale: bool,
) -> Result<bool, ReplError> {
    if agent.opts.offer_every_cycle {
        return Ok(true);
    }
    if cyc.seq < lock(&rt.prot).points_from_seq {
        return Ok(false);
    }
    if cyc.logged_only() {
        return Ok(!stale && (cut.is_some() || follows_a_point(rt, cyc.seq)));
    }
    let logs = log_dir(&agent.opts.state, &lock(&rt.prot).name);
    Ok(cut.is_some_and(|c| c.1)
        && tokio::task::block_in_place(|| crate::cycle::raced(&logs, cyc.seq, &cyc.ranges))
            .map_err(|e| ReplError::Local(format!("{}: {e}", logs.display())))?
            == Some(false))
}

/// Whether cycle `seq` directly follows the cycle this agent shipped last, and that one was
/// judged consistent. The replica then is exactly the source at that cycle's cut: nothing
/// read from the device after it (a consistent cycle's own reads saw no change since its
/// cut), so a journal log sealed by itself — the target's rotation, crash recovery — lands
/// on it as the source at its seal. Otherwise — the first cycles after the copy or an agent
/// restart, or after an inconsistent cycle: reads may have run past this log's seal — such
/// a log is no point; the next log the agent cuts is.
fn follows_a_point(rt: &DiskRt, seq: u64) -> bool {
    let st = rt.snapshot();
    st.last_shipped_seq
        .is_some_and(|l| l.saturating_add(1) == seq)
        && st.points.last_point_ns.is_some()
        && st.points.unpointed_since_ns.is_none()
}

/// Answers the point (or planned failover) waiting on this cycle, if any; returns the
/// verdict's label (None: not an app-consistent point).
fn answer_point(
    rt: &DiskRt,
    own: &mut Owner,
    cyc: &CycleExtents,
    cut: Option<(u64, bool)>,
    consistent: bool,
) -> Option<String> {
    let f = own.frozen.take_if(|f| f.seq == cyc.seq)?;
    let label = if f.frozen.is_none() && f.freeze_ms > f.max_freeze.as_secs_f64() * 1000.0 {
        None
    } else {
        Some(f.label.clone())
    };
    let label = label
        .filter(|l| !l.is_empty())
        .map(|l| proto::clip_label(&l));
    let report = base::status::AppPointReport {
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
    label
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
