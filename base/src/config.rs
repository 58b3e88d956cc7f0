//! Replication policy: frequencies, sizes, and the agent's TOML policy file (strict: an
//! unknown key is an error, so a typo never silently means "default").
//!
//! ```toml
//! # /etc/sitrep/agent.toml
//! [[disk]]
//! name = "data"               # optional, default: the device's base name
//! device = "/dev/vdb"
//! to = "10.0.0.2:9443"
//! frequency = "30s"           # continuous | 30s | 5m | 15m (any 1s..1h duration)
//! ```

use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How often cycles are cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub enum Frequency {
    /// As fast as cycles can be cut and shipped.
    Continuous,
    /// Every interval.
    Every(Duration),
}

impl Frequency {
    /// Parses `continuous`, `30s`, `5m`, `15m` (or any `<n>s` / `<n>m` from 1 s to 1 h).
    ///
    /// # Errors
    /// Anything else, with the accepted forms in the message.
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s == "continuous" {
            return Ok(Self::Continuous);
        }
        let bad = || format!("frequency '{s}': expected continuous, 30s, 5m or 15m");
        let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?);
        let n: u64 = num.parse().map_err(|_| bad())?;
        let secs = match unit {
            "s" => n,
            "m" => n.checked_mul(60).ok_or_else(bad)?,
            _ => return Err(bad()),
        };
        if !(1..=3600).contains(&secs) {
            return Err(format!("frequency '{s}' must be between 1s and 60m"));
        }
        Ok(Self::Every(Duration::from_secs(secs)))
    }
}

impl std::fmt::Display for Frequency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Continuous => write!(f, "continuous"),
            Self::Every(d) if d.as_secs() % 60 == 0 => write!(f, "{}m", d.as_secs() / 60),
            Self::Every(d) => write!(f, "{}s", d.as_secs()),
        }
    }
}

impl From<Frequency> for String {
    fn from(f: Frequency) -> String {
        f.to_string()
    }
}

impl TryFrom<String> for Frequency {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        Self::parse(&s)
    }
}

pub use crate::units::parse_size;

/// One disk in the policy file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskPolicy {
    /// Disk name (default: the device's base name).
    pub name: Option<String>,
    /// The block device.
    pub device: String,
    /// `HOST:PORT` of the server.
    pub to: String,
    /// Cycle frequency (default continuous).
    pub frequency: Option<Frequency>,
    /// App-consistent points this often, `1h`..`12h` (default: none).
    pub app_consistent_every: Option<String>,
    /// Command quiescing the application for app-consistent points (instead of fsfreeze).
    pub pre_hook: Option<String>,
    /// Command releasing it.
    pub post_hook: Option<String>,
    /// Keep one crash-consistent point per slot this wide, `1s`..`1h` (default `5m`).
    pub crash_points_every: Option<String>,
    /// Keep points this long, up to `366d` (default `24h`; the server keeps at least its
    /// `--min-retain`).
    pub retain: Option<String>,
    /// At most this much point storage on the server (`20G`; `none` or unset: no cap; the
    /// server retires only points older than its `--min-retain` to honour it).
    pub max_point_storage: Option<String>,
    /// The consistency group the disk belongs to (its cycles are cut with the group's other
    /// disks at one instant; the server keeps group points).
    pub group: Option<String>,
}

impl DiskPolicy {
    /// The recovery-point policy this entry asks for.
    ///
    /// # Errors
    /// A bad duration or range (see [`crate::points::PointPolicy::parse`]).
    pub fn points(&self) -> Result<crate::points::PointPolicy, String> {
        crate::points::PointPolicy::parse(
            self.crash_points_every.as_deref(),
            self.retain.as_deref(),
        )?
        .with_max_point_storage(self.max_point_storage.as_deref())
    }
}

/// A consistency group's settings in the policy file (`[[group]]`; its members are the
/// `[[disk]]` entries with `group = NAME`, and disks put in it with `sitrep group add`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupPolicy {
    /// The group.
    pub name: String,
    /// Freeze the members' mounted filesystems during the rounds of a group spanning agents
    /// (`sitrep group set NAME --freeze on`); default false.
    #[serde(default)]
    pub freeze: bool,
}

/// The agent's config file (`sitrep agent --config`): its `[[disk]]` policy, and its
/// `[agent]` settings (flags, merged before the command line is parsed: the CLI's
/// `settings.rs`; kept here only to see them change on a re-read).
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyFile {
    /// The agent's settings (its flags by long name), as written.
    #[serde(default)]
    pub agent: Option<toml::Table>,
    /// Disks to protect when the agent starts (already protected ones are left as they are).
    #[serde(default)]
    pub disk: Vec<DiskPolicy>,
    /// Consistency groups' settings, applied at start and on every re-read.
    #[serde(default)]
    pub group: Vec<GroupPolicy>,
}

impl PolicyFile {
    /// Reads and validates `path`.
    ///
    /// # Errors
    /// Unreadable, not TOML, an unknown key, or a bad value — the message names the file.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        let p: Self =
            toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        for d in &p.disk {
            if let Some(n) = &d.name
                && !crate::valid_disk_name(n)
            {
                anyhow::bail!("{}: disk name '{n}' is not valid", path.display());
            }
            d.points()
                .map_err(|e| anyhow::anyhow!("{}: disk {}: {e}", path.display(), d.device))?;
            if let Some(g) = &d.group
                && !crate::valid_disk_name(g)
            {
                anyhow::bail!(
                    "{}: disk {}: group name '{g}' is not valid",
                    path.display(),
                    d.device
                );
            }
        }
        for g in &p.group {
            if !crate::valid_disk_name(&g.name) {
                anyhow::bail!("{}: group name '{}' is not valid", path.display(), g.name);
            }
        }
        Ok(p)
    }
}

/// What a re-read policy file changes against the one the agent applied last (entries keyed
/// by device). The agent protects `added` devices (as at start: a device already protected is
/// left as it is) and only reports `changed` and `removed` ones: a running protection is
/// changed by the operator (`sitrep unprotect`, `sitrep protect`), never by a file edit, so a
/// typo in the file cannot stop a disk's replication.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PolicyChanges {
    /// Entries whose device the older file did not list.
    pub added: Vec<DiskPolicy>,
    /// Entries whose device the older file listed with other settings (the newer entry).
    pub changed: Vec<DiskPolicy>,
    /// Entries of the older file whose device the newer one does not list.
    pub removed: Vec<DiskPolicy>,
    /// The `[agent]` settings differ (they apply at the agent's next start).
    pub settings: bool,
}

impl PolicyFile {
    /// What `newer` adds, changes and removes against `self`.
    #[must_use]
    pub fn changes(&self, newer: &Self) -> PolicyChanges {
        let find = |p: &Self, device: &str| p.disk.iter().find(|d| d.device == device).cloned();
        let mut c = PolicyChanges::default();
        for d in &newer.disk {
            match find(self, &d.device) {
                None => c.added.push(d.clone()),
                Some(old) if old != *d => c.changed.push(d.clone()),
                Some(_) => {}
            }
        }
        c.removed = self
            .disk
            .iter()
            .filter(|d| find(newer, &d.device).is_none())
            .cloned()
            .collect();
        c.settings = self.agent != newer.agent;
        c
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn frequencies() {
        assert_eq!(
            Frequency::parse("continuous").unwrap(),
            Frequency::Continuous
        );
        assert_eq!(
            Frequency::parse("30s").unwrap(),
            Frequency::Every(Duration::from_secs(30))
        );
        assert_eq!(Frequency::parse("15m").unwrap().to_string(), "15m");
        assert!(Frequency::parse("0s").is_err());
        assert!(Frequency::parse("2h").is_err());
        assert!(Frequency::parse("fast").is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("100M").unwrap(), 100 << 20);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("2GiB").unwrap(), 2 << 30);
        assert!(parse_size("x").is_err());
    }

    #[test]
    fn policy_is_strict() {
        let ok: PolicyFile = toml::from_str(
            "[[disk]]\ndevice = \"/dev/loop0\"\nto = \"127.0.0.1:9443\"\nfrequency = \"30s\"\n",
        )
        .unwrap();
        assert_eq!(ok.disk.len(), 1);
        assert!(
            toml::from_str::<PolicyFile>(
                "[[disk]]\ndevice = \"/dev/x\"\nto = \"h:1\"\nfrequncy = \"30s\"\n"
            )
            .is_err()
        );
        assert!(
            toml::from_str::<PolicyFile>(
                "[[disk]]\ndevice = \"/dev/x\"\nto = \"h:1\"\nfrequency = \"7h\"\n"
            )
            .is_err()
        );
    }

    #[test]
    fn policy_file_takes_a_point_policy_and_checks_it_at_load() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.toml");
        let entry = "[[disk]]\ndevice = \"/dev/x\"\nto = \"h:1\"\n";
        std::fs::write(
            &path,
            format!("{entry}crash_points_every = \"20s\"\nretain = \"2m\"\n"),
        )
        .unwrap();
        let p = PolicyFile::load(&path).unwrap();
        let got = p.disk[0].points().unwrap();
        assert_eq!((got.crash_points_every_secs, got.retain_secs), (20, 120));
        std::fs::write(&path, format!("{entry}crash_points_every = \"2h\"\n")).unwrap();
        let err = PolicyFile::load(&path).unwrap_err().to_string();
        assert!(err.contains("--crash-points-every"), "{err}");
        std::fs::write(&path, entry).unwrap();
        let dflt = PolicyFile::load(&path).unwrap().disk[0].points().unwrap();
        assert_eq!(dflt, crate::points::PointPolicy::default());
    }

    #[test]
    fn policy_file_takes_a_point_storage_cap() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.toml");
        let entry = "[[disk]]\ndevice = \"/dev/x\"\nto = \"h:1\"\n";
        std::fs::write(&path, format!("{entry}max_point_storage = \"2G\"\n")).unwrap();
        let got = PolicyFile::load(&path).unwrap().disk[0].points().unwrap();
        assert_eq!(got.max_point_storage_bytes, Some(2 << 30));
        std::fs::write(&path, format!("{entry}max_point_storage = \"none\"\n")).unwrap();
        let got = PolicyFile::load(&path).unwrap().disk[0].points().unwrap();
        assert_eq!(got.max_point_storage_bytes, None);
        std::fs::write(&path, format!("{entry}max_point_storage = \"lots\"\n")).unwrap();
        let err = PolicyFile::load(&path).unwrap_err().to_string();
        assert!(err.contains("--max-point-storage"), "{err}");
    }

    #[test]
    fn a_reread_policy_names_what_it_adds_changes_and_removes() {
        let old: PolicyFile = toml::from_str(
            "[[disk]]\ndevice = \"/dev/a\"\nto = \"h:1\"\n\
             [[disk]]\ndevice = \"/dev/b\"\nto = \"h:1\"\n\
             [[disk]]\ndevice = \"/dev/c\"\nto = \"h:1\"\n",
        )
        .unwrap();
        let new: PolicyFile = toml::from_str(
            "[[disk]]\ndevice = \"/dev/a\"\nto = \"h:1\"\n\
             [[disk]]\ndevice = \"/dev/b\"\nto = \"h:2\"\n\
             [[disk]]\ndevice = \"/dev/d\"\nto = \"h:1\"\n",
        )
        .unwrap();
        let c = old.changes(&new);
        let devices = |v: &[DiskPolicy]| v.iter().map(|d| d.device.clone()).collect::<Vec<_>>();
        assert_eq!(devices(&c.added), ["/dev/d"]);
        assert_eq!(devices(&c.changed), ["/dev/b"]);
        assert_eq!(c.changed[0].to, "h:2");
        assert_eq!(devices(&c.removed), ["/dev/c"]);
        assert_eq!(new.changes(&new), PolicyChanges::default());
        assert_eq!(PolicyFile::default().changes(&new).added, new.disk);
    }

    /// The commented default policy the package ships (packaging/etc/disks.toml, the end of
    /// /etc/sitrep/agent.toml): as shipped
    /// it lists no disk, and uncommented its example uses every key with a valid value.
    #[test]
    fn the_shipped_policy_file_loads_as_is_and_uncommented() {
        let shipped = include_str!("../../packaging/etc/disks.toml");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.toml");
        std::fs::write(&path, shipped).unwrap();
        assert_eq!(PolicyFile::load(&path).unwrap(), PolicyFile::default());

        let example: String = shipped
            .lines()
            .skip_while(|l| *l != "# [[disk]]")
            .map(|l| format!("{}\n", l.strip_prefix("# ").unwrap_or(l)))
            .collect();
        std::fs::write(&path, example).unwrap();
        let p = PolicyFile::load(&path).unwrap();
        assert_eq!(p.disk.len(), 1);
        let d = &p.disk[0];
        assert!(d.name.is_some() && d.frequency.is_some() && d.app_consistent_every.is_some());
        assert!(d.pre_hook.is_some() && d.post_hook.is_some() && d.retain.is_some());
        assert!(d.crash_points_every.is_some() && d.max_point_storage.is_some());
        assert!(d.group.is_some());
        assert_eq!(
            p.group,
            vec![GroupPolicy {
                name: "db".into(),
                freeze: true
            }]
        );
    }
}
