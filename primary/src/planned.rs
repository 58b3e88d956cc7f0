//! Planned failover, on the primary (`sitrep failover NAME --planned`; docs/architecture.md,
//! *Failover*): move the disk to the secondary with zero data loss, proved rather than
//! assumed.
//!
//! Runs inside the disk's session, between cycles, in this order:
//! 1. **ship** what is pending (so the quiesced window is short);
//! 2. **quiesce**: `fsfreeze` the filesystem mounted from the device; with none mounted the
//!    operator must have stopped the writers, and step 5 checks that nobody wrote;
//! 3. **last cycle**: cut and ship it; it must be judged consistent (no change raced its
//!    reads), and it becomes a recovery point labelled `planned failover: …`;
//! 4. **compare**: digests of the whole source and the whole replica (the resync's engine,
//!    compare only) — any difference aborts;
//! 5. **no writes**: a second cut must hold no change since the last cycle;
//! 6. **activate**: `PlannedFailover{seq}`; the server checks the replica is exactly at that
//!    cycle and point, activates it as a block device and answers `FailoverDone`.
//!
//! Any failure before 6 thaws the filesystem and replication goes on; the operator hears why.
//! After 6 the protection records `failed_over`, replication of the disk from this site stops,
//! and the filesystem **stays frozen** so the old primary cannot diverge (tracking goes on,
//! so changes made here afterwards are known). To release it: stop the application, then
//! `fsfreeze -u MOUNT` and unmount.

use std::time::Instant;

use proto::Msg;
use tokio::sync::oneshot;

use super::jobs::{JobKind, JobStep};
use super::owner::{FrozenCycle, Owner, PlannedRequest};
use super::scan::{Pass, WINDOW_BYTES, WINDOW_RANGES, scan};
use super::sealed::{ShipEnd, ship_sealed};
use super::session::{GRANULE, Session};
use super::state::{FailedOverInfo, FailoverKind, log_dir};
use super::{Agent, DiskRt, freeze, lock};
use base::digest::Key;
use base::net::ReplError;
use base::ranges;
use base::status::{JobState, PlannedReport};

/// Why the planned failover stopped before the activation (replication goes on).
struct Abort(String);

/// Runs a planned failover for `req`. `Ok(true)`: the disk is active on the secondary now
/// (the caller ends the session); `Ok(false)`: it was aborted and replication goes on (the
/// operator was told why). Errors are the session's (network, local), and abort it too.
pub(crate) async fn run(
    agent: &Agent,
    rt: &DiskRt,
    s: &mut Session,
    expected: &mut Option<u64>,
    own: &mut Owner,
    req: PlannedRequest,
) -> Result<bool, ReplError> {
    let name = lock(&rt.prot).name.clone();
    let started = Instant::now();
    agent.new_job(rt, JobKind::PlannedFailover, &name);
    let mut quiesced: Option<freeze::Frozen> = None;
    let res = steps(agent, rt, s, expected, own, &mut quiesced).await;
    rt.set(|st| st.planned = None);
    match res {
        Ok(Ok((mut report, info))) => {
            report.seconds = started.elapsed().as_secs_f64();
            {
                let mut p = rt.prot_mut();
                p.failed_over = Some(info);
                if let Err(e) = p.save(&agent.opts.state) {
                    // The activation happened; the record is what failed. Say so loudly:
                    // a restarted agent would try to replicate a disk the server refuses.
                    tracing::error!(disk = %name, "saving the failed-over state: {e}");
                }
            }
            if let Some(f) = quiesced.take() {
                // Stays frozen on purpose: the old primary must not diverge.
                f.keep();
            }
            agent.job_finish(rt, JobState::Succeeded, None);
            tracing::info!(
                disk = %name, point = report.point, device = %report.device,
                "planned failover complete; replication from this site stopped"
            );
            let _ = req.reply.send(Ok(report));
            Ok(true)
        }
        Ok(Err(Abort(why))) => {
            drop(quiesced.take());
            let msg = format!("disk {name}: planned failover aborted: {why}; replication goes on");
            tracing::warn!("{msg}");
            agent.job_finish(rt, JobState::Failed, Some(msg.clone()));
            let _ = req.reply.send(Err(msg));
            Ok(false)
        }
        Err(e) => {
            drop(quiesced.take());
            let msg = format!("disk {name}: planned failover failed: {e}");
            agent.job_finish(rt, JobState::Failed, Some(msg.clone()));
            let _ = req.reply.send(Err(msg));
            Err(e)
        }
    }
}

/// Moves the failover to `at` (the job's step and the disk's phase).
fn step(agent: &Agent, rt: &DiskRt, at: JobStep, done: u64, total: u64) {
    rt.set(|st| st.planned = Some(at));
    agent.job_step(rt, at, done, total);
}

type Steps = Result<(PlannedReport, FailedOverInfo), Abort>;

/// A step's outcome: `Err` is the session's error, `Ok(Err)` an abort.
type Step<T> = Result<Result<T, Abort>, ReplError>;

/// Goes on with a step's value, or returns its abort.
macro_rules! step_ok {
    ($e:expr) => {
        match $e? {
            Ok(v) => v,
            Err(a) => return Ok(Err(a)),
        }
    };
}

async fn steps(
    agent: &Agent,
    rt: &DiskRt,
    s: &mut Session,
    expected: &mut Option<u64>,
    own: &mut Owner,
    quiesced: &mut Option<freeze::Frozen>,
) -> Result<Steps, ReplError> {
    let device = lock(&rt.prot).device.clone();
    // 1. Ship what is pending.
    step(agent, rt, JobStep::ShipPending, 0, 0);
    agent.cut(rt)?;
    if let Some(end) = ship_sealed(agent, rt, s, expected, own).await? {
        return Ok(Err(Abort(match end {
            ShipEnd::Resync(why) => format!("a resync is needed first ({why})"),
            ShipEnd::Stopped => "the agent is stopping".into(),
        })));
    }
    // 2. Quiesce.
    step(agent, rt, JobStep::Quiesce, 0, 0);
    let label = match quiesce(&device, quiesced) {
        Ok(l) => l,
        Err(a) => return Ok(Err(a)),
    };
    // 3. The last cycle, judged like an app-consistent point's.
    step(agent, rt, JobStep::ShipLastCycle, 0, 0);
    let last = step_ok!(ship_last(agent, rt, s, expected, own, &label).await);
    let cut_time_ns = rt
        .snapshot()
        .last_applied
        .as_ref()
        .map_or(0, |a| a.cut_time_ns);
    // 4. Compare the whole disk.
    step(agent, rt, JobStep::Compare, 0, rt.size);
    step_ok!(compare(agent, rt, s, own).await);
    // 5. Nobody wrote since the last cycle.
    step(agent, rt, JobStep::CheckNoWrites, 0, 0);
    step_ok!(check_no_writes(agent, rt, &device));
    // 6. Activate.
    step(agent, rt, JobStep::Activate, 0, 0);
    activate(rt, s, last, cut_time_ns, label, quiesced.is_some()).await
}

/// Freezes the filesystem mounted from `device`, if any; returns the point's label.
fn quiesce(
    device: &std::path::Path,
    quiesced: &mut Option<freeze::Frozen>,
) -> Result<String, Abort> {
    match freeze::mount_point(device) {
        Ok(Some(mount)) => match freeze::Frozen::new(&mount) {
            Ok(f) => {
                *quiesced = Some(f);
                Ok(format!("planned failover: fsfreeze {}", mount.display()))
            }
            Err(e) => Err(Abort(format!("freezing {}: {e}", mount.display()))),
        },
        Ok(None) => Ok("planned failover: no filesystem mounted, no writes seen".to_string()),
        Err(e) => Err(Abort(format!("reading the mounts: {e}"))),
    }
}

/// Cuts and ships the last cycle; it must be judged consistent. Returns its sequence.
async fn ship_last(
    agent: &Agent,
    rt: &DiskRt,
    s: &mut Session,
    expected: &mut Option<u64>,
    own: &mut Owner,
    label: &str,
) -> Step<u64> {
    let last = agent.cut(rt)?;
    let (tx, mut judged) = oneshot::channel();
    own.frozen = Some(FrozenCycle {
        seq: last,
        frozen: None,
        label: label.to_string(),
        freeze_ms: 0.0,
        max_freeze: std::time::Duration::from_secs(24 * 3600),
        reply: tx,
    });
    let shipped = ship_sealed(agent, rt, s, expected, own).await;
    // Not judged (an error, or the log was not shipped): forget the request.
    own.frozen.take_if(|f| f.seq == last);
    if let Some(end) = shipped? {
        return Ok(Err(Abort(match end {
            ShipEnd::Resync(why) => format!("a resync is needed ({why})"),
            ShipEnd::Stopped => "the last cycle was not shipped".into(),
        })));
    }
    match judged.try_recv() {
        Ok(Ok(r)) if r.consistent => Ok(Ok(last)),
        Ok(Ok(_)) | Err(_) => Ok(Err(Abort(format!(
            "the last cycle {last} could not be proved consistent (was the disk written?)"
        )))),
        Ok(Err(e)) => Ok(Err(Abort(e))),
    }
}

/// Compares the whole source with the whole replica by digests; any difference aborts.
async fn compare(agent: &Agent, rt: &DiskRt, s: &mut Session, own: &mut Owner) -> Step<()> {
    let key = Key::random(agent.opts.digest)
        .map_err(|e| ReplError::Local(format!("random digest key: {e}")))?;
    s.msg(Msg::DigestKey {
        algo: key.algo().as_u8(),
        key: key.as_bytes().to_vec(),
    })
    .await?;
    let windows = ranges::windows(&[(0, rt.size)], 0, WINDOW_BYTES, WINDOW_RANGES);
    let differ = scan(agent, rt, s, &key, windows, Pass::Compare, own).await?;
    if differ.is_empty() {
        return Ok(Ok(()));
    }
    let differ = ranges::normalize(differ);
    Ok(Err(Abort(format!(
        "the replica differs from the source in {} bytes ({} ranges, first at offset {}) after the last cycle",
        ranges::total(&differ),
        differ.len(),
        differ.first().map_or(0, |r| r.0)
    ))))
}

/// A second cut must hold no change since the last cycle.
fn check_no_writes(agent: &Agent, rt: &DiskRt, device: &std::path::Path) -> Step<()> {
    let name = lock(&rt.prot).name.clone();
    let after = agent.cut(rt)?;
    let logs = log_dir(&agent.opts.state, &name);
    let path = hrl::chain::list_logs(&logs)
        .map_err(|e| ReplError::Local(format!("disk {name}: listing logs: {e}")))?
        .into_iter()
        .find(|(seq, _)| seq.0 == after)
        .map(|(_, p)| p)
        .ok_or_else(|| ReplError::Local(format!("disk {name}: log {after} vanished")))?;
    let cyc = tokio::task::block_in_place(|| crate::cycle::read_cycle(&path, rt.size, GRANULE))
        .map_err(|e| ReplError::Local(format!("disk {name}: {e}")))?;
    if cyc.bytes > 0 || cyc.whole_disk_gap.is_some() {
        return Ok(Err(Abort(format!(
            "{} was written during the planned failover ({} bytes after the last cycle): stop its writers (or mount its filesystem, which is then frozen) and try again",
            device.display(),
            cyc.bytes
        ))));
    }
    Ok(Ok(()))
}

/// Asks the server to activate the replica at cycle `last`.
async fn activate(
    rt: &DiskRt,
    s: &mut Session,
    last: u64,
    cut_time_ns: u64,
    label: String,
    frozen: bool,
) -> Result<Steps, ReplError> {
    let name = lock(&rt.prot).name.clone();
    s.msg(Msg::PlannedFailover { seq: last }).await?;
    let (point, cut, dev, image) = match s.answer(rt).await {
        Ok(Msg::FailoverDone {
            point,
            cut_time_ns,
            device,
            image,
        }) if device.len() <= proto::MAX_PATH_LEN && image.len() <= proto::MAX_PATH_LEN => {
            (point, cut_time_ns, device, image)
        }
        Ok(m) => {
            return Err(ReplError::Protocol(format!(
                "{} answered PlannedFailover with {}",
                s.peer,
                m.name()
            )));
        }
        Err(ReplError::Refused { message, .. }) => {
            return Ok(Err(Abort(format!("the server refused: {message}"))));
        }
        Err(e) => return Err(e),
    };
    let cut = if cut == 0 { cut_time_ns } else { cut };
    let report = PlannedReport {
        disk: name.clone(),
        kind: "planned".into(),
        point,
        point_kind: "app-consistent".into(),
        cut_time_unix_ns: cut,
        device: dev.clone(),
        image: image.clone(),
        quiesced: label.clone(),
        frozen,
        compared_bytes: rt.size,
        seconds: 0.0,
    };
    let info = FailedOverInfo {
        kind: FailoverKind::Planned,
        unix_ns: base::now_ns(),
        point,
        cut_time_unix_ns: cut,
        device: dev,
        image,
        quiesced: label,
    };
    Ok(Ok((report, info)))
}
