//! Consistency groups on one host: the disks of a group are cut at **one instant**
//! ([`crate::source::ChangeSource::cut_together`]), so that when every member's cycle at
//! that cut is crash-consistent (the race rule, per disk), the members' points together are
//! the group's disks as they all were at that instant — a group point, kept by the server.
//!
//! **The barrier.** Each member's disk task cuts only when it is between cycles (its
//! previous cycle read and tagged): a cut in the middle of another cycle's read would break
//! that disk's verdict (queue-time marks are on only from a cut to its tag). So a member
//! that wants a cut *arrives* at its group's barrier and waits; the members whose cycles are
//! running (*active*) see that a cut is wanted at their next tick (50 ms) and arrive too,
//! even with nothing recorded (an empty cycle at an exact cut is a point). When every active
//! member has arrived — or after [`GROUP_WAIT`], whoever has arrived — the last to arrive
//! (or the first to time out) cuts them all together. A member still shipping a long cycle
//! is left out of that cut: the cut has no group point, the others' replication goes on.
//!
//! **What the server learns.** Every member cut together gets a [`GroupCut`] for its
//! cycle: the group, the cut's id (its instant, ns) and the members cut. After the cycle's
//! `Verdict` the disk's session sends it as `GroupVerdict` (protocol 5).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::rounds::RoundStep;
use super::{Agent, DiskRt, lock};
use base::net::ReplError;

/// The longest a member waits at the barrier for the group's other active members.
pub(crate) const GROUP_WAIT: Duration = Duration::from_millis(500);

/// A cycle cut together with other disks of its group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct GroupCut {
    /// The group's name.
    pub(crate) group: String,
    /// The cut's id: its instant in ns since the epoch, the same for every member.
    pub(crate) cut_id: u64,
    /// Every disk cut at that instant (sorted).
    pub(crate) members: Vec<String>,
}

type Reply = oneshot::Sender<Result<u64, String>>;

/// The longest a prepared member holds its own cuts waiting for the round's cut.
pub(crate) const HOLD: Duration = Duration::from_secs(1);

/// Waits (at most [`HOLD`]) for round `round`'s cut, answering pings meanwhile; `None` if it
/// did not come (the disk's cycles go on; the round fails on the server).
async fn hold(
    rt: &DiskRt,
    s: &mut super::session::Session,
    own: &mut super::owner::Owner,
    round: u64,
) -> Result<Option<RoundStep>, ReplError> {
    let until = tokio::time::Instant::now() + HOLD;
    loop {
        if let Some(r) = own.take_round() {
            return Ok((r.round == round && r.step == 1).then_some(r));
        }
        if own.is_stopped() {
            return Ok(None);
        }
        tokio::select! {
            m = s.recv(rt) => {
                let m = m?;
                return Err(ReplError::Protocol(format!("{} sent {} unprompted", s.peer, m.name())));
            }
            () = own.next() => {}
            () = tokio::time::sleep_until(until) => return Ok(None),
        }
    }
}

#[derive(Default)]
struct Barrier {
    /// Members whose cycles are running: a cut waits for them (up to [`GROUP_WAIT`]).
    active: BTreeSet<String>,
    /// Members waiting for the cut, and where their sequence goes.
    waiting: BTreeMap<String, Reply>,
    /// Since when a cut is wanted (the active members join at their next tick).
    wanted: Option<Instant>,
}

/// The groups' barriers on this agent.
#[derive(Default)]
pub(crate) struct Groups {
    inner: std::sync::Mutex<BTreeMap<String, Barrier>>,
}

impl Groups {
    /// Marks `disk` active in `group` (its cycles run), and not active in any other group.
    pub(crate) fn set_active(&self, disk: &str, group: Option<&str>) {
        let mut g = lock(&self.inner);
        for (name, b) in g.iter_mut() {
            if Some(name.as_str()) != group {
                b.active.remove(disk);
            }
        }
        if let Some(group) = group {
            g.entry(group.to_string())
                .or_default()
                .active
                .insert(disk.to_string());
        }
        g.retain(|_, b| !b.active.is_empty() || !b.waiting.is_empty());
    }

    /// Whether another member of `group` waits for a cut.
    pub(crate) fn wanted(&self, group: &str) -> bool {
        lock(&self.inner)
            .get(group)
            .is_some_and(|b| b.wanted.is_some())
    }

    /// Adds `disk` to the barrier. `Some(members)` when every active member has now arrived:
    /// the caller cuts them (the barrier is emptied).
    fn arrive(&self, group: &str, disk: &str, reply: Reply) -> Option<BTreeMap<String, Reply>> {
        let mut g = lock(&self.inner);
        let b = g.entry(group.to_string()).or_default();
        b.active.insert(disk.to_string());
        b.waiting.insert(disk.to_string(), reply);
        b.wanted.get_or_insert_with(Instant::now);
        if b.active.iter().all(|m| b.waiting.contains_key(m)) {
            b.wanted = None;
            return Some(std::mem::take(&mut b.waiting));
        }
        None
    }

    /// Takes whoever waits in `group`'s barrier (after the wait ran out).
    fn take(&self, group: &str) -> BTreeMap<String, Reply> {
        let mut g = lock(&self.inner);
        let Some(b) = g.get_mut(group) else {
            return BTreeMap::new();
        };
        b.wanted = None;
        std::mem::take(&mut b.waiting)
    }

    /// Leaves the barrier without a cut (the disk is stopping).
    fn leave(&self, group: &str, disk: &str) {
        let mut g = lock(&self.inner);
        if let Some(b) = g.get_mut(group) {
            b.waiting.remove(disk);
            b.active.remove(disk);
            if b.waiting.is_empty() {
                b.wanted = None;
            }
        }
    }
}

/// Keeps a disk active in its group while its cycles run.
pub(crate) struct Membership<'a> {
    groups: &'a Groups,
    disk: String,
}

impl<'a> Membership<'a> {
    /// The disk `disk` takes part in its group's cuts until this is dropped.
    pub(crate) fn new(groups: &'a Groups, disk: &str) -> Self {
        Self {
            groups,
            disk: disk.to_string(),
        }
    }

    /// Follows the disk's current group (it can change while the cycles run).
    pub(crate) fn follow(&self, group: Option<&str>) {
        self.groups.set_active(&self.disk, group);
    }
}

impl Drop for Membership<'_> {
    fn drop(&mut self) {
        self.groups.set_active(&self.disk, None);
    }
}

impl Agent {
    /// Serves a round's step between cycles and answers it; true if it cut (the caller ships
    /// the cycle). *Prepare* (step 0) is answered at once, then the disk holds its own cuts —
    /// for at most [`HOLD`] — waiting for the round's *cut* (step 1), so that every member
    /// cuts within a round trip of the others and the window to the release stays short. A
    /// cut is made and answered with its cycle, the change count before it remembered. The
    /// release (step 2) is answered as soon as it arrives ([`release`](super::rounds::release)).
    pub(crate) async fn serve_round(
        &self,
        rt: &DiskRt,
        s: &mut super::session::Session,
        own: &mut super::owner::Owner,
        r: RoundStep,
    ) -> Result<bool, ReplError> {
        let r = if r.step == 0 {
            if self.freezes(&r.group) {
                super::rounds::freeze(rt, r.round);
            }
            s.msg(proto::Msg::GroupRoundDone {
                group: r.group.clone(),
                round: r.round,
                step: 0,
                seq: 0,
                quiet: false,
            })
            .await?;
            match hold(rt, s, own, r.round).await {
                Ok(Some(cut)) => cut,
                other => {
                    super::rounds::thaw(rt, r.round);
                    return other.map(|_| false);
                }
            }
        } else {
            r
        };
        if r.step != 1 {
            super::rounds::thaw(rt, r.round);
            return Ok(false);
        }
        let seq = self
            .cut(rt)
            .inspect_err(|_| super::rounds::thaw(rt, r.round))?;
        let before = rt.records_at_cut.load(std::sync::atomic::Ordering::SeqCst);
        *lock(&rt.round) = Some((r.round, seq, before));
        s.msg(proto::Msg::GroupRoundDone {
            group: r.group,
            round: r.round,
            step: 1,
            seq,
            quiet: false,
        })
        .await?;
        Ok(true)
    }

    /// Cuts `rt`'s disk together with the other members of `group` that arrive in time
    /// ([`GROUP_WAIT`]); returns its cycle's sequence. `Ok(None)`: the disk is stopping.
    pub(crate) async fn group_cut(
        &self,
        rt: &DiskRt,
        group: &str,
        stopped: impl Future<Output = ()>,
    ) -> Result<Option<u64>, ReplError> {
        let name = lock(&rt.prot).name.clone();
        let (tx, mut rx) = oneshot::channel();
        if let Some(members) = self.groups.arrive(group, &name, tx) {
            self.cut_members(group, members);
        }
        tokio::pin!(stopped);
        let got = tokio::select! {
            r = &mut rx => r,
            () = tokio::time::sleep(GROUP_WAIT) => {
                let members = self.groups.take(group);
                self.cut_members(group, members);
                rx.await
            }
            () = &mut stopped => {
                self.groups.leave(group, &name);
                return Ok(None);
            }
        };
        match got {
            Ok(Ok(seq)) => Ok(Some(seq)),
            Ok(Err(e)) => Err(ReplError::Local(e)),
            Err(_) => Err(ReplError::Local(format!(
                "disk {name}: group {group}'s cut was abandoned"
            ))),
        }
    }

    /// Cuts the waiting members at one instant and answers each.
    fn cut_members(&self, group: &str, members: BTreeMap<String, Reply>) {
        if members.is_empty() {
            return;
        }
        let rts: Vec<(String, Option<Arc<DiskRt>>, Reply)> = {
            let disks = lock(&self.disks);
            members
                .into_iter()
                .map(|(n, r)| {
                    let rt = disks.get(&n).cloned();
                    (n, rt, r)
                })
                .collect()
        };
        let mut present = Vec::new();
        for (n, rt, reply) in rts {
            match rt {
                Some(rt) => present.push((n, rt, reply)),
                None => {
                    let _ = reply.send(Err(format!("disk {n} is no longer protected")));
                }
            }
        }
        let refs: Vec<&DiskRt> = present.iter().map(|(_, rt, _)| rt.as_ref()).collect();
        let seqs = self.cut_together(&refs);
        let names: Vec<String> = present.iter().map(|(n, _, _)| n.clone()).collect();
        // A group point needs every member: a cut that left one out (still shipping, in a
        // resync, disconnected) is a cut of each disk, not of the group.
        let whole = names == self.members(group);
        let cut_id = present
            .first()
            .and_then(|(_, rt, _)| {
                let seq = *seqs.first()?.as_ref().ok()?;
                lock(&rt.cuts).get(&seq).map(|c| c.0)
            })
            .unwrap_or_else(base::now_ns);
        for ((_, rt, reply), seq) in present.into_iter().zip(seqs) {
            if let Ok(seq) = &seq
                && whole
                && names.len() > 1
            {
                let mut g = lock(&rt.group_cuts);
                g.insert(
                    *seq,
                    GroupCut {
                        group: group.to_string(),
                        cut_id,
                        members: names.clone(),
                    },
                );
                while g.len() > 4096 {
                    g.pop_first();
                }
            }
            let _ = reply.send(seq.map_err(|e| e.to_string()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_active_member_to_arrive_releases_the_barrier() {
        let g = Groups::default();
        g.set_active("a", Some("db"));
        g.set_active("b", Some("db"));
        let (ta, _ra) = oneshot::channel();
        assert!(
            g.arrive("db", "a", ta).is_none(),
            "b is active and not there"
        );
        assert!(g.wanted("db"), "b sees that a cut is wanted");
        let (tb, _rb) = oneshot::channel();
        let cut = g.arrive("db", "b", tb).expect("all active members arrived");
        assert_eq!(cut.keys().collect::<Vec<_>>(), ["a", "b"]);
        assert!(!g.wanted("db"));
    }

    #[test]
    fn a_member_that_stopped_or_left_the_group_is_not_waited_for() {
        let g = Groups::default();
        g.set_active("a", Some("db"));
        g.set_active("b", Some("db"));
        g.set_active("b", Some("other"));
        let (ta, _ra) = oneshot::channel();
        assert!(
            g.arrive("db", "a", ta).is_some(),
            "b moved to another group"
        );
        g.set_active("a", None);
        g.set_active("c", Some("db"));
        {
            let m = Membership::new(&g, "d");
            m.follow(Some("db"));
            let (tc, _rc) = oneshot::channel();
            assert!(g.arrive("db", "c", tc).is_none(), "d is active");
        }
        // d's cycles ended: whoever waits is taken after the wait.
        assert_eq!(g.take("db").keys().collect::<Vec<_>>(), ["c"]);
    }
}
