//! Recovery points of one replica and their retention (`STORE/disks/NAME/points.json`).
//!
//! A point is an applied cycle the source proved crash-consistent (see docs/architecture.md,
//! *Recovery points*): the replica right after that cycle equalled the source disk at the
//! cycle's cut. It stays reconstructible as long as the undo files of every later cycle are
//! kept (the secondary's `undo` module); retention decides which points stay, and with them which undo
//! files.

use serde::{Deserialize, Serialize};

/// What a point promises.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PointKind {
    /// Equal to the source disk at one instant (as if power was cut then).
    CrashConsistent,
    /// Taken while the filesystem was frozen (or the application quiesced by hooks).
    AppConsistent,
}

/// One recovery point.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Point {
    /// Id: the sequence of the cycle it ends (unique per disk).
    pub id: u64,
    /// Kind.
    pub kind: PointKind,
    /// The source-side cut time (ns since the epoch, the source's realtime clock).
    pub cut_time_ns: u64,
    /// The first cycle since the previous point (`first_seq..=id` are the cycles it covers).
    pub first_seq: u64,
    /// When the server recorded it.
    pub created_unix_ns: u64,
    /// For app-consistent points: how it was quiesced.
    pub label: Option<String>,
    /// Bytes the cycles `first_seq..=id` wrote (data and zero ranges).
    #[serde(default)]
    pub bytes: u64,
}

/// `points.json`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PointsFile {
    /// Format version (1).
    pub version: u32,
    /// Retained points, oldest first.
    pub points: Vec<Point>,
    /// The newest cycle the source has judged (a point or not): older cycles will never
    /// become points.
    pub judged_upto: Option<u64>,
    /// Bytes applied since the newest point (they become the next point's `bytes`).
    #[serde(default)]
    pub unpointed_bytes: u64,
    /// Cycle sequences `(first, last)` a checksum resync replaced: they were never applied,
    /// so no undo file exists for them (the resync's undo parts cover its changes).
    #[serde(default)]
    pub skipped: Vec<(u64, u64)>,
}

/// Which recovery point an operator names: `latest`, `latest-processed`,
/// `latest-app-consistent`, or a point id (`sitrep points NAME`). Parsed once where it is
/// typed (the CLI's flags, the control request); on the control socket it stays the string
/// the operator wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum PointSel {
    /// The newest point.
    Latest,
    /// The newest point of a cycle the secondary has processed (the same as `Latest` here:
    /// the server applies every cycle as soon as it is staged).
    LatestProcessed,
    /// The newest app-consistent point.
    LatestAppConsistent,
    /// The point with this id.
    Id(u64),
}

impl PointSel {
    /// The point of `pts` (oldest first) this selector names, if any.
    #[must_use]
    pub fn pick(self, pts: &[Point]) -> Option<&Point> {
        match self {
            Self::Latest | Self::LatestProcessed => pts.last(),
            Self::LatestAppConsistent => pts
                .iter()
                .rev()
                .find(|p| p.kind == PointKind::AppConsistent),
            Self::Id(id) => pts.iter().find(|p| p.id == id),
        }
    }
}

impl std::str::FromStr for PointSel {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "latest" => Ok(Self::Latest),
            "latest-processed" => Ok(Self::LatestProcessed),
            "latest-app-consistent" => Ok(Self::LatestAppConsistent),
            id => id.parse().map(Self::Id).map_err(|_| {
                format!(
                    "point '{id}': expected a point id, latest, latest-processed or latest-app-consistent"
                )
            }),
        }
    }
}

impl std::fmt::Display for PointSel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Latest => f.write_str("latest"),
            Self::LatestProcessed => f.write_str("latest-processed"),
            Self::LatestAppConsistent => f.write_str("latest-app-consistent"),
            Self::Id(id) => write!(f, "{id}"),
        }
    }
}

impl From<PointSel> for String {
    fn from(s: PointSel) -> String {
        s.to_string()
    }
}

impl TryFrom<String> for PointSel {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

/// Default width of a crash-consistent point slot: one retained point per 5 minutes (as
/// Azure Site Recovery).
pub const DEFAULT_CRASH_POINTS_EVERY_SECS: u64 = 300;
/// Default retention span: 24 hours.
pub const DEFAULT_RETAIN_SECS: u64 = 24 * 3600;

/// A disk's recovery-point policy as its operator asks for it (`sitrep protect
/// --crash-points-every 5m --retain 24h`, the policy file); kept in the agent's
/// `protection.json` and sent to the server, which enforces it (within its own floors).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PointPolicy {
    /// Keep one crash-consistent point per slot this long (seconds; every cycle still
    /// applies, and the agent makes sure a point exists in every slot).
    pub crash_points_every_secs: u64,
    /// Keep points this long (seconds).
    pub retain_secs: u64,
}

impl Default for PointPolicy {
    fn default() -> Self {
        Self {
            crash_points_every_secs: DEFAULT_CRASH_POINTS_EVERY_SECS,
            retain_secs: DEFAULT_RETAIN_SECS,
        }
    }
}

/// Which points to keep.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retention {
    /// Always keep the newest `keep` points (default 24, as Hyper-V Replica), and the newest
    /// `keep` app-consistent ones.
    pub keep: usize,
    /// Tiers `(every, window)` in ns: among points younger than `window`, keep the newest
    /// of each `every`-long slot (e.g. every 10 min for 1 h, hourly for 24 h, daily for 7 d,
    /// as AWS DRS).
    pub tiers: Vec<(u64, u64)>,
}

impl Default for Retention {
    fn default() -> Self {
        Self {
            keep: 24,
            tiers: Vec::new(),
        }
    }
}

impl Retention {
    /// Parses tiers like `10m:1h,1h:24h,1d:7d`.
    ///
    /// # Errors
    /// Not of that form.
    pub fn parse_tiers(s: &str) -> Result<Vec<(u64, u64)>, String> {
        let mut out = Vec::new();
        for t in s.split(',').filter(|t| !t.trim().is_empty()) {
            let (a, b) = t
                .split_once(':')
                .ok_or_else(|| format!("tier '{t}': expected EVERY:WINDOW, e.g. 10m:1h"))?;
            let every = parse_duration_ns(a)?;
            let window = parse_duration_ns(b)?;
            if every == 0 || window < every {
                return Err(format!(
                    "tier '{t}': the window must be at least the interval"
                ));
            }
            out.push((every, window));
        }
        Ok(out)
    }

    /// Which of `points` (oldest first) to keep at time `now_ns`.
    #[must_use]
    pub fn keep_flags(&self, points: &[Point], now_ns: u64) -> Vec<bool> {
        let n = points.len();
        let mut keep = vec![false; n];
        for k in keep.iter_mut().skip(n.saturating_sub(self.keep)) {
            *k = true;
        }
        // App-consistent points are rarer and made on purpose: the newest `keep` of them
        // stay even while frequent crash-consistent points come and go.
        let mut apps = 0;
        for (i, p) in points.iter().enumerate().rev() {
            if p.kind == PointKind::AppConsistent && apps < self.keep {
                keep[i] = true;
                apps += 1;
            }
        }
        for &(every, window) in &self.tiers {
            let mut seen = std::collections::BTreeSet::new();
            for (i, p) in points.iter().enumerate().rev() {
                if now_ns.saturating_sub(p.cut_time_ns) > window {
                    continue;
                }
                if seen.insert(p.cut_time_ns / every) {
                    keep[i] = true;
                }
            }
        }
        keep
    }
}

pub use crate::units::parse_duration_ns;

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn point_selectors_parse_pick_and_keep_their_strings() {
        let mut pts = vec![pt(3, 10), pt(5, 20), pt(9, 30)];
        pts[1].kind = PointKind::AppConsistent;
        for (s, want) in [
            ("latest", Some(9)),
            ("latest-processed", Some(9)),
            ("latest-app-consistent", Some(5)),
            ("3", Some(3)),
            ("4", None),
        ] {
            let sel: PointSel = s.parse().unwrap();
            assert_eq!(sel.to_string(), s);
            assert_eq!(serde_json::to_value(sel).unwrap(), serde_json::json!(s));
            assert_eq!(sel.pick(&pts).map(|p| p.id), want, "{s}");
        }
        let err = "newest".parse::<PointSel>().unwrap_err();
        assert!(err.contains("expected a point id"), "{err}");
        assert!(serde_json::from_value::<PointSel>(serde_json::json!("x")).is_err());
    }

    fn pt(id: u64, t_s: u64) -> Point {
        Point {
            id,
            kind: PointKind::CrashConsistent,
            cut_time_ns: t_s * 1_000_000_000,
            first_seq: id,
            created_unix_ns: 0,
            label: None,
            bytes: 0,
        }
    }

    #[test]
    fn keeps_the_newest_n() {
        let r = Retention {
            keep: 2,
            tiers: Vec::new(),
        };
        let p: Vec<Point> = (0..5).map(|i| pt(i, i * 10)).collect();
        assert_eq!(
            r.keep_flags(&p, 100 * 1_000_000_000),
            [false, false, false, true, true]
        );
    }

    #[test]
    fn app_consistent_points_outlive_frequent_crash_consistent_ones() {
        let r = Retention {
            keep: 2,
            tiers: Vec::new(),
        };
        let mut p: Vec<Point> = (0..6).map(|i| pt(i, i * 10)).collect();
        p[1].kind = PointKind::AppConsistent;
        assert_eq!(r.keep_flags(&p, 0), [false, true, false, false, true, true]);
    }

    #[test]
    fn tiers_keep_one_per_slot_inside_their_window() {
        let r = Retention {
            keep: 1,
            tiers: Retention::parse_tiers("60s:300s").unwrap(),
        };
        // Points every 20 s over 10 minutes; now = 600 s.
        let p: Vec<Point> = (0..30).map(|i| pt(i, i * 20)).collect();
        let k = r.keep_flags(&p, 600 * 1_000_000_000);
        let kept: Vec<u64> = p
            .iter()
            .zip(&k)
            .filter(|(_, k)| **k)
            .map(|(p, _)| p.id)
            .collect();
        // Inside the last 300 s (t ≥ 300): the newest per minute, plus the newest overall.
        assert_eq!(kept, [17, 20, 23, 26, 29]);
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration_ns("10m").unwrap(), 600_000_000_000);
        assert!(parse_duration_ns("10x").is_err());
        assert!(Retention::parse_tiers("1h:10m").is_err());
    }
}
