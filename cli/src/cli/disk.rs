//! `sitrep disk add|list|del`: tracked ublk virtual disks (`/dev/ublkbN`) whose every
//! change is logged before it is performed (the `ublk-target` crate does the work).
//!
//! `disk add` without `--foreground` starts itself again as a detached server
//! (`--foreground --notify-ready`) and waits until that server reports the device live, or
//! prints the server's own error if it fails before: the operator gets the real cause, and
//! nothing is left behind (the server undoes a half-made disk before it exits).

use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand, ValueEnum};
use ublk_target::{DiskConfig, DiskInfo, Durability, LogMode};

use crate::Outcome;
use crate::human;

/// `sitrep disk ...`.
#[derive(Subcommand)]
pub(crate) enum DiskCommand {
    /// Create a tracked virtual disk /dev/ublkbN over a backing file or block device.
    ///
    /// Every write, discard and write-zeroes is appended to the disk's HRL log before it
    /// reaches the backing, and the log is durable whenever the disk's data is (at each
    /// flush and FUA write; with --durability write, before every change). Restarting on
    /// the same backing after a crash of the server takes the kernel's device over again and
    /// continues the log with no resync; after a host crash or power loss under the default
    /// durability the restart records a whole-disk gap, so the replica is resynced.
    Add(AddArgs),
    /// List the tracked virtual disks.
    List(ListArgs),
    /// Stop a tracked virtual disk: its server seals the log and removes /dev/ublkbN.
    Del(DelArgs),
}

/// Arguments of `sitrep disk add`.
#[derive(Args)]
pub(crate) struct AddArgs {
    /// The backing regular file (sparse is fine) or block device.
    #[arg(long)]
    backing: PathBuf,
    /// Disk size (e.g. 10G); default: the backing's size. The backing must be at least this
    /// big.
    #[arg(long)]
    size: Option<String>,
    /// Hardware queues (one server thread each).
    #[arg(long, default_value_t = 1)]
    queues: u16,
    /// Queue depth.
    #[arg(long, default_value_t = 128)]
    depth: u16,
    /// `extents` logs the ranges changed; `journal` also logs the data written.
    #[arg(long, value_enum, default_value_t = Mode::Extents)]
    mode: Mode,
    /// When the log is synced: `flush` (default) at the disk's flushes and FUA writes, like
    /// its data (a host crash or power loss then costs a checksum resync); `write` before
    /// every change is performed (survives power loss with no resync; slower random writes).
    #[arg(long, value_enum, default_value_t = DurabilityArg::Flush)]
    durability: DurabilityArg,
    /// The log directory (must exist); default BACKING.hrl/ beside the backing (created).
    #[arg(long)]
    log_dir: Option<PathBuf>,
    /// Most space the disk's logs may take (e.g. 4G; at least 16M), or `none`. Past it
    /// (replication far behind) a change is still performed but logged as its ranges only,
    /// in a tracking-gap record: the agent reads those ranges from the disk instead of the
    /// log, and consistency tags are refused until shipped logs are released.
    #[arg(long, value_name = "SIZE", default_value = "1G")]
    log_cap: String,
    /// Serve in the foreground until Ctrl-C or SIGTERM (which seal the log cleanly).
    #[arg(long)]
    foreground: bool,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
    /// Internal: print one READY line on stdout when live, then detach stdout/stderr.
    #[arg(long, hide = true)]
    notify_ready: bool,
}

#[derive(Clone, Copy, ValueEnum)]
enum DurabilityArg {
    Flush,
    Write,
}

#[derive(Clone, Copy, ValueEnum)]
enum Mode {
    Extents,
    Journal,
}

/// Arguments of `sitrep disk list`.
#[derive(Args)]
pub(crate) struct ListArgs {
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// Arguments of `sitrep disk del`.
#[derive(Args)]
pub(crate) struct DelArgs {
    /// The disk's id (N in /dev/ublkbN).
    id: u32,
    /// Remove it even while mounted (the filesystem then gets I/O errors).
    #[arg(long)]
    force: bool,
    /// Seconds to wait for the server to stop.
    #[arg(long, default_value_t = 30)]
    timeout: u64,
}

const READY: &str = "READY ";

/// Runs `sitrep disk ...`.
pub(crate) fn run(cmd: DiskCommand) -> anyhow::Result<Outcome> {
    match cmd {
        DiskCommand::Add(a) if a.foreground => add_foreground(&a),
        DiskCommand::Add(a) => add_detached(&a),
        DiskCommand::List(a) => list(&a),
        DiskCommand::Del(a) => del(&a),
    }
}

fn config(a: &AddArgs) -> anyhow::Result<DiskConfig> {
    let cfg = DiskConfig {
        backing: a.backing.clone(),
        size: a
            .size
            .as_deref()
            .map(base::units::parse_size)
            .transpose()
            .map_err(anyhow::Error::msg)?,
        queues: a.queues,
        depth: a.depth,
        mode: match a.mode {
            Mode::Extents => LogMode::Extents,
            Mode::Journal => LogMode::Journal,
        },
        durability: match a.durability {
            DurabilityArg::Flush => Durability::Flush,
            DurabilityArg::Write => Durability::Write,
        },
        log_dir: a.log_dir.clone(),
        log_cap: log_cap(&a.log_cap)?,
    };
    cfg.validate()?;
    Ok(cfg)
}

/// `--log-cap`: a size, or `none` for no cap.
fn log_cap(s: &str) -> anyhow::Result<Option<u64>> {
    if s.trim().eq_ignore_ascii_case("none") {
        return Ok(None);
    }
    base::units::parse_size(s)
        .map(Some)
        .map_err(|e| anyhow::anyhow!("--log-cap: {e} (or `none`)"))
}

fn add_foreground(a: &AddArgs) -> anyhow::Result<Outcome> {
    let cfg = config(a)?;
    // A server in the operator's terminal says what goes wrong (a failed log write, an I/O
    // failed with EIO); a detached one's stderr is the parent's error channel until READY
    // and /dev/null after it (docs/ublk.md, known limits).
    if !a.notify_ready {
        super::daemon::init_logging();
    }
    let (notify, json) = (a.notify_ready, a.json);
    let stopped = ublk_target::serve(&cfg, move |info| {
        // Live: a `Type=notify` unit (sitrep-ublk@.service) is started.
        base::sdnotify::ready();
        if notify {
            let line = serde_json::to_string(info).unwrap_or_default();
            crate::outln!("{READY}{line}");
            detach_stdio();
        } else {
            print_added(info, json);
            if !json {
                crate::outln!(
                    "serving in the foreground; Ctrl-C seals the log and removes the disk"
                );
            }
        }
    })
    .with_context(|| format!("disk over {}", cfg.backing.display()))?;
    if !a.notify_ready && !a.json {
        crate::outln!(
            "stopped {}; log sealed: {}",
            stopped.info.device.display(),
            stopped.sealed_log.display()
        );
    }
    Ok(Outcome::Ok)
}

/// After READY the parent is gone: point stdout/stderr at /dev/null so later writes
/// neither fail nor block on a pipe nobody reads.
fn detach_stdio() {
    if let Ok(null) = std::fs::OpenOptions::new().write(true).open("/dev/null") {
        use std::os::fd::AsRawFd;
        for fd in [libc::STDOUT_FILENO, libc::STDERR_FILENO] {
            // SAFETY: dup2 on two descriptors we hold open; it only replaces `fd`.
            unsafe { libc::dup2(null.as_raw_fd(), fd) };
        }
    }
}

fn add_detached(a: &AddArgs) -> anyhow::Result<Outcome> {
    // Check what we can here too, so usage errors do not need a server to report them.
    config(a)?;
    let exe = std::env::current_exe().context("locating the sitrep binary")?;
    let mut child = Command::new(exe)
        .args(std::env::args_os().skip(1))
        .args(["--foreground", "--notify-ready"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group: the terminal's Ctrl-C does not reach the server.
        .process_group(0)
        .spawn()
        .context("starting the disk server")?;
    let out = child.stdout.take().context("server stdout")?;
    let ready = BufReader::new(out)
        .lines()
        .map_while(Result::ok)
        .find_map(|l| l.strip_prefix(READY).map(str::to_owned));
    if let Some(line) = ready {
        let info: serde_json::Value = serde_json::from_str(&line).context("server READY line")?;
        if a.json {
            crate::outln!("{info}");
        } else {
            crate::outln!(
                "{} ready ({}, {} mode, log synced at {}, log {}), server pid {}",
                info["device"].as_str().unwrap_or("?"),
                human::bytes(info["size"].as_u64().unwrap_or(0)),
                info["mode"].as_str().unwrap_or("?"),
                info["durability"].as_str().unwrap_or("?"),
                info["log_dir"].as_str().unwrap_or("?"),
                info["pid"]
            );
            if info["gap_recorded"].as_bool() == Some(true) {
                crate::outln!("{GAP_NOTE}");
            }
        }
        return Ok(Outcome::Ok);
    }
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    let status = child.wait().context("waiting for the disk server")?;
    let msg = err
        .trim()
        .strip_prefix("sitrep: error: ")
        .unwrap_or(err.trim())
        .to_owned();
    if msg.is_empty() {
        anyhow::bail!("the disk server exited before the disk was ready ({status})");
    }
    anyhow::bail!("{msg}")
}

const GAP_NOTE: &str = "note: the host restarted while the log had unsynced records; a \
     whole-disk tracking gap was recorded, so the replica will be resynced (checksum resync)";

fn print_added(info: &DiskInfo, json: bool) {
    if json {
        crate::outln!("{}", serde_json::to_string(info).unwrap_or_default());
        return;
    }
    let how = if info.device_recovered {
        "taken over after a server crash"
    } else {
        "created"
    };
    crate::outln!(
        "{} {how}: {} over {}, {} mode, log synced at {}, log {} ({})",
        info.device.display(),
        human::bytes(info.size),
        info.backing.display(),
        info.mode.name(),
        info.durability.name(),
        info.log_dir.display(),
        info.log_resume
    );
    if info.gap_recorded {
        crate::outln!("{GAP_NOTE}");
    }
}

fn list(a: &ListArgs) -> anyhow::Result<Outcome> {
    let disks = ublk_target::devices::list();
    if a.json {
        crate::outln!("{}", serde_json::to_string(&disks)?);
        return Ok(Outcome::Ok);
    }
    if disks.is_empty() {
        crate::outln!("no tracked disks");
        return Ok(Outcome::Ok);
    }
    crate::outln!(
        "{:<4} {:<13} {:>10} {:<9} {:>7} {:<8} {:<6} BACKING -> LOG",
        "ID",
        "DEVICE",
        "SIZE",
        "STATE",
        "PID",
        "MODE",
        "SYNC"
    );
    for d in disks {
        let pid = if d.server_alive {
            d.pid.to_string()
        } else {
            "dead".to_owned()
        };
        crate::outln!(
            "{:<4} {:<13} {:>10} {:<9} {:>7} {:<8} {:<6} {} -> {}",
            d.id,
            d.device.display(),
            human::bytes(d.size),
            d.state,
            pid,
            d.target.mode.name(),
            d.target.durability.name(),
            d.target.backing.display(),
            d.target.log_dir.display()
        );
    }
    Ok(Outcome::Ok)
}

fn del(a: &DelArgs) -> anyhow::Result<Outcome> {
    let d = ublk_target::devices::delete(a.id, a.force, Duration::from_secs(a.timeout))?;
    crate::outln!(
        "removed {} (backing {}; log sealed in {})",
        d.device.display(),
        d.target.backing.display(),
        d.target.log_dir.display()
    );
    Ok(Outcome::Ok)
}
