//! The scenarios of `sitrep-bench`. Each fills a [`Scenario`] it is given, so what it
//! measured before a failure is kept in the report.

use std::path::PathBuf;
use std::time::Instant;

use crate::results::{Scenario, Status};

pub mod data;
pub mod initial;
pub mod machine;
pub mod micro;
pub mod pipe;
pub mod points;
pub mod resync;
pub mod ship;
pub mod sites;
pub mod tracking;
pub mod ublk;

/// What every scenario gets.
#[derive(Debug, Clone)]
pub struct Ctx {
    /// `--quick`: small sizes and short rounds (a smoke run, minutes, not for the record).
    pub quick: bool,
    /// The output directory (results.json, report.md, plots/, logs/).
    pub out: PathBuf,
    /// The repository root (for cargo, scripts and the release binaries).
    pub root: PathBuf,
    /// Where big temporary files go (on disk, not tmpfs, unless a scenario says otherwise).
    pub tmp: PathBuf,
}

impl Ctx {
    /// `OUT/logs/<scenario>/`, created.
    ///
    /// # Errors
    /// If the directory cannot be created.
    pub fn logs(&self, scenario: &str) -> std::io::Result<PathBuf> {
        let d = self.out.join("logs").join(scenario);
        std::fs::create_dir_all(&d)?;
        Ok(d)
    }
}

/// Every scenario id with its title, in the order they run.
pub const SCENARIOS: &[(&str, &str)] = &[
    ("tracking", "1. Tracking overhead (eBPF)"),
    ("rpo", "4. RPO: replication lag in continuous mode"),
    ("shipping", "3. Shipping throughput"),
    ("memory", "7. Memory of the agent and the server"),
    ("initial", "5. Initial replication"),
    ("resync", "6. Checksum resync"),
    ("ublk", "2. Tracked ublk disk (VM)"),
    ("micro", "8. Micro benchmarks (criterion)"),
    ("points", "9. Recovery points under churn"),
];

/// Runs the selected scenarios (ids from [`SCENARIOS`]; `memory` needs `rpo` or
/// `shipping`, and runs `rpo` when neither is selected), calling `done` after each.
pub fn run_all(ctx: &Ctx, selected: &[String], mut done: impl FnMut(&Scenario)) -> Vec<Scenario> {
    let want = |id: &str| selected.is_empty() || selected.iter().any(|s| s == id);
    let mut bench: Option<anyhow::Result<ship::Bench>> = None;
    let needs_bench = want("rpo") || want("shipping") || want("memory");
    let mut out = Vec::new();
    // rublk takes minutes to build: in a smoke run, build it in the background, niced, while
    // the other scenarios run (a full run builds it before measuring, in the ublk script).
    let mut rublk = if ctx.quick && want("ublk") {
        ublk::prefetch_rublk(ctx)
    } else {
        None
    };
    for &(id, title) in SCENARIOS {
        let implied = id == "rpo" && want("memory") && !want("shipping");
        if !want(id) && !implied {
            continue;
        }
        eprintln!("=== {id}: {title}");
        let mut sc = Scenario {
            id: id.into(),
            title: title.into(),
            ..Scenario::default()
        };
        let t0 = Instant::now();
        let r = match id {
            "tracking" => tracking::run(ctx, &mut sc),
            "ublk" => ublk::wait_rublk(rublk.take()).and_then(|()| ublk::run(ctx, &mut sc)),
            "initial" => initial::run(ctx, &mut sc),
            "resync" => resync::run(ctx, &mut sc),
            "micro" => micro::run_into(ctx, &mut sc),
            "points" => points::run_points(ctx, &mut sc),
            _ => {
                if needs_bench && bench.is_none() {
                    bench = Some(ship::Bench::up(ctx));
                }
                match bench.as_mut() {
                    Some(Ok(b)) => match id {
                        "rpo" => ship::rpo(ctx, b, &mut sc),
                        "shipping" => ship::shipping(ctx, b, &mut sc),
                        _ => ship::memory(b, &mut sc),
                    },
                    Some(Err(e)) => Err(anyhow::anyhow!("setting up the two sites failed: {e:#}")),
                    None => Err(anyhow::anyhow!("internal: no sites")),
                }
            }
        };
        sc.seconds = t0.elapsed().as_secs_f64();
        if let Err(e) = r {
            eprintln!("=== {id} FAILED: {e:#}");
            sc.status = Status::Failed(format!("{e:#}"));
        }
        if id == "memory" {
            bench = None; // tear the sites down
        }
        done(&sc);
        out.push(sc);
    }
    out
}
