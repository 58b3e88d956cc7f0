//! Cross-host consistency groups: the server coordinates their points (docs/architecture.md,
//! *Consistency groups*, *Across hosts*). Every `--group-points-every`, for each group whose
//! members are on more than one client, a **round**:
//!
//! 1. *prepare* — every member's session is sent `GroupRound{step 0}`; each agent answers at
//!    its next moment between cycles and then holds its own cuts (at most a second);
//! 2. *cut* — once every member is prepared, step 1: each held agent cuts at once and answers
//!    with the cycle (`GroupRoundDone`), so the members' cuts lie within a round trip;
//! 3. *release* — once every member cut, step 2; each agent answers on receipt whether any
//!    change was recorded on the disk since its cut (*quiet*);
//! 4. if every member was quiet, and each member's cut cycle became a point (its own race
//!    rule), those points are one group point.
//!
//! Every release comes after every cut, so a write that completed before another host's
//! write was issued is never on the wrong side: it either completed before its own disk's cut
//! or between that cut and the release, which makes the member not quiet. A member that is
//! not connected, or does not answer within [`ROUND_WAIT`], ends the round without a point —
//! the other members' replication is never held up — and `status` says which member
//! (`groups[].last_round`).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use proto::Msg;

use super::{Shared, lock};

/// The longest a round waits for the members' answers (each step) and for their points.
pub(super) const ROUND_WAIT: Duration = Duration::from_secs(10);
/// How often a round looks at the answers at the latest (an answer wakes it at once).
const POLL: Duration = Duration::from_millis(10);

/// Runs a round for every cross-host group each `every`, until the server stops.
pub(super) async fn run(sh: Arc<Shared>, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        for (group, members) in sh.groups.spanning() {
            let t0 = Instant::now();
            let outcome = match round(&sh, &group, &members).await {
                Ok(id) => format!("group point {id} (round {} ms)", t0.elapsed().as_millis()),
                Err(why) => why,
            };
            tracing::debug!(group, outcome, "group round");
            sh.groups.end_round(&group, outcome);
        }
    }
}

/// One round over `members` (disk → client); the new group point's id, or why there is none.
async fn round(
    sh: &Shared,
    group: &str,
    members: &BTreeMap<String, String>,
) -> Result<u64, String> {
    let mut txs = Vec::new();
    for disk in members.keys() {
        let slot = lock(&sh.slots).get(disk).cloned();
        let tx = slot.and_then(|s| lock(&s.rounds).as_ref().map(|(_, tx)| tx.clone()));
        match tx {
            Some(tx) if !tx.is_closed() => txs.push((disk.clone(), tx)),
            _ => return Err(format!("held back by disk {disk}: not connected")),
        }
    }
    let id = base::now_ns();
    let names: BTreeSet<String> = members.keys().cloned().collect();
    sh.groups.begin_round(group, id, names.clone());
    for step in [0u8, 1, 2] {
        for (disk, tx) in &txs {
            let m = Msg::GroupRound {
                group: group.to_string(),
                round: id,
                step,
            };
            if tx.send_timeout(m, ROUND_WAIT).await.is_err() {
                return Err(format!("held back by disk {disk}: its session ended"));
            }
        }
        wait_answers(sh, group, &names, step).await?;
    }
    let r = sh
        .groups
        .round(group)
        .ok_or_else(|| "the round was abandoned".to_string())?;
    if let Some((disk, _)) = r.quiet.iter().find(|(_, q)| !**q) {
        return Err(format!(
            "disk {disk} was written between its cut and the round's release (no quiet window)"
        ));
    }
    let points = member_points(sh, &r.cuts).await?;
    let retention = {
        let first = names.first().and_then(|d| lock(&sh.slots).get(d).cloned());
        first
            .and_then(|s| s.disk.lock().as_ref().map(|d| d.retention().clone()))
            .unwrap_or_else(|| sh.retention.clone())
    };
    let gp = tokio::task::block_in_place(|| {
        sh.groups
            .add_round_point(group, id, &points, &retention, base::now_ns())
    })?;
    tokio::task::block_in_place(|| super::session::group::repin(sh, group));
    tracing::info!(
        group,
        point = gp.id,
        members = points.len(),
        "group point (cross-host)"
    );
    Ok(gp.id)
}

/// Waits until every member answered `step`.
async fn wait_answers(
    sh: &Shared,
    group: &str,
    names: &BTreeSet<String>,
    step: u8,
) -> Result<(), String> {
    let deadline = Instant::now() + ROUND_WAIT;
    loop {
        // Registered before looking, so an answer between the look and the wait wakes it.
        let woken = sh.groups.answered.notified();
        let r = sh
            .groups
            .round(group)
            .ok_or_else(|| "the round was abandoned".to_string())?;
        let answered = |d: &String| match step {
            0 => r.prepared.contains(d),
            1 => r.cuts.contains_key(d),
            _ => r.quiet.contains_key(d),
        };
        let Some(missing) = names.iter().find(|d| !answered(d)) else {
            return Ok(());
        };
        if Instant::now() >= deadline {
            let what = ["prepare", "cut", "release"][usize::from(step.min(2))];
            return Err(format!(
                "held back by disk {missing}: no answer to the round's {what} within {ROUND_WAIT:?}"
            ));
        }
        let _ = tokio::time::timeout(POLL, woken).await;
    }
}

/// Waits until each member's cut cycle is judged: its point (id, cut time), or why not.
async fn member_points(
    sh: &Shared,
    cuts: &BTreeMap<String, u64>,
) -> Result<BTreeMap<String, (u64, u64)>, String> {
    let deadline = Instant::now() + ROUND_WAIT;
    let mut out = BTreeMap::new();
    for (disk, seq) in cuts {
        loop {
            let snap = lock(&sh.slots).get(disk).and_then(|s| s.disk.snapshot());
            if let Some(p) = snap
                .as_ref()
                .and_then(|d| d.points.iter().find(|p| p.id == *seq))
            {
                out.insert(disk.clone(), (p.id, p.cut_time_ns));
                break;
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "disk {disk}: its cycle {seq} of the round did not become a point (not crash-consistent, or not applied in time)"
                ));
            }
            tokio::time::sleep(POLL).await;
        }
    }
    Ok(out)
}
