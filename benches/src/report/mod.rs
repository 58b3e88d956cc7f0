//! The report renderer: `report.md` and `plots/*.svg` from a [`Results`] document alone.
//!
//! - [`write()`] renders an output directory's report and plots;
//! - [`markdown`] gives the Markdown text (see its doc for the ratio convention);
//! - [`check`] verifies a finished output directory is well formed.
//!
//! The SVGs are hand-written (no dependency): line charts of each scenario's
//! [`Series`](crate::results::Series), grouped by `plot`, and one grouped bar chart per
//! scenario of the medians normalized to the baseline variant.

mod check;
mod markdown;
mod svg;

use std::collections::HashSet;
use std::path::Path;

use anyhow::Context as _;

use crate::results::{Metric, Results, Scenario};

pub use check::check;
pub use markdown::markdown;

/// Writes `OUT/report.md` and `OUT/plots/*.svg` from `results`.
///
/// `results.json` itself is the harness's to write; [`check`] expects it beside these.
///
/// # Errors
/// When the directory or a file cannot be written.
pub fn write(results: &Results, out: &Path) -> anyhow::Result<()> {
    let plots = out.join("plots");
    std::fs::create_dir_all(&plots).with_context(|| format!("creating {}", plots.display()))?;
    for (scenario, specs) in results.scenarios.iter().zip(plan(results)) {
        for spec in &specs {
            let path = out.join(&spec.file);
            std::fs::write(&path, render(scenario, spec))
                .with_context(|| format!("writing {}", path.display()))?;
        }
    }
    let md = out.join("report.md");
    std::fs::write(&md, markdown(results)).with_context(|| format!("writing {}", md.display()))?;
    Ok(())
}

/// What a plot shows.
#[derive(Debug, Clone, PartialEq, Eq)]
enum PlotKind {
    /// The line chart of every series whose `plot` is this name.
    Lines(String),
    /// The bar chart of medians normalized to the baseline.
    Medians,
}

/// One SVG of one scenario: its file (relative to the output dir) and what it shows.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PlotSpec {
    /// `plots/<scenario-id>-<slug>.svg`.
    file: String,
    /// Title (also the Markdown alt text).
    title: String,
    /// What it shows.
    kind: PlotKind,
}

/// The plots of every scenario (outer index = scenario index), file names unique.
fn plan(results: &Results) -> Vec<Vec<PlotSpec>> {
    let mut used = HashSet::new();
    let mut unique = |base: String| {
        let mut name = base.clone();
        let mut n = 2;
        while !used.insert(name.clone()) {
            name = format!("{base}-{n}");
            n += 1;
        }
        format!("plots/{name}.svg")
    };
    results
        .scenarios
        .iter()
        .map(|s| {
            let id = slug(&s.id);
            let mut specs = Vec::new();
            let mut seen = HashSet::new();
            for series in &s.series {
                if seen.insert(series.plot.as_str()) {
                    specs.push(PlotSpec {
                        file: unique(format!("{id}-{}", slug(&series.plot))),
                        title: series.plot.clone(),
                        kind: PlotKind::Lines(series.plot.clone()),
                    });
                }
            }
            if !bar_groups(&s.metrics).is_empty() {
                specs.push(PlotSpec {
                    file: unique(format!("{id}-medians")),
                    title: format!(
                        "{}: medians relative to baseline",
                        if s.title.trim().is_empty() {
                            &s.id
                        } else {
                            &s.title
                        }
                    ),
                    kind: PlotKind::Medians,
                });
            }
            specs
        })
        .collect()
}

/// The SVG text of one planned plot.
fn render(scenario: &Scenario, spec: &PlotSpec) -> String {
    match &spec.kind {
        PlotKind::Lines(plot) => {
            let series: Vec<_> = scenario.series.iter().filter(|s| &s.plot == plot).collect();
            let x_label = series.first().map_or("", |s| s.x_label.as_str());
            let y_label = series.first().map_or("", |s| s.y_label.as_str());
            let lines: Vec<svg::Line<'_>> = series
                .iter()
                .map(|s| svg::Line {
                    label: &s.label,
                    points: &s.points,
                })
                .collect();
            svg::line_chart(&spec.title, x_label, y_label, &lines)
        }
        PlotKind::Medians => svg::bar_chart(
            &spec.title,
            "× baseline (median; whiskers: min–max)",
            &bar_groups(&scenario.metrics),
        ),
    }
}

/// Metrics grouped by name, in order of first appearance; within a group, in `metrics`
/// order, so the baseline is the last one.
fn groups(metrics: &[Metric]) -> Vec<(&str, Vec<&Metric>)> {
    let mut out: Vec<(&str, Vec<&Metric>)> = Vec::new();
    for m in metrics {
        match out.iter_mut().find(|(name, _)| *name == m.name) {
            Some((_, group)) => group.push(m),
            None => out.push((m.name.as_str(), vec![m])),
        }
    }
    out
}

/// `value / base`, or NaN when that means nothing (no baseline, zero baseline).
fn ratio(value: f64, base: f64) -> f64 {
    if base == 0.0 || !base.is_finite() || !value.is_finite() {
        f64::NAN
    } else {
        value / base
    }
}

/// The bar chart's data: every metric name with ≥ 2 variants and a usable baseline,
/// normalized to the baseline's median.
fn bar_groups(metrics: &[Metric]) -> Vec<svg::BarGroup> {
    groups(metrics)
        .into_iter()
        .filter(|(_, g)| g.len() >= 2)
        .filter_map(|(name, g)| {
            let base = g.last().map_or(f64::NAN, |m| m.median);
            ratio(1.0, base).is_finite().then(|| svg::BarGroup {
                label: format!("{name} {}", if g[0].higher_is_better { "↑" } else { "↓" }),
                bars: g
                    .iter()
                    .map(|m| svg::Bar {
                        variant: m.variant.clone(),
                        value: ratio(m.median, base),
                        lo: ratio(m.min, base),
                        hi: ratio(m.max, base),
                    })
                    .collect(),
            })
        })
        .collect()
}

/// A file-name-safe slug: lowercase ASCII alphanumerics, runs of anything else as `-`.
fn slug(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars().flat_map(char::to_lowercase) {
        if c.is_ascii_alphanumeric() {
            out.push(c);
        } else if !out.is_empty() && !out.ends_with('-') {
            out.push('-');
        }
    }
    while out.ends_with('-') {
        out.pop();
    }
    if out.is_empty() {
        out.push_str("plot");
    }
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::results::{Machine, SCHEMA, Series, Status, TargetCheck};

    /// A sample run: `tracking` (Ok, 2 variants, a series, a target) and `ublk` (Failed).
    pub(crate) fn sample() -> Results {
        let tracking = Scenario {
            id: "tracking".into(),
            title: "Tracker overhead".into(),
            description: "fio 4k random writes on a loop device.".into(),
            status: Status::Ok,
            seconds: 61.5,
            metrics: vec![
                Metric::new(
                    "4k randwrite IOPS",
                    "sitrep",
                    "IOPS",
                    true,
                    vec![98_000.0, 99_000.0, 97_000.0],
                ),
                Metric::new(
                    "4k randwrite IOPS",
                    "untracked",
                    "IOPS",
                    true,
                    vec![100_000.0, 101_000.0, 99_000.0],
                ),
                Metric::new(
                    "resident memory",
                    "sitrep",
                    "bytes",
                    false,
                    vec![3.0 * 1_048_576.0],
                ),
            ],
            series: vec![
                Series {
                    plot: "IOPS over time".into(),
                    label: "sitrep <tracked>".into(),
                    x_label: "time (s)".into(),
                    y_label: "IOPS".into(),
                    points: vec![(0.0, 98_000.0), (1.0, 99_000.0), (3.0, 97_500.0)],
                },
                Series {
                    plot: "IOPS over time".into(),
                    label: "untracked & raw".into(),
                    x_label: "time (s)".into(),
                    y_label: "IOPS".into(),
                    points: vec![(0.0, 100_000.0), (1.0, 100_500.0), (3.0, 99_000.0)],
                },
            ],
            targets: vec![TargetCheck {
                target: "≥ 0.99 × untracked IOPS".into(),
                measured: "0.980 × untracked IOPS".into(),
                value: 0.98,
                met: Some(false),
            }],
            notes: vec!["the loop device is backed by tmpfs".into()],
            commands: vec!["fio --name=w --rw=randwrite --bs=4k".into()],
            artifacts: vec!["logs/tracking/fio.json".into()],
        };
        let ublk = Scenario {
            id: "ublk".into(),
            title: "ublk IOPS".into(),
            description: "Against rublk's loop target.".into(),
            status: Status::Failed("ublk_drv not loaded".into()),
            seconds: 0.2,
            ..Scenario::default()
        };
        Results {
            schema: SCHEMA,
            command: "sitrep-bench --quick all".into(),
            quick: true,
            started: "2025-01-02T03:04:05Z".into(),
            finished: "2025-01-02T03:05:07Z".into(),
            seconds: 62.0,
            machine: Machine {
                kernel: "6.8.0".into(),
                cores: 8,
                cpu_model: "Test CPU".into(),
                memory_bytes: 16 * 1024 * 1024 * 1024,
                git_rev: "abc1234".into(),
                git_modified_files: 2,
                loadavg_start: 0.25,
                tools: vec![("fio".into(), "fio-3.36".into())],
            },
            scenarios: vec![tracking, ublk],
        }
    }

    #[test]
    fn plan_names_plots_uniquely() {
        let specs = plan(&sample());
        assert_eq!(specs.len(), 2);
        let files: Vec<_> = specs[0].iter().map(|s| s.file.as_str()).collect();
        assert_eq!(
            files,
            [
                "plots/tracking-iops-over-time.svg",
                "plots/tracking-medians.svg"
            ]
        );
        assert!(specs[1].is_empty());
        assert_eq!(slug("  A/b  c!"), "a-b-c");
        assert_eq!(slug("!!"), "plot");
    }

    #[test]
    fn bar_groups_normalize_to_the_last_variant() {
        let g = bar_groups(&sample().scenarios[0].metrics);
        assert_eq!(g.len(), 1);
        assert!((g[0].bars[0].value - 0.98).abs() < 1e-9);
        assert!((g[0].bars[1].value - 1.0).abs() < 1e-12);
    }

    #[test]
    fn write_then_check_passes_and_a_corrupt_svg_fails() {
        let dir = std::env::temp_dir().join(format!("sitrep-report-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let results = sample();
        std::fs::write(
            dir.join("results.json"),
            serde_json::to_string_pretty(&results).unwrap(),
        )
        .unwrap();
        write(&results, &dir).unwrap();
        let summary = check(&dir).unwrap();
        assert!(summary.contains("2 scenarios"), "{summary}");
        assert!(summary.contains("2 plots"), "{summary}");

        let svg = dir.join("plots/tracking-medians.svg");
        let text = std::fs::read_to_string(&svg).unwrap();
        std::fs::write(&svg, text.replacen("</text>", "", 1)).unwrap();
        let err = check(&dir).unwrap_err().to_string();
        assert!(err.contains("tracking-medians.svg"), "{err}");

        std::fs::remove_file(&svg).unwrap();
        assert!(check(&dir).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
