//! The agent's control-socket requests: [`Agent::handle`] answers each one, with the handlers
//! it calls (protect, unprotect, points, resync, verify, reverse, re-copy, planned failover,
//! wait).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::owner::{DiskCommand, PlannedRequest, PointRequest, VerifyRequest};
use super::reason::ResyncCause;
use super::state::{self, CopyPlan, Protection};
use super::{Agent, lock};
use base::config::Frequency;
use base::control::{Request, Response};
use base::status::{self, DiskStatus, Job, JobsReport};

/// How often `sitrep wait` repeats its cut request until a cut made after it is seen.
const CUT_AGAIN: Duration = Duration::from_millis(50);

impl Agent {
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn protect(
        self: &Arc<Self>,
        device: String,
        to: String,
        name: Option<String>,
        frequency: &str,
        app_every: Option<&str>,
        hooks: (Option<String>, Option<String>),
        points: base::points::PointPolicy,
        reverse: Option<state::ReverseInfo>,
        group: Option<String>,
    ) -> anyhow::Result<Job> {
        if hooks.1.is_some() && hooks.0.is_none() {
            anyhow::bail!("--post-hook needs a --pre-hook");
        }
        group
            .as_deref()
            .map(super::group_requests::check_group_name)
            .transpose()?;
        let frequency = Frequency::parse(frequency).map_err(anyhow::Error::msg)?;
        let app_every = app_every
            .map(|s| {
                let ns = base::points::parse_duration_ns(s).map_err(anyhow::Error::msg)?;
                let secs = ns / 1_000_000_000;
                if !(3600..=12 * 3600).contains(&secs) {
                    anyhow::bail!("--app-consistent-every {s}: must be between 1h and 12h");
                }
                Ok(secs)
            })
            .transpose()?;
        base::net::split_host_port(&to).map_err(anyhow::Error::msg)?;
        let device_path = PathBuf::from(&device);
        let name = disk_name(name, &device_path)?;
        {
            let disks = lock(&self.disks);
            if disks.contains_key(&name) {
                anyhow::bail!("disk {name} is already protected");
            }
            if let Some((n, _)) = disks
                .iter()
                .find(|(_, d)| lock(&d.prot).device == device_path)
            {
                anyhow::bail!("{device} is already protected as disk {n}");
            }
        }
        self.with_tracker(|t| t.check_device(&device_path))?;
        let mut id = [0u8; 16];
        getrandom::fill(&mut id).map_err(|e| anyhow::anyhow!("random disk id: {e}"))?;
        let prot = Protection {
            version: 1,
            name: name.clone(),
            device: device_path,
            to,
            frequency,
            disk_id: base::hex16(&id),
            created_unix_ns: base::now_ns(),
            copy: CopyPlan {
                from_seq: 0,
                done: false,
                restart: false,
            },
            resync_reason: None,
            app_consistent_every_secs: app_every,
            points,
            pre_hook: hooks.0,
            post_hook: hooks.1,
            resync: None,
            points_from_seq: 0,
            failed_over: None,
            reverse,
            server_name: None,
            group: group.clone(),
        };
        let dir = state::disk_dir(&self.opts.state, &name);
        let id = match self.start_disk(prot, true) {
            Ok((_, id)) => id.unwrap_or(0),
            Err(e) => {
                // Nothing half-made: the disk is not tracked, its directory goes.
                let _ = std::fs::remove_dir_all(&dir);
                return Err(e.context(format!("protecting {device} as disk {name}")));
            }
        };
        if let Some(g) = &group {
            self.remember_group(g)?;
        }
        tracing::info!(disk = %name, device = %device, group = ?group, "protection enabled");
        lock(&self.jobs)
            .iter()
            .find(|j| j.id == id)
            .cloned()
            .ok_or_else(|| anyhow::anyhow!("job vanished"))
    }

    async fn unprotect(&self, name: &str) -> anyhow::Result<()> {
        let rt = lock(&self.disks)
            .remove(name)
            .ok_or_else(|| anyhow::anyhow!("disk {name} is not protected here"))?;
        self.stop_disk(&rt).await;
        let dev = lock(&rt.prot).device.clone();
        if let Err(e) = self.with_tracker(|t| t.remove_device(&dev)) {
            tracing::warn!(disk = name, "stopping tracking: {e:#}");
        }
        let dir = state::disk_dir(&self.opts.state, name);
        std::fs::remove_dir_all(&dir).map_err(|e| anyhow::anyhow!("{}: {e}", dir.display()))?;
        tracing::info!(
            disk = name,
            "protection removed (the replica stays on the server)"
        );
        Ok(())
    }

    /// An app-consistent point: the disk's worker freezes the mounted filesystem, cuts, reads
    /// the cycle and thaws (see `cycles.rs`).
    async fn create_point(
        &self,
        name: &str,
        max_freeze: Duration,
    ) -> anyhow::Result<status::AppPointReport> {
        let rt = lock(&self.disks)
            .get(name)
            .cloned()
            .ok_or_else(|| anyhow::anyhow!("disk {name} is not protected here"))?;
        if !lock(&rt.prot).copy.done {
            anyhow::bail!("disk {name}: no point before the initial copy completes");
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        // Refused by the disk's task if a point is already being made; dropped (the reply
        // then says replication stopped) if the task is gone.
        let _ = rt.cmd.send(DiskCommand::Point(PointRequest {
            reply: tx,
            max_freeze,
            precut: false,
        }));
        tokio::time::timeout(Duration::from_secs(300), rx)
            .await
            .map_err(|_| anyhow::anyhow!("disk {name}: no point after 300 s (is it connected?)"))?
            .map_err(|_| anyhow::anyhow!("disk {name}: replication stopped before the point"))?
            .map_err(anyhow::Error::msg)
    }

    /// `sitrep resync NAME [--now]`: plans a whole-disk resync if none is required, and with
    /// `now` lets it start outside its window. Returns the disk's status (the CLI follows
    /// `resync` and `resyncs_completed` there).
    fn request_resync(&self, name: &str, now: bool) -> anyhow::Result<DiskStatus> {
        let rt = lock(&self.disks)
            .get(name)
            .cloned()
            .ok_or_else(|| anyhow::anyhow!("disk {name} is not protected here"))?;
        if !lock(&rt.prot).copy.done {
            anyhow::bail!(
                "disk {name}: the initial copy has not completed; it resumes by itself (see `sitrep jobs`)"
            );
        }
        if lock(&rt.prot).resync.is_none() {
            self.require_resync(&rt, &ResyncCause::Operator, None)
                .map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        if now {
            let _ = rt.cmd.send(DiskCommand::ResyncNow);
        }
        Ok(self.disk_status(&rt))
    }

    /// `sitrep verify NAME`: the disk's session compares the replica by digests between two
    /// cycles.
    async fn verify(&self, name: &str) -> anyhow::Result<status::VerifyReport> {
        let rt = lock(&self.disks)
            .get(name)
            .cloned()
            .ok_or_else(|| anyhow::anyhow!("disk {name} is not protected here"))?;
        {
            let p = lock(&rt.prot);
            if !p.copy.done {
                anyhow::bail!("disk {name}: nothing to verify before the initial copy completes");
            }
            if let Some(r) = &p.resync {
                anyhow::bail!(
                    "disk {name}: a resync is required ({}); verify after it (`sitrep resync {name} --now`)",
                    r.reason
                );
            }
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        let _ = rt
            .cmd
            .send(DiskCommand::Verify(VerifyRequest { reply: tx }));
        tokio::time::timeout(Duration::from_secs(24 * 3600), rx)
            .await
            .map_err(|_| anyhow::anyhow!("disk {name}: verify did not finish in 24 h"))?
            .map_err(|_| anyhow::anyhow!("disk {name}: replication stopped before the verify ran (is the server reachable?)"))?
            .map_err(anyhow::Error::msg)
    }

    /// `sitrep reverse`: protects the activated `device` back to the other site (see
    /// [`Request::Reverse`]).
    async fn reverse(self: &Arc<Self>, req: Request) -> anyhow::Result<Job> {
        let Request::Reverse {
            name,
            device,
            to,
            fork_seq,
            discard_target_changes,
            frequency,
            group,
        } = req
        else {
            anyhow::bail!("not a reverse request");
        };
        if discard_target_changes {
            anyhow::bail!("{}", discard_refused(&name));
        }
        let existing = lock(&self.disks).get(&name).cloned();
        if let Some(rt) = existing {
            let replaceable = {
                let p = lock(&rt.prot);
                p.failed_over.is_some() || p.reverse.is_some()
            };
            if !replaceable {
                anyhow::bail!(
                    "disk {name} is protected from this site and did not fail over: nothing to reverse"
                );
            }
            tracing::info!(disk = %name, "replacing the previous protection for reverse replication");
            self.unprotect(&name).await?;
        }
        self.protect(
            device,
            to,
            Some(name),
            &frequency,
            None,
            (None, None),
            base::points::PointPolicy::default(),
            Some(state::ReverseInfo {
                fork_seq,
                discard_target_changes: false,
            }),
            group,
        )
        .await
    }

    /// `sitrep failback NAME --mode full-download`: copy the whole disk again.
    fn recopy(&self, name: &str) -> anyhow::Result<DiskStatus> {
        let rt = lock(&self.disks)
            .get(name)
            .cloned()
            .ok_or_else(|| anyhow::anyhow!("disk {name} is not protected here"))?;
        if lock(&rt.prot).failed_over.is_some() {
            anyhow::bail!("disk {name} failed over: nothing to copy from here");
        }
        self.start_recopy(&rt, &ResyncCause::OperatorFullCopy)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(self.disk_status(&rt))
    }

    /// `sitrep failover NAME --planned`: the disk's session quiesces, ships, compares and
    /// activates (see `planned.rs`).
    async fn planned_failover(&self, name: &str) -> anyhow::Result<status::PlannedReport> {
        let rt = lock(&self.disks)
            .get(name)
            .cloned()
            .ok_or_else(|| anyhow::anyhow!("disk {name} is not protected here"))?;
        {
            let p = lock(&rt.prot);
            if let Some(f) = &p.failed_over {
                anyhow::bail!(
                    "disk {name} already failed over ({} to point {}, {} on the secondary)",
                    f.kind,
                    f.point,
                    f.device
                );
            }
            if !p.copy.done {
                anyhow::bail!(
                    "disk {name}: the initial copy has not completed; nothing to fail over to yet"
                );
            }
            if let Some(r) = &p.resync {
                anyhow::bail!(
                    "disk {name}: a resync is required ({}); run it first (`sitrep resync {name} --now`)",
                    r.reason
                );
            }
        }
        let critical = {
            let snap = rt.snapshot();
            snap.critical
                .then(|| snap.error.clone().unwrap_or_default())
        };
        if let Some(error) = critical {
            anyhow::bail!("disk {name} is critical: {error}");
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        let _ = rt
            .cmd
            .send(DiskCommand::PlannedFailover(PlannedRequest { reply: tx }));
        tokio::time::timeout(Duration::from_secs(24 * 3600), rx)
            .await
            .map_err(|_| anyhow::anyhow!("disk {name}: the planned failover did not finish in 24 h"))?
            .map_err(|_| anyhow::anyhow!("disk {name}: replication stopped before the planned failover ran (is the server reachable?); nothing was changed"))?
            .map_err(anyhow::Error::msg)
    }

    /// Resolves once every change completed before the call is applied on the replica.
    async fn wait(&self, name: &str, timeout: Duration) -> anyhow::Result<DiskStatus> {
        let rt = lock(&self.disks)
            .get(name)
            .cloned()
            .ok_or_else(|| anyhow::anyhow!("disk {name} is not protected here"))?;
        let t0 = base::now_ns();
        let settled = t0;
        let deadline = Instant::now() + timeout;
        let mut target: Option<u64> = None;
        let _ = rt.cmd.send(DiskCommand::Cut);
        let mut snap = rt.subscribe();
        loop {
            {
                let st = snap.borrow_and_update();
                if st.critical {
                    anyhow::bail!(
                        "disk {name}: {}",
                        st.error.clone().unwrap_or_else(|| "critical".into())
                    );
                }
                let applied = st.last_applied.as_ref().map(|a| a.seq);
                if st.prot.copy.done {
                    if target.is_none()
                        && let Some((seq, at)) = st.last_cut
                        && at >= settled
                    {
                        target = Some(seq);
                    }
                    if target.is_some_and(|t| applied.is_some_and(|a| a >= t)) {
                        drop(st);
                        return Ok(self.disk_status(&rt));
                    }
                }
            }
            if Instant::now() >= deadline {
                anyhow::bail!("disk {name}: not caught up after {timeout:?}");
            }
            if target.is_none() {
                // Until a cut made after the call is seen (the task may be busy copying).
                let _ = rt.cmd.send(DiskCommand::Cut);
            }
            // Woken by the disk's next publication; the tick repeats the cut request.
            let _ = tokio::time::timeout(CUT_AGAIN, snap.changed()).await;
        }
    }

    /// The jobs, newest first.
    fn jobs_report(&self) -> JobsReport {
        let mut jobs = lock(&self.jobs).clone();
        jobs.reverse();
        JobsReport {
            schema: status::SCHEMA,
            jobs,
        }
    }

    pub(super) async fn handle(self: &Arc<Self>, req: Request) -> Response {
        match req {
            Request::Status => Response::ok(self.status()),
            Request::Jobs => Response::ok(self.jobs_report()),
            Request::Protect {
                device,
                to,
                name,
                frequency,
                app_consistent_every,
                pre_hook,
                post_hook,
                crash_points_every,
                retain,
                max_point_storage,
                group,
            } => match base::points::PointPolicy::parse(
                crash_points_every.as_deref(),
                retain.as_deref(),
            )
            .and_then(|p| p.with_max_point_storage(max_point_storage.as_deref()))
            {
                Err(e) => Response::err(e),
                Ok(points) => Response::answer(
                    self.protect(
                        device,
                        to,
                        name,
                        &frequency,
                        app_consistent_every.as_deref(),
                        (pre_hook, post_hook),
                        points,
                        None,
                        group,
                    )
                    .await,
                ),
            },
            Request::Unprotect { name } => Response::answer(
                self.unprotect(&name)
                    .await
                    .map(|()| serde_json::json!({ "name": name })),
            ),
            Request::CreatePoint {
                name,
                max_freeze_ms,
            } => Response::answer(
                self.create_point(&name, Duration::from_millis(max_freeze_ms))
                    .await,
            ),
            Request::Group {
                action,
                group,
                disks,
                freeze,
            } => Response::answer(self.group_request(action, group, disks, freeze)),
            r @ (Request::Points { .. }
            | Request::GroupPoints { .. }
            | Request::GroupExport { .. }
            | Request::Export { .. }
            | Request::Retired { .. }
            | Request::DeletePoints { .. }
            | Request::AcceptReverse { .. }
            | Request::Failover { .. }
            | Request::GroupFailover { .. }
            | Request::GroupCommit { .. }
            | Request::GroupAllow { .. }
            | Request::Commit { .. }
            | Request::FailoverRecord { .. }
            | Request::GroupFailoverRecords { .. }) => server_only(&r),
            Request::Resync { name, now } => Response::answer(self.request_resync(&name, now)),
            r @ Request::Reverse { .. } => Response::answer(self.reverse(r).await),
            Request::Recopy { name } => Response::answer(self.recopy(&name)),
            Request::PlannedFailover { name } => {
                Response::answer(self.planned_failover(&name).await)
            }
            Request::Verify { name } => Response::answer(self.verify(&name).await),
            Request::Wait { name, timeout_secs } => {
                Response::answer(self.wait(&name, Duration::from_secs(timeout_secs)).await)
            }
        }
    }
}

/// The answer to a request: its result, or the error with its causes.
/// Why `sitrep reverse --discard-target-changes` no longer works, and what to do instead.
fn discard_refused(name: &str) -> String {
    format!(
        "disk {name}: --discard-target-changes is no longer honoured: the changes of the other site are discarded only by that site's operator — run `sitrep reverse-accept {name} --discard-local-changes` on the other site's server, then `sitrep reverse {name} --to HOST:PORT` here again"
    )
}

/// The refusal of a request only the server answers, saying where to send it.
fn server_only(r: &Request) -> Response {
    Response::err(match r {
        Request::AcceptReverse { .. } => {
            "reverse-accept is decided by the server that would adopt the disk: use the server's socket (--socket)"
        }
        Request::Failover { .. }
        | Request::GroupFailover { .. }
        | Request::GroupCommit { .. }
        | Request::GroupAllow { .. }
        | Request::Commit { .. }
        | Request::FailoverRecord { .. }
        | Request::GroupFailoverRecords { .. } => {
            "failover and commit run on the secondary: use the server's socket (--socket)"
        }
        _ => "recovery points live on the server: use the server's socket (--socket)",
    })
}

/// The disk's name: the one asked for, else the device's base name; checked.
fn disk_name(name: Option<String>, device: &std::path::Path) -> anyhow::Result<String> {
    let name = name.unwrap_or_else(|| {
        device
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("disk")
            .to_string()
    });
    if !base::valid_disk_name(&name) {
        anyhow::bail!(
            "'{name}' is not a valid disk name (1-64 letters, digits, '.', '_', '-'; no leading dot)"
        );
    }
    Ok(name)
}
