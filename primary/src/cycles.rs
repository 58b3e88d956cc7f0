//! The cycle loop of a disk's session: ship the sealed logs ([`super::sealed`]), then wait
//! for the next cut — at the disk's frequency, for a requested cut or app-consistent point,
//! or until a request the session serves between cycles (verify, planned failover) arrives,
//! which is handed back to the session loop (`worker.rs`).

use std::path::Path;
use std::time::{Duration, Instant};

use proto::Msg;

use super::app_point::freeze_and_cut;
use super::group::Membership;
use super::owner::{Owner, PlannedRequest, PointRequest, VerifyRequest};
use super::reason::ResyncCause;
use super::sealed::{ShipEnd, ship_sealed};
use super::session::{PING_EVERY, SCHEDULED_MAX_FREEZE, Session};
use super::ship::STALL;
use super::{Agent, DiskRt, lock};
use base::config::Frequency;
use base::net::ReplError;

/// How often an idle session looks at the tracker's record count (commands wake it at once).
const RECORDS_TICK: Duration = Duration::from_millis(50);

/// Why the cycles stopped.
pub(crate) enum CyclesEnd {
    /// Stop requested.
    Stopped,
    /// A resync is required: planned already (`None`), or for this reason, whole disk.
    Resync(Option<ResyncCause>),
    /// A planned failover was asked for: the session runs it between cycles.
    Planned(PlannedRequest),
    /// A verify was asked for: the session runs it between cycles.
    Verify(VerifyRequest),
}

/// When the next cut and the next scheduled app-consistent point are due (kept while the
/// session serves requests between cycles).
pub(crate) struct CycleTimers {
    next_cut: Instant,
    app_every: Option<Duration>,
    next_app: Option<Instant>,
}

impl CycleTimers {
    /// Timers starting now for disk `rt`.
    pub(crate) fn new(rt: &DiskRt) -> Self {
        let app_every = lock(&rt.prot)
            .app_consistent_every_secs
            .map(Duration::from_secs);
        Self {
            next_cut: Instant::now(),
            app_every,
            next_app: app_every.map(|d| Instant::now() + d),
        }
    }
}

/// Ships sealed logs as cycles, cutting new ones at the disk's frequency.
pub(super) async fn run_cycles(
    agent: &Agent,
    rt: &DiskRt,
    s: &mut Session,
    expected: &mut Option<u64>,
    own: &mut Owner,
    timers: &mut CycleTimers,
) -> Result<CyclesEnd, ReplError> {
    // While the cycles run, the disk takes part in its group's cuts (`group.rs`).
    let member = Membership::new(&agent.groups, &lock(&rt.prot).name);
    loop {
        // 1. Ship every sealed log, oldest first.
        match ship_sealed(agent, rt, s, expected, own).await? {
            Some(ShipEnd::Stopped) => return Ok(CyclesEnd::Stopped),
            Some(ShipEnd::Resync(why)) => return Ok(CyclesEnd::Resync(Some(why))),
            None => {}
        }
        agent.job_done_if_caught_up(rt);
        // 2. Wait for the next cut.
        if let Some(end) = next_cut(agent, rt, s, own, timers, &member).await? {
            return Ok(end);
        }
    }
}

/// Waits until a cycle is cut (`None`: ship it) or the cycles must end.
async fn next_cut(
    agent: &Agent,
    rt: &DiskRt,
    s: &mut Session,
    own: &mut Owner,
    timers: &mut CycleTimers,
    member: &Membership<'_>,
) -> Result<Option<CyclesEnd>, ReplError> {
    let (name, device, frequency) = {
        let p = lock(&rt.prot);
        (p.name.clone(), p.device.clone(), p.frequency)
    };
    loop {
        let group = lock(&rt.prot).group.clone();
        member.follow(group.as_deref());
        // `sitrep group add|remove` while the session runs: the server learns it at once.
        if s.version >= 5 && s.declared.as_ref() != Some(&group) {
            s.msg(Msg::GroupMember {
                group: group.clone(),
            })
            .await?;
            s.declared = Some(group.clone());
        }
        if own.is_stopped() {
            return Ok(Some(CyclesEnd::Stopped));
        }
        if lock(&rt.prot).resync.is_some() || !lock(&rt.prot).copy.done {
            // A resync, or a full copy (`sitrep failback --mode full-download`), is
            // required: the session loop runs it.
            return Ok(Some(CyclesEnd::Resync(None)));
        }
        if let Some(req) = own.take_planned() {
            return Ok(Some(CyclesEnd::Planned(req)));
        }
        if let Some(v) = own.take_verify() {
            return Ok(Some(CyclesEnd::Verify(v)));
        }
        if let Some(r) = own.take_round() {
            if agent.serve_round(rt, s, own, r).await? {
                return Ok(None);
            }
            continue;
        }
        schedule_point(own, timers, &name);
        if let Some(req) = own.take_point() {
            if serve_point(agent, rt, own, &device, req)? {
                return Ok(None);
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
            Frequency::Every(_) => Instant::now() >= timers.next_cut,
        };
        // A group's member also cuts when another member wants a cut: one instant for all.
        let joined = group.as_deref().is_some_and(|g| agent.groups.wanted(g));
        if forced || (records > 0 && due) || joined {
            let sealed = match group.as_deref() {
                None => agent.cut(rt)?,
                Some(g) => match agent.group_cut(rt, g, own.stopped()).await? {
                    Some(seq) => seq,
                    None => return Ok(Some(CyclesEnd::Stopped)),
                },
            };
            if let Frequency::Every(d) = frequency {
                timers.next_cut = Instant::now() + d;
            }
            tracing::debug!(disk = %name, seq = sealed, "cycle cut");
            return Ok(None);
        }
        idle(s, rt, own).await?;
    }
}

/// Pings the server when due and drains its replies (Applied, Pong) until the next tick or
/// command.
async fn idle(s: &mut Session, rt: &DiskRt, own: &mut Owner) -> Result<(), ReplError> {
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
    // A command wakes the loop at once. (The tick is for the tracker's record count only:
    // it has no wake-up to offer.)
    tokio::select! {
        m = s.recv(rt) => {
            let m = m?;
            Err(ReplError::Protocol(format!("{} sent {} unprompted", s.peer, m.name())))
        }
        () = tokio::time::sleep(RECORDS_TICK) => Ok(()),
        () = own.next() => Ok(()),
    }
}

/// Asks for the scheduled app-consistent point when it is due and none is waiting.
fn schedule_point(own: &mut Owner, timers: &mut CycleTimers, name: &str) {
    let idle_for_point = own.idle_for_point();
    let Some(at) = timers.next_app else { return };
    if Instant::now() < at || !idle_for_point {
        return;
    }
    timers.next_app = timers.app_every.map(|d| Instant::now() + d);
    let (tx, rx) = tokio::sync::oneshot::channel();
    own.put_point(PointRequest {
        reply: tx,
        max_freeze: SCHEDULED_MAX_FREEZE,
        precut: false,
    });
    let disk = name.to_string();
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

/// Makes progress on an app-consistent point: first cuts what is pending (so the frozen
/// cycle is small), then freezes and cuts. True if it cut (the caller ships the cycle).
fn serve_point(
    agent: &Agent,
    rt: &DiskRt,
    own: &mut Owner,
    device: &Path,
    req: PointRequest,
) -> Result<bool, ReplError> {
    if !req.precut && agent.records_since_cut(rt) > 0 {
        // Ship what is pending first, so the frozen cycle is small.
        own.put_point(PointRequest {
            precut: true,
            ..req
        });
        agent.cut(rt)?;
        return Ok(true);
    }
    freeze_and_cut(agent, rt, own, device, req)
}
