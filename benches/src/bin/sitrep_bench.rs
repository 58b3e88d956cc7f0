//! `sitrep-bench`: one command that measures sitrep against the tools people use today.
//!
//!   scripts/bench.sh [--quick] [SCENARIO...]      (installs fio/rsync/..., builds, runs)
//!   target/release/sitrep-bench run [--quick] [--out DIR] [SCENARIO...]
//!   target/release/sitrep-bench report DIR         (re-render report.md + plots)
//!   target/release/sitrep-bench check DIR          (is the output well formed?)

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use sitrep_benches::harness::{self, Ctx, SCENARIOS, machine};
use sitrep_benches::report;
use sitrep_benches::results::{Results, SCHEMA, Status};

#[derive(Parser)]
#[command(
    name = "sitrep-bench",
    about = "Benchmark harness: every scenario against its baseline in the same run",
    long_about = "Benchmark harness: every scenario against its baseline in the same run, \
        alternating repetitions, written to OUT/results.json (raw samples, medians, min/max, \
        machine facts), OUT/report.md and OUT/plots/*.svg.\n\n\
        Scenarios: tracking (eBPF overhead vs untracked), ublk (tracked ublk vs rublk vs \
        kernel loop, in a VM), rpo (lag at 10/50/100 MB/s), shipping (highest sustained \
        change rate vs a raw TCP copy), memory (agent/server peak RSS during rpo+shipping), \
        initial (initial copy vs cat | nc), resync (vs rsync), micro (criterion).\n\n\
        Needs root (loop devices, network namespaces, eBPF), fio, rsync, iproute2, and the \
        release binaries (scripts/bench.sh installs and builds them). --quick takes about \
        8 minutes on 2 cores; the full run about 45 minutes."
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run scenarios (all when none is named).
    Run {
        /// Scenario ids: tracking, ublk, rpo, shipping, memory, initial, resync, micro.
        scenarios: Vec<String>,
        /// Small sizes and short rounds: a smoke run (< 10 minutes), not for the record.
        #[arg(long)]
        quick: bool,
        /// Output directory (emptied first).
        #[arg(long, default_value = "target/bench-out/harness")]
        out: PathBuf,
        /// Where big temporary files go (on disk; needs ~14 GiB free for the full run).
        #[arg(long, default_value = "/var/tmp")]
        tmp: PathBuf,
        /// Print results.json to stdout at the end.
        #[arg(long)]
        json: bool,
    },
    /// Re-render OUT/report.md and OUT/plots/ from OUT/results.json.
    Report {
        /// The output directory of a run.
        dir: PathBuf,
    },
    /// Check that an output directory is well formed (results.json, report.md, SVGs).
    Check {
        /// The output directory of a run.
        dir: PathBuf,
    },
    /// The raw-copy baseline's two ends (used inside the sites' namespaces).
    #[command(hide = true)]
    Pipe {
        #[command(subcommand)]
        side: Pipe,
    },
}

#[derive(Subcommand)]
enum Pipe {
    Send {
        #[arg(long)]
        from: PathBuf,
        #[arg(long)]
        to: String,
        #[arg(long)]
        limit: Option<u64>,
    },
    Recv {
        #[arg(long)]
        listen: String,
        #[arg(long)]
        to: PathBuf,
    },
}

fn root() -> anyhow::Result<PathBuf> {
    // The repository root: where Cargo.toml with [workspace] is, from the current directory up.
    let mut d = std::env::current_dir()?;
    loop {
        if d.join("benches/Cargo.toml").exists() && d.join("Cargo.toml").exists() {
            return Ok(d);
        }
        if !d.pop() {
            bail!(
                "run sitrep-bench from inside the sitrep repository (it uses its scripts and binaries)"
            );
        }
    }
}

fn save(res: &Results, out: &std::path::Path) -> anyhow::Result<()> {
    std::fs::write(out.join("results.json"), serde_json::to_vec_pretty(res)?)?;
    report::write(res, out)
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().cmd {
        Cmd::Pipe {
            side: Pipe::Send { from, to, limit },
        } => {
            let n = harness::pipe::send(&from, &to, limit)?;
            eprintln!("sent {n} bytes");
        }
        Cmd::Pipe {
            side: Pipe::Recv { listen, to },
        } => {
            let n = harness::pipe::recv(&listen, &to)?;
            eprintln!("received {n} bytes");
        }
        Cmd::Report { dir } => {
            let res: Results = serde_json::from_slice(&std::fs::read(dir.join("results.json"))?)
                .context("reading results.json")?;
            report::write(&res, &dir)?;
            println!("{}", dir.join("report.md").display());
        }
        Cmd::Check { dir } => println!("{}", report::check(&dir)?),
        Cmd::Run {
            scenarios,
            quick,
            out,
            tmp,
            json,
        } => {
            for s in &scenarios {
                if !SCENARIOS.iter().any(|(id, _)| id == s) {
                    let ids: Vec<&str> = SCENARIOS.iter().map(|(id, _)| *id).collect();
                    bail!("unknown scenario '{s}'; known: {}", ids.join(", "));
                }
            }
            // SAFETY: geteuid has no preconditions.
            if unsafe { libc::geteuid() } != 0 {
                bail!("run as root: the scenarios use loop devices, network namespaces and eBPF");
            }
            let root = root()?;
            for bin in ["sitrep", "tracker_overhead"] {
                let p = root.join("target/release").join(bin);
                if !p.exists() {
                    bail!(
                        "{} is missing: build it first (scripts/bench.sh does)",
                        p.display()
                    );
                }
            }
            let out = if out.is_absolute() {
                out
            } else {
                root.join(out)
            };
            let _ = std::fs::remove_dir_all(&out);
            std::fs::create_dir_all(&out)?;
            let ctx = Ctx {
                quick,
                out: out.clone(),
                root: root.clone(),
                tmp,
            };
            let t0 = Instant::now();
            let mut res = Results {
                schema: SCHEMA,
                command: std::env::args().collect::<Vec<_>>().join(" "),
                quick,
                started: machine::now_utc(),
                machine: machine::facts(&root),
                ..Results::default()
            };
            save(&res, &out)?;
            let scs = harness::run_all(&ctx, &scenarios, |sc| {
                res.scenarios.push(sc.clone());
                res.seconds = t0.elapsed().as_secs_f64();
                if let Err(e) = save(&res, &out) {
                    eprintln!("writing the results: {e:#}");
                }
            });
            res.scenarios = scs;
            res.finished = machine::now_utc();
            res.seconds = t0.elapsed().as_secs_f64();
            save(&res, &out)?;
            let summary = report::check(&out)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&res)?);
            }
            eprintln!("report: {} ({summary})", out.join("report.md").display());
            let failed: Vec<&str> = res
                .scenarios
                .iter()
                .filter(|s| matches!(s.status, Status::Failed(_)))
                .map(|s| s.id.as_str())
                .collect();
            if !failed.is_empty() {
                bail!("scenario(s) failed: {} (see the report)", failed.join(", "));
            }
        }
    }
    Ok(())
}
