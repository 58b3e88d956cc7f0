//! The harness's result document, `results.json` (schema 1).
//!
//! One [`Results`] per run: machine facts, then one [`Scenario`] per scenario run. A
//! scenario holds raw [`Metric`] samples per variant (sitrep, or a baseline), time
//! [`Series`] for plots, and the [`TargetCheck`]s of BRIEF §7 it can judge. The Markdown
//! report and the SVG plots are rendered from this document alone (`report`), so a
//! `results.json` from another machine can be re-rendered.

use serde::{Deserialize, Serialize};

/// Version of this document's layout. Bump on any incompatible change.
pub const SCHEMA: u32 = 1;

/// A whole harness run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Results {
    /// [`SCHEMA`].
    pub schema: u32,
    /// The command line that produced it.
    pub command: String,
    /// `--quick` (small sizes, short rounds: a smoke run, not for the record).
    pub quick: bool,
    /// Start and end, RFC 3339 UTC.
    pub started: String,
    /// See `started`.
    pub finished: String,
    /// Wall time of the whole run, seconds.
    pub seconds: f64,
    /// Where it ran.
    pub machine: Machine,
    /// The scenarios, in the order they ran.
    pub scenarios: Vec<Scenario>,
}

/// Facts about the machine and the tree.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Machine {
    /// `uname -r`.
    pub kernel: String,
    /// Online CPUs.
    pub cores: u32,
    /// `model name` from /proc/cpuinfo.
    pub cpu_model: String,
    /// MemTotal, bytes.
    pub memory_bytes: u64,
    /// `git rev-parse --short HEAD` (or "unknown").
    pub git_rev: String,
    /// Tracked files modified in the work tree when the run started.
    pub git_modified_files: u32,
    /// Load average (1 min) when the run started: a busy machine makes noisy numbers.
    pub loadavg_start: f64,
    /// Versions of the baseline tools used (fio, rsync, rublk, ...), as they print them.
    pub tools: Vec<(String, String)>,
}

/// How a scenario ended.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "status", content = "detail")]
pub enum Status {
    /// It ran to the end.
    #[default]
    Ok,
    /// It stopped with this error (the metrics gathered until then are kept).
    Failed(String),
    /// It did not run, for this reason.
    Skipped(String),
}

/// One scenario's results.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Scenario {
    /// Short id (`tracking`, `ublk`, `shipping`, `rpo`, `initial`, `resync`, `memory`,
    /// `micro`), as given on the command line.
    pub id: String,
    /// Human title.
    pub title: String,
    /// What was measured and how, one paragraph (Markdown).
    pub description: String,
    /// How it ended.
    pub status: Status,
    /// Wall time, seconds.
    pub seconds: f64,
    /// Measured values.
    pub metrics: Vec<Metric>,
    /// Time series (plotted as lines).
    pub series: Vec<Series>,
    /// Targets of BRIEF §7 this scenario judges.
    pub targets: Vec<TargetCheck>,
    /// Observations worth reading (limits, anomalies, what bounds a number).
    pub notes: Vec<String>,
    /// The exact commands run for the measured parts (baselines included).
    pub commands: Vec<String>,
    /// Files beside results.json with raw output (relative to the output directory).
    pub artifacts: Vec<String>,
}

/// One measured quantity of one variant: every sample kept, plus summaries.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Metric {
    /// What (e.g. `4k randwrite IOPS`, `wire bytes`, `time`).
    pub name: String,
    /// Which side: `sitrep`, `sitrep extents`, or the baseline's name (`untracked`,
    /// `rublk loop`, `cat | nc`, `rsync`).
    pub variant: String,
    /// Unit (`IOPS`, `MB/s`, `s`, `bytes`, `ns`, ...).
    pub unit: String,
    /// Whether more is better (plots and ratios read it).
    pub higher_is_better: bool,
    /// Raw samples in the order measured (repetitions).
    #[serde(deserialize_with = "nan::vec")]
    pub samples: Vec<f64>,
    /// Median of `samples`.
    #[serde(deserialize_with = "nan::one")]
    pub median: f64,
    /// Minimum of `samples`.
    #[serde(deserialize_with = "nan::one")]
    pub min: f64,
    /// Maximum of `samples`.
    #[serde(deserialize_with = "nan::one")]
    pub max: f64,
}

impl Metric {
    /// A metric from its samples (summaries computed here; NaN when there are none).
    #[must_use]
    pub fn new(
        name: &str,
        variant: &str,
        unit: &str,
        higher_is_better: bool,
        samples: Vec<f64>,
    ) -> Self {
        let min = samples.iter().copied().fold(f64::NAN, f64::min);
        let max = samples.iter().copied().fold(f64::NAN, f64::max);
        Self {
            name: name.to_owned(),
            variant: variant.to_owned(),
            unit: unit.to_owned(),
            higher_is_better,
            median: crate::median(&samples),
            min,
            max,
            samples,
        }
    }
}

/// A line on a plot: `points` are (x, y).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Series {
    /// Plot this line belongs to (one SVG per distinct `plot` in a scenario).
    pub plot: String,
    /// Legend label.
    pub label: String,
    /// Axis labels with units.
    pub x_label: String,
    /// See `x_label`.
    pub y_label: String,
    /// The points, x ascending.
    #[serde(deserialize_with = "nan::pairs")]
    pub points: Vec<(f64, f64)>,
}

/// One target of BRIEF §7 judged against this run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TargetCheck {
    /// The target as BRIEF §7 states it.
    pub target: String,
    /// What was measured, in words with the number (e.g. `0.977 × untracked IOPS`).
    pub measured: String,
    /// The deciding value (a ratio, seconds, MB/s).
    #[serde(deserialize_with = "nan::one")]
    pub value: f64,
    /// Whether the target is met; None when this run cannot judge it (e.g. `--quick`).
    pub met: Option<bool>,
}

/// JSON has no NaN: serde_json writes a non-finite float as `null`; these read it back as NaN.
mod nan {
    use serde::{Deserialize, Deserializer};

    fn f(v: Option<f64>) -> f64 {
        v.unwrap_or(f64::NAN)
    }

    pub(super) fn one<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        Ok(f(Option::deserialize(d)?))
    }

    pub(super) fn vec<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<f64>, D::Error> {
        Ok(Vec::<Option<f64>>::deserialize(d)?
            .into_iter()
            .map(f)
            .collect())
    }

    pub(super) fn pairs<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<(f64, f64)>, D::Error> {
        let v = Vec::<(Option<f64>, Option<f64>)>::deserialize(d)?;
        Ok(v.into_iter().map(|(x, y)| (f(x), f(y))).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nan_survives_a_round_trip_as_null() {
        let m = Metric::new("x", "sitrep", "s", false, vec![]);
        let j = serde_json::to_string(&m).unwrap();
        assert!(j.contains("\"median\":null"), "{j}");
        let back: Metric = serde_json::from_str(&j).unwrap();
        assert!(back.median.is_nan() && back.min.is_nan());
        let s = Series {
            points: vec![(1.0, f64::NAN)],
            ..Series::default()
        };
        let back: Series = serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
        assert!(back.points[0].1.is_nan());
    }
}
