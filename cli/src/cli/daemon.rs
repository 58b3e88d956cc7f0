//! `sitrep server` and `sitrep agent`: the two daemons, in the foreground (systemd-friendly:
//! logs to stderr, a clean stop on SIGTERM or Ctrl-C, `READY=1` to `NOTIFY_SOCKET` once
//! serving). Settings come from flags and the `--config` file (`crate::settings`). SIGHUP
//! (`systemctl reload`): the agent re-reads its `--config` file and protects the disks it
//! newly lists (see `primary/src/policy.rs`; changed `[agent]` settings wait for a restart);
//! the server's settings are read at start only, and it logs that it ignores the signal.

use std::path::PathBuf;
use std::time::Duration;

use base::config::{PolicyFile, parse_size};
use base::control::{AGENT_SOCKET, SERVER_SOCKET};
use clap::Args;

use crate::Outcome;

/// Arguments of `sitrep server`.
#[derive(Args)]
pub(crate) struct ServerArgs {
    /// Address to listen on for agents (mutual TLS).
    #[arg(long, default_value = "0.0.0.0:9443")]
    listen: String,
    /// Settings file (TOML): a `[server]` table whose keys are these flags' long names,
    /// e.g. `retain = "7d"` (`sitrep generate config server` prints them all with their
    /// defaults). A flag on the command line wins over the file. Read at start only.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Where replicas live: STORE/disks/NAME/{replica.img,state.json,staging/}. Required,
    /// here or as `store` in the --config file.
    #[arg(long)]
    store: PathBuf,
    /// PKI directory with ca.pem, cert.pem, key.pem (`sitrep certs init` makes one). Agents
    /// must present a certificate from the same CA; the server's certificate must name the
    /// address agents dial (`--san`). Required, here or in the --config file.
    #[arg(long)]
    pki: PathBuf,
    /// Control socket for `sitrep status` / `sitrep points` on this host.
    #[arg(long, default_value = SERVER_SOCKET)]
    socket: PathBuf,
    /// For disks whose agent asks for no policy (protocol 2 agents): keep one
    /// crash-consistent point per slot this wide (1s..1h; every cycle still applies). An
    /// agent's `sitrep protect --crash-points-every` overrides it for its disk.
    #[arg(long, default_value = "5m", value_parser = base::units::parse_duration_ns)]
    crash_points_every: u64,
    /// For disks whose agent asks for no policy: keep points this long. An agent's
    /// `sitrep protect --retain` overrides it for its disk, never below --min-retain.
    #[arg(long, default_value = "24h", value_parser = base::units::parse_duration_ns)]
    retain: u64,
    /// The shortest retention any disk gets, whatever its agent asks: a protected host
    /// cannot erase the history this server keeps by asking for a short `--retain` (the
    /// span is max(asked, this)). Points still retire as they age past the span, and
    /// always the newest point stays.
    #[arg(long, default_value = "24h", value_parser = base::units::parse_duration_ns)]
    min_retain: u64,
    /// Also keep the newest N points per disk whatever their age (at least 1: the newest
    /// point always stays).
    #[arg(long, default_value_t = base::points::DEFAULT_KEEP_NEWEST)]
    keep_points: usize,
    /// Beyond the retention span, thin older points in tiers EVERY:WINDOW, e.g.
    /// `1h:7d,1d:30d` (the oldest point of each hour for a week, of each day for 30 days).
    #[arg(long)]
    retention_tiers: Option<String>,
    /// Serve Prometheus metrics (GET /metrics, plain HTTP, unauthenticated) on ADDR:PORT,
    /// e.g. 127.0.0.1:9464. Off by default.
    #[arg(long, value_name = "ADDR:PORT")]
    metrics: Option<String>,
    /// Accept reverse replication into this site's own disks: the state directory of the
    /// local agent (its --state). After a failover, the other site's agent replicates the
    /// active disk back into the device this agent protected — only once this agent has the
    /// disk failed over, the device is unmounted, and this site did not write it since the
    /// failover (else: split brain, reported, nothing overwritten).
    #[arg(long, value_name = "AGENT_STATE")]
    adopt_from: Option<PathBuf>,
    /// Most recovery-point history (undo data) one disk may keep: `Nx` times the disk's size
    /// (at least 4 GiB) or a size (`500G`). Past it the disk's cycles wait, retried, and the
    /// disk shows why; nothing is deleted (a protected host must not be able to erase its
    /// history by writing). Raise it, and restart, to let them through.
    #[arg(long, default_value = "16x", value_parser = secondary::store::HistoryBudget::parse)]
    history_budget: secondary::store::HistoryBudget,
    /// Store quota: most bytes the store's disk entries may take — replicas' allocated blocks
    /// (holes cost nothing), undo data, staged cycles; retired copies and small state files
    /// are not counted. Past it the oldest recovery points across all disks (by cut time) are
    /// retired until the store fits, never a disk's newest point; replication keeps flowing.
    /// `status` and the metrics show the bytes and the points retired. Off by default.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    max_store_bytes: Option<u64>,
    /// How often the server runs a round for each consistency group whose disks are on more
    /// than one agent (a cross-host group point: every member cut, then a release; see
    /// docs/architecture.md, *Consistency groups*). Groups on one agent are cut by the agent.
    #[arg(long, default_value = "5m", value_parser = base::units::parse_duration_ns)]
    group_points_every: u64,
}

/// Arguments of `sitrep agent`.
#[derive(Args)]
pub(crate) struct AgentArgs {
    /// State directory: one STATE/disks/NAME/ per protected disk (its logs and progress).
    /// Required, here or as `state` in the --config file.
    #[arg(long)]
    state: PathBuf,
    /// PKI directory with ca.pem, cert.pem, key.pem (a cert issued by the server's CA with
    /// `sitrep certs issue`). Required, here or in the --config file.
    #[arg(long)]
    pki: PathBuf,
    /// Control socket for `sitrep protect/status/jobs/...` on this host.
    #[arg(long, default_value = AGENT_SOCKET)]
    socket: PathBuf,
    /// Config file (TOML, strict): an `[agent]` table whose keys are these flags' long
    /// names (`max_rate = "50M"`; a flag on the command line wins; read at start), and the
    /// `[[disk]]` tables of disks to protect at start and on SIGHUP. `sitrep generate config
    /// agent` prints every key with its default.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Bandwidth limit per disk, bytes per second (e.g. 50M).
    #[arg(long)]
    max_rate: Option<String>,
    /// Unit of the retry schedule for recoverable errors: retries after 1, 2, 4, 8, 10 units,
    /// then every 30 (seconds; the seed's schedule is in minutes: 60).
    #[arg(long, default_value_t = 60.0)]
    retry_unit: f64,
    /// zstd level for data, -100..=22 (0 disables compression; negative levels are zstd's
    /// fast modes).
    #[arg(long, default_value_t = 1, allow_negative_numbers = true,
          value_parser = clap::value_parser!(i32).range(-100..=22))]
    compress_level: i32,
    /// When to compress cycle data: `auto` compresses while the link is what limits shipping
    /// and sends raw while the CPU is (compressing 4 KiB blocks costs more CPU than anything
    /// else on the path); `always` compresses every frame that shrinks. The initial copy
    /// always compresses.
    #[arg(long, default_value = "auto", value_parser = ["auto", "always"])]
    compression: String,
    /// TEST ONLY: offer every cycle as a crash-consistent point without checking — a broken
    /// cut, for proving the consistency checker catches one.
    #[arg(long, hide = true)]
    unsafe_offer_every_cycle: bool,
    /// When automatic checksum resyncs may start: `always`, or HH:MM-HH:MM local time
    /// (wraps past midnight). Default: outside business hours. `sitrep resync NAME --now`
    /// starts one at any time.
    #[arg(long, default_value = "18:00-08:00")]
    resync_window: String,
    /// Pending logs naming more than this percentage of a disk (after an outage) are
    /// replaced by a checksum resync of their ranges (100 = never).
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=100))]
    resync_log_threshold: u32,
    /// Digest of resync and verify: xxh3 (XXH3-128 with a random per-session secret) or
    /// blake3 (keyed BLAKE3; slower, cryptographic).
    #[arg(long, default_value = "xxh3")]
    digest: String,
    /// Serve Prometheus metrics (GET /metrics, plain HTTP, unauthenticated) on ADDR:PORT,
    /// e.g. 127.0.0.1:9464. Off by default.
    #[arg(long, value_name = "ADDR:PORT")]
    metrics: Option<String>,
    /// After a clean stop and a reboot, continue each disk's change log with no resync when
    /// the device is the same one (its WWN, serial, dm UUID or loop backing file, and its
    /// size) and nothing changed it in this boot before tracking began. A write made while
    /// sitrep was down by another system (another OS booted on the disk) is then not seen;
    /// `sitrep verify NAME` finds it. `false`: every reboot costs a checksum resync.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    trust_clean_reboot: bool,
    /// The bpffs where the crash sentinel is pinned (BPF programs that keep marking changes
    /// while no agent runs, so a crash or a kill costs no resync): `BPFFS/sitrep-<id of the
    /// state directory>`. Mounted there if it is not a bpffs yet.
    #[arg(long, default_value = "/sys/fs/bpf", value_name = "DIR")]
    bpffs: PathBuf,
    /// Keep a crash sentinel (see --bpffs): after a crash or a kill -9 the agent re-ships
    /// only the ranges written meanwhile instead of resyncing whole disks. `false`: every
    /// agent crash costs a checksum resync of its disks.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    crash_sentinel: bool,
    /// Protect a ublk disk served by `sitrep disk add` by shipping its target's own change
    /// logs: no eBPF tracking, and in journal mode no re-read of the disk and a
    /// crash-consistent point at every log. `false`: track it with eBPF like any device.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    ship_ublk_logs: bool,
}

/// Logs to stderr (`RUST_LOG`, default `info`).
pub(crate) fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

async fn terminated() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

/// The agent's policy file, re-read on each SIGHUP (without `--config`, each SIGHUP is logged
/// and ignored). A file that does not load is logged and skipped: the agent keeps the policy
/// it applied last. Needs a runtime.
fn policy_reloads(config: Option<PathBuf>) -> tokio::sync::mpsc::Receiver<PolicyFile> {
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tokio::spawn(async move {
        let Some(mut hup) = hangups() else { return };
        while hup.recv().await.is_some() {
            let Some(path) = &config else {
                tracing::info!("SIGHUP: the agent has no --config to re-read");
                continue;
            };
            match PolicyFile::load(path) {
                Ok(p) => {
                    if tx.send(p).await.is_err() {
                        return;
                    }
                }
                Err(e) => tracing::error!("SIGHUP: policy not re-read, the last one stays: {e:#}"),
            }
        }
    });
    rx
}

/// The server's SIGHUP: caught (its default action would end the process) and logged.
fn ignore_hangups() {
    tokio::spawn(async move {
        let Some(mut hup) = hangups() else { return };
        while hup.recv().await.is_some() {
            tracing::info!(
                "SIGHUP: ignored; the server reads its flags and --config file at start only (restart it)"
            );
        }
    });
}

fn hangups() -> Option<tokio::signal::unix::Signal> {
    use tokio::signal::unix::{SignalKind, signal};
    signal(SignalKind::hangup())
        .map_err(|e| tracing::warn!("SIGHUP handler: {e}"))
        .ok()
}

/// Raises the soft descriptor limit to the hard one, so the listeners' caps decide.
fn descriptors() {
    let n = base::listen::raise_descriptor_limit();
    tracing::info!(limit = n, "open file descriptors");
}

pub(crate) fn server(a: &ServerArgs) -> anyhow::Result<Outcome> {
    init_logging();
    descriptors();
    let id = pki::Identity::load(&a.pki)?;
    base::points::PointPolicy {
        crash_points_every_secs: a.crash_points_every / 1_000_000_000,
        retain_secs: a.retain / 1_000_000_000,
        max_point_storage_bytes: None,
    }
    .validate()
    .map_err(anyhow::Error::msg)?;
    let opts = secondary::server::ServerOptions {
        listen: a.listen.clone(),
        store: a.store.clone(),
        socket: a.socket.clone(),
        retention: base::points::Retention {
            every_ns: a.crash_points_every,
            retain_ns: a.retain,
            min_retain_ns: a.min_retain,
            keep: a.keep_points.max(1),
            tiers: a
                .retention_tiers
                .as_deref()
                .map(base::points::Retention::parse_tiers)
                .transpose()
                .map_err(anyhow::Error::msg)?
                .unwrap_or_default(),
        },
        metrics: a.metrics.clone(),
        adopt_from: a.adopt_from.clone(),
        history_budget: a.history_budget,
        max_store_bytes: a.max_store_bytes,
        group_points_every: Duration::from_nanos(a.group_points_every.max(1_000_000_000)),
        limits: base::listen::Limits::default(),
    };
    runtime()?.block_on(async {
        ignore_hangups();
        secondary::server::run(opts, &id, terminated()).await
    })?;
    Ok(Outcome::Ok)
}

pub(crate) fn agent(a: &AgentArgs) -> anyhow::Result<Outcome> {
    init_logging();
    descriptors();
    let id = pki::Identity::load(&a.pki)?;
    let policy = a.config.as_deref().map(PolicyFile::load).transpose()?;
    let max_rate = a
        .max_rate
        .as_deref()
        .map(parse_size)
        .transpose()
        .map_err(anyhow::Error::msg)?;
    if !(a.retry_unit > 0.0 && a.retry_unit <= 3600.0) {
        anyhow::bail!("--retry-unit must be between 0 and 3600 seconds");
    }
    // The sentinel's pin directory is named after the state directory's canonical path.
    std::fs::create_dir_all(&a.state)
        .map_err(|e| anyhow::anyhow!("state {}: {e}", a.state.display()))?;
    let opts = primary::AgentOptions {
        state: a.state.clone(),
        socket: a.socket.clone(),
        retry_unit: Duration::from_secs_f64(a.retry_unit),
        max_rate,
        compress_level: (a.compress_level != 0).then_some(a.compress_level),
        compress_auto: a.compression == "auto",
        policy,
        tracker: tracker_bpf::TrackerConfig {
            trust_clean_reboot: a.trust_clean_reboot,
            sentinel: a
                .crash_sentinel
                .then(|| tracker_bpf::sentinel::dir_for(&a.bpffs, &a.state)),
            ..tracker_bpf::TrackerConfig::default()
        },
        offer_every_cycle: a.unsafe_offer_every_cycle,
        resync_window: primary::resync::ResyncWindow::parse(&a.resync_window)
            .map_err(anyhow::Error::msg)?,
        resync_log_threshold_pct: a.resync_log_threshold,
        digest: a.digest.parse().map_err(anyhow::Error::msg)?,
        metrics: a.metrics.clone(),
        ublk_logs: a.ship_ublk_logs,
    };
    let config = a.config.clone();
    runtime()?.block_on(async {
        let reloads = policy_reloads(config);
        primary::run(opts, &id, terminated(), reloads).await
    })?;
    Ok(Outcome::Ok)
}
