//! Consistency groups on the server: **group points**. The agent cuts a group's disks at one
//! instant and, after each member's `Verdict`, says which group cut the cycle belongs to
//! (`GroupVerdict`, protocol 5). Each member's session reports here whether its cycle became
//! a point; when every member named by the cut has a point from it, those points together are
//! the group's disks at one instant — a group point, kept in `STORE/groups/NAME.json`.
//!
//! **Retention.** A group point pins its members' points: a member disk's retention passes
//! over a pinned point ([`crate::store::Disk::set_pins`]). Group points are thinned by the
//! reporting member's retention policy (one per slot, the span, the newest ones), so pins
//! are bounded like points. The store quota, a disk's point cap and `points delete` are the
//! operator's and may still retire a pinned point; a group point whose member point is gone
//! is dropped at the next report or listing (never shown as usable).
//!
//! **Hostile peers.** A group belongs to the client (certificate name) that reported it
//! first; another client's report is refused. A report names only its own disk's point (the
//! session's disk must be a member), so a peer can make a group point only from points that
//! each member's own session reported. Names follow the disk-name rules; at most
//! [`proto::MAX_GROUP_MEMBERS`] members, [`MAX_PENDING`] cuts waiting per group,
//! [`MAX_GROUP_POINTS`] points per group and [`MAX_GROUPS`] groups.
//!
//! File format (version 1, JSON): `{"version":1,"name":"db","owner":"sitea","next_id":3,
//! "points":[{"id":2,"cut_id":…,"cut_time_ns":…,"created_unix_ns":…,
//! "members":{"data":41,"log":17}}]}` — `members` maps each disk to its point id.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use base::lock;
use base::points::{Point, PointKind, Retention};

/// Cuts waiting for their members' reports, per group (the oldest is dropped past it).
pub(crate) const MAX_PENDING: usize = 64;
/// Group points kept per group at most (retention keeps far fewer).
pub(crate) const MAX_GROUP_POINTS: usize = 65_536;
/// Groups per server.
pub(crate) const MAX_GROUPS: usize = 4096;
/// Largest group file read.
const MAX_FILE: u64 = 64 << 20;

/// One group point: every member's point from one cut.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct GroupPoint {
    /// The group point's id (per group, increasing).
    pub id: u64,
    /// The agent's id of the cut (its instant, ns).
    pub cut_id: u64,
    /// The cut's instant (the members' points' cut time).
    pub cut_time_ns: u64,
    /// When the server recorded it.
    pub created_unix_ns: u64,
    /// Each member disk and its point.
    pub members: BTreeMap<String, u64>,
}

impl GroupPoint {
    /// As a point, for retention and point selectors.
    fn as_point(&self) -> Point {
        Point {
            id: self.id,
            kind: PointKind::CrashConsistent,
            cut_time_ns: self.cut_time_ns,
            first_seq: self.id,
            created_unix_ns: self.created_unix_ns,
            label: None,
            bytes: 0,
        }
    }
}

/// `STORE/groups/NAME.json`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct GroupFile {
    version: u32,
    name: String,
    owner: String,
    next_id: u64,
    points: Vec<GroupPoint>,
    /// The clients allowed to have members (the owner, and those the secondary's operator
    /// allowed: `sitrep group allow`).
    #[serde(default)]
    clients: BTreeSet<String>,
    /// The member disks the agents declared (`GroupMember`), and each one's client.
    #[serde(default)]
    members: BTreeMap<String, String>,
}

impl GroupFile {
    fn new(name: &str, owner: &str) -> Self {
        Self {
            version: 1,
            name: name.to_string(),
            owner: owner.to_string(),
            next_id: 1,
            points: Vec::new(),
            clients: BTreeSet::from([owner.to_string()]),
            members: BTreeMap::new(),
        }
    }

    fn allows(&self, client: &str) -> bool {
        self.owner == client || self.clients.contains(client)
    }

    /// Members on more than one client: the server coordinates the group's points.
    fn spans_clients(&self) -> bool {
        self.members.values().collect::<BTreeSet<_>>().len() > 1
    }
}

/// A cut some members have reported.
struct Pending {
    members: BTreeSet<String>,
    cut_time_ns: u64,
    points: BTreeMap<String, u64>,
}

#[derive(Default)]
struct Group {
    file: GroupFile,
    pending: BTreeMap<u64, Pending>,
    /// The cross-host round in progress (`coordinate.rs`).
    round: Option<Round>,
    /// How the last cross-host round ended (for `status`).
    last_round: Option<String>,
}

/// A cross-host round: each member's answers.
#[derive(Debug, Clone, Default)]
pub(crate) struct Round {
    /// The round's id.
    pub(crate) id: u64,
    /// The members asked.
    pub(crate) members: BTreeSet<String>,
    /// Step 0 answers: the members holding their cuts for the round.
    pub(crate) prepared: BTreeSet<String>,
    /// Step 1 answers: the cycle each member cut.
    pub(crate) cuts: BTreeMap<String, u64>,
    /// Step 2 answers: whether the member was quiet from its cut to the release.
    pub(crate) quiet: BTreeMap<String, bool>,
}

/// A member's report of its cycle at a group cut.
pub(crate) struct Report<'a> {
    /// The client (certificate name).
    pub(crate) client: &'a str,
    /// The group.
    pub(crate) group: &'a str,
    /// The reporting disk.
    pub(crate) disk: &'a str,
    /// The cut.
    pub(crate) cut_id: u64,
    /// Every member cut then.
    pub(crate) members: &'a [String],
    /// The disk's point from that cut (id, cut time), if its cycle became one.
    pub(crate) point: Option<(u64, u64)>,
}

/// Every group of the store.
pub(crate) struct Groups {
    dir: PathBuf,
    inner: std::sync::Mutex<BTreeMap<String, Group>>,
    /// Woken by every round answer (the coordinator waits on it, not on a timer: the window
    /// from the members' cuts to the release is what decides whether a round has a point).
    pub(crate) answered: tokio::sync::Notify,
}

impl Groups {
    /// Loads `STORE/groups/*.json`.
    ///
    /// # Errors
    /// A group file is unreadable or invalid (named).
    pub(crate) fn open(store: &Path) -> anyhow::Result<Self> {
        let dir = store.join("groups");
        let mut groups = BTreeMap::new();
        match std::fs::read_dir(&dir) {
            Ok(rd) => {
                for e in rd {
                    let path = e?.path();
                    if path.extension().is_none_or(|x| x != "json") {
                        continue;
                    }
                    let file = read_file(&path)?;
                    groups.insert(
                        file.name.clone(),
                        Group {
                            file,
                            ..Group::default()
                        },
                    );
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => anyhow::bail!("{}: {e}", dir.display()),
        }
        Ok(Self {
            dir,
            inner: std::sync::Mutex::new(groups),
            answered: tokio::sync::Notify::new(),
        })
    }

    /// Records a member's report; `Ok(Some(point))` when it completed a group point (then
    /// the members' pins changed: see [`Groups::pins`]). `retention` thins the group's points.
    ///
    /// # Errors
    /// A bad report (names, members, another client's group) or the file could not be written.
    pub(crate) fn report(
        &self,
        r: &Report<'_>,
        retention: &Retention,
        now_ns: u64,
    ) -> Result<Option<GroupPoint>, String> {
        check_report(r)?;
        let mut all = lock(&self.inner);
        if !all.contains_key(r.group) && all.len() >= MAX_GROUPS {
            return Err(format!("at most {MAX_GROUPS} groups on this server"));
        }
        let g = all.entry(r.group.to_string()).or_default();
        if g.file.owner.is_empty() {
            g.file = GroupFile::new(r.group, r.client);
        } else if !g.file.allows(r.client) {
            return Err(format!(
                "group {} belongs to client {}, not {}",
                r.group, g.file.owner, r.client
            ));
        }
        let members: BTreeSet<String> = r.members.iter().cloned().collect();
        // A cross-host group gets its points from the server's rounds; and a cut that left a
        // declared member out is no point of the group.
        let declared: BTreeSet<String> = g.file.members.keys().cloned().collect();
        if g.file.spans_clients() || (!declared.is_empty() && declared != members) {
            return Ok(None);
        }
        let Some((id, cut_time_ns)) = r.point else {
            // Not a point on this member: the cut has no group point.
            g.pending.remove(&r.cut_id);
            return Ok(None);
        };
        let p = g.pending.entry(r.cut_id).or_insert_with(|| Pending {
            members: members.clone(),
            cut_time_ns,
            points: BTreeMap::new(),
        });
        if p.members != members || p.cut_time_ns != cut_time_ns {
            g.pending.remove(&r.cut_id);
            return Err(format!(
                "group {}: cut {} reported with other members or another instant",
                r.group, r.cut_id
            ));
        }
        p.points.insert(r.disk.to_string(), id);
        if p.points.len() < p.members.len() {
            while g.pending.len() > MAX_PENDING {
                g.pending.pop_first();
            }
            return Ok(None);
        }
        let Some(done) = g.pending.remove(&r.cut_id) else {
            return Ok(None);
        };
        let gp = GroupPoint {
            id: g.file.next_id,
            cut_id: r.cut_id,
            cut_time_ns: done.cut_time_ns,
            created_unix_ns: now_ns,
            members: done.points,
        };
        g.file.next_id += 1;
        g.file.points.push(gp.clone());
        // Older cuts can no longer complete once a later one did (members report in order).
        g.pending.retain(|c, _| *c > r.cut_id);
        thin(&mut g.file.points, retention, now_ns);
        write_file(&self.dir, &g.file).map_err(|e| format!("group {}: {e}", r.group))?;
        Ok(Some(gp))
    }

    /// The points of `disk` that its groups' points pin.
    pub(crate) fn pins(&self, disk: &str) -> BTreeSet<u64> {
        lock(&self.inner)
            .values()
            .flat_map(|g| g.file.points.iter())
            .filter_map(|p| p.members.get(disk).copied())
            .collect()
    }

    /// The group's points, oldest first, and its owner; `None` if there is no such group.
    pub(crate) fn points(&self, group: &str) -> Option<(String, Vec<GroupPoint>)> {
        lock(&self.inner)
            .get(group)
            .map(|g| (g.file.owner.clone(), g.file.points.clone()))
    }

    /// Every group's name.
    pub(crate) fn names(&self) -> Vec<String> {
        lock(&self.inner).keys().cloned().collect()
    }

    /// Drops the group points whose member points `exists` says are gone (retired by the
    /// quota, a cap or `points delete`); true if any went. `exists` is called with no lock
    /// of the registry held: it locks disks, and a disk's lock is taken before the
    /// registry's elsewhere (a lock-order cycle here deadlocked the control socket).
    pub(crate) fn drop_broken(&self, group: &str, exists: impl Fn(&str, u64) -> bool) -> bool {
        let Some((_, points)) = self.points(group) else {
            return false;
        };
        let broken: BTreeSet<u64> = points
            .iter()
            .filter(|p| !p.members.iter().all(|(d, id)| exists(d, *id)))
            .map(|p| p.id)
            .collect();
        if broken.is_empty() {
            return false;
        }
        let mut all = lock(&self.inner);
        let Some(g) = all.get_mut(group) else {
            return false;
        };
        g.file.points.retain(|p| !broken.contains(&p.id));
        if let Err(e) = write_file(&self.dir, &g.file) {
            tracing::warn!(group, "{e}");
        }
        true
    }
}

impl Groups {
    /// Disk `disk` of client `client` declares its group (`GroupMember`): it leaves any
    /// other group, and joins `group` if the group allows the client.
    ///
    /// # Errors
    /// An invalid name, a group of another client that did not allow this one, too many
    /// members or groups, or the file could not be written.
    pub(crate) fn declare(
        &self,
        client: &str,
        disk: &str,
        group: Option<&str>,
    ) -> Result<(), String> {
        if let Some(g) = group
            && !base::valid_disk_name(g)
        {
            return Err("a group name that is not a valid name".into());
        }
        let mut all = lock(&self.inner);
        for (name, g) in all.iter_mut() {
            if Some(name.as_str()) != group && g.file.members.remove(disk).is_some() {
                write_file(&self.dir, &g.file).map_err(|e| format!("group {name}: {e}"))?;
            }
        }
        let Some(group) = group else { return Ok(()) };
        if !all.contains_key(group) && all.len() >= MAX_GROUPS {
            return Err(format!("at most {MAX_GROUPS} groups on this server"));
        }
        let g = all.entry(group.to_string()).or_default();
        if g.file.owner.is_empty() {
            g.file = GroupFile::new(group, client);
        } else if !g.file.allows(client) {
            return Err(format!(
                "group {group} belongs to client {}; the secondary's operator lets {client} join it with `sitrep group allow {group} {client}` on the server",
                g.file.owner
            ));
        }
        if g.file.members.get(disk).map(String::as_str) == Some(client) {
            return Ok(());
        }
        if g.file.members.len() >= proto::MAX_GROUP_MEMBERS {
            return Err(format!(
                "group {group} has {} members already",
                proto::MAX_GROUP_MEMBERS
            ));
        }
        g.file.members.insert(disk.to_string(), client.to_string());
        write_file(&self.dir, &g.file).map_err(|e| format!("group {group}: {e}"))
    }

    /// The secondary's operator lets `client`'s disks join `group` (a cross-host group).
    ///
    /// # Errors
    /// An invalid name, too many groups, or the file could not be written.
    pub(crate) fn allow(&self, group: &str, client: &str) -> Result<(), String> {
        if !base::valid_disk_name(group) || client.is_empty() || client.len() > 256 {
            return Err("a group or client name that is not valid".into());
        }
        let mut all = lock(&self.inner);
        if !all.contains_key(group) && all.len() >= MAX_GROUPS {
            return Err(format!("at most {MAX_GROUPS} groups on this server"));
        }
        let g = all.entry(group.to_string()).or_default();
        if g.file.owner.is_empty() {
            g.file = GroupFile::new(group, client);
        }
        g.file.clients.insert(client.to_string());
        write_file(&self.dir, &g.file).map_err(|e| format!("group {group}: {e}"))
    }

    /// The groups whose members are on more than one client, with their members.
    pub(crate) fn spanning(&self) -> Vec<(String, BTreeMap<String, String>)> {
        lock(&self.inner)
            .iter()
            .filter(|(_, g)| g.file.spans_clients())
            .map(|(n, g)| (n.clone(), g.file.members.clone()))
            .collect()
    }

    /// The declared members of `group` (disk → client).
    pub(crate) fn members(&self, group: &str) -> BTreeMap<String, String> {
        lock(&self.inner)
            .get(group)
            .map(|g| g.file.members.clone())
            .unwrap_or_default()
    }

    /// Starts round `id` of `group` over `members`.
    pub(crate) fn begin_round(&self, group: &str, id: u64, members: BTreeSet<String>) {
        if let Some(g) = lock(&self.inner).get_mut(group) {
            g.round = Some(Round {
                id,
                members,
                ..Round::default()
            });
        }
    }

    /// A member's answer to a round step (ignored unless it is the round in progress and the
    /// disk one of its members).
    pub(crate) fn round_answer(
        &self,
        group: &str,
        id: u64,
        disk: &str,
        step: u8,
        seq: u64,
        quiet: bool,
    ) {
        let mut all = lock(&self.inner);
        let Some(r) = all.get_mut(group).and_then(|g| g.round.as_mut()) else {
            return;
        };
        if r.id != id || !r.members.contains(disk) {
            return;
        }
        match step {
            0 => {
                r.prepared.insert(disk.to_string());
            }
            1 => {
                r.cuts.insert(disk.to_string(), seq);
            }
            _ if r.cuts.get(disk) == Some(&seq) => {
                r.quiet.insert(disk.to_string(), quiet);
            }
            _ => {}
        }
        drop(all);
        self.answered.notify_waiters();
    }

    /// The round in progress.
    pub(crate) fn round(&self, group: &str) -> Option<Round> {
        lock(&self.inner).get(group).and_then(|g| g.round.clone())
    }

    /// Ends the round in progress with `outcome` (shown by `status`).
    pub(crate) fn end_round(&self, group: &str, outcome: String) {
        if let Some(g) = lock(&self.inner).get_mut(group) {
            g.round = None;
            g.last_round = Some(outcome);
        }
    }

    /// How the last cross-host round of `group` ended.
    pub(crate) fn last_round(&self, group: &str) -> Option<String> {
        lock(&self.inner)
            .get(group)
            .and_then(|g| g.last_round.clone())
    }

    /// Records a group point from a round: each member's point and cut time.
    ///
    /// # Errors
    /// No such group, or the file could not be written.
    pub(crate) fn add_round_point(
        &self,
        group: &str,
        round: u64,
        points: &BTreeMap<String, (u64, u64)>,
        retention: &Retention,
        now_ns: u64,
    ) -> Result<GroupPoint, String> {
        let mut all = lock(&self.inner);
        let g = all
            .get_mut(group)
            .ok_or_else(|| format!("no group {group}"))?;
        let gp = GroupPoint {
            id: g.file.next_id,
            cut_id: round,
            // The newest member cut: every member's disk is as it was then too (no change
            // between its own cut and the round's release, which came after every cut).
            cut_time_ns: points.values().map(|p| p.1).max().unwrap_or(0),
            created_unix_ns: now_ns,
            members: points.iter().map(|(d, p)| (d.clone(), p.0)).collect(),
        };
        g.file.next_id += 1;
        g.file.points.push(gp.clone());
        thin(&mut g.file.points, retention, now_ns);
        write_file(&self.dir, &g.file).map_err(|e| format!("group {group}: {e}"))?;
        Ok(gp)
    }
}

/// Thins `points` (oldest first) by `retention`, and to [`MAX_GROUP_POINTS`].
fn thin(points: &mut Vec<GroupPoint>, retention: &Retention, now_ns: u64) {
    let as_points: Vec<Point> = points.iter().map(GroupPoint::as_point).collect();
    let keep = retention.keep_flags(&as_points, now_ns);
    let mut k = keep.into_iter();
    points.retain(|_| k.next().unwrap_or(true));
    let over = points.len().saturating_sub(MAX_GROUP_POINTS);
    points.drain(..over);
}

/// As a point, for selectors (`latest`, an id).
#[must_use]
pub(crate) fn as_points(points: &[GroupPoint]) -> Vec<Point> {
    points.iter().map(GroupPoint::as_point).collect()
}

fn check_report(r: &Report<'_>) -> Result<(), String> {
    if !base::valid_disk_name(r.group) {
        return Err("a group name that is not a valid name".into());
    }
    if r.members.len() > proto::MAX_GROUP_MEMBERS || r.members.len() < 2 {
        return Err(format!(
            "group {}: a cut of {} members (2..={} allowed)",
            r.group,
            r.members.len(),
            proto::MAX_GROUP_MEMBERS
        ));
    }
    if r.members.iter().any(|m| !base::valid_disk_name(m))
        || r.members.windows(2).any(|w| w[0] >= w[1])
    {
        return Err(format!(
            "group {}: members must be valid disk names, sorted, without duplicates",
            r.group
        ));
    }
    if !r.members.iter().any(|m| m == r.disk) {
        return Err(format!(
            "group {}: disk {} reported a cut it is not a member of",
            r.group, r.disk
        ));
    }
    Ok(())
}

fn read_file(path: &Path) -> anyhow::Result<GroupFile> {
    let len = std::fs::metadata(path)?.len();
    if len > MAX_FILE {
        anyhow::bail!("{}: {len} bytes (at most {MAX_FILE})", path.display());
    }
    let bytes = std::fs::read(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let f: GroupFile =
        serde_json::from_slice(&bytes).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    if f.version != 1 || !base::valid_disk_name(&f.name) {
        anyhow::bail!("{}: not a version-1 group file", path.display());
    }
    Ok(f)
}

fn write_file(dir: &Path, f: &GroupFile) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let bytes = serde_json::to_vec_pretty(f).map_err(std::io::Error::other)?;
    base::files::write_atomic(&dir.join(format!("{}.json", f.name)), &bytes)
}

#[cfg(test)]
mod tests;
