//! The initial copy (and a full re-copy): the whole device read in checkpoints of
//! [`CHECKPOINT_BYTES`], a few acknowledged checkpoints in flight, resumable from the
//! server's cursor.

use std::time::Instant;

use proto::Msg;

use super::jobs::JobStep;
use super::owner::Owner;
use super::session::{CHECKPOINT_BYTES, CHECKPOINTS_IN_FLIGHT, GRANULE, Session, send_frame};
use super::ship::{Item, spawn_reader};
use super::snapshot::CopyRun;
use super::state::CopyPlan;
use super::{Agent, DiskRt, lock};
use base::net::ReplError;

/// Copies the whole device (from `cursor`), then tells the server the copy is done.
/// Returns true if stopped.
pub(crate) async fn run_copy(
    agent: &Agent,
    rt: &DiskRt,
    s: &mut Session,
    plan: CopyPlan,
    cursor: Option<u64>,
    own: &mut Owner,
) -> Result<bool, ReplError> {
    let start = begin(agent, rt, s, plan, cursor).await?;
    if stream(agent, rt, s, start, own).await? {
        return Ok(true);
    }
    finish(agent, rt, s, plan).await?;
    Ok(false)
}

/// Starts (or resumes) the copy on the server; returns the cursor it starts from.
async fn begin(
    agent: &Agent,
    rt: &DiskRt,
    s: &mut Session,
    plan: CopyPlan,
    cursor: Option<u64>,
) -> Result<u64, ReplError> {
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
        st.copy = Some(CopyRun {
            cursor: start,
            size,
            started: Instant::now(),
            started_cursor: start,
            done: false,
        });
    });
    Ok(start)
}

/// Reads the device from `start` and sends it, checkpoint by checkpoint, waiting for all
/// acknowledgements. Returns true if stopped.
async fn stream(
    agent: &Agent,
    rt: &DiskRt,
    s: &mut Session,
    start: u64,
    own: &mut Owner,
) -> Result<bool, ReplError> {
    let size = rt.size;
    let name = lock(&rt.prot).name.clone();
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
    Ok(false)
}

/// Tells the server the copy is complete and records it.
async fn finish(
    agent: &Agent,
    rt: &DiskRt,
    s: &mut Session,
    plan: CopyPlan,
) -> Result<(), ReplError> {
    let size = rt.size;
    let name = lock(&rt.prot).name.clone();
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
    Ok(())
}

fn copy_progress(agent: &Agent, rt: &DiskRt, cursor: u64, size: u64) {
    rt.set(|st| {
        if let Some(c) = &mut st.copy {
            c.cursor = cursor;
        }
    });
    agent.job_step(rt, JobStep::InitialReplication, cursor, size);
}
