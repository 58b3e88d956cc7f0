//! The primary's daemon (`sitrep agent`): protects disks — tracks them with the eBPF tracker,
//! copies them once, then ships their changes as cycles — and only ever connects out.
//!
//! State lives in `STATE/disks/NAME/` ([`state`]); a restart resumes every protection: a
//! clean stop (SIGTERM) continues the log chain, anything else makes the tracker start with
//! a whole-disk gap, which turns into a re-copy (the checksum resync replaces it later).
//!
//! One task per disk owns its course (`worker.rs`): control requests reach it as typed
//! commands (`owner.rs`), it publishes what `status`, jobs and metrics show as a snapshot
//! with the disk's phase (`snapshot.rs`, `phase.rs`). Below the task, each phase has its
//! file and imports only the leaves under it:
//!
//! ```text
//! worker ─┬─ copy ─────────────┐
//!         ├─ cycles ─ app_point ┤
//!         │        └─ sealed ───┤
//!         ├─ planned ─ sealed, scan
//!         └─ resync ── scan ────┴─ session ─ ship, connect  (leaves: owner, jobs, reason,
//!                                                        snapshot, phase, state, window)
//! ```

mod app_point;
pub mod backoff;
pub mod connect;
mod copy;
pub mod cycle;
mod cycles;
pub mod freeze;
mod group;
mod group_requests;
mod jobs;
mod late;
mod owner;
mod phase;
mod planned;
mod point_age;
mod policy;
mod reason;
mod requests;
pub mod resync;
mod rounds;
mod scan;
mod sealed;
mod session;
pub mod ship;
mod snapshot;
pub mod source;
mod status_report;
mod window;
pub mod worker;

pub use base::agent_state as state;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tracker_bpf::TrackerConfig;

use backoff::{Clock, SystemClock};
use base::config::PolicyFile;
use base::control::{self, Call};
use base::status::Job;
use connect::{Connect, TlsConnect};
use jobs::{JobKind, JobStep};
use reason::ResyncCause;
use snapshot::{DiskSnapshot, ProtGuard};
use source::{ChangeSource, bpf::BpfSource, route::Routed};

/// The agent's change source, shared (None once stopped).
pub(crate) type SourceRef = Arc<Mutex<Option<Box<dyn ChangeSource>>>>;
use state::{CopyPlan, Protection};

pub(crate) use base::lock;

/// How to run the agent.
#[derive(Debug, Clone)]
pub struct AgentOptions {
    /// State directory (protections and logs).
    pub state: PathBuf,
    /// Control socket.
    pub socket: PathBuf,
    /// Unit of the retry schedule (1, 2, 4, 8, 10, then 30 units).
    pub retry_unit: Duration,
    /// Bandwidth limit in bytes per second, per disk.
    pub max_rate: Option<u64>,
    /// zstd level for data frames (None: never compress).
    pub compress_level: Option<i32>,
    /// Compress cycle data only while the link, not the CPU, limits shipping (see
    /// `ship::Compression`); false: always compress (when `compress_level` is set).
    pub compress_auto: bool,
    /// Disks to protect at start.
    pub policy: Option<PolicyFile>,
    /// The tracker's settings.
    pub tracker: TrackerConfig,
    /// Test only: call every cycle crash-consistent without checking (a broken cut the
    /// consistency checker must catch).
    pub offer_every_cycle: bool,
    /// When automatic checksum resyncs may start.
    pub resync_window: resync::ResyncWindow,
    /// Pending logs naming more than this percentage of a disk trigger a resync instead of
    /// shipping them (checked when a session starts).
    pub resync_log_threshold_pct: u32,
    /// Digest algorithm of resync and verify.
    pub digest: base::digest::Algo,
    /// `ADDR:PORT` of the Prometheus endpoint (`--metrics`; None: no endpoint).
    pub metrics: Option<String>,
    /// Ship a ublk disk's own logs (its sitrep target's) instead of tracking it with eBPF
    /// (`source::route`).
    pub ublk_logs: bool,
}

/// One protected disk at run time: what the control side and the disk's task share.
pub(crate) struct DiskRt {
    /// The protection (`protection.json`). Changed through [`DiskRt::prot_mut`], which
    /// publishes the change in the snapshot; read directly where the newest value matters.
    pub(crate) prot: Mutex<Protection>,
    /// The published state (`status`, jobs and metrics read it).
    snap: watch::Sender<DiskSnapshot>,
    /// The disk task's command channel.
    pub(crate) cmd: owner::Commands,
    pub(crate) size: u64,
    pub(crate) block_size: u32,
    /// The source logs changes before performing them ([`source::Added`]): only logs up to
    /// the agent's last cut are read.
    pub(crate) logged_before_performed: bool,
    records_at_cut: AtomicU64,
    /// Records since the cut as `status` last read them (shown while the tracker is busy).
    records_seen: AtomicU64,
    /// The disk's change source as `status` last read it.
    pub(crate) source_seen: Mutex<Option<base::status::SourceStatus>>,
    cache: Mutex<BTreeMap<u64, u64>>,
    /// Cut instant and exactness of the logs this agent sealed (see `ChangeSource::cut`).
    pub(crate) cuts: Mutex<BTreeMap<u64, (u64, bool)>>,
    /// The cycles cut together with other disks of the disk's group (`group.rs`).
    pub(crate) group_cuts: Mutex<BTreeMap<u64, group::GroupCut>>,
    /// The current cross-host round's cut: (round, cycle, change count before the cut).
    pub(crate) round: Mutex<Option<(u64, u64, u64)>>,
    /// The filesystem frozen for a cross-host round (`rounds.rs`), with the round: thawed
    /// by the release, a round that ends without a cut, or a watchdog.
    pub(crate) round_freeze: rounds::RoundFreeze,
    /// The agent's change source (a round's release tags the log from the session's reader
    /// side, `group.rs`).
    pub(crate) source: SourceRef,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl DiskRt {
    /// Changes the published state (its phase follows).
    pub(crate) fn set(&self, f: impl FnOnce(&mut DiskSnapshot)) {
        self.snap.send_modify(|s| {
            f(s);
            s.phase = s.phase_now();
        });
    }

    /// The published state, as last changed (a short read borrow: do not hold it across
    /// other locks or awaits).
    pub(crate) fn snapshot(&self) -> watch::Ref<'_, DiskSnapshot> {
        self.snap.borrow()
    }

    /// A subscription to the published state.
    pub(crate) fn subscribe(&self) -> watch::Receiver<DiskSnapshot> {
        self.snap.subscribe()
    }

    /// The protection, locked for a change that is published when the guard drops.
    pub(crate) fn prot_mut(&self) -> ProtGuard<'_> {
        ProtGuard {
            guard: lock(&self.prot),
            snap: &self.snap,
        }
    }

    /// Changed bytes a sealed log names (cached; None if it cannot be read).
    pub(crate) fn cached_bytes(&self, seq: u64, path: &Path, size: u64) -> Option<u64> {
        if let Some(b) = lock(&self.cache).get(&seq) {
            return Some(*b);
        }
        let c = cycle::read_cycle(path, size, worker::GRANULE).ok()?;
        let b = if c.whole_disk_gap.is_some() {
            size
        } else {
            c.bytes
        };
        lock(&self.cache).insert(seq, b);
        Some(b)
    }

    pub(crate) fn forget_cached(&self, seq: u64) {
        lock(&self.cache).remove(&seq);
    }
}

/// The agent.
pub struct Agent {
    pub(crate) opts: AgentOptions,
    pub(crate) name: String,
    /// Makes the disks' connections to their servers.
    pub(crate) connector: Arc<dyn Connect>,
    /// The retry loop's clock.
    pub(crate) clock: Arc<dyn Clock>,
    /// Where the disks' changes come from (None once stopped).
    source: SourceRef,
    disks: Mutex<BTreeMap<String, Arc<DiskRt>>>,
    /// The consistency groups' cut barriers.
    pub(crate) groups: group::Groups,
    jobs: Mutex<Vec<Job>>,
    next_job: AtomicU64,
    /// The control socket's counters (`listeners` in the status).
    control: Arc<control::ControlShared>,
}

fn local(e: impl std::fmt::Display) -> base::net::ReplError {
    base::net::ReplError::Local(e.to_string())
}

impl Agent {
    /// Runs `f` on the change source, in blocking context (a call may wait for a log commit).
    fn with_tracker<T, E: Into<anyhow::Error>>(
        &self,
        f: impl FnOnce(&mut dyn ChangeSource) -> Result<T, E>,
    ) -> anyhow::Result<T> {
        tokio::task::block_in_place(|| {
            let mut g = lock(&self.source);
            let t = g
                .as_mut()
                .ok_or_else(|| anyhow::anyhow!("the tracker is stopped"))?;
            f(t.as_mut()).map_err(Into::into)
        })
    }

    /// Tags the disk's log after every change completed so far.
    pub(crate) fn mark(&self, rt: &DiskRt, tag: u64) -> Result<(), base::net::ReplError> {
        let dev = lock(&rt.prot).device.clone();
        self.with_tracker(|t| {
            t.mark(&dev, tag)?;
            t.queue_marks(&dev, false)
        })
        .map_err(|e| local(format!("{}: tagging the log: {e:#}", dev.display())))
    }

    /// Records appended to the disk's log since the last cut.
    pub(crate) fn records_since_cut(&self, rt: &DiskRt) -> u64 {
        let dev = lock(&rt.prot).device.clone();
        let now = self.records(&dev);
        now.saturating_sub(rt.records_at_cut.load(Ordering::SeqCst))
    }

    fn records(&self, dev: &Path) -> u64 {
        let g = lock(&self.source);
        Self::records_in(g.as_deref(), dev)
    }

    fn records_in(t: Option<&dyn ChangeSource>, dev: &Path) -> u64 {
        t.map_or(0, |t| t.records(dev))
    }

    /// Records appended since the last cut, for `status`: never waits for the tracker (a cut
    /// or a tag holds it while a log commit reaches the disk) — while it is busy, the count
    /// read last time stands.
    pub(crate) fn records_since_cut_now(&self, rt: &DiskRt) -> u64 {
        let dev = lock(&rt.prot).device.clone();
        let read = |t: Option<&dyn ChangeSource>| {
            *lock(&rt.source_seen) = t.and_then(|t| t.describe(&dev));
            Self::records_in(t, &dev)
        };
        let now = match self.source.try_lock() {
            Ok(g) => read(g.as_deref()),
            Err(std::sync::TryLockError::Poisoned(p)) => read(p.into_inner().as_deref()),
            Err(std::sync::TryLockError::WouldBlock) => {
                return rt.records_seen.load(Ordering::Relaxed);
            }
        };
        let n = now.saturating_sub(rt.records_at_cut.load(Ordering::SeqCst));
        rt.records_seen.store(n, Ordering::Relaxed);
        n
    }

    /// Seals the disk's current log (a cycle); returns its sequence.
    pub(crate) fn cut(&self, rt: &DiskRt) -> Result<u64, base::net::ReplError> {
        self.cut_together(&[rt])
            .pop()
            .unwrap_or_else(|| Err(local("no disk to cut")))
    }

    /// Seals the current logs of several disks at one instant (a consistency group's cut,
    /// [`group`]); one sequence per disk, in order. A single disk is the ordinary cut.
    pub(crate) fn cut_together(&self, rts: &[&DiskRt]) -> Vec<Result<u64, base::net::ReplError>> {
        let devs: Vec<PathBuf> = rts.iter().map(|rt| lock(&rt.prot).device.clone()).collect();
        // Count before sealing: a record racing the seal is then counted as "after" and
        // only causes one extra (possibly empty) cycle, never a missed one.
        let before: Vec<u64> = devs.iter().map(|d| self.records(d)).collect();
        let started = base::now_ns();
        // Writes queued from now until the cycle's tag are recorded at submission too, so
        // the verdict sees any that could land before the cycle's data is read.
        let shown = || {
            devs.iter()
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let cuts = match self.with_tracker(|t| {
            for d in &devs {
                t.queue_marks(d, true)?;
            }
            let refs: Vec<&Path> = devs.iter().map(PathBuf::as_path).collect();
            t.cut_together(&refs)
        }) {
            Ok(c) => c,
            Err(e) => {
                let why = format!("{}: sealing the log: {e:#}", shown());
                return rts.iter().map(|_| Err(local(why.clone()))).collect();
            }
        };
        rts.iter()
            .zip(cuts)
            .zip(devs.iter().zip(before))
            .map(|((rt, cut), (dev, before))| {
                let cut =
                    cut.map_err(|e| local(format!("{}: sealing the log: {e:#}", dev.display())))?;
                rt.records_at_cut.store(before, Ordering::SeqCst);
                let seq = cut.seq;
                let mut cuts = lock(&rt.cuts);
                cuts.insert(seq, (cut.time_ns, cut.exact));
                // Bounded: cuts of cycles long shipped (or never to be judged) are forgotten.
                while cuts.len() > 4096 {
                    cuts.pop_first();
                }
                drop(cuts);
                // The time the cut began: everything completed before it is in this log or
                // earlier.
                rt.set(|s| s.last_cut = Some((seq, started)));
                Ok(seq)
            })
            .collect()
    }

    /// Starts a full re-copy (the stand-in for the checksum resync): cut, and copy everything
    /// again with cycles from the new log on.
    pub(crate) fn start_recopy(
        &self,
        rt: &DiskRt,
        why: &ResyncCause,
    ) -> Result<(), base::net::ReplError> {
        let seq = self.cut(rt)?;
        let mut p = rt.prot_mut();
        tracing::warn!(disk = %p.name, "resync required: {why}; copying the disk again");
        p.copy = CopyPlan {
            from_seq: seq + 1,
            done: false,
            restart: true,
        };
        p.resync_reason = Some(why.to_string());
        p.save(&self.opts.state)
            .map_err(|e| local(format!("disk {}: saving state: {e}", p.name)))?;
        let name = p.name.clone();
        drop(p);
        self.new_job(rt, JobKind::Resync, &name);
        Ok(())
    }

    /// Starts tracking and replicating `prot` (new or loaded at start).
    fn start_disk(
        self: &Arc<Self>,
        mut prot: Protection,
        new: bool,
    ) -> anyhow::Result<(Arc<DiskRt>, Option<u64>)> {
        let logs = state::log_dir(&self.opts.state, &prot.name);
        std::fs::create_dir_all(&logs).map_err(|e| anyhow::anyhow!("{}: {e}", logs.display()))?;
        let added = self.with_tracker(|t| t.add_device(&prot.device, &logs))?;
        let (cmd, own) = owner::Owner::channel(&prot.name);
        let rt = Arc::new(DiskRt {
            prot: Mutex::new(prot.clone()),
            snap: watch::channel(DiskSnapshot::new(prot.clone())).0,
            cmd,
            size: added.size,
            block_size: added.block_size,
            logged_before_performed: added.logged_before_performed,
            records_at_cut: AtomicU64::new(0),
            records_seen: AtomicU64::new(0),
            source_seen: Mutex::new(None),
            cache: Mutex::new(BTreeMap::new()),
            cuts: Mutex::new(BTreeMap::new()),
            group_cuts: Mutex::new(BTreeMap::new()),
            round: Mutex::new(None),
            round_freeze: rounds::RoundFreeze::default(),
            source: self.source.clone(),
            task: Mutex::new(None),
        });
        if prot.failed_over.is_some() {
            // Active on the secondary since a planned failover: tracked (so changes made here
            // are known), never replicated from here.
            lock(&self.disks).insert(prot.name.clone(), rt.clone());
            return Ok((rt, None));
        }
        let mut job = None;
        if new && prot.reverse.is_some() {
            // Reverse replication: no copy — the other site holds the old disk; a whole-disk
            // comparison by digests sends only what differs.
            let seq = self.cut(&rt).map_err(|e| anyhow::anyhow!("{e}"))?;
            prot.copy = CopyPlan {
                from_seq: seq + 1,
                done: true,
                restart: false,
            };
            *rt.prot_mut() = prot.clone();
            prot.save(&self.opts.state)
                .map_err(|e| anyhow::anyhow!("disk {}: saving state: {e}", prot.name))?;
            self.require_resync(&rt, &ResyncCause::Reverse, None)
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            job = rt.snapshot().job.map(|j| j.id);
        } else if new {
            job = Some(self.new_job(&rt, JobKind::EnableProtection, &prot.name));
            self.job_step(&rt, JobStep::StartTracking, 0, 0);
            let seq = self.cut(&rt).map_err(|e| anyhow::anyhow!("{e}"))?;
            prot.copy = CopyPlan {
                from_seq: seq + 1,
                done: false,
                restart: false,
            };
            *rt.prot_mut() = prot.clone();
            prot.save(&self.opts.state)
                .map_err(|e| anyhow::anyhow!("disk {}: saving state: {e}", prot.name))?;
        } else if let Some(gap) = &added.gap {
            let why = ResyncCause::TrackingInterrupted { gap: gap.clone() };
            if prot.copy.done {
                self.require_resync(&rt, &why, None)
            } else {
                self.start_recopy(&rt, &why)
            }
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        } else if let Some(plan) = &prot.resync {
            rt.set(|s| s.resync = Some(snapshot::ResyncRun::new(plan.reason.clone())));
            self.new_job(&rt, JobKind::Resync, &prot.name);
        } else if !prot.copy.done {
            self.new_job(&rt, JobKind::EnableProtection, &prot.name);
        }
        lock(&self.disks).insert(prot.name.clone(), rt.clone());
        let h = tokio::spawn(worker::run(self.clone(), rt.clone(), own));
        *lock(&rt.task) = Some(h);
        Ok((rt, job))
    }

    async fn stop_disk(&self, rt: &Arc<DiskRt>) {
        let _ = rt.cmd.send(owner::DiskCommand::Stop);
        let h = lock(&rt.task).take();
        if let Some(h) = h {
            let _ = tokio::time::timeout(Duration::from_secs(30), h).await;
        }
    }

    /// The server refused the disk with `FailedOver` (an unplanned failover on the other
    /// site): remember it, so reverse replication into this site's disk can be adopted.
    /// Tracking goes on, so what this site writes from now on is known.
    pub(crate) fn record_failed_over_elsewhere(&self, rt: &DiskRt, why: &str) {
        let mut p = rt.prot_mut();
        if p.failed_over.is_some() {
            return;
        }
        p.failed_over = Some(state::FailedOverInfo {
            kind: state::FailoverKind::Unplanned,
            unix_ns: base::now_ns(),
            point: 0,
            cut_time_unix_ns: 0,
            device: String::new(),
            image: String::new(),
            quiesced: format!("not quiesced: learned from the server ({why})"),
        });
        if let Err(e) = p.save(&self.opts.state) {
            tracing::error!(disk = %p.name, "saving the failed-over state: {e}");
        }
    }
}

/// What an agent is made of besides its options: the seams a test replaces. [`run`] builds
/// the daemon's (the eBPF tracker, mutual TLS, the system clock); the in-process harness
/// (`primary/tests/common`) gives a fake source, an in-memory connection to an in-process
/// server and a simulated clock.
pub struct Hooks {
    /// The agent's client name (what the server knows it by: its certificate name).
    pub name: String,
    /// Starts the disks' change source: called once, in blocking context, after the state
    /// directory is locked and the sockets are bound. Stopped after every disk, when the
    /// agent stops.
    pub source: Box<dyn FnOnce() -> anyhow::Result<Box<dyn ChangeSource>> + Send>,
    /// Makes each session's connection to its server.
    pub connect: Arc<dyn Connect>,
    /// The clock the retry schedule reads and waits on.
    pub clock: Arc<dyn Clock>,
}

/// Runs the agent until `shutdown` resolves, then stops every disk cleanly (logs sealed, so
/// the next start continues without a resync). Each policy file received on `reloads` (the
/// daemon re-reads `--config` on SIGHUP) is applied as `policy.rs` says: new entries are
/// protected, changed and removed ones reported.
///
/// # Errors
/// The identity has no usable client certificate, the tracker cannot start, the state is
/// unreadable, or the control socket cannot be made.
pub async fn run(
    opts: AgentOptions,
    identity: &pki::Identity,
    shutdown: impl Future<Output = ()>,
    reloads: mpsc::Receiver<PolicyFile>,
) -> anyhow::Result<()> {
    let cfg = opts.tracker.clone();
    let ublk = opts.ublk_logs;
    let hooks = Hooks {
        name: identity.name().to_string(),
        source: Box::new(move || -> anyhow::Result<Box<dyn ChangeSource>> {
            let tracker = BpfSource::start(cfg)
                .map_err(|e| anyhow::anyhow!("starting the eBPF tracker: {e}"))?;
            Ok(Box::new(Routed::new(Box::new(tracker), ublk)))
        }),
        connect: Arc::new(TlsConnect::new(identity.client_config()?)),
        clock: Arc::new(SystemClock),
    };
    run_reloading(opts, hooks, shutdown, reloads).await
}

/// [`run`] made of `hooks`: the disks' changes come from the source `hooks.source` starts
/// (`opts.tracker` is then unused), sessions connect through `hooks.connect`, retries wait
/// on `hooks.clock`. Needs a multi-threaded runtime (the source is called through
/// `block_in_place`).
///
/// # Errors
/// As [`run`]: the source cannot start, the state is unreadable, or the control socket
/// cannot be made.
pub async fn run_with(
    opts: AgentOptions,
    hooks: Hooks,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    // No sender: the policy is never re-read.
    let (_, reloads) = mpsc::channel(1);
    run_reloading(opts, hooks, shutdown, reloads).await
}

/// [`run_with`], applying each policy file received on `reloads` as [`run`] does.
///
/// # Errors
/// As [`run_with`].
pub async fn run_reloading(
    opts: AgentOptions,
    hooks: Hooks,
    shutdown: impl Future<Output = ()>,
    mut reloads: mpsc::Receiver<PolicyFile>,
) -> anyhow::Result<()> {
    base::modes::restrict_umask();
    base::modes::private_dir(&opts.state)
        .map_err(|e| anyhow::anyhow!("state {}: {e}", opts.state.display()))?;
    std::fs::create_dir_all(opts.state.join("disks"))
        .map_err(|e| anyhow::anyhow!("state {}: {e}", opts.state.display()))?;
    // Before anything else: a second agent on this state directory refuses to start.
    let _state_lock =
        base::lockfile::LockFile::acquire(&opts.state.join("LOCK"), "state directory")?;
    let control_socket = control::bind(
        &opts.socket,
        base::listen::CONTROL_CONNECTIONS,
        base::listen::CONTROL_READ_TIMEOUT,
    )?;
    // Bound before anything starts, so a bad --metrics fails the start cleanly.
    let metrics = match &opts.metrics {
        Some(addr) => Some(base::metrics::bind(addr).await?),
        None => None,
    };
    let source = tokio::task::block_in_place(hooks.source)?;
    let agent = Arc::new(Agent {
        name: hooks.name,
        connector: hooks.connect,
        clock: hooks.clock,
        opts: opts.clone(),
        source: Arc::new(Mutex::new(Some(source))),
        disks: Mutex::new(BTreeMap::new()),
        groups: group::Groups::default(),
        jobs: Mutex::new(Vec::new()),
        next_job: AtomicU64::new(0),
        control: control_socket.shared(),
    });
    let mut missing = Vec::new();
    for prot in Protection::load_all(&opts.state)? {
        if !late::present(&prot.device) {
            missing.push(prot);
            continue;
        }
        let name = prot.name.clone();
        if let Err(e) = agent.start_disk(prot, false) {
            tracing::error!("disk {name}: cannot resume protection: {e:#}");
        }
    }
    agent.resume_when_present(missing);
    let mut applied = opts.policy.clone().unwrap_or_default();
    agent.apply_groups(&applied.group);
    agent.protect_listed(&applied.disk).await;
    if let Some(listener) = metrics {
        let a = agent.clone();
        base::metrics::spawn(listener, move || a.status());
    }
    let (ctx, mut crx) = mpsc::channel::<Call>(16);
    tokio::spawn(control_socket.serve(ctx));
    let a = agent.clone();
    tokio::spawn(async move {
        while let Some((req, reply)) = crx.recv().await {
            let a = a.clone();
            tokio::spawn(async move {
                let _ = reply.send(a.handle(req).await);
            });
        }
    });
    tracing::info!(state = %opts.state.display(), "agent ready");
    base::sdnotify::ready();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            Some(newer) = reloads.recv() => {
                agent.reload_policy(&applied, &newer).await;
                applied = newer;
            }
        }
    }
    tracing::info!("agent stopping: sealing logs");
    let disks: Vec<Arc<DiskRt>> = lock(&agent.disks).values().cloned().collect();
    for d in &disks {
        agent.stop_disk(d).await;
    }
    let t = lock(&agent.source).take();
    if let Some(t) = t {
        tokio::task::block_in_place(|| t.stop())
            .map_err(|e| anyhow::anyhow!("stopping the tracker: {e}"))?;
    }
    let _ = std::fs::remove_file(&opts.socket);
    Ok(())
}
