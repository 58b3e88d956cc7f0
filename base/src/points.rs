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
    /// At most this many bytes of point storage (the points' undo data) on the server
    /// (`--max-point-storage`; None: no cap). Past it the server retires the disk's oldest
    /// points, but only those older than its own `--min-retain`, never the newest (protocol
    /// 4, `PointStorage`). Absent from `protection.json` files written before it: no cap.
    pub max_point_storage_bytes: Option<u64>,
}

impl Default for PointPolicy {
    fn default() -> Self {
        Self {
            crash_points_every_secs: DEFAULT_CRASH_POINTS_EVERY_SECS,
            retain_secs: DEFAULT_RETAIN_SECS,
            max_point_storage_bytes: None,
        }
    }
}

/// How many of the newest points stay whatever their age, by default: the newest, and two
/// before it to fall back to should the newest turn out to be the wrong moment.
pub const DEFAULT_KEEP_NEWEST: usize = 3;

/// Narrowest crash-consistent slot a policy may ask for (1 s).
pub const MIN_CRASH_POINTS_EVERY_NS: u64 = 1_000_000_000;
/// Widest crash-consistent slot (1 h).
pub const MAX_CRASH_POINTS_EVERY_NS: u64 = 3_600 * 1_000_000_000;
/// Longest retention span a policy may ask for (366 days; the issue asks for at least 30).
pub const MAX_RETAIN_NS: u64 = 366 * 86_400 * 1_000_000_000;

impl PointPolicy {
    /// The policy `sitrep protect` or the policy file asked for: `every` and `retain` as
    /// durations (`5m`, `24h`; unset: the defaults), checked: the slot 1 s..1 h, the span up
    /// to 366 days and at least one slot.
    ///
    /// # Errors
    /// Not a duration, or out of those ranges (the message names the flag).
    pub fn parse(every: Option<&str>, retain: Option<&str>) -> Result<Self, String> {
        let d = Self::default();
        let secs = |s: Option<&str>, dflt: u64| -> Result<u64, String> {
            s.map_or(Ok(dflt * 1_000_000_000), parse_duration_ns)
                .map(|ns| ns / 1_000_000_000)
        };
        let p = Self {
            crash_points_every_secs: secs(every, d.crash_points_every_secs)?,
            retain_secs: secs(retain, d.retain_secs)?,
            max_point_storage_bytes: None,
        };
        p.validate()?;
        Ok(p)
    }

    /// `--max-point-storage` / the policy-file key `max_point_storage`: a size in the one
    /// size grammar ([`crate::units::parse_size`]: `512M`, `20G`), or `none` (or unset) for
    /// no cap.
    ///
    /// # Errors
    /// Not a size, or zero (say `none` for no cap).
    pub fn parse_max_point_storage(s: Option<&str>) -> Result<Option<u64>, String> {
        match s.map(str::trim) {
            None | Some("none") => Ok(None),
            Some(v) => match crate::units::parse_size(v) {
                Ok(0) => Err("--max-point-storage must be more than 0 (or none)".into()),
                Ok(n) => Ok(Some(n)),
                Err(e) => Err(format!("--max-point-storage: {e}")),
            },
        }
    }

    /// This policy with the point storage cap `s` ([`PointPolicy::parse_max_point_storage`]).
    ///
    /// # Errors
    /// As [`PointPolicy::parse_max_point_storage`].
    pub fn with_max_point_storage(mut self, s: Option<&str>) -> Result<Self, String> {
        self.max_point_storage_bytes = Self::parse_max_point_storage(s)?;
        Ok(self)
    }

    /// Checks the ranges [`PointPolicy::parse`] promises.
    ///
    /// # Errors
    /// Out of range.
    pub fn validate(&self) -> Result<(), String> {
        let every = self.crash_points_every_ns();
        if !(MIN_CRASH_POINTS_EVERY_NS..=MAX_CRASH_POINTS_EVERY_NS).contains(&every) {
            return Err("--crash-points-every must be between 1s and 1h".into());
        }
        let retain = self.retain_ns();
        if retain < every || retain > MAX_RETAIN_NS {
            return Err("--retain must be at least --crash-points-every and at most 366d".into());
        }
        Ok(())
    }

    /// The slot width in ns.
    #[must_use]
    pub fn crash_points_every_ns(&self) -> u64 {
        self.crash_points_every_secs.saturating_mul(1_000_000_000)
    }

    /// The retention span in ns.
    #[must_use]
    pub fn retain_ns(&self) -> u64 {
        self.retain_secs.saturating_mul(1_000_000_000)
    }
}

/// Which points to keep: time-based, one crash-consistent point per slot for a span.
///
/// The rule ([`Retention::keep_flags`]), ages counted back from the newest point's cut time
/// (never from later than the server's clock):
/// - **slots**: among points younger than `retain_ns`, the *oldest* point of each slot
///   `cut_time_ns / every_ns` stays. Once a slot has its keeper it never changes (a newer
///   point in the same slot is never preferred), so inside the span points retire only at
///   the head — the previous newest, when a newer one lands in its slot — and at the tail as
///   they age out: the undo intervals between retained points only ever merge at the head,
///   and each retained point's interval stops growing once its slot is over. (Keeping the
///   newest of each slot instead would retire a slot's keeper whenever a newer point came,
///   and merge intervals in the middle.)
/// - **app-consistent** points younger than `retain_ns` all stay (they are rare and made on
///   purpose).
/// - **tiers** `(every, window)`: beyond the span, optional thinning: among points younger
///   than `window`, the oldest of each `every`-long slot stays (e.g. `1h:7d,1d:30d`).
/// - **always** the newest point, the newest app-consistent point, and the newest `keep`
///   points whatever their age (so a disk whose source stopped making points keeps its last
///   ones, and retention never empties a disk).
///
/// Why the newest cut and not the server's clock: the cut times are the source's clock, and
/// a source whose clock runs behind the server's would otherwise see every point "older than
/// the span". The reference is capped by the server's clock, so a peer that claims a cut
/// time in the future cannot age anything out early.
///
/// The server builds one per disk with [`Retention::for_disk`]: its own defaults and floor
/// (`sitrep server --crash-points-every --retain --min-retain --keep-points
/// --retention-tiers`) applied to what the disk's agent asked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Retention {
    /// Slot width, ns (one crash-consistent point kept per slot).
    pub every_ns: u64,
    /// Retention span, ns.
    pub retain_ns: u64,
    /// The newest `keep` points stay whatever their age (at least 1).
    pub keep: usize,
    /// The server's floor for the span: a peer cannot ask for less (so it cannot erase the
    /// history the server keeps by asking for a short retention).
    pub min_retain_ns: u64,
    /// Tiers `(every, window)` in ns beyond the span.
    pub tiers: Vec<(u64, u64)>,
}

impl Default for Retention {
    fn default() -> Self {
        Self {
            every_ns: DEFAULT_CRASH_POINTS_EVERY_SECS * 1_000_000_000,
            retain_ns: DEFAULT_RETAIN_SECS * 1_000_000_000,
            keep: DEFAULT_KEEP_NEWEST,
            min_retain_ns: DEFAULT_RETAIN_SECS * 1_000_000_000,
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

    /// The effective retention of one disk: `asked` (slot width and span in ns, from the
    /// disk's agent; None: it said nothing) or else this server's defaults, with the slot
    /// clamped to 1 s..1 h and the span to at least `min_retain_ns` and one slot, at most
    /// [`MAX_RETAIN_NS`]. `keep`, the floor and the tiers are the server's.
    #[must_use]
    pub fn for_disk(&self, asked: Option<(u64, u64)>) -> Self {
        let (every, retain) = asked.unwrap_or((self.every_ns, self.retain_ns));
        let every = every.clamp(MIN_CRASH_POINTS_EVERY_NS, MAX_CRASH_POINTS_EVERY_NS);
        let retain = retain
            .max(self.min_retain_ns)
            .max(every)
            .min(MAX_RETAIN_NS.max(self.min_retain_ns));
        Self {
            every_ns: every,
            retain_ns: retain,
            keep: self.keep.max(1),
            min_retain_ns: self.min_retain_ns,
            tiers: self.tiers.clone(),
        }
    }

    /// Which of `points` (oldest first, by id) to keep at the server's time `now_ns` (see
    /// the type's doc for the rule).
    #[must_use]
    pub fn keep_flags(&self, points: &[Point], now_ns: u64) -> Vec<bool> {
        let n = points.len();
        let mut keep = vec![false; n];
        let Some(newest) = points.last() else {
            return keep;
        };
        let reference = newest.cut_time_ns.min(now_ns);
        let age = |p: &Point| reference.saturating_sub(p.cut_time_ns);
        for k in keep.iter_mut().skip(n.saturating_sub(self.keep.max(1))) {
            *k = true;
        }
        if let Some(i) = points
            .iter()
            .rposition(|p| p.kind == PointKind::AppConsistent)
        {
            keep[i] = true;
        }
        for (i, p) in points.iter().enumerate() {
            if p.kind == PointKind::AppConsistent && age(p) <= self.retain_ns {
                keep[i] = true;
            }
        }
        let slots =
            std::iter::once((self.every_ns, self.retain_ns)).chain(self.tiers.iter().copied());
        for (every, window) in slots {
            let mut seen = std::collections::BTreeSet::new();
            for (i, p) in points.iter().enumerate() {
                if age(p) <= window && seen.insert(p.cut_time_ns / every.max(1)) {
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

    const S: u64 = 1_000_000_000;

    /// The server's way: after each new point, retire what `r` does not keep (now = one
    /// second after the cut). `kinds[i]` true: point `i` is app-consistent.
    fn simulate(r: &Retention, cuts_s: &[u64], app: impl Fn(u64) -> bool) -> Vec<Point> {
        let mut kept: Vec<Point> = Vec::new();
        for (i, &t) in cuts_s.iter().enumerate() {
            let mut p = pt(i as u64, t);
            if app(t) {
                p.kind = PointKind::AppConsistent;
            }
            kept.push(p);
            let flags = r.keep_flags(&kept, (t + 1) * S);
            let mut f = flags.iter();
            kept.retain(|_| *f.next().unwrap());
        }
        kept
    }

    fn cuts(kept: &[Point]) -> Vec<u64> {
        kept.iter().map(|p| p.cut_time_ns / S).collect()
    }

    fn policy(every_s: u64, retain_s: u64) -> Retention {
        Retention {
            min_retain_ns: 0,
            keep: 1,
            ..Retention::default()
        }
        .for_disk(Some((every_s * S, retain_s * S)))
    }

    /// Every 3 s for 10 minutes.
    fn every_3s() -> Vec<u64> {
        (0..200).map(|i| i * 3).collect()
    }

    #[test]
    fn one_point_per_slot_inside_the_span_and_the_newest() {
        let kept = simulate(&policy(20, 120), &every_3s(), |_| false);
        // Newest cut 597 s: the span reaches back to 477 s. Slots 24..=29 (480 s..600 s)
        // keep their first point; slot 23's keeper (462 s) aged out and its later points
        // retired at the head long ago; 597 s is the newest.
        assert_eq!(cuts(&kept), [480, 501, 522, 540, 561, 582, 597]);
        let mut slots: Vec<u64> = kept[..kept.len() - 1]
            .iter()
            .map(|p| p.cut_time_ns / (20 * S))
            .collect();
        slots.dedup();
        assert_eq!(slots.len(), kept.len() - 1, "one per slot");
    }

    #[test]
    fn a_slot_keeps_its_first_point_whatever_comes_later() {
        let r = policy(20, 120);
        let mut kept = simulate(&r, &[100, 103, 106], |_| false);
        assert_eq!(cuts(&kept), [100, 106]);
        for t in [109, 112, 115, 118] {
            kept.push(pt(t, t));
            let f = r.keep_flags(&kept, t * S);
            assert!(f[0], "the keeper of slot 5 stays");
            assert_eq!(
                f.iter().filter(|k| **k).count(),
                2,
                "only the head is retired"
            );
            kept = kept
                .into_iter()
                .zip(f)
                .filter(|(_, k)| *k)
                .map(|(p, _)| p)
                .collect();
        }
        assert_eq!(cuts(&kept), [100, 118]);
    }

    #[test]
    fn app_consistent_points_stay_for_the_span() {
        let app = |t: u64| t.is_multiple_of(30);
        let kept = simulate(&policy(20, 120), &every_3s(), app);
        let apps: Vec<u64> = kept
            .iter()
            .filter(|p| p.kind == PointKind::AppConsistent)
            .map(|p| p.cut_time_ns / S)
            .collect();
        assert_eq!(apps, [480, 510, 540, 570]);
        // Besides them, one per slot as before, and the newest.
        assert_eq!(cuts(&kept), [480, 501, 510, 522, 540, 561, 570, 582, 597]);
    }

    #[test]
    fn the_newest_app_consistent_point_stays_past_the_span() {
        let kept = simulate(&policy(20, 120), &every_3s(), |t| t == 30);
        assert_eq!(cuts(&kept), [30, 480, 501, 522, 540, 561, 582, 597]);
    }

    #[test]
    fn tiers_thin_beyond_the_span_keeping_the_oldest_per_tier_slot() {
        let mut r = policy(20, 120);
        r.tiers = Retention::parse_tiers("60s:300s").unwrap();
        let kept = simulate(&r, &every_3s(), |_| false);
        // Beyond 477 s: the first of each minute younger than 300 s (≥ 297 s).
        assert_eq!(
            cuts(&kept),
            [300, 360, 420, 480, 501, 522, 540, 561, 582, 597]
        );
    }

    #[test]
    fn the_newest_stays_after_a_long_silence_and_keep_holds_the_newest_n() {
        let mut cuts_s: Vec<u64> = (0..10).map(|i| i * 3).collect();
        cuts_s.push(10 * 3600);
        let kept = simulate(&policy(20, 120), &cuts_s, |_| false);
        assert_eq!(
            cuts(&kept),
            [36_000],
            "older than the span: only the newest"
        );
        let mut r = policy(20, 120);
        r.keep = 3;
        let kept = simulate(&r, &cuts_s, |_| false);
        assert_eq!(
            cuts(&kept),
            [24, 27, 36_000],
            "the newest 3 whatever their age"
        );
    }

    #[test]
    fn ages_count_from_the_newest_cut_capped_by_the_servers_clock() {
        let r = policy(20, 120);
        let p: Vec<Point> = (0..6).map(|i| pt(i, 1000 + i * 20)).collect();
        // The source's clock an hour behind the server's: nothing is older than the span.
        assert!(r.keep_flags(&p, 4_000 * S).iter().all(|k| *k));
        // A cut time claimed a day in the future ages nothing before the server's time.
        let mut q = p.clone();
        q.push(pt(6, 1100 + 86_400));
        let f = r.keep_flags(&q, 1_110 * S);
        assert!(f.iter().all(|k| *k), "{f:?}");
    }

    #[test]
    fn a_disk_gets_what_its_agent_asked_within_the_servers_floor_and_caps() {
        let server = Retention {
            min_retain_ns: 3600 * S,
            ..Retention::default()
        };
        let d = server.for_disk(None);
        assert_eq!((d.every_ns, d.retain_ns), (300 * S, 86_400 * S));
        let d = server.for_disk(Some((10 * S, 60 * S)));
        assert_eq!(
            (d.every_ns, d.retain_ns),
            (10 * S, 3600 * S),
            "the floor wins"
        );
        let d = server.for_disk(Some((0, 0)));
        assert_eq!((d.every_ns, d.retain_ns), (S, 3600 * S));
        let d = server.for_disk(Some((u64::MAX, u64::MAX)));
        assert_eq!((d.every_ns, d.retain_ns), (3600 * S, MAX_RETAIN_NS));
        let free = Retention {
            min_retain_ns: 0,
            ..Retention::default()
        };
        let d = free.for_disk(Some((30 * S, 10 * S)));
        assert_eq!(d.retain_ns, 30 * S, "at least one slot");
    }

    #[test]
    fn point_policies_parse_and_check_their_ranges() {
        assert_eq!(
            PointPolicy::parse(None, None).unwrap(),
            PointPolicy::default()
        );
        let p = PointPolicy::parse(Some("10s"), Some("30d")).unwrap();
        assert_eq!(
            (p.crash_points_every_secs, p.retain_secs),
            (10, 30 * 86_400)
        );
        for (e, r) in [
            ("500ms", "1h"),
            ("2h", "1d"),
            ("1m", "30s"),
            ("1m", "400d"),
            ("x", "1h"),
        ] {
            assert!(PointPolicy::parse(Some(e), Some(r)).is_err(), "{e} {r}");
        }
    }

    #[test]
    fn the_point_storage_cap_parses_sizes_and_none_and_round_trips() {
        assert_eq!(PointPolicy::parse_max_point_storage(None).unwrap(), None);
        assert_eq!(
            PointPolicy::parse_max_point_storage(Some("none")).unwrap(),
            None
        );
        assert_eq!(
            PointPolicy::parse_max_point_storage(Some("20G")).unwrap(),
            Some(20 << 30)
        );
        assert_eq!(
            PointPolicy::parse_max_point_storage(Some("4096")).unwrap(),
            Some(4096)
        );
        for bad in ["0", "12x", "-1", ""] {
            let e = PointPolicy::parse_max_point_storage(Some(bad)).unwrap_err();
            assert!(e.contains("--max-point-storage"), "{bad}: {e}");
        }
        let p = PointPolicy::parse(Some("10s"), None)
            .unwrap()
            .with_max_point_storage(Some("512M"))
            .unwrap();
        assert_eq!(p.max_point_storage_bytes, Some(512 << 20));
        let json = serde_json::to_string(&p).unwrap();
        assert_eq!(serde_json::from_str::<PointPolicy>(&json).unwrap(), p);
        // A policy written before the cap existed loads with none.
        let old: PointPolicy =
            serde_json::from_str(r#"{"crash_points_every_secs":10,"retain_secs":60}"#).unwrap();
        assert_eq!(old.max_point_storage_bytes, None);
        assert_eq!(old.retain_secs, 60);
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration_ns("10m").unwrap(), 600_000_000_000);
        assert!(parse_duration_ns("10x").is_err());
        assert!(Retention::parse_tiers("1h:10m").is_err());
    }
}
