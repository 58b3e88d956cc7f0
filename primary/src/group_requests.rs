//! `sitrep group create|add|remove|delete|list` on the agent: which of this host's disks
//! are cut together (`group.rs`). A disk's group is part of its protection
//! (`protection.json`, `group`); the names of the groups, members or not, are kept in
//! `STATE/groups.json` (version 2: `{"version":2,"groups":["db"],"freeze":["db"]}`; version
//! 1 had no `freeze`), so an empty group and its settings outlive a restart. `freeze`: the
//! groups whose members' mounted filesystems are frozen during a cross-host round
//! (`rounds.rs`).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{Agent, lock};
use base::control::GroupAction;

/// Most groups on one agent.
const MAX_GROUPS: usize = 256;

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct GroupsFile {
    version: u32,
    groups: BTreeSet<String>,
    /// Groups frozen during cross-host rounds (version 2).
    #[serde(default)]
    freeze: BTreeSet<String>,
}

/// The version this agent writes.
const VERSION: u32 = 2;

fn groups_path(state: &Path) -> PathBuf {
    state.join("groups.json")
}

fn load(state: &Path) -> anyhow::Result<GroupsFile> {
    let path = groups_path(state);
    match std::fs::read(&path) {
        Ok(b) => {
            let f: GroupsFile = serde_json::from_slice(&b)
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            if !(1..=VERSION).contains(&f.version) {
                anyhow::bail!("{}: unknown version {}", path.display(), f.version);
            }
            Ok(f)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(GroupsFile {
            version: VERSION,
            ..GroupsFile::default()
        }),
        Err(e) => Err(anyhow::anyhow!("{}: {e}", path.display())),
    }
}

fn save(state: &Path, f: &mut GroupsFile) -> anyhow::Result<()> {
    let path = groups_path(state);
    f.version = VERSION;
    let bytes = serde_json::to_vec_pretty(f)?;
    base::files::write_atomic(&path, &bytes).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

/// A group name follows the disk-name rules (it names files on the server).
///
/// # Errors
/// Not a valid name: the message says what is.
pub(crate) fn check_group_name(g: &str) -> anyhow::Result<()> {
    if base::valid_disk_name(g) {
        Ok(())
    } else {
        anyhow::bail!(
            "'{g}' is not a valid group name (1-64 letters, digits, '.', '_', '-'; no leading dot)"
        )
    }
}

impl Agent {
    /// Keeps `group`'s name (a disk was put in it).
    pub(crate) fn remember_group(&self, group: &str) -> anyhow::Result<()> {
        let mut f = load(&self.opts.state)?;
        if f.groups.insert(group.to_string()) {
            if f.groups.len() > MAX_GROUPS {
                anyhow::bail!("at most {MAX_GROUPS} groups on one agent");
            }
            save(&self.opts.state, &mut f)?;
        }
        Ok(())
    }

    /// Answers `sitrep group`.
    pub(crate) fn group_request(
        &self,
        action: GroupAction,
        group: Option<String>,
        disks: Vec<String>,
        freeze: Option<bool>,
    ) -> anyhow::Result<serde_json::Value> {
        let state = self.opts.state.clone();
        let group = match (action, group) {
            (GroupAction::List, _) => return self.group_list(),
            (_, Some(g)) => g,
            (_, None) => anyhow::bail!("name the group"),
        };
        check_group_name(&group)?;
        let mut f = load(&state)?;
        let known = f.groups.contains(&group);
        match action {
            GroupAction::Create => {
                if known {
                    anyhow::bail!("group {group} exists already");
                }
                self.remember_group(&group)?;
                if freeze == Some(true) {
                    self.set_freeze(&group, true)?;
                }
            }
            GroupAction::Set => {
                if !known && self.members(&group).is_empty() {
                    anyhow::bail!("no group {group} on this agent: `sitrep group create {group}`");
                }
                let Some(on) = freeze else {
                    anyhow::bail!("group {group}: nothing to set (--freeze on|off)");
                };
                self.remember_group(&group)?;
                self.set_freeze(&group, on)?;
            }
            GroupAction::Delete => {
                let members = self.members(&group);
                if !members.is_empty() {
                    anyhow::bail!(
                        "group {group} still has disks: {}; `sitrep group remove {group} DISK…` first",
                        members.join(", ")
                    );
                }
                if !f.groups.remove(&group) {
                    anyhow::bail!("no group {group} on this agent");
                }
                f.freeze.remove(&group);
                save(&state, &mut f)?;
            }
            GroupAction::Add | GroupAction::Remove => {
                if !known {
                    anyhow::bail!("no group {group} on this agent: `sitrep group create {group}`");
                }
                if disks.is_empty() {
                    anyhow::bail!("name the disks");
                }
                let add = action == GroupAction::Add;
                self.set_members(&group, &disks, add)?;
            }
            GroupAction::List => {}
        }
        self.group_list()
    }

    /// Whether `group`'s members are frozen during cross-host rounds (`sitrep group set G
    /// --freeze on`). An unreadable `groups.json` reads as no.
    pub(crate) fn freezes(&self, group: &str) -> bool {
        load(&self.opts.state).is_ok_and(|f| f.freeze.contains(group))
    }

    pub(crate) fn set_freeze(&self, group: &str, on: bool) -> anyhow::Result<()> {
        let mut f = load(&self.opts.state)?;
        let changed = if on {
            f.freeze.insert(group.to_string())
        } else {
            f.freeze.remove(group)
        };
        if changed {
            save(&self.opts.state, &mut f)?;
            tracing::info!(group, freeze = on, "group setting changed");
        }
        Ok(())
    }

    /// Puts `disks` in `group` (`add`) or takes them out; all or nothing.
    fn set_members(&self, group: &str, disks: &[String], add: bool) -> anyhow::Result<()> {
        let rts: Vec<_> = {
            let all = lock(&self.disks);
            disks
                .iter()
                .map(|d| {
                    all.get(d)
                        .cloned()
                        .ok_or_else(|| anyhow::anyhow!("disk {d} is not protected here"))
                })
                .collect::<anyhow::Result<_>>()?
        };
        if !add
            && let Some(d) = rts
                .iter()
                .find(|rt| lock(&rt.prot).group.as_deref() != Some(group))
        {
            anyhow::bail!("disk {} is not in group {group}", lock(&d.prot).name);
        }
        for rt in rts {
            let mut p = rt.prot_mut();
            p.group = add.then(|| group.to_string());
            p.save(&self.opts.state)
                .map_err(|e| anyhow::anyhow!("disk {}: saving state: {e}", p.name))?;
            tracing::info!(disk = %p.name, group, add, "group membership changed");
        }
        Ok(())
    }

    /// The disks in `group` on this agent, sorted.
    pub(crate) fn members(&self, group: &str) -> Vec<String> {
        lock(&self.disks)
            .values()
            .filter_map(|rt| {
                let p = lock(&rt.prot);
                (p.group.as_deref() == Some(group)).then(|| p.name.clone())
            })
            .collect()
    }

    /// `{"groups":[{"name":"db","members":["data","log"],"freeze":false}]}`.
    fn group_list(&self) -> anyhow::Result<serde_json::Value> {
        let f = load(&self.opts.state)?;
        let mut names = f.groups;
        for rt in lock(&self.disks).values() {
            if let Some(g) = &lock(&rt.prot).group {
                names.insert(g.clone());
            }
        }
        let groups: Vec<_> = names
            .into_iter()
            .map(|g| {
                let members = self.members(&g);
                let freeze = f.freeze.contains(&g);
                serde_json::json!({ "name": g, "members": members, "freeze": freeze })
            })
            .collect();
        Ok(serde_json::json!({ "groups": groups }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_version_1_file_reads_and_is_rewritten_as_version_2() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(groups_path(dir.path()), br#"{"version":1,"groups":["db"]}"#).unwrap();
        let mut f = load(dir.path()).unwrap();
        assert!(f.groups.contains("db") && f.freeze.is_empty());
        f.freeze.insert("db".into());
        save(dir.path(), &mut f).unwrap();
        let text = std::fs::read_to_string(groups_path(dir.path())).unwrap();
        assert!(text.contains(r#""version": 2"#), "{text}");
        assert!(load(dir.path()).unwrap().freeze.contains("db"));
        // A newer version than this agent knows is refused, not misread.
        std::fs::write(groups_path(dir.path()), br#"{"version":3,"groups":[]}"#).unwrap();
        assert!(load(dir.path()).is_err());
    }
}
