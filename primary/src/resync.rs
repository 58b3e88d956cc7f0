//! The agent's side of the checksum resync and of online verify (docs/architecture.md,
//! *Resync*).
//!
//! A resync is *required* (a [`ResyncPlan`] in `protection.json`) when tracking lost
//! something (a gap record, a crash, missing logs), the server reports a broken chain, the
//! pending logs name more than a threshold of the disk, verify found a difference, or the
//! operator asks. It *runs* inside the resync window (or at once with `sitrep resync --now`):
//!
//! 1. **Cut** the log (`C`): every change recorded in logs `≤ C` is inside the scope (their
//!    ranges are added to it), so those logs are deleted; changes after the cut are in logs
//!    `≥ from_seq = C + 1` and ship as cycles after the resync. Tracking never stops.
//! 2. **Compare and repair** the scope in windows (8 MiB, several in flight): a reader thread
//!    reads the source (O_DIRECT) and hashes it while the server reads and hashes the
//!    replica; coarse digests (1 MiB) first, fine digests (4 KiB) only inside coarse pieces
//!    that differ, then only the differing 4 KiB blocks cross the wire (zero blocks as zero
//!    ranges). A `ResyncCommit` every 16 MiB of repairs or 64 MiB compared makes them durable on the
//!    server (undo data first) and records the cursor, from which a broken session resumes.
//! 3. **Confirm**: compare the scope again; cut twice (`E`, then `F` after the tracker's
//!    drain); every block still differing must lie in ranges recorded since the resync's cut
//!    (logs `from_seq..=F`, which will ship) — anything else is repaired and checked again,
//!    at most [`CONFIRM_ROUNDS`] times, then the resync fails loudly.
//! 4. `ResyncDone`: cycles from `from_seq` follow. Cycles up to `F` are never offered as
//!    recovery points (the replica is a state of the source only after them).

use std::time::{Duration, Instant};

use hrl::chain::list_logs;
use proto::Msg;

use super::jobs::{JobKind, JobStep};
use super::owner::Owner;
use super::reason::ResyncCause;
use super::scan::{Pass, scan};
use super::session::{GRANULE, PING_EVERY, Session};
use super::snapshot::ResyncRun;
use super::state::{ResyncPlan, log_dir};
pub use super::window::ResyncWindow;
use super::{Agent, DiskRt, lock};
use crate::cycle::read_cycle;
use base::digest::Key;
use base::net::ReplError;
use base::ranges::{self, Range};
use base::status::{ResyncPhase, VerifyReport};

pub use super::scan::{COMMIT_DATA, COMMIT_EVERY, WINDOW_BYTES, WINDOW_RANGES, WINDOWS_IN_FLIGHT};
/// A scope is coarsened (a superset) to at most this many ranges.
pub const MAX_SCOPE_RANGES: usize = 65536;
/// Repair-and-recheck rounds of the confirmation before the resync fails.
pub const CONFIRM_ROUNDS: usize = 3;
/// Wait after the confirmation's first cut so writes in flight at it are recorded.
const DRAIN: Duration = Duration::from_millis(250);

impl Agent {
    /// Records that disk `rt` needs a checksum resync of `scope` (`None`: the whole disk)
    /// because of `why`. Merged into a pending one; a running one starts over with the
    /// union (its repairs so far stay, and stay undoable).
    ///
    /// # Errors
    /// The protection cannot be saved.
    pub(crate) fn require_resync(
        &self,
        rt: &DiskRt,
        why: &ResyncCause,
        scope: Option<Vec<Range>>,
    ) -> Result<(), ReplError> {
        let mut p = rt.prot_mut();
        let mut id = [0u8; 8];
        getrandom::fill(&mut id).map_err(|e| ReplError::Local(format!("random id: {e}")))?;
        let plan = match p.resync.take() {
            Some(old) => ResyncPlan {
                id: if old.from_seq.is_some() {
                    u64::from_le_bytes(id)
                } else {
                    old.id
                },
                reason: why.merged_into(&old.reason),
                scope: match (old.scope, scope) {
                    (Some(a), Some(b)) => Some(ranges::union(&a, &ranges::normalize(b))),
                    _ => None,
                },
                from_seq: None,
            },
            None => ResyncPlan {
                id: u64::from_le_bytes(id),
                reason: why.to_string(),
                scope: scope.map(ranges::normalize),
                from_seq: None,
            },
        };
        tracing::warn!(disk = %p.name, "resync required: {}", plan.reason);
        let reason = plan.reason.clone();
        p.resync = Some(plan);
        p.resync_reason = Some(reason.clone());
        p.save(&self.opts.state)
            .map_err(|e| ReplError::Local(format!("disk {}: saving state: {e}", p.name)))?;
        let name = p.name.clone();
        drop(p);
        rt.set(|s| s.resync = Some(ResyncRun::new(reason)));
        if rt.snapshot().job.is_none() {
            self.new_job(rt, JobKind::Resync, &name);
            self.job_step(rt, JobStep::WaitingForWindow, 0, 0);
        }
        Ok(())
    }
}

/// How a resync run ended.
pub(crate) enum ResyncEnd {
    /// Stop requested.
    Stopped,
    /// Complete: cycles from this sequence follow.
    Done(u64),
    /// Tracking lost something during it: start again (the plan was replaced).
    Again,
}

/// Waits for the window, then runs the disk's required resync to the end.
pub(crate) async fn run(
    agent: &Agent,
    rt: &DiskRt,
    s: &mut Session,
    own: &mut Owner,
) -> Result<ResyncEnd, ReplError> {
    let window = agent.opts.resync_window;
    let reason = lock(&rt.prot)
        .resync
        .as_ref()
        .map(|p| p.reason.clone())
        .unwrap_or_default();
    rt.set(|st| {
        if st.resync.is_none() {
            st.resync = Some(ResyncRun::new(reason.clone()));
        }
    });
    if rt.snapshot().job.is_none() {
        let name = lock(&rt.prot).name.clone();
        agent.new_job(rt, JobKind::Resync, &name);
    }
    // 0. The window (or `sitrep resync --now`).
    while !(own.resync_now() || window.open_now()) {
        agent.job_step(rt, JobStep::WaitingForWindow, 0, 0);
        if idle(s, rt, own, Duration::from_secs(1)).await? {
            return Ok(ResyncEnd::Stopped);
        }
    }
    own.clear_resync_now();
    // 1. The cut and the scope.
    let (plan, scope, key, cursor) = begin(agent, rt, s).await?;
    let (id, from_seq) = (plan.id, plan.from_seq.unwrap_or(0));
    // 2. Compare and repair, from the cursor.
    let todo = ranges::after(&scope, cursor);
    start_pass(rt, ResyncPhase::CompareAndRepair, ranges::total(&todo));
    if cursor > 0 {
        let name = lock(&rt.prot).name.clone();
        tracing::info!(disk = %name, cursor, "resync resumes at the server's cursor");
    }
    let windows = ranges::windows(&scope, cursor, WINDOW_BYTES, WINDOW_RANGES);
    scan(
        agent,
        rt,
        s,
        &key,
        windows,
        Pass::Repair { fixed_cursor: None },
        own,
    )
    .await?;
    // 3. Confirm.
    let Some(last_cut) = confirm(agent, rt, s, own, &key, scope, from_seq).await? else {
        return Ok(ResyncEnd::Again);
    };
    // 4. Done.
    done(agent, rt, s, id, from_seq, last_cut).await?;
    Ok(ResyncEnd::Done(from_seq))
}

/// Fixes the plan (cut, scope), opens the resync on the server; returns the plan, its
/// scope, the digest key and the server's cursor.
async fn begin(
    agent: &Agent,
    rt: &DiskRt,
    s: &mut Session,
) -> Result<(ResyncPlan, Vec<Range>, Key, u64), ReplError> {
    let name = lock(&rt.prot).name.clone();
    let size = rt.size;
    let plan = start_plan(agent, rt)?;
    let (id, from_seq) = (plan.id, plan.from_seq.unwrap_or(0));
    let scope = plan.scope.clone().unwrap_or_else(|| vec![(0, size)]);
    let scope_bytes = ranges::total(&scope);
    let wire0 = s.w.wire_bytes;
    rt.set(|st| {
        let r = st
            .resync
            .get_or_insert_with(|| ResyncRun::new(plan.reason.clone()));
        r.scope_bytes = scope_bytes;
        // A new session: its counter starts again.
        r.wire_before += r.wire_now.saturating_sub(r.wire_at_start);
        r.wire_at_start = wire0;
        r.wire_now = wire0;
        r.started.get_or_insert_with(Instant::now);
    });
    tracing::info!(disk = %name, id, from_seq, scope_bytes, ranges = scope.len(), "checksum resync: {}", plan.reason);
    let key = Key::random(agent.opts.digest)
        .map_err(|e| ReplError::Local(format!("random digest key: {e}")))?;
    s.msg(Msg::DigestKey {
        algo: key.algo().as_u8(),
        key: key.as_bytes().to_vec(),
    })
    .await?;
    s.msg(Msg::ResyncBegin { id, from_seq }).await?;
    let cursor = match s.answer(rt).await? {
        Msg::ResyncReady { id: i, cursor } if i == id => cursor,
        m => {
            return Err(ReplError::Protocol(format!(
                "{} answered ResyncBegin with {}",
                s.peer,
                m.name()
            )));
        }
    };
    if cursor > size || (cursor % GRANULE != 0 && cursor != size) {
        return Err(ReplError::Protocol(format!(
            "disk {name}: the server's resync cursor {cursor} is not a valid position on the {size}-byte disk"
        )));
    }
    Ok((plan, scope, key, cursor))
}

/// Compares the scope again until every difference is explained by a change recorded since
/// the resync's cut (repairing the others, at most [`CONFIRM_ROUNDS`] times). Returns the
/// last cut; `None` if tracking lost changes meanwhile (the resync is planned again).
async fn confirm(
    agent: &Agent,
    rt: &DiskRt,
    s: &mut Session,
    own: &mut Owner,
    key: &Key,
    scope: Vec<Range>,
    from_seq: u64,
) -> Result<Option<u64>, ReplError> {
    let name = lock(&rt.prot).name.clone();
    let size = rt.size;
    let mut check = scope;
    let mut last_cut;
    let mut round = 0;
    loop {
        start_pass(rt, ResyncPhase::Confirm, ranges::total(&check));
        let windows = ranges::windows(&check, 0, WINDOW_BYTES, WINDOW_RANGES);
        let found = scan(agent, rt, s, key, windows, Pass::Compare, own).await?;
        agent.cut(rt)?;
        tokio::time::sleep(DRAIN).await;
        last_cut = agent.cut(rt)?;
        let Some(changed) = changed_since(agent, rt, from_seq, last_cut)? else {
            agent.require_resync(rt, &ResyncCause::LostDuringResync, None)?;
            return Ok(None);
        };
        let unexplained = ranges::subtract(&ranges::normalize(found), &changed);
        if unexplained.is_empty() {
            break;
        }
        round += 1;
        tracing::warn!(
            disk = %name,
            round,
            bytes = ranges::total(&unexplained),
            "resync confirmation found blocks that differ without a recorded change; repairing them"
        );
        if round >= CONFIRM_ROUNDS {
            return Err(ReplError::Local(format!(
                "disk {name}: the resync could not make {} bytes in {} ranges equal after {CONFIRM_ROUNDS} rounds (first at offset {}); the replica is not trusted",
                ranges::total(&unexplained),
                unexplained.len(),
                unexplained[0].0
            )));
        }
        start_pass(
            rt,
            ResyncPhase::CompareAndRepair,
            ranges::total(&unexplained),
        );
        let windows = ranges::windows(&unexplained, 0, WINDOW_BYTES, WINDOW_RANGES);
        scan(
            agent,
            rt,
            s,
            key,
            windows,
            Pass::Repair {
                fixed_cursor: Some(size),
            },
            own,
        )
        .await?;
        check = unexplained;
    }
    Ok(Some(last_cut))
}

/// Ends the resync on the server and records it complete.
async fn done(
    agent: &Agent,
    rt: &DiskRt,
    s: &mut Session,
    id: u64,
    from_seq: u64,
    last_cut: u64,
) -> Result<(), ReplError> {
    let name = lock(&rt.prot).name.clone();
    s.msg(Msg::ResyncDone { id, from_seq }).await?;
    match s.answer(rt).await? {
        Msg::ResyncFinished { id: i } if i == id => {}
        m => {
            return Err(ReplError::Protocol(format!(
                "{} answered ResyncDone with {}",
                s.peer,
                m.name()
            )));
        }
    }
    {
        let mut p = rt.prot_mut();
        p.resync = None;
        p.resync_reason = None;
        p.points_from_seq = last_cut + 1;
        p.save(&agent.opts.state)
            .map_err(|e| ReplError::Local(format!("disk {name}: saving state: {e}")))?;
    }
    let wire = s.w.wire_bytes;
    let window = agent.opts.resync_window;
    rt.set(|st| {
        if let Some(mut r) = st.resync.take() {
            r.phase = ResyncPhase::Done;
            r.wire_now = wire;
            let status = r.status(window);
            tracing::info!(
                disk = %name,
                compared = status.compared_bytes,
                differing = status.differing_bytes,
                sent = status.data_bytes_sent,
                wire = status.wire_bytes,
                seconds = status.seconds,
                "checksum resync complete; shipping the changes made during it"
            );
            st.last_resync = Some(status);
        }
        st.resyncs_completed += 1;
    });
    agent.job_step(rt, JobStep::ShipChangesDuringResync, 0, 0);
    agent.job_finish(rt, base::status::JobState::Succeeded, None);
    Ok(())
}

/// Makes the plan's cut and fixes its scope (once; a resumed plan keeps both).
fn start_plan(agent: &Agent, rt: &DiskRt) -> Result<ResyncPlan, ReplError> {
    let plan = lock(&rt.prot)
        .resync
        .clone()
        .ok_or_else(|| ReplError::Local("no resync is planned".into()))?;
    if plan.from_seq.is_some() {
        return Ok(plan);
    }
    let name = lock(&rt.prot).name.clone();
    let cut = agent.cut(rt)?;
    let logs = log_dir(&agent.opts.state, &name);
    let listed = list_logs(&logs)
        .map_err(|e| ReplError::Local(format!("disk {name}: listing logs: {e}")))?;
    let size = rt.size;
    let mut scope = plan.scope.clone();
    let mut covered = Vec::new();
    for (seq, path) in &listed {
        if seq.0 > cut {
            continue;
        }
        covered.push(path.clone());
        if let Some(sc) = &mut scope {
            let c = tokio::task::block_in_place(|| read_cycle(path, size, GRANULE))
                .map_err(|e| ReplError::Local(format!("disk {name}: {e}")))?;
            if c.whole_disk_gap.is_some() {
                scope = None;
            } else {
                *sc = ranges::union(sc, &c.ranges);
            }
        }
    }
    let scope = match scope {
        Some(sc) => ranges::coarsen(&ranges::align_out(&sc, GRANULE, size), MAX_SCOPE_RANGES),
        None => vec![(0, size)],
    };
    let plan = ResyncPlan {
        scope: Some(scope),
        from_seq: Some(cut + 1),
        ..plan
    };
    {
        let mut p = rt.prot_mut();
        p.resync = Some(plan.clone());
        p.save(&agent.opts.state)
            .map_err(|e| ReplError::Local(format!("disk {name}: saving state: {e}")))?;
    }
    // Their changes are inside the scope now.
    for path in covered {
        let _ = std::fs::remove_file(&path);
    }
    Ok(plan)
}

/// The ranges recorded in sealed logs `from..=to`; `None` if one of them has a whole-disk
/// gap (then nothing can be told apart).
fn changed_since(
    agent: &Agent,
    rt: &DiskRt,
    from: u64,
    to: u64,
) -> Result<Option<Vec<Range>>, ReplError> {
    let name = lock(&rt.prot).name.clone();
    let logs = log_dir(&agent.opts.state, &name);
    let listed = list_logs(&logs)
        .map_err(|e| ReplError::Local(format!("disk {name}: listing logs: {e}")))?;
    let mut out = Vec::new();
    for (seq, path) in &listed {
        if seq.0 < from || seq.0 > to {
            continue;
        }
        let c = tokio::task::block_in_place(|| read_cycle(path, rt.size, GRANULE))
            .map_err(|e| ReplError::Local(format!("disk {name}: {e}")))?;
        if c.whole_disk_gap.is_some() {
            return Ok(None);
        }
        out = ranges::union(&out, &c.ranges);
    }
    Ok(Some(out))
}

fn start_pass(rt: &DiskRt, phase: ResyncPhase, total: u64) {
    rt.set(|st| {
        if let Some(r) = &mut st.resync {
            r.phase = phase;
            r.pass_total = total;
            r.pass_done = 0;
            r.pass_started = Instant::now();
        }
    });
}

/// Pings and drains while idle for `d` (or until a command arrives); true if stopped.
pub(crate) async fn idle(
    s: &mut Session,
    rt: &DiskRt,
    own: &mut Owner,
    d: Duration,
) -> Result<bool, ReplError> {
    if own.is_stopped() {
        return Ok(true);
    }
    if s.last_sent.elapsed() > PING_EVERY {
        s.msg(Msg::Ping { nonce: 0 }).await?;
    }
    tokio::select! {
        m = s.recv(rt) => {
            let m = m?;
            Err(ReplError::Protocol(format!("{} sent {} unprompted", s.peer, m.name())))
        }
        () = tokio::time::sleep(d) => Ok(false),
        () = own.next() => Ok(own.is_stopped()),
    }
}

// ---- online verify ------------------------------------------------------------------------

/// Compares the whole replica with the source by digests only (between cycles); plans a
/// resync of the differences no recorded change explains.
pub(crate) async fn verify(
    agent: &Agent,
    rt: &DiskRt,
    s: &mut Session,
    own: &mut Owner,
    expected: Option<u64>,
) -> Result<VerifyReport, ReplError> {
    let name = lock(&rt.prot).name.clone();
    let started = Instant::now();
    let key = Key::random(agent.opts.digest)
        .map_err(|e| ReplError::Local(format!("random digest key: {e}")))?;
    s.msg(Msg::DigestKey {
        algo: key.algo().as_u8(),
        key: key.as_bytes().to_vec(),
    })
    .await?;
    let scope = vec![(0, rt.size)];
    let windows = ranges::windows(&scope, 0, WINDOW_BYTES, WINDOW_RANGES);
    let found = scan(agent, rt, s, &key, windows, Pass::Compare, own).await?;
    agent.cut(rt)?;
    tokio::time::sleep(DRAIN).await;
    let last = agent.cut(rt)?;
    let found = ranges::normalize(found);
    let from = expected.unwrap_or(0);
    let changed = changed_since(agent, rt, from, last)?.unwrap_or_else(|| scope.clone());
    let mismatches = ranges::subtract(&found, &changed);
    let in_flight = ranges::total(&ranges::intersect(&found, &changed));
    if !mismatches.is_empty() {
        agent.require_resync(
            rt,
            &ResyncCause::VerifyMismatch {
                bytes: ranges::total(&mismatches),
                ranges: mismatches.len(),
            },
            Some(mismatches.clone()),
        )?;
    }
    tracing::info!(disk = %name, mismatches = mismatches.len(), in_flight, "verify complete");
    Ok(VerifyReport {
        disk: name,
        compared_bytes: rt.size,
        mismatches,
        in_flight_bytes: in_flight,
        seconds: started.elapsed().as_secs_f64(),
    })
}
