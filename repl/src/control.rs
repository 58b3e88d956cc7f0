//! The local control socket: the CLI sends one JSON request line, the daemon answers one JSON
//! response line. Root-only (mode 0600). Requests are handed to the daemon through a channel.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};

/// Default socket of the primary's agent.
pub const AGENT_SOCKET: &str = "/run/sitrep/agent.sock";
/// Default socket of the secondary's server.
pub const SERVER_SOCKET: &str = "/run/sitrep/server.sock";
/// Longest request line accepted.
pub const MAX_REQUEST: usize = 64 << 10;

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
        /// Point id, `latest` or `latest-app-consistent`.
        point: String,
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
    },
    /// `sitrep failover NAME` (server): the failover record of a disk (`failover.json`).
    FailoverRecord {
        /// Disk name.
        name: String,
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
        /// `latest`, `latest-processed`, `latest-app-consistent` or an id.
        point: String,
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
}

/// A request waiting for the daemon's answer.
pub type Call = (Request, oneshot::Sender<Response>);

/// Serves `path` until the runtime stops; every request goes to `tx`.
///
/// # Errors
/// The socket cannot be created.
pub async fn serve(path: &Path, tx: mpsc::Sender<Call>) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = tokio::net::UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    let path: PathBuf = path.to_path_buf();
    loop {
        let (stream, _) = listener.accept().await?;
        let tx = tx.clone();
        let p = path.clone();
        tokio::spawn(async move {
            let (r, mut w) = stream.into_split();
            let mut r = tokio::io::BufReader::new(r).take(MAX_REQUEST as u64);
            let mut line = String::new();
            let resp = match r.read_line(&mut line).await {
                Ok(_) => match serde_json::from_str::<Request>(&line) {
                    Ok(req) => {
                        let (otx, orx) = oneshot::channel();
                        if tx.send((req, otx)).await.is_err() {
                            Response::err("the daemon is shutting down")
                        } else {
                            orx.await
                                .unwrap_or_else(|_| Response::err("the daemon dropped the request"))
                        }
                    }
                    Err(e) => Response::err(format!("bad request on {}: {e}", p.display())),
                },
                Err(e) => Response::err(e),
            };
            let mut out = serde_json::to_vec(&resp).unwrap_or_default();
            out.push(b'\n');
            let _ = w.write_all(&out).await;
        });
    }
}

use tokio::io::AsyncReadExt as _;

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
