//! The policy file (`--config`) at run time: the disks it lists are protected at start, and
//! the agent re-reads it on SIGHUP (`systemctl reload sitrep-agent`).
//!
//! A re-read only adds: a device listed and not protected yet is protected, as at start.
//! An entry changed for a device already protected, and an entry removed, are reported and
//! left alone: a running protection changes by `sitrep unprotect` / `sitrep protect`, never
//! by a file edit, so a half-saved or mistyped file cannot stop a disk's replication (the
//! alternative, converging on the file like a config manager, would unprotect a disk — and
//! lose its replica's chain — for a deleted line).

use std::path::Path;
use std::sync::Arc;

use base::config::{DiskPolicy, Frequency, GroupPolicy, PolicyFile};

use crate::{Agent, lock};

impl Agent {
    /// Whether a disk of this agent tracks `device`.
    fn protects(&self, device: &str) -> bool {
        lock(&self.disks)
            .values()
            .any(|r| lock(&r.prot).device == Path::new(device))
    }

    /// Protects each of `disks` whose device no disk tracks yet; a failure is logged for
    /// its entry and the others go on.
    pub(crate) async fn protect_listed(self: &Arc<Self>, disks: &[DiskPolicy]) {
        for d in disks {
            if self.protects(&d.device) {
                continue;
            }
            let freq = d.frequency.unwrap_or(Frequency::Continuous).to_string();
            // Checked when the file was loaded; the defaults if it were not.
            let points = d.points().unwrap_or_default();
            if let Err(e) = self
                .protect(
                    d.device.clone(),
                    d.to.clone(),
                    d.name.clone(),
                    &freq,
                    d.app_consistent_every.as_deref(),
                    (d.pre_hook.clone(), d.post_hook.clone()),
                    points,
                    None,
                    d.group.clone(),
                )
                .await
            {
                tracing::error!("policy: {e:#}");
            }
        }
    }

    /// Applies the `[[group]]` settings (at start and on every re-read: a group setting,
    /// unlike a protection, follows the file). A failure is logged for its entry.
    pub(crate) fn apply_groups(&self, groups: &[GroupPolicy]) {
        for g in groups {
            let r = self
                .remember_group(&g.name)
                .and_then(|()| self.set_freeze(&g.name, g.freeze));
            if let Err(e) = r {
                tracing::error!("policy: group {}: {e:#}", g.name);
            }
        }
    }

    /// Applies `newer`, a re-read of the policy file, against `applied` (the file as last
    /// applied): see the module docs for what changes and what is only reported.
    pub(crate) async fn reload_policy(self: &Arc<Self>, applied: &PolicyFile, newer: &PolicyFile) {
        let c = applied.changes(newer);
        let mut start = c.added.clone();
        for d in &c.changed {
            if self.protects(&d.device) {
                tracing::warn!(
                    device = %d.device,
                    "policy: entry changed; the running protection keeps its settings \
                     (`sitrep unprotect`, then `sitrep protect` with the new ones)"
                );
            } else {
                start.push(d.clone());
            }
        }
        if c.settings {
            tracing::warn!(
                "policy: the [agent] settings changed; they apply when the agent restarts \
                 (systemctl restart sitrep-agent)"
            );
        }
        for d in &c.removed {
            tracing::warn!(
                device = %d.device,
                "policy: entry removed; the disk stays protected (`sitrep unprotect` stops it)"
            );
        }
        tracing::info!(
            added = c.added.len(),
            changed = c.changed.len(),
            removed = c.removed.len(),
            "policy file re-read"
        );
        self.apply_groups(&newer.group);
        self.protect_listed(&start).await;
    }
}
