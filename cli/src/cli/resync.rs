//! `sitrep resync` and `sitrep verify`: the checksum resync and online verify, driven
//! through the agent's control socket (docs/architecture.md, *Resync*).

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use base::control::Request;
use base::status::{DiskStatus, ResyncPhase, ResyncStatus, StatusReport, VerifyReport};
use clap::Args;

use super::repl::SocketArg;
use crate::{Outcome, human};

/// Arguments of `sitrep resync`.
#[derive(Args)]
pub(crate) struct ResyncArgs {
    /// The disk name.
    name: String,
    /// Start now, even outside the resync window (`sitrep agent --resync-window`).
    #[arg(long)]
    now: bool,
    /// Return at once instead of following the resync to its end.
    #[arg(long)]
    no_wait: bool,
    #[command(flatten)]
    socket: SocketArg,
    /// Machine-readable output: the finished resync's figures (or, with --no-wait, the
    /// disk's status).
    #[arg(long)]
    json: bool,
}

/// Arguments of `sitrep verify`.
#[derive(Args)]
pub(crate) struct VerifyArgs {
    /// The disk name.
    name: String,
    #[command(flatten)]
    socket: SocketArg,
    /// Machine-readable output (exit status as without it).
    #[arg(long)]
    json: bool,
}

fn ask(a: &SocketArg, req: &Request, timeout: Duration) -> anyhow::Result<serde_json::Value> {
    base::control::ask(&a.path(), req, timeout)
}

fn disk(a: &SocketArg, name: &str) -> anyhow::Result<DiskStatus> {
    let r: StatusReport =
        serde_json::from_value(ask(a, &Request::Status, Duration::from_secs(10))?)?;
    r.disks
        .into_iter()
        .find(|d| d.name == name)
        .ok_or_else(|| anyhow::anyhow!("disk {name} is no longer protected here"))
}

fn progress_line(r: &ResyncStatus) -> String {
    let frac = if r.scope_bytes > 0 && r.phase != ResyncPhase::WaitingForWindow {
        r.bytes_done as f64 / r.scope_bytes.max(1) as f64
    } else {
        0.0
    };
    let width = 24usize;
    // Truncation is intended: a bar position.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let filled = ((frac.clamp(0.0, 1.0) * width as f64) as usize).min(width);
    format!(
        "[{}{}] {:>5.1}% {:<18} {} / {}  {:.0} MiB/s  ETA {}  differing {}",
        "#".repeat(filled),
        ".".repeat(width - filled),
        100.0 * frac,
        r.phase,
        human::bytes(r.bytes_done),
        human::bytes(r.scope_bytes),
        r.rate_bytes_per_sec / f64::from(1u32 << 20),
        r.eta_seconds
            .map_or_else(|| "-".into(), |s| format!("{s:.0}s")),
        human::bytes(r.differing_bytes),
    )
}

fn print_result(r: &ResyncStatus) {
    crate::outln!(
        "resync complete in {:.1}s: compared {}, {} differed and were repaired ({} of data sent, {} on the wire)",
        r.seconds,
        human::bytes(r.compared_bytes),
        human::bytes(r.differing_bytes),
        human::bytes(r.data_bytes_sent),
        human::bytes(r.wire_bytes),
    );
    crate::outln!("reason: {}", r.reason);
}

pub(crate) fn resync(a: &ResyncArgs) -> anyhow::Result<Outcome> {
    let before: DiskStatus = serde_json::from_value(ask(
        &a.socket,
        &Request::Resync {
            name: a.name.clone(),
            now: a.now,
        },
        Duration::from_secs(30),
    )?)?;
    if a.no_wait {
        if a.json {
            crate::outln!("{}", serde_json::to_string_pretty(&before)?);
        } else if let Some(r) = &before.resync {
            crate::outln!(
                "disk {}: resync {} ({}); follow with `sitrep status` / `sitrep jobs`",
                a.name,
                if r.phase == ResyncPhase::WaitingForWindow && !a.now {
                    format!("waits for its window {}", r.window)
                } else {
                    "starting".to_string()
                },
                r.reason
            );
        }
        return Ok(Outcome::Ok);
    }
    let tty = std::io::stderr().is_terminal();
    let mut last_print = Instant::now();
    let mut told_window = false;
    loop {
        std::thread::sleep(Duration::from_millis(250));
        let d = disk(&a.socket, &a.name)?;
        if d.resyncs_completed > before.resyncs_completed
            && let Some(r) = &d.last_resync
        {
            if tty {
                eprintln!();
            }
            if a.json {
                let mut v = serde_json::to_value(r)?;
                v["disk"] = serde_json::Value::String(a.name.clone());
                crate::outln!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                print_result(r);
            }
            return Ok(Outcome::Ok);
        }
        if d.health == base::status::Health::Critical {
            anyhow::bail!(
                "disk {}: {}",
                a.name,
                d.error.unwrap_or_else(|| "critical".into())
            );
        }
        let Some(r) = &d.resync else { continue };
        if r.phase == ResyncPhase::WaitingForWindow && !told_window {
            eprintln!(
                "disk {}: the resync waits for its window {} (use --now to start it at once)",
                a.name, r.window
            );
            told_window = true;
        }
        if tty {
            eprint!("\r{}", progress_line(r));
            let _ = std::io::stderr().flush();
        } else if last_print.elapsed() > Duration::from_secs(10) {
            eprintln!("{}", progress_line(r));
            last_print = Instant::now();
        }
        if let Some(e) = &d.error
            && last_print.elapsed() > Duration::from_secs(10)
        {
            eprintln!("disk {}: {e} (retrying)", a.name);
            last_print = Instant::now();
        }
    }
}

pub(crate) fn verify(a: &VerifyArgs) -> anyhow::Result<Outcome> {
    if std::io::stderr().is_terminal() {
        eprintln!(
            "verifying disk {} (digests of both sides; no data is sent)...",
            a.name
        );
    }
    let r: VerifyReport = serde_json::from_value(ask(
        &a.socket,
        &Request::Verify {
            name: a.name.clone(),
        },
        Duration::from_secs(24 * 3600 + 60),
    )?)?;
    if a.json {
        crate::outln!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        crate::outln!(
            "disk {}: compared {} in {:.1}s; {} in flight (changed since the last applied cycle)",
            r.disk,
            human::bytes(r.compared_bytes),
            r.seconds,
            human::bytes(r.in_flight_bytes)
        );
        if r.mismatches.is_empty() {
            crate::outln!("replica matches the source");
        } else {
            crate::outln!(
                "{} range(s) differ ({}), planned for a resync:",
                r.mismatches.len(),
                human::bytes(r.mismatches.iter().map(|m| m.1).sum())
            );
            for (o, l) in r.mismatches.iter().take(50) {
                crate::outln!("  offset {o} length {l}");
            }
            if r.mismatches.len() > 50 {
                crate::outln!("  ... ({} more; --json lists all)", r.mismatches.len() - 50);
            }
        }
    }
    Ok(if r.mismatches.is_empty() {
        Outcome::Ok
    } else {
        Outcome::Invalid
    })
}
