//! The secondary's daemon (`sitrep server`): accepts agents over mutual TLS, never connects
//! out, stages and applies their cycles into the [`store`](mod@crate::store).
//!
//! One session per connection, one connection per disk. A new attach of a disk supersedes
//! an older session of the same disk (after a network cut the old TCP connection may linger
//! half-open): the old one notices at its next frame and ends without touching the disk.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;

use crate::store::{self, Disk};
use base::control::{self, Call};
use base::listen::Limits;

mod coordinate;
mod delete;
mod disk_cap;
mod export;
pub mod failover;
mod grants;
mod group_ops;
mod groups;
#[cfg(feature = "test-support")]
mod inproc;
mod jobs;
mod listener;
mod quota;
mod report;
mod requests;
mod retired;
mod reverse;
mod session;
mod snapshot;

pub use grants::{AcceptReport, Grant};
#[cfg(feature = "test-support")]
pub use inproc::InProcess;

use report::status_report;

/// A session that sends nothing for this long is dropped (agents ping when idle).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(120);

/// How to run the server.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// `ADDR:PORT` to listen on.
    pub listen: String,
    /// The store directory.
    pub store: PathBuf,
    /// The control socket.
    pub socket: PathBuf,
    /// Which recovery points to keep: the defaults for disks whose agent asked for nothing
    /// (slot, span), the floor on any span a peer asks for (`min_retain_ns`), the newest
    /// `keep` points kept whatever their age, and the tiers (see `Retention::for_disk`).
    pub retention: base::points::Retention,
    /// `ADDR:PORT` of the Prometheus endpoint (`--metrics`; None: no endpoint).
    pub metrics: Option<String>,
    /// The local agent's state directory: reverse replication adopts the disks it failed
    /// over (`--adopt-from`; None: no reverse replication into this site).
    pub adopt_from: Option<PathBuf>,
    /// Caps and timeouts of the listeners and sessions (default: `base::listen`'s constants).
    pub limits: Limits,
    /// How much undo data (recovery-point history) each disk may keep
    /// (`--history-budget`; see [`crate::store::HistoryBudget`]).
    pub history_budget: store::HistoryBudget,
    /// The store quota (`--max-store-bytes`, see `quota.rs`; None: none): past it the oldest
    /// points are retired, never a disk's newest.
    pub max_store_bytes: Option<u64>,
    /// How often a cross-host consistency group's round runs (`--group-points-every`,
    /// `coordinate.rs`).
    pub group_points_every: Duration,
}

/// Where a group coordinator sends a session its rounds: (the session's epoch, sender).
type RoundSender = (u64, mpsc::Sender<proto::Msg>);

#[derive(Default)]
struct Slot {
    /// The live session's round channel (`coordinate.rs`), if any.
    rounds: Mutex<Option<RoundSender>>,
    /// The open disk; its guard publishes the snapshot `status` and `points` read.
    disk: snapshot::PublishedDisk,
    epoch: AtomicU64,
    connected: AtomicBool,
    wire_bytes: AtomicU64,
    error: Mutex<Option<String>>,
    /// Store bytes and retired-point counters, for the quota and the status.
    space: quota::SlotSpace,
}

struct Shared {
    store: PathBuf,
    name: String,
    retention: base::points::Retention,
    history_budget: store::HistoryBudget,
    slots: Mutex<BTreeMap<String, Arc<Slot>>>,
    jobs: jobs::Jobs,
    adopt_from: Option<PathBuf>,
    limits: Limits,
    /// The TLS port's caps and counters.
    tls: listener::TlsGates,
    /// The control socket's counters.
    control: Arc<control::ControlShared>,
    /// The store quota.
    quota: quota::Quota,
    /// The consistency groups' points (`groups.rs`).
    groups: groups::Groups,
}

impl Shared {
    /// The server's policies for a disk just opened or attached: retention (what its agent
    /// asked, in `policy.json`, within the server's floor — or the server's defaults),
    /// history budget.
    fn configure(&self, d: &mut Disk) {
        let asked = d.asked_policy().unwrap_or_else(|e| {
            // The floor holds either way: the server's defaults until the agent asks again.
            tracing::warn!("{e}; using the server's retention defaults");
            None
        });
        d.set_retention(self.retention.for_disk(asked.map(|a| a.pair())));
        d.set_point_cap(asked.and_then(|a| a.max_point_storage_bytes));
        d.set_history_budget(self.history_budget);
        d.set_pins(self.groups.pins(&d.state().name));
    }

    fn slot(&self, name: &str) -> Arc<Slot> {
        let mut slots = self
            .slots
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        slots.entry(name.to_string()).or_default().clone()
    }
}

use base::lock;

/// The server's shared state over the store `opts.store` (locked by the caller), with every
/// disk in it opened: whatever a crash left staged is finished before anything connects.
fn open_store(
    opts: &ServerOptions,
    name: &str,
    limits: Limits,
    control: Arc<control::ControlShared>,
) -> anyhow::Result<Arc<Shared>> {
    let shared = Arc::new(Shared {
        store: opts.store.clone(),
        name: name.to_string(),
        retention: opts.retention.clone(),
        history_budget: opts.history_budget,
        slots: Mutex::new(BTreeMap::new()),
        jobs: jobs::Jobs::default(),
        adopt_from: opts.adopt_from.clone(),
        tls: listener::TlsGates::new(&limits),
        limits,
        control,
        quota: quota::Quota::new(opts.max_store_bytes),
        groups: groups::Groups::open(&opts.store)?,
    });
    // Retirements a crash interrupted are finished before any session can start one.
    if let Err(e) = store::retired::sweep(&opts.store, None) {
        tracing::error!(
            "finishing interrupted retirements in {}: {e}",
            opts.store.display()
        );
    }
    for name in store::list_disks(&opts.store)? {
        let slot = shared.slot(&name);
        match Disk::open(&opts.store, &name) {
            Ok(mut d) => {
                tracing::info!(disk = %name, "replica open");
                shared.configure(&mut d);
                quota::noted(&shared, &slot, &d);
                *slot.disk.lock() = Some(d);
            }
            Err(e) => {
                tracing::error!("{e}");
                *lock(&slot.error) = Some(e.to_string());
            }
        }
    }
    Ok(shared)
}

/// Runs the server until `shutdown` resolves.
///
/// # Errors
/// The store, the listener or the control socket cannot be set up.
pub async fn run(
    opts: ServerOptions,
    identity: &pki::Identity,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    base::modes::restrict_umask();
    std::fs::create_dir_all(opts.store.join("disks"))
        .map_err(|e| anyhow::anyhow!("store {}: {e}", opts.store.display()))?;
    // Before anything else: a second server on this store refuses to start.
    let _store_lock = base::lockfile::LockFile::acquire(&opts.store.join("LOCK"), "store")?;
    base::modes::private_dir(&opts.store)
        .map_err(|e| anyhow::anyhow!("store {}: {e}", opts.store.display()))?;
    let limits = opts
        .limits
        .fit_descriptors(base::listen::descriptor_limit());
    if limits != opts.limits {
        tracing::warn!(
            handshakes = limits.handshakes_total,
            sessions = limits.sessions_total,
            "the descriptor limit (ulimit -n) lowers the TLS port's caps; raise it for more disks"
        );
    }
    let control_socket = control::bind(
        &opts.socket,
        opts.limits.control_connections,
        opts.limits.control_read_timeout,
    )?;
    let shared = open_store(&opts, identity.name(), limits, control_socket.shared())?;
    let tls = tokio_rustls::TlsAcceptor::from(identity.server_config()?);
    let tcp = tokio::net::TcpListener::bind(&opts.listen)
        .await
        .map_err(|e| anyhow::anyhow!("listening on {}: {e}", opts.listen))?;
    if let Some(addr) = &opts.metrics {
        let metrics = base::metrics::bind(addr).await?;
        let sh = shared.clone();
        base::metrics::spawn(metrics, move || status_report(&sh));
    }
    tracing::info!(listen = %opts.listen, store = %opts.store.display(), "server ready");
    let (ctx, crx) = mpsc::channel::<Call>(16);
    tokio::spawn(control_socket.serve(ctx));
    tokio::spawn(requests::serve(shared.clone(), crx));
    tokio::spawn(quota::run(shared.clone()));
    tokio::spawn(coordinate::run(shared.clone(), opts.group_points_every));
    base::sdnotify::ready();
    tokio::select! {
        () = shutdown => {}
        () = listener::serve(shared, tcp, tls) => {}
    }
    tracing::info!("server stopping");
    Ok(())
}
