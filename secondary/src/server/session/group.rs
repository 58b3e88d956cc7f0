//! `GroupVerdict` (protocol 5): the disk's cycle belongs to a consistency group's cut; its
//! point (if it became one) is reported to the group registry (`server/groups.rs`), and a
//! completed group point pins every member's point against retention.

use tokio::io::{AsyncBufRead, AsyncWrite};

use super::disk::{DiskSession, Flow, Mode};
use super::refuse;
use crate::server::groups::Report;
use crate::server::{Shared, groups};
use crate::store::StoreError;
use base::net::ReplError;

impl<R, W> DiskSession<'_, R, W>
where
    R: AsyncBufRead + Unpin,
    W: AsyncWrite + Unpin,
{
    /// `GroupMember` (any mode): the disk's group, as its agent declares it.
    pub(super) async fn on_group_member(
        &mut self,
        mode: Mode,
        group: Option<String>,
    ) -> Result<Flow, ReplError> {
        let declared = tokio::task::block_in_place(|| {
            self.shared
                .groups
                .declare(&self.c.peer, self.name, group.as_deref())
        });
        match declared {
            Ok(()) => Ok(Flow::Continue(mode)),
            Err(why) => {
                drop(mode);
                let e = StoreError::BadRequest {
                    disk: self.name.to_string(),
                    why,
                };
                Err(refuse(self.c, e).await)
            }
        }
    }

    /// A `GroupVerdict` after the `Verdict` of cycle `seq`.
    pub(super) async fn on_group_verdict(
        &mut self,
        seq: u64,
        group: String,
        cut_id: u64,
        members: Vec<String>,
    ) -> Result<Flow, ReplError> {
        let (point, retention) = self
            .on_disk(|d| {
                let p = d
                    .points()
                    .iter()
                    .find(|p| p.id == seq)
                    .map(|p| (p.id, p.cut_time_ns));
                Ok((p, d.retention().clone()))
            })
            .await?;
        let report = Report {
            client: &self.c.peer,
            group: &group,
            disk: self.name,
            cut_id,
            members: &members,
            point,
        };
        let made = tokio::task::block_in_place(|| {
            self.shared
                .groups
                .report(&report, &retention, base::now_ns())
        });
        match made {
            Ok(Some(gp)) => {
                tracing::info!(
                    group,
                    point = gp.id,
                    members = gp.members.len(),
                    "group point"
                );
                tokio::task::block_in_place(|| repin(self.shared, &group));
                Ok(Flow::Continue(Mode::Idle))
            }
            Ok(None) => Ok(Flow::Continue(Mode::Idle)),
            Err(why) => {
                let e = StoreError::BadRequest {
                    disk: self.name.to_string(),
                    why,
                };
                Err(refuse(self.c, e).await)
            }
        }
    }
}

/// Gives every member of `group` its pins again, and drops group points whose member point
/// is gone (retired before the group point completed, or since).
pub(crate) fn repin(sh: &Shared, group: &str) {
    let Some((_, points)) = sh.groups.points(group) else {
        return;
    };
    let members: std::collections::BTreeSet<&String> =
        points.iter().flat_map(|p| p.members.keys()).collect();
    let exists = |disk: &str, id: u64| {
        let slot = base::lock(&sh.slots).get(disk).cloned();
        slot.is_some_and(|s| {
            s.disk
                .lock()
                .as_ref()
                .is_some_and(|d| d.points().iter().any(|p| p.id == id))
        })
    };
    let _ = sh.groups.drop_broken(group, exists);
    for m in members {
        // The registry's lock is never held while a disk's is taken (see `drop_broken`).
        let pins = sh.groups.pins(m);
        let slot = base::lock(&sh.slots).get(m.as_str()).cloned();
        if let Some(slot) = slot
            && let Some(d) = slot.disk.lock().as_mut()
        {
            d.set_pins(pins);
        }
    }
}

/// Every group's points, with broken ones dropped first (for listings).
pub(crate) fn checked_points(
    sh: &Shared,
    group: &str,
) -> Option<(String, Vec<groups::GroupPoint>)> {
    repin(sh, group);
    sh.groups.points(group)
}
