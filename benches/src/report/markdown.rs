//! The Markdown report, and the number formatting it uses.

use std::fmt::Write as _;

use crate::results::{Machine, Results, Scenario, Status, TargetCheck};

use super::{PlotSpec, groups, plan, ratio};

/// The Markdown report of `results` (plots referenced as `plots/<file>.svg`, as
/// [`write`](super::write) names them).
///
/// Sections: title, run facts and machine table; a summary of every scenario's status
/// and of every BRIEF §7 target judged; then one section per scenario, in run order,
/// with its status, description, metrics table, plots, targets, notes, commands and
/// artifacts.
///
/// **Baseline convention.** Metrics are grouped by `name`; within a group the
/// **last** variant listed (in `metrics` order) is the baseline. The "× baseline"
/// column is `median / baseline median` as-is, whether more is better (↑) or less is
/// better (↓): for ↑ metrics above 1 favours the variant, for ↓ metrics below 1 does.
/// A group with a single variant, or a baseline median of 0 or NaN, has no ratio (—).
#[must_use]
pub fn markdown(results: &Results) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "# sitrep benchmark report\n");
    let _ = writeln!(
        md,
        "Run {} → {} ({} in total), commit `{}`.\n\n```sh\n{}\n```\n",
        results.started,
        results.finished,
        duration(results.seconds),
        results.machine.git_rev,
        results.command
    );
    if results.quick {
        md.push_str(
            "> ⚠️ **Smoke run** (`--quick`): sizes and durations reduced; numbers are not for the record.\n\n",
        );
    }
    machine(&mut md, &results.machine, results.seconds);
    summary(&mut md, results);
    for (scenario, plots) in results.scenarios.iter().zip(plan(results)) {
        section(&mut md, scenario, &plots);
    }
    md
}

/// The machine table.
fn machine(md: &mut String, m: &Machine, seconds: f64) {
    let tree = match m.git_modified_files {
        0 => "clean tree".to_owned(),
        1 => "1 modified file".to_owned(),
        n => format!("{n} modified files"),
    };
    md.push_str("## Machine\n\n| | |\n|---|---|\n");
    let rows = [
        ("Kernel", m.kernel.clone()),
        ("CPU", format!("{} ({} cores)", m.cpu_model, m.cores)),
        ("Memory", bytes(u64_f64(m.memory_bytes))),
        ("Git revision", format!("{} ({tree})", m.git_rev)),
        (
            "Load average at start (1 min)",
            format!("{:.2}", m.loadavg_start),
        ),
        ("Total wall time", duration(seconds)),
    ];
    for (k, v) in rows {
        let _ = writeln!(md, "| {k} | {} |", cell(&v));
    }
    for (tool, version) in &m.tools {
        let _ = writeln!(md, "| {} | {} |", cell(tool), cell(version));
    }
    md.push('\n');
}

/// `x` as a float (exact below 2⁵³ bytes, close enough beyond).
#[allow(
    clippy::cast_precision_loss,
    reason = "a memory size: 53 bits of precision is plenty"
)]
fn u64_f64(x: u64) -> f64 {
    x as f64
}

/// Status word with an icon.
fn status(s: &Status) -> &'static str {
    match s {
        Status::Ok => "✅ ok",
        Status::Failed(_) => "❌ **failed**",
        Status::Skipped(_) => "⏭️ skipped",
    }
}

/// ✅ met / ❌ not met / — not judged.
fn met(t: &TargetCheck) -> &'static str {
    match t.met {
        Some(true) => "✅ met",
        Some(false) => "❌ not met",
        None => "— not judged",
    }
}

/// The scenario and target summary tables.
fn summary(md: &mut String, results: &Results) {
    md.push_str("## Summary\n\n| Scenario | Status | Wall time |\n|---|---|---|\n");
    for s in &results.scenarios {
        let _ = writeln!(
            md,
            "| `{}` {} | {} | {} |",
            s.id,
            cell(&s.title),
            status(&s.status),
            duration(s.seconds)
        );
    }
    md.push_str("\n## Targets (BRIEF §7)\n\n");
    let all: Vec<_> = results
        .scenarios
        .iter()
        .flat_map(|s| s.targets.iter().map(move |t| (s, t)))
        .collect();
    if all.is_empty() {
        md.push_str("No scenario of this run judges a target.\n\n");
        return;
    }
    md.push_str("| Target | Measured | Met | Scenario |\n|---|---|---|---|\n");
    for (s, t) in all {
        let _ = writeln!(
            md,
            "| {} | {} | {} | `{}` |",
            cell(&t.target),
            cell(&t.measured),
            met(t),
            s.id
        );
    }
    md.push('\n');
}

/// One scenario's section.
fn section(md: &mut String, s: &Scenario, plots: &[PlotSpec]) {
    let title = if s.title.trim().is_empty() {
        &s.id
    } else {
        &s.title
    };
    let _ = writeln!(
        md,
        "## {}\n\n`{}` · {} · {}\n",
        one_line(title),
        s.id,
        status(&s.status),
        duration(s.seconds)
    );
    match &s.status {
        Status::Ok => {}
        Status::Failed(why) => {
            let _ = writeln!(md, "> ❌ **Failed:** {}\n", one_line(why));
            if !s.metrics.is_empty() || !s.series.is_empty() {
                md.push_str("The numbers below are what was measured before it stopped.\n\n");
            }
        }
        Status::Skipped(why) => {
            let _ = writeln!(md, "> ⏭️ **Skipped:** {}\n", one_line(why));
        }
    }
    if !s.description.trim().is_empty() {
        let _ = writeln!(md, "{}\n", s.description.trim());
    }
    metrics(md, s);
    for p in plots {
        let _ = writeln!(md, "![{}]({})\n", p.title.replace(['[', ']'], ""), p.file);
    }
    if !s.targets.is_empty() {
        md.push_str("**Targets**\n\n| Target | Measured | Met |\n|---|---|---|\n");
        for t in &s.targets {
            let _ = writeln!(
                md,
                "| {} | {} | {} |",
                cell(&t.target),
                cell(&t.measured),
                met(t)
            );
        }
        md.push('\n');
    }
    if !s.notes.is_empty() {
        md.push_str("**Notes**\n\n");
        for n in &s.notes {
            let _ = writeln!(md, "- {}", one_line(n));
        }
        md.push('\n');
    }
    if !s.commands.is_empty() {
        let longest = s
            .commands
            .iter()
            .map(|c| longest_run(c, '`'))
            .max()
            .unwrap_or(0);
        let fence = "`".repeat(longest.max(2) + 1);
        let _ = writeln!(
            md,
            "**Commands**\n\n{fence}sh\n{}\n{fence}\n",
            s.commands.join("\n")
        );
    }
    if !s.artifacts.is_empty() {
        md.push_str("**Artifacts**\n\n");
        for a in &s.artifacts {
            let _ = writeln!(
                md,
                "- [{}](<{}>)",
                a.replace(['[', ']'], ""),
                a.replace(['<', '>'], "")
            );
        }
        md.push('\n');
    }
}

/// The metrics table, grouped by name, baseline last (see [`markdown`]).
fn metrics(md: &mut String, s: &Scenario) {
    let groups = groups(&s.metrics);
    if groups.is_empty() {
        md.push_str("_No metrics._\n\n");
        return;
    }
    md.push_str("| Metric | Variant | Median | Min | Max | n | × baseline |\n|---|---|--:|--:|--:|--:|--:|\n");
    for (name, group) in &groups {
        let base = if group.len() >= 2 {
            group.last().map_or(f64::NAN, |m| m.median)
        } else {
            f64::NAN
        };
        for (i, m) in group.iter().enumerate() {
            let label = if i == 0 {
                format!(
                    "{} {}",
                    cell(name),
                    if m.higher_is_better { "↑" } else { "↓" }
                )
            } else {
                String::new()
            };
            let r = if group.len() >= 2 && i + 1 == group.len() {
                "1 (baseline)".to_owned()
            } else {
                let r = ratio(m.median, base);
                if r.is_finite() {
                    format!("{}×", sig3(r))
                } else {
                    "—".to_owned()
                }
            };
            let _ = writeln!(
                md,
                "| {label} | {} | {} | {} | {} | {} | {r} |",
                cell(&m.variant),
                value(m.median, &m.unit),
                value(m.min, &m.unit),
                value(m.max, &m.unit),
                m.samples.len()
            );
        }
    }
    md.push_str("\n↑ more is better, ↓ less is better; × baseline = median ÷ the median of the metric's last variant.\n\n");
}

/// `s` safe in a table cell (pipes escaped, on one line).
fn cell(s: &str) -> String {
    one_line(s).replace('|', "\\|")
}

/// `s` on one line.
fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The longest run of `c` in `s`.
fn longest_run(s: &str, c: char) -> usize {
    s.split(|x| x != c).map(str::len).max().unwrap_or(0)
}

/// Three significant digits (`0.977`, `12.3`, `456`; more integer digits stay).
pub(crate) fn sig3(x: f64) -> String {
    if !x.is_finite() {
        return "—".to_owned();
    }
    let mut decimals = 0;
    let mut t = x.abs();
    while t != 0.0 && t < 99.95 && decimals < 12 {
        t *= 10.0;
        decimals += 1;
    }
    format!("{x:.decimals$}")
}

/// A count with thousands separators (`12,345`), rounded to an integer.
fn thousands(x: f64) -> String {
    let s = format!("{:.0}", x.abs());
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if x < 0.0 && out != "0" {
        out.insert(0, '-');
    }
    out
}

/// Bytes in B, KiB, MiB, GiB, TiB (three significant digits).
pub(crate) fn bytes(x: f64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = x;
    let mut unit = units[0];
    for u in &units[1..] {
        if v.abs() < 1024.0 {
            break;
        }
        v /= 1024.0;
        unit = u;
    }
    if unit == "B" {
        format!("{} B", thousands(v))
    } else {
        format!("{} {unit}", sig3(v))
    }
}

/// Seconds as s, ms, µs or ns (three significant digits).
fn seconds(x: f64) -> String {
    let a = x.abs();
    if a == 0.0 {
        "0 s".to_owned()
    } else if a >= 1000.0 {
        format!("{} s", thousands(x))
    } else if a >= 1.0 {
        format!("{} s", sig3(x))
    } else if a >= 1e-3 {
        format!("{} ms", sig3(x * 1e3))
    } else if a >= 1e-6 {
        format!("{} µs", sig3(x * 1e6))
    } else {
        format!("{} ns", sig3(x * 1e9))
    }
}

/// A wall time: `12.3 s`, `4 min 05 s`, `1 h 02 min`.
pub(crate) fn duration(x: f64) -> String {
    if !x.is_finite() || x < 60.0 {
        return if x.is_finite() {
            seconds(x)
        } else {
            "—".to_owned()
        };
    }
    let total = format!("{:.0}", x.floor())
        .parse::<u64>()
        .unwrap_or(u64::MAX);
    let (h, m, s) = (total / 3600, total / 60 % 60, total % 60);
    if h == 0 {
        format!("{m} min {s:02} s")
    } else {
        format!("{h} h {m:02} min")
    }
}

/// A measured value with its unit, scaled to read easily.
pub(crate) fn value(x: f64, unit: &str) -> String {
    if !x.is_finite() {
        return "—".to_owned();
    }
    match unit {
        "bytes" | "byte" | "B" => bytes(x),
        "s" => seconds(x),
        "ms" => seconds(x * 1e-3),
        "us" | "µs" => seconds(x * 1e-6),
        "ns" => seconds(x * 1e-9),
        _ => {
            let n = if x.abs() >= 1e9 {
                format!("{}G", sig3(x / 1e9))
            } else if x.abs() >= 1e6 {
                format!("{}M", sig3(x / 1e6))
            } else if x.abs() >= 1e4 {
                thousands(x)
            } else {
                sig3(x)
            };
            if unit.is_empty() {
                n
            } else {
                format!("{n} {unit}")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::tests::sample;

    #[test]
    fn numbers_read_easily() {
        assert_eq!(sig3(0.97654), "0.977");
        assert_eq!(sig3(12.345), "12.3");
        assert_eq!(sig3(456.7), "457");
        assert_eq!(sig3(1.0), "1.00");
        assert_eq!(thousands(1_234_567.4), "1,234,567");
        assert_eq!(thousands(-999.0), "-999");
        assert_eq!(bytes(512.0), "512 B");
        assert_eq!(bytes(3.0 * 1_048_576.0), "3.00 MiB");
        assert_eq!(bytes(16.0 * 1024.0 * 1024.0 * 1024.0), "16.0 GiB");
        assert_eq!(value(98_000.0, "IOPS"), "98,000 IOPS");
        assert_eq!(value(2_500_000.0, "IOPS"), "2.50M IOPS");
        assert_eq!(value(1234.6, "MB/s"), "1235 MB/s");
        assert_eq!(value(0.0123, "s"), "12.3 ms");
        assert_eq!(value(1500.0, "ns"), "1.50 µs");
        assert_eq!(value(f64::NAN, "s"), "—");
        assert_eq!(duration(61.5), "1 min 01 s");
        assert_eq!(duration(3725.0), "1 h 02 min");
        assert_eq!(duration(2.345), "2.35 s");
        assert_eq!(longest_run("a ``` b `", '`'), 3);
    }

    #[test]
    fn markdown_has_every_section_and_ratio() {
        let md = markdown(&sample());
        for want in [
            "# sitrep benchmark report",
            "sitrep-bench --quick all",
            "**Smoke run**",
            "sizes and durations reduced; numbers are not for the record",
            "| Kernel | 6.8.0 |",
            "| CPU | Test CPU (8 cores) |",
            "| Memory | 16.0 GiB |",
            "abc1234 (2 modified files)",
            "| fio | fio-3.36 |",
            "## Targets (BRIEF §7)",
            "| ≥ 0.99 × untracked IOPS | 0.980 × untracked IOPS | ❌ not met | `tracking` |",
            "## Tracker overhead",
            "`tracking` · ✅ ok · 1 min 01 s",
            "fio 4k random writes on a loop device.",
            "| 4k randwrite IOPS ↑ | sitrep | 98,000 IOPS | 97,000 IOPS | 99,000 IOPS | 3 | 0.980× |",
            "|  | untracked | 100,000 IOPS | 99,000 IOPS | 101,000 IOPS | 3 | 1 (baseline) |",
            "| resident memory ↓ | sitrep | 3.00 MiB | 3.00 MiB | 3.00 MiB | 1 | — |",
            "![IOPS over time](plots/tracking-iops-over-time.svg)",
            "](plots/tracking-medians.svg)",
            "- the loop device is backed by tmpfs",
            "```sh\nfio --name=w --rw=randwrite --bs=4k\n```",
            "- [logs/tracking/fio.json](<logs/tracking/fio.json>)",
            "## ublk IOPS",
            "`ublk` · ❌ **failed**",
            "> ❌ **Failed:** ublk_drv not loaded\n\nAgainst rublk's loop target.",
            "_No metrics._",
        ] {
            assert!(md.contains(want), "missing {want:?} in\n{md}");
        }
        let not_quick = Results {
            quick: false,
            ..sample()
        };
        assert!(!markdown(&not_quick).contains("Smoke run"));
    }

    #[test]
    fn table_cells_escape_pipes() {
        let mut r = sample();
        r.scenarios[0].metrics[1].variant = "cat | nc".into();
        assert!(markdown(&r).contains("| cat \\| nc |"));
    }
}
