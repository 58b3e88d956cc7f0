//! `sitrep protect | unprotect | status | jobs | wait`: the operator's view of replication,
//! talking to the daemon on this host over its control socket.

use std::path::{Path, PathBuf};
use std::time::Duration;

use base::control::{AGENT_SOCKET, Request, SERVER_SOCKET};
use base::status::{
    AppPointReport, DiskStatus, ExportReport, Job, JobsReport, PointsReport, StatusReport,
};
use clap::Args;

use crate::{Outcome, human};

/// Which daemon to talk to.
#[derive(Args)]
pub(crate) struct SocketArg {
    /// The daemon's control socket (default: the agent's, else the server's).
    #[arg(long)]
    socket: Option<PathBuf>,
}

impl SocketArg {
    pub(crate) fn path(&self) -> PathBuf {
        self.socket.clone().unwrap_or_else(|| {
            if Path::new(AGENT_SOCKET).exists() || !Path::new(SERVER_SOCKET).exists() {
                PathBuf::from(AGENT_SOCKET)
            } else {
                PathBuf::from(SERVER_SOCKET)
            }
        })
    }
}

/// Arguments of `sitrep protect`.
#[derive(Args)]
pub(crate) struct ProtectArgs {
    /// The block device to protect (e.g. /dev/vdb, /dev/loop3), or the backing file of a ublk
    /// disk `sitrep disk add` serves (its /dev/ublkbN is protected, named after the file).
    device: String,
    /// The server: HOST:PORT (its certificate must name HOST).
    #[arg(long)]
    to: String,
    /// Name of the disk on both sites (default: the device's base name).
    #[arg(long)]
    name: Option<String>,
    /// How often changes are shipped: continuous, 30s, 5m or 15m.
    #[arg(long, default_value = "continuous")]
    frequency: String,
    /// Also make an app-consistent point (filesystem frozen) this often: 1h to 12h.
    #[arg(long)]
    app_consistent_every: Option<String>,
    /// Keep one crash-consistent recovery point per slot this wide, 1s to 1h (default 5m;
    /// every cycle still applies). Sent to the server, which keeps it for this disk.
    #[arg(long, value_name = "DURATION")]
    crash_points_every: Option<String>,
    /// Keep recovery points this long, up to 366d (default 24h). The server keeps at least
    /// its own --min-retain whatever is asked here, and always the newest point.
    #[arg(long, value_name = "DURATION")]
    retain: Option<String>,
    /// Cap the disk's point storage on the server (e.g. 20G; none: no cap, the default).
    /// Past it the server retires the oldest points, but only those older than its own
    /// --min-retain, and never the newest.
    #[arg(long, value_name = "SIZE")]
    max_point_storage: Option<String>,
    /// Quiesce the application for app-consistent points with this command (`sh -c`)
    /// instead of freezing the filesystem mounted from the device.
    #[arg(long)]
    pre_hook: Option<String>,
    /// Release the application afterwards (runs whenever the pre-hook succeeded).
    #[arg(long, requires = "pre_hook")]
    post_hook: Option<String>,
    /// Put the disk in this consistency group (created if new): its cycles are cut at one
    /// instant with the group's other disks, and the server keeps group points over all of
    /// them (`sitrep points --group`, `sitrep failover --group`).
    #[arg(long, value_name = "GROUP")]
    group: Option<String>,
    #[command(flatten)]
    socket: SocketArg,
    /// Machine-readable output (the job, see docs/architecture.md).
    #[arg(long)]
    json: bool,
}

/// Arguments of `sitrep unprotect`.
#[derive(Args)]
pub(crate) struct UnprotectArgs {
    /// The disk name.
    name: String,
    #[command(flatten)]
    socket: SocketArg,
    /// Machine-readable output.
    #[arg(long)]
    json: bool,
}

/// Arguments of `sitrep status` and `sitrep jobs`.
#[derive(Args)]
pub(crate) struct ShowArgs {
    #[command(flatten)]
    socket: SocketArg,
    /// Machine-readable output (schema 1, documented in base/src/status.rs).
    #[arg(long)]
    json: bool,
}

/// Arguments of `sitrep wait`.
#[derive(Args)]
pub(crate) struct WaitArgs {
    /// The disk name.
    name: String,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 300)]
    timeout: u64,
    #[command(flatten)]
    socket: SocketArg,
    /// Machine-readable output (the disk's status once caught up).
    #[arg(long)]
    json: bool,
}

fn ask(socket: &SocketArg, req: &Request, timeout: Duration) -> anyhow::Result<serde_json::Value> {
    base::control::ask(&socket.path(), req, timeout)
}

pub(crate) fn protect(a: &ProtectArgs) -> anyhow::Result<Outcome> {
    let target = super::backing::resolve(&a.device)?;
    let resp = ask(
        &a.socket,
        &Request::Protect {
            device: target.device.clone(),
            to: a.to.clone(),
            name: a.name.clone().or(target.name),
            frequency: a.frequency.clone(),
            app_consistent_every: a.app_consistent_every.clone(),
            pre_hook: a.pre_hook.clone(),
            post_hook: a.post_hook.clone(),
            crash_points_every: a.crash_points_every.clone(),
            retain: a.retain.clone(),
            max_point_storage: a.max_point_storage.clone(),
            group: a.group.clone(),
        },
        Duration::from_secs(60),
    )?;
    if a.json {
        crate::outln!("{}", serde_json::to_string_pretty(&resp)?);
    } else {
        let job: Job = serde_json::from_value(resp)?;
        crate::outln!(
            "protecting {} as disk {} → {} (job {}: {}); follow with `sitrep jobs` / `sitrep status`",
            target.device,
            job.disk,
            a.to,
            job.id,
            job.kind
        );
    }
    Ok(Outcome::Ok)
}

pub(crate) fn unprotect(a: &UnprotectArgs) -> anyhow::Result<Outcome> {
    let resp = ask(
        &a.socket,
        &Request::Unprotect {
            name: a.name.clone(),
        },
        Duration::from_secs(60),
    )?;
    if a.json {
        crate::outln!("{}", serde_json::to_string_pretty(&resp)?);
    } else {
        crate::outln!(
            "disk {} is no longer protected (tracking stopped, logs removed; the replica stays on the server)",
            a.name
        );
    }
    Ok(Outcome::Ok)
}

fn print_disk(d: &DiskStatus) {
    let applied = d.last_applied.as_ref().map_or_else(
        || "none".to_string(),
        |c| {
            format!(
                "cycle {} cut {}",
                c.seq,
                human::timestamp(c.cut_time_unix_ns)
            )
        },
    );
    crate::outln!(
        "{:<16} {:<20} {:<8} lag {:>7.1}s  backlog {:>10}  shipped {:>10} (wire {}, zero {})",
        d.name,
        format!("{:?}", d.state).to_lowercase(),
        format!("{:?}", d.health).to_lowercase(),
        d.lag_seconds,
        human::bytes(d.backlog_bytes),
        human::bytes(d.bytes_shipped),
        human::bytes(d.wire_bytes),
        human::bytes(d.zero_bytes),
    );
    crate::outln!(
        "{:<16} {} {}  last applied: {applied}",
        "",
        d.device.as_deref().unwrap_or("-"),
        if d.connected {
            format!("connected to {}", d.peer)
        } else {
            format!("not connected ({})", d.peer)
        },
    );
    if let Some(c) = &d.copy
        && !c.done
    {
        crate::outln!(
            "{:<16} initial copy {} of {} ({:.1}%), {:.1} MiB/s, ETA {}",
            "",
            human::bytes(c.bytes_done),
            human::bytes(c.size),
            if c.size > 0 {
                100.0 * c.bytes_done as f64 / c.size as f64
            } else {
                0.0
            },
            c.rate_bytes_per_sec / f64::from(1u32 << 20),
            c.eta_seconds
                .map_or_else(|| "-".into(), |s| format!("{s:.0}s")),
        );
    }
    if let Some(r) = &d.resync_reason {
        crate::outln!("{:<16} resync required: {r}", "");
    }
    if let Some(e) = &d.error {
        crate::outln!("{:<16} error: {e}", "");
    }
    if let Some(at) = d.next_retry_unix_ns {
        let secs = at.saturating_sub(base::now_ns()) as f64 / 1e9;
        crate::outln!(
            "{:<16} next retry {} (in {secs:.0}s); {} retried so far",
            "",
            human::timestamp(at),
            d.retries
        );
    }
    if let Some(a) = &d.action {
        crate::outln!("{:<16} action: {a}", "");
    }
    if let Some(o) = d.crash_points.as_ref().and_then(|c| c.overdue.as_ref()) {
        crate::outln!("{:<16} warning: {o}", "");
    }
    print_source(d);
    print_points(d);
}

/// A ublk disk's own logs (agent): their space, and changes past the cap.
fn print_source(d: &DiskStatus) {
    use base::status::SourceKind;
    let Some(src) = &d.source else { return };
    let kind = match src.kind {
        SourceKind::Ebpf => return,
        SourceKind::UblkJournal => "journal",
        SourceKind::UblkExtents => "extents",
    };
    let cap = src.log_cap.map_or_else(
        || "no cap".to_string(),
        |c| format!("cap {}", human::bytes(c)),
    );
    crate::outln!(
        "{:<16} source: the ublk target's own logs ({kind} mode), {} of logs, {cap}",
        "",
        human::bytes(src.log_bytes.unwrap_or(0)),
    );
    if let Some(n) = src.overflows.filter(|&n| n > 0) {
        crate::outln!(
            "{:<16} warning: {n} change(s) logged as ranges only past the log cap \
             (re-read from the device; raise `disk add --log-cap` or ship faster)",
            ""
        );
    }
}

/// The recovery-point policy (both sides) and the retained points (server).
fn print_points(d: &DiskStatus) {
    let Some(p) = d.point_policy else {
        return;
    };
    let range = match (d.oldest_point, d.newest_point) {
        (Some(a), Some(b)) => format!(
            "; {} retained over {} (points {}..={}), {} of undo data",
            d.points,
            human::duration(b.cut_time_unix_ns.saturating_sub(a.cut_time_unix_ns)),
            a.id,
            b.id,
            human::bytes(d.points_bytes)
        ),
        _ => String::new(),
    };
    crate::outln!(
        "{:<16} points: one per {}, kept {}{range}",
        "",
        human::duration(p.crash_points_every_ns()),
        human::duration(p.retain_ns())
    );
}

pub(crate) fn status(a: &ShowArgs) -> anyhow::Result<Outcome> {
    let resp = ask(&a.socket, &Request::Status, Duration::from_secs(10))?;
    if a.json {
        crate::outln!("{}", serde_json::to_string_pretty(&resp)?);
        return Ok(Outcome::Ok);
    }
    let r: StatusReport = serde_json::from_value(resp)?;
    crate::outln!("{} {} — {} disk(s)", r.role, r.host, r.disks.len());
    if let Some(st) = &r.store {
        print_store(st);
    }
    for d in &r.disks {
        print_disk(d);
    }
    Ok(Outcome::Ok)
}

/// The server's store line: bytes against the quota, points retired to stay under it.
fn print_store(st: &base::store_space::StoreSpace) {
    let quota = st.quota_bytes.map_or_else(
        || "no quota".to_string(),
        |q| format!("quota {}", human::bytes(q)),
    );
    let retired: Vec<String> = st
        .disks
        .iter()
        .filter(|d| d.points_retired.quota + d.points_retired.disk_cap > 0)
        .map(|d| {
            let n = d.points_retired.quota + d.points_retired.disk_cap;
            format!("{} {n}", d.name)
        })
        .collect();
    let over: Vec<&str> = st
        .disks
        .iter()
        .filter(|d| d.over_point_cap)
        .map(|d| d.name.as_str())
        .collect();
    crate::outln!(
        "store: {} ({quota}){}{}",
        human::bytes(st.bytes),
        if retired.is_empty() {
            String::new()
        } else {
            format!("; points retired for space: {}", retired.join(", "))
        },
        if over.is_empty() {
            String::new()
        } else {
            format!(
                "; over their point storage cap (points younger than --min-retain kept): {}",
                over.join(", ")
            )
        }
    );
}

pub(crate) fn jobs(a: &ShowArgs) -> anyhow::Result<Outcome> {
    let resp = ask(&a.socket, &Request::Jobs, Duration::from_secs(10))?;
    if a.json {
        crate::outln!("{}", serde_json::to_string_pretty(&resp)?);
        return Ok(Outcome::Ok);
    }
    let r: JobsReport = serde_json::from_value(resp)?;
    if r.jobs.is_empty() {
        crate::outln!("no jobs");
    }
    for j in &r.jobs {
        crate::outln!(
            "{:>4} {:<18} {:<16} {:<10} {:>5.1}%  {}{}",
            j.id,
            j.kind,
            j.disk,
            format!("{:?}", j.state).to_lowercase(),
            j.progress_percent,
            j.step,
            j.error
                .as_ref()
                .map(|e| format!(" — {e}"))
                .unwrap_or_default()
        );
    }
    Ok(Outcome::Ok)
}

pub(crate) fn wait(a: &WaitArgs) -> anyhow::Result<Outcome> {
    let resp = ask(
        &a.socket,
        &Request::Wait {
            name: a.name.clone(),
            timeout_secs: a.timeout,
        },
        Duration::from_secs(a.timeout + 10),
    )?;
    if a.json {
        crate::outln!("{}", serde_json::to_string_pretty(&resp)?);
    } else {
        let d: DiskStatus = serde_json::from_value(resp)?;
        crate::outln!("disk {} is caught up:", d.name);
        print_disk(&d);
    }
    Ok(Outcome::Ok)
}

/// Arguments of `sitrep points`.
#[derive(Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub(crate) struct PointsArgs {
    #[command(subcommand)]
    cmd: Option<PointsCommand>,
    /// The disk whose recovery points to list (on the server).
    #[arg(required_unless_present = "group")]
    name: Option<String>,
    /// List a consistency group's points instead: each is one instant over all its member
    /// disks (`sitrep protect --group`).
    #[arg(long, conflicts_with = "name")]
    group: Option<String>,
    #[command(flatten)]
    socket: SocketArg,
    /// Machine-readable output.
    #[arg(long)]
    json: bool,
}

/// `sitrep points export`.
#[derive(clap::Subcommand)]
pub(crate) enum PointsCommand {
    /// Materialize a recovery point as a disk image on the server while replication goes on
    /// (the replica is not touched).
    Export(ExportArgs),
    /// Delete recovery points (this site's operator only; no peer can): one id or --all.
    /// Without --yes, says what would go and how many bytes that frees.
    Delete(super::points_delete::DeleteArgs),
}

/// Arguments of `sitrep points export`.
#[derive(Args)]
pub(crate) struct ExportArgs {
    /// The disk (with --group: the group point instead, and no POINT).
    #[arg(value_name = "NAME")]
    first: String,
    /// The point: an id from `sitrep points NAME`, `latest`, `latest-processed` or
    /// `latest-app-consistent`.
    #[arg(value_name = "POINT")]
    point: Option<base::points::PointSel>,
    /// The image file to write (on the server's host; sparse where the disk is zero).
    #[arg(long, required_unless_present = "group")]
    out: Option<PathBuf>,
    /// Export one point of this consistency group: every member disk's image at the group
    /// point's instant, as OUT_DIR/DISK.img (`sitrep points export --group G ID --out-dir D`).
    #[arg(long, requires = "out_dir", conflicts_with = "out")]
    group: Option<String>,
    /// With --group: the directory for the members' images (on the server's host).
    #[arg(long, requires = "group")]
    out_dir: Option<PathBuf>,
    /// Overwrite an existing file.
    #[arg(long)]
    force: bool,
    #[command(flatten)]
    socket: SocketArg,
    /// Machine-readable output.
    #[arg(long)]
    json: bool,
}

pub(crate) fn points(a: &PointsArgs) -> anyhow::Result<Outcome> {
    match &a.cmd {
        Some(PointsCommand::Export(e)) => return export(e),
        Some(PointsCommand::Delete(d)) => return super::points_delete::delete(d),
        None => {}
    }
    if let Some(g) = &a.group {
        return super::group_views::points(&a.socket.path(), g, a.json);
    }
    let name = a.name.clone().unwrap_or_default();
    let resp = ask(
        &a.socket,
        &Request::Points { name },
        Duration::from_secs(10),
    )?;
    if a.json {
        crate::outln!("{}", serde_json::to_string_pretty(&resp)?);
        return Ok(Outcome::Ok);
    }
    let r: PointsReport = serde_json::from_value(resp)?;
    let span = match (r.points.first(), r.points.last()) {
        (Some(a), Some(b)) => format!(
            " over {}",
            human::duration(b.cut_time_ns.saturating_sub(a.cut_time_ns))
        ),
        _ => String::new(),
    };
    let policy = r.policy.as_ref().map_or_else(String::new, |p| {
        format!(
            "; one per {}, kept {}",
            human::duration(p.every_ns),
            human::duration(p.retain_ns)
        )
    });
    crate::outln!(
        "disk {}: {} recovery point(s){span}{policy}; {} of undo data kept",
        r.disk,
        r.points.len(),
        human::bytes(r.storage_bytes)
    );
    let now = base::now_ns();
    for p in r.points.iter().rev() {
        crate::outln!(
            "{:>8}  {:<17} cut {} ({:>7} ago)  cycles {}..={} ({}){}",
            p.id,
            format!("{:?}", p.kind).to_lowercase(),
            human::timestamp(p.cut_time_ns),
            human::duration(now.saturating_sub(p.cut_time_ns)),
            p.first_seq,
            p.id,
            human::bytes(p.bytes),
            p.label
                .as_ref()
                .map(|l| format!("  ({l})"))
                .unwrap_or_default()
        );
    }
    Ok(Outcome::Ok)
}

fn export(a: &ExportArgs) -> anyhow::Result<Outcome> {
    if let (Some(g), Some(dir)) = (&a.group, &a.out_dir) {
        if a.point.is_some() {
            anyhow::bail!("with --group, name only the group point: --group {g} POINT");
        }
        let point: base::points::PointSel = a.first.parse().map_err(anyhow::Error::msg)?;
        return super::group_views::export(&a.socket.path(), g, point, dir, a.force, a.json);
    }
    let (Some(point), Some(out)) = (a.point, &a.out) else {
        anyhow::bail!("name the disk and the point: sitrep points export NAME POINT --out FILE");
    };
    let out = std::path::absolute(out)?;
    let resp = ask(
        &a.socket,
        &Request::Export {
            name: a.first.clone(),
            point,
            out: out.display().to_string(),
            force: a.force,
        },
        Duration::from_secs(24 * 3600),
    )?;
    if a.json {
        crate::outln!("{}", serde_json::to_string_pretty(&resp)?);
        return Ok(Outcome::Ok);
    }
    let r: ExportReport = serde_json::from_value(resp)?;
    crate::outln!(
        "exported point {} of disk {} ({:?}, cut {}) to {} ({}, {} written)",
        r.point.id,
        r.disk,
        r.point.kind,
        human::timestamp(r.point.cut_time_ns),
        r.out,
        human::bytes(r.size),
        human::bytes(r.bytes_written)
    );
    Ok(Outcome::Ok)
}

/// `sitrep point ...` (agent).
#[derive(clap::Subcommand)]
pub(crate) enum PointCommand {
    /// Make a recovery point now. With --app-consistent: freeze the filesystem mounted from
    /// the disk (FIFREEZE), cut, read the frozen cycle, thaw — the server lists the point as
    /// app-consistent. (Crash-consistent points are made automatically as cycles apply.)
    Create(CreatePointArgs),
}

/// Arguments of `sitrep point create`.
#[derive(Args)]
pub(crate) struct CreatePointArgs {
    /// The disk.
    name: String,
    /// Quiesce the filesystem (required: crash-consistent points are automatic).
    #[arg(long, required = true)]
    app_consistent: bool,
    /// Longest the filesystem may stay frozen (ms); past it the filesystem is thawed and no
    /// app-consistent point is made.
    #[arg(long, default_value_t = 10_000)]
    max_freeze_ms: u64,
    #[command(flatten)]
    socket: SocketArg,
    /// Machine-readable output.
    #[arg(long)]
    json: bool,
}

pub(crate) fn point(cmd: &PointCommand) -> anyhow::Result<Outcome> {
    let PointCommand::Create(a) = cmd;
    let resp = ask(
        &a.socket,
        &Request::CreatePoint {
            name: a.name.clone(),
            max_freeze_ms: a.max_freeze_ms,
        },
        Duration::from_secs(330),
    )?;
    if a.json {
        crate::outln!("{}", serde_json::to_string_pretty(&resp)?);
        return Ok(Outcome::Ok);
    }
    let r: AppPointReport = serde_json::from_value(resp)?;
    crate::outln!(
        "app-consistent point {} of disk {} (cut {}, {}, frozen {:.1} ms)",
        r.seq,
        r.disk,
        human::timestamp(r.cut_time_unix_ns),
        r.label,
        r.freeze_ms
    );
    Ok(Outcome::Ok)
}
