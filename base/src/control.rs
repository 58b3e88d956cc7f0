//! The local control socket: the CLI sends one JSON request line, the daemon answers one JSON
//! response line. Root-only (mode 0600). Requests are handed to the daemon through a channel.
//!
//! A flood of connections (even by root) cannot lock the operator out: at most
//! [`crate::listen::CONTROL_CONNECTIONS`] are open at once, each must send its line within
//! [`crate::listen::CONTROL_READ_TIMEOUT`], and when every slot is taken a new connection
//! closes the oldest one that has not sent its line yet — the CLI sends its line as soon as it
//! connects, so it is never the oldest idle one for long. Accept errors (out of descriptors)
//! pause and retry; the socket never stops answering while the daemon runs.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};

use crate::listen::{Gate, ListenerStats, Pass};
use crate::status::ListenerStatus;

/// Default socket of the primary's agent.
pub const AGENT_SOCKET: &str = "/run/sitrep/agent.sock";
/// Default socket of the secondary's server.
pub const SERVER_SOCKET: &str = "/run/sitrep/server.sock";
/// Longest request line accepted.
pub const MAX_REQUEST: usize = 64 << 10;

/// What `sitrep group` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum GroupAction {
    /// Create an empty group.
    Create,
    /// Put disks in the group (each leaves any other group).
    Add,
    /// Take disks out of the group.
    Remove,
    /// Delete an empty group.
    Delete,
    /// List the groups and their members.
    List,
    /// Change a group's settings (`freeze`).
    Set,
}

/// A request to a daemon.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "kebab-case")]
pub enum Request {
    /// `sitrep status`.
    Status,
    /// `sitrep jobs`.
    Jobs,
    /// `sitrep protect` (agent).
    Protect {
        /// Block device.
        device: String,
        /// `HOST:PORT` of the server.
        to: String,
        /// Disk name (default: the device's base name).
        name: Option<String>,
        /// `continuous`, `30s`, `5m`, `15m`.
        frequency: String,
        /// App-consistent points this often (`1h`..`12h`), if set.
        #[serde(default)]
        app_consistent_every: Option<String>,
        /// Pre-hook for app-consistent points.
        #[serde(default)]
        pre_hook: Option<String>,
        /// Post-hook for app-consistent points.
        #[serde(default)]
        post_hook: Option<String>,
        /// Keep one crash-consistent point per slot this wide (`1s`..`1h`; default `5m`).
        #[serde(default)]
        crash_points_every: Option<String>,
        /// Keep points this long (up to `366d`, at least the slot; default `24h`; the
        /// server keeps at least its `--min-retain`).
        #[serde(default)]
        retain: Option<String>,
        /// At most this much point storage on the server (`20G`; `none` or unset: no cap).
        #[serde(default)]
        max_point_storage: Option<String>,
        /// The consistency group to put the disk in (created if new).
        #[serde(default)]
        group: Option<String>,
    },
    /// `sitrep group create|add|remove|delete|list` (agent): the consistency groups of this
    /// host's disks.
    Group {
        /// What to do.
        action: GroupAction,
        /// The group (all but `list`).
        #[serde(default)]
        group: Option<String>,
        /// The disks to add or remove.
        #[serde(default)]
        disks: Vec<String>,
        /// `create` and `set`: freeze the members' mounted filesystems during the rounds of
        /// a group spanning agents (so that a round has a point under steady writes).
        #[serde(default)]
        freeze: Option<bool>,
    },
    /// `sitrep group allow G CLIENT` (server): the secondary's operator lets `client`'s disks
    /// join group `group` (a group across agents).
    GroupAllow {
        /// The group.
        group: String,
        /// The client's certificate name.
        client: String,
    },
    /// `sitrep points --group G` (server): the group's points.
    GroupPoints {
        /// The group.
        group: String,
    },
    /// `sitrep points export --group G POINT --out-dir DIR` (server): every member's point
    /// of one group point, as `DIR/DISK.img`.
    GroupExport {
        /// The group.
        group: String,
        /// The group point (`latest` or an id).
        point: crate::points::PointSel,
        /// The directory for the images (on the server's host; it must exist).
        out_dir: String,
        /// Overwrite existing files.
        force: bool,
    },
    /// `sitrep failover --group G` (server): a test or unplanned failover of every member at
    /// one group point.
    GroupFailover {
        /// The group.
        group: String,
        /// The group point.
        point: crate::points::PointSel,
        /// A test failover (replication goes on).
        test: bool,
        /// End the group's test failover instead.
        cleanup: bool,
    },
    /// `sitrep unprotect` (agent).
    Unprotect {
        /// Disk name.
        name: String,
    },
    /// `sitrep point create NAME --app-consistent` (agent): freeze the disk's filesystem,
    /// cut, read the cycle, thaw — an app-consistent point.
    CreatePoint {
        /// Disk name.
        name: String,
        /// Longest the filesystem may stay frozen, in ms.
        max_freeze_ms: u64,
    },
    /// `sitrep points NAME` (server): the disk's recovery points.
    Points {
        /// Disk name.
        name: String,
    },
    /// `sitrep points export` (server): materialize a point as an image file.
    Export {
        /// Disk name.
        name: String,
        /// The point.
        point: crate::points::PointSel,
        /// Output file (on the server's host).
        out: String,
        /// Overwrite an existing file.
        force: bool,
    },
    /// `sitrep resync NAME [--now]` (agent): plan a whole-disk checksum resync unless one is
    /// required already; `now` starts it outside the resync window.
    Resync {
        /// Disk name.
        name: String,
        /// Start at once.
        now: bool,
    },
    /// `sitrep reverse NAME --to HOST:PORT` (agent, on the site where the disk failed over
    /// to): protect the activated disk `device`, replicating it back into the other site's
    /// own disk; only blocks that differ are sent. Replaces a protection of the same name
    /// that failed over (the old direction) or an earlier reverse.
    Reverse {
        /// Disk name (the same on both sites).
        name: String,
        /// The activated block device.
        device: String,
        /// `HOST:PORT` of the other site's server.
        to: String,
        /// The recovery point that was activated here.
        fork_seq: u64,
        /// Overwrite what the other site wrote since the failover (a split brain).
        discard_target_changes: bool,
        /// Cycle frequency.
        frequency: String,
        /// The consistency group the reverse protection joins (`sitrep reverse --group G`:
        /// the reverse direction's points are group points too).
        #[serde(default)]
        group: Option<String>,
    },
    /// `sitrep failover NAME` (server): the failover record of a disk (`failover.json`).
    FailoverRecord {
        /// Disk name.
        name: String,
    },
    /// `sitrep reverse --group G` (server): the failover record of every member of the group
    /// (declared by its agents or in its points); fails naming a member without one.
    GroupFailoverRecords {
        /// The group.
        group: String,
    },
    /// `sitrep failback NAME --mode full-download` (agent): copy the whole disk again.
    Recopy {
        /// Disk name.
        name: String,
    },
    /// `sitrep failover NAME --planned` (agent): quiesce the source, ship everything, prove
    /// the replica equal, activate it on the secondary.
    PlannedFailover {
        /// Disk name.
        name: String,
    },
    /// `sitrep verify NAME` (agent): compare the replica with the source by digests.
    Verify {
        /// Disk name.
        name: String,
    },
    /// `sitrep failover NAME` (server): activate a recovery point as a block device — a test
    /// copy while replication goes on (`test`), or the disk itself (unplanned: replication
    /// of the disk stops); `cleanup` removes the test copy.
    Failover {
        /// Disk name.
        name: String,
        /// The point.
        point: crate::points::PointSel,
        /// A test failover.
        test: bool,
        /// Remove the test failover.
        cleanup: bool,
    },
    /// `sitrep commit NAME` (server): finalize an unplanned failover (deletes the points).
    Commit {
        /// Disk name.
        name: String,
    },
    /// `sitrep commit --group G` (server): finalize the unplanned failover of every member.
    GroupCommit {
        /// The group.
        group: String,
    },
    /// `sitrep wait` (agent): returns once every change completed before the request is
    /// applied on the replica, or after `timeout_secs`.
    Wait {
        /// Disk name.
        name: String,
        /// Give up after this long.
        timeout_secs: u64,
    },
    /// `sitrep reverse-accept NAME` (server, on the site whose disk reverse replication
    /// would overwrite): allow the next adoption of the disk — by client `from` (a
    /// certificate name), and/or overwriting what this site wrote since the failover
    /// (`discard_local_changes`, a split brain); `revoke` removes such a grant. Only this
    /// site's operator decides this, never a peer.
    AcceptReverse {
        /// Disk name.
        name: String,
        /// The client allowed to adopt it (default: the entry's owner, or the server the
        /// local agent replicated it to).
        #[serde(default)]
        from: Option<String>,
        /// Overwrite this site's changes since the failover.
        #[serde(default)]
        discard_local_changes: bool,
        /// Remove the grant instead.
        #[serde(default)]
        revoke: bool,
    },
    /// `sitrep retired [purge ID]` (server): the retired copies of disks (kept whole when a
    /// full re-copy or a reverse adoption replaced an entry), or remove copy `purge` — the
    /// only way their points go.
    Retired {
        /// The id (`NAME@NS`) of the copy to remove; `None` lists them.
        #[serde(default)]
        purge: Option<String>,
    },
    /// `sitrep points delete NAME ID|--all [--yes]` (server): retire recovery points of disk
    /// (or retired copy `NAME@NS`) `name` — the operator's way to make room; no peer can
    /// send this. Without `yes` nothing changes: the answer says what would go.
    DeletePoints {
        /// Disk name or retired copy id.
        name: String,
        /// The point's id; `None` with `all`.
        #[serde(default)]
        point: Option<u64>,
        /// Every point of the disk.
        #[serde(default)]
        all: bool,
        /// Really delete (else a dry run).
        #[serde(default)]
        yes: bool,
    },
}

/// A daemon's answer: `{"ok": true, ...data}` or `{"ok": false, "error": "..."}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Response {
    /// Success.
    pub ok: bool,
    /// What went wrong (names the disk and the cause).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The payload (a status report, a job, ...).
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub data: serde_json::Value,
}

impl Response {
    /// Success with `data`.
    pub fn ok(data: impl Serialize) -> Self {
        Self {
            ok: true,
            error: None,
            data: serde_json::to_value(data).unwrap_or(serde_json::Value::Null),
        }
    }

    /// Failure.
    pub fn err(e: impl std::fmt::Display) -> Self {
        Self {
            ok: false,
            error: Some(e.to_string()),
            data: serde_json::Value::Null,
        }
    }

    /// The answer to a request that ran: `data` on success, else the error with its causes
    /// (`{e:#}`: "outer: inner: root").
    pub fn answer(r: anyhow::Result<impl Serialize>) -> Self {
        match r {
            Ok(v) => Self::ok(v),
            Err(e) => Self::err(format!("{e:#}")),
        }
    }
}

/// A request waiting for the daemon's answer.
pub type Call = (Request, oneshot::Sender<Response>);

/// A bound control socket, not yet served; holds `SOCKET.lock` for the daemon's life.
#[derive(Debug)]
pub struct ControlSocket {
    listener: tokio::net::UnixListener,
    path: PathBuf,
    _lock: crate::lockfile::LockFile,
    shared: Arc<ControlShared>,
}

/// What the daemon reads of its control socket: the counters for `sitrep status`.
#[derive(Debug)]
pub struct ControlShared {
    stats: ListenerStats,
    gate: Arc<Gate>,
    read_timeout: Duration,
    /// Connections that have not sent their request line yet, oldest first, each with its
    /// pass and the sender whose drop tells it to stop.
    idle: Mutex<VecDeque<Idle>>,
    next_id: AtomicU64,
}

#[derive(Debug)]
struct Idle {
    id: u64,
    pass: Pass,
    _stop: oneshot::Sender<()>,
}

impl ControlShared {
    /// The socket's counters (`listeners` in the status).
    #[must_use]
    pub fn status(&self) -> ListenerStatus {
        let mut s = self.stats.status(self.gate.open(), 0);
        s.name = "control".into();
        s
    }

    fn lock_idle(&self) -> std::sync::MutexGuard<'_, VecDeque<Idle>> {
        self.idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A pass for a new connection: a free slot, or the slot of the oldest connection that
    /// has not sent its request yet (which is told to stop).
    fn admit(&self) -> Option<Pass> {
        match self.gate.try_enter(None) {
            Ok(p) => Some(p),
            Err(full) => match self.lock_idle().pop_front() {
                Some(victim) => {
                    self.stats.evicted();
                    Some(victim.pass)
                }
                None => {
                    self.stats
                        .refused("a local client", "control request", full);
                    None
                }
            },
        }
    }

    /// Tells the oldest connection that has not sent its request yet to stop (freeing its
    /// descriptor); whether there was one.
    fn evict_oldest_idle(&self) -> bool {
        let victim = self.lock_idle().pop_front();
        victim.is_some_and(|_| {
            self.stats.evicted();
            true
        })
    }

    /// Takes back the pass of idle connection `id`; None if it was evicted meanwhile.
    fn claim(&self, id: u64) -> Option<Pass> {
        let mut idle = self.lock_idle();
        let at = idle.iter().position(|i| i.id == id)?;
        idle.remove(at).map(|i| i.pass)
    }
}

/// Binds the control socket at `path` (mode 0600), after making sure no live daemon answers
/// there: a socket file that accepts a connection belongs to a running daemon and is left
/// alone (error); a stale one (nobody listening) is replaced. `connections` and
/// `read_timeout`: see [`crate::listen::Limits`].
///
/// # Errors
/// Another daemon answers on `path` or holds `PATH.lock`, `path` is not a socket, or it
/// cannot be created.
pub fn bind(
    path: &Path,
    connections: usize,
    read_timeout: Duration,
) -> anyhow::Result<ControlSocket> {
    use std::os::unix::fs::FileTypeExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| anyhow::anyhow!("{}: {e}", dir.display()))?;
    }
    let mut lock_path = path.as_os_str().to_owned();
    lock_path.push(".lock");
    let lock = crate::lockfile::LockFile::acquire(Path::new(&lock_path), "control socket")?;
    match std::fs::symlink_metadata(path) {
        Ok(m) if !m.file_type().is_socket() => anyhow::bail!(
            "{} exists and is not a socket: remove it, or give the daemon another --socket",
            path.display()
        ),
        Ok(_) => match UnixStream::connect(path) {
            Ok(_) => anyhow::bail!(
                "another daemon answers on {}: stop it first, or give this one another --socket",
                path.display()
            ),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                tracing::info!(socket = %path.display(), "replacing a stale control socket");
                std::fs::remove_file(path)
                    .map_err(|e| anyhow::anyhow!("removing {}: {e}", path.display()))?;
            }
            Err(e) => anyhow::bail!(
                "{}: {e} (is another daemon using it? remove it if not)",
                path.display()
            ),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => anyhow::bail!("{}: {e}", path.display()),
    }
    let listener = tokio::net::UnixListener::bind(path)
        .map_err(|e| anyhow::anyhow!("control socket {}: {e}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    Ok(ControlSocket {
        listener,
        path: path.to_path_buf(),
        _lock: lock,
        shared: Arc::new(ControlShared {
            stats: ListenerStats::new("control socket"),
            gate: Gate::new(connections, connections),
            read_timeout,
            idle: Mutex::new(VecDeque::new()),
            next_id: AtomicU64::new(0),
        }),
    })
}

impl ControlSocket {
    /// The counters the daemon reports.
    #[must_use]
    pub fn shared(&self) -> Arc<ControlShared> {
        self.shared.clone()
    }

    /// Serves until the runtime stops (an accept error pauses and retries, never ends it);
    /// every request goes to `tx`.
    pub async fn serve(self, tx: mpsc::Sender<Call>) {
        let Self {
            listener,
            path,
            _lock,
            shared,
        } = self;
        loop {
            // Out of descriptors: an idle connection of ours goes first.
            let (stream, _) = crate::listen::accept_or_relieve(
                &shared.stats,
                || listener.accept(),
                || shared.evict_oldest_idle(),
            )
            .await;
            let Some(pass) = shared.admit() else {
                continue;
            };
            let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
            let (stop_tx, stop_rx) = oneshot::channel();
            shared.lock_idle().push_back(Idle {
                id,
                pass,
                _stop: stop_tx,
            });
            tokio::spawn(answer(
                stream,
                shared.clone(),
                id,
                stop_rx,
                tx.clone(),
                path.clone(),
            ));
        }
    }
}

/// One control connection: its request line (within the read timeout, unless evicted first),
/// the daemon's answer.
async fn answer(
    stream: tokio::net::UnixStream,
    shared: Arc<ControlShared>,
    id: u64,
    stop: oneshot::Receiver<()>,
    tx: mpsc::Sender<Call>,
    path: PathBuf,
) {
    let (r, mut w) = stream.into_split();
    let mut r = tokio::io::BufReader::new(r).take(MAX_REQUEST as u64);
    let mut line = String::new();
    let read = tokio::select! {
        r = tokio::time::timeout(shared.read_timeout, r.read_line(&mut line)) => r,
        _ = stop => return,
    };
    // From here on the connection holds its pass itself: it is no longer idle.
    let Some(_pass) = shared.claim(id) else {
        return;
    };
    let resp = match read {
        Err(_) => {
            shared
                .stats
                .timed_out("a local client", "no request line in time");
            return;
        }
        Ok(Err(e)) => Response::err(e),
        Ok(Ok(_)) => match serde_json::from_str::<Request>(&line) {
            Ok(req) => {
                let (otx, orx) = oneshot::channel();
                if tx.send((req, otx)).await.is_err() {
                    Response::err("the daemon is shutting down")
                } else {
                    orx.await
                        .unwrap_or_else(|_| Response::err("the daemon dropped the request"))
                }
            }
            Err(e) => Response::err(format!("bad request on {}: {e}", path.display())),
        },
    };
    let mut out = serde_json::to_vec(&resp).unwrap_or_default();
    out.push(b'\n');
    let _ = tokio::time::timeout(shared.read_timeout, w.write_all(&out)).await;
}

use tokio::io::AsyncReadExt as _;

/// Sends `req` to the daemon at `path`, waits up to `timeout`, and returns the answer's data
/// as `T` — the one control-socket client every CLI command uses.
///
/// # Errors
/// No daemon answered, it refused (the error carries its message), or the data is not a `T`.
pub fn ask<T: serde::de::DeserializeOwned>(
    path: &Path,
    req: &Request,
    timeout: Duration,
) -> anyhow::Result<T> {
    let resp = call(path, req, timeout)?;
    if !resp.ok {
        anyhow::bail!("{}", resp.error.unwrap_or_else(|| "failed".into()));
    }
    serde_json::from_value(resp.data)
        .map_err(|e| anyhow::anyhow!("unexpected answer from {}: {e}", path.display()))
}

/// Sends `req` to the daemon at `path` and waits up to `timeout` for its answer.
///
/// # Errors
/// No daemon listens there, or it did not answer.
pub fn call(path: &Path, req: &Request, timeout: Duration) -> anyhow::Result<Response> {
    let mut s = UnixStream::connect(path).map_err(|e| {
        anyhow::anyhow!(
            "cannot reach a sitrep daemon at {}: {e} (is `sitrep agent` or `sitrep server` running? --socket names another)",
            path.display()
        )
    })?;
    s.set_read_timeout(Some(timeout))?;
    let mut line = serde_json::to_vec(req)?;
    line.push(b'\n');
    s.write_all(&line)?;
    let mut r = BufReader::new(s);
    let mut resp = String::new();
    r.read_line(&mut resp)
        .map_err(|e| anyhow::anyhow!("no answer from {}: {e}", path.display()))?;
    serde_json::from_str(&resp)
        .map_err(|e| anyhow::anyhow!("garbled answer from {}: {e}", path.display()))
}
