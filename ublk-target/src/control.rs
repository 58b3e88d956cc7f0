//! The control channel: how the replication agent cuts and tags a target's logs.
//!
//! The target serves a Unix stream socket, `/run/sitrep/ublk/<disk_id>.sock`
//! ([`socket_path`]; directory 0700, socket 0600, so only root reaches it), recorded in the
//! device's libublk json export ([`TargetData::control`], found with [`find`]). One JSON
//! request per line, one JSON reply per line:
//!
//! | request | reply |
//! |---|---|
//! | `"cut"` (or `{"cut":null}`) | `{"ok":{"seq":S,"path":"…","time_ns":T}}`: the sealed log |
//! | `{"mark":{"tag":N}}` | `{"ok":null}` once the tag is in the log file |
//! | `"stats"` | `{"ok":{…}}`: [`ControlStats`] |
//!
//! and `{"error":"text"}` for a request that failed or did not parse (the connection stays
//! usable). A request line longer than [`MAX_REQUEST_LINE`] bytes closes the connection; at
//! most [`MAX_CONNECTIONS`] are served at once (more are closed at once).
//!
//! **The cut is exact.** A change's record is written to the log before the change is
//! performed ([`crate::commit`]), and a cut seals the log with everything appended before
//! it: every I/O completed before the cut has its record in the sealed log or an earlier
//! one (a change in flight may be in either; it is in a later log at the latest). And the
//! cut answers only once every change recorded in the sealed log has been *performed*
//! (`commit/drain.rs`), so a read of the device after the cut sees all of them.
//!
//! [`Client`] is the agent's side.

mod client;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

pub use client::Client;

use crate::commit::SharedLog;
use crate::devices::{self, TargetData};

/// Where the targets' control sockets are.
pub const SOCKET_DIR: &str = "/run/sitrep/ublk";
/// The longest request line accepted, in bytes (without its newline).
pub const MAX_REQUEST_LINE: usize = 4096;
/// Connections served at once; more are closed as they come.
pub const MAX_CONNECTIONS: usize = 8;
/// How long one side waits for the other to read or write (the client's timeouts; the
/// server's write timeout).
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// The control socket of the target of disk `disk_id` (as in its log headers).
#[must_use]
pub fn socket_path(disk_id: &str) -> PathBuf {
    Path::new(SOCKET_DIR).join(format!("{disk_id}.sock"))
}

/// A request, one JSON line.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
enum Request {
    /// Seal the open log and open the next one.
    Cut,
    /// Append a consistency tag and write it to the log.
    Mark {
        /// The tag.
        tag: u64,
    },
    /// The counters.
    Stats,
}

/// A reply, one JSON line.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
enum Reply<T> {
    Ok(T),
    Error(String),
}

/// The log a cut sealed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CutReply {
    /// Its position in the disk's chain (`header.log_seq`).
    pub seq: u64,
    /// Where it is (in the target's log directory).
    pub path: PathBuf,
    /// When it was sealed, ns since the Unix epoch.
    pub time_ns: u64,
}

/// The target's counters (since the target started, unless said otherwise).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ControlStats {
    /// Change records appended (tags excluded; the gap records counted in `overflows`
    /// included).
    pub records: u64,
    /// Bytes in the disk's logs ([`hrl::LogWriter::total_bytes`]); logs the agent deleted
    /// are uncounted at the next cut.
    pub log_bytes: u64,
    /// The log space cap, if any.
    pub log_cap: Option<u64>,
    /// Changes recorded as extents-only tracking gaps because the cap was reached.
    pub overflows: u64,
    /// Whether the logs carry the data written (journal mode).
    pub journal: bool,
    /// The sequence number the next record gets.
    pub next_seq: u64,
}

/// The control socket of the sitrep ublk target serving `device` (`/dev/ublkbN`, or a link
/// to it), from its libublk json export ([`devices`]), with its [`TargetData`]; `None` if
/// no live sitrep target with a control socket serves it.
#[must_use]
pub fn find(device: &Path) -> Option<(PathBuf, TargetData)> {
    let id = ublk_id(&std::fs::canonicalize(device).ok()?)?;
    let d = devices::describe(id)?;
    let socket = d.target.control.clone()?;
    let is_socket = std::fs::metadata(&socket).is_ok_and(|m| m.file_type().is_socket());
    (d.server_alive && is_socket).then_some((socket, d.target))
}

/// N in `/dev/ublkbN`.
fn ublk_id(device: &Path) -> Option<u32> {
    if device.parent() != Some(Path::new("/dev")) {
        return None;
    }
    device
        .file_name()?
        .to_str()?
        .strip_prefix("ublkb")?
        .parse()
        .ok()
}

/// The served control socket: one thread accepting, one per connection. Stopped (and the
/// socket removed) by [`stop`](Self::stop) or on drop.
#[derive(Debug)]
pub struct ControlServer {
    path: PathBuf,
    shared: Arc<Shared>,
    /// Written to wake the accepting thread.
    wake: UnixStream,
    thread: Option<JoinHandle<()>>,
}

#[derive(Debug)]
struct Shared {
    log: Arc<SharedLog>,
    stopping: AtomicBool,
    next_id: AtomicU64,
    conns: Mutex<Conns>,
}

/// The open connections, by id: a handle to shut each down at stop, and its thread.
type Conns = BTreeMap<u64, (UnixStream, Option<JoinHandle<()>>)>;

fn conns(s: &Shared) -> MutexGuard<'_, Conns> {
    s.conns.lock().unwrap_or_else(PoisonError::into_inner)
}

impl ControlServer {
    /// Listens on `path` ([`socket_path`] in production; anywhere in tests) and serves
    /// requests on `log`. Creates the parent directory (0700) if missing, replaces a stale
    /// socket (a crashed server's), and refuses to replace anything else.
    ///
    /// # Errors
    /// IO: the directory, the socket, the thread.
    pub fn start(path: &Path, log: Arc<SharedLog>) -> std::io::Result<Self> {
        if let Some(dir) = path.parent()
            && !dir.is_dir()
        {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)?;
        }
        match std::fs::symlink_metadata(path) {
            Ok(m) if m.file_type().is_socket() => std::fs::remove_file(path)?,
            Ok(_) => {
                return Err(std::io::Error::other(format!(
                    "{} exists and is not a socket; not replacing it",
                    path.display()
                )));
            }
            Err(_) => {}
        }
        let listener = UnixListener::bind(path)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        listener.set_nonblocking(true)?;
        let (wake, woken) = UnixStream::pair()?;
        let shared = Arc::new(Shared {
            log,
            stopping: AtomicBool::new(false),
            next_id: AtomicU64::new(0),
            conns: Mutex::new(BTreeMap::new()),
        });
        let s = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("sitrep-control".into())
            .spawn(move || accept_loop(&listener, &woken, &s))?;
        tracing::info!(socket = %path.display(), "control channel listening");
        Ok(Self {
            path: path.to_owned(),
            shared,
            wake,
            thread: Some(thread),
        })
    }

    /// The socket's path.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Stops accepting, closes every connection (a request being served finishes first),
    /// waits for the threads and removes the socket.
    pub fn stop(mut self) {
        self.shut_down();
    }

    fn shut_down(&mut self) {
        let Some(t) = self.thread.take() else { return };
        self.shared.stopping.store(true, Ordering::SeqCst);
        let _ = (&self.wake).write_all(&[1]);
        if t.join().is_err() {
            tracing::error!("the control channel's accepting thread panicked");
        }
        let open = std::mem::take(&mut *conns(&self.shared));
        for (stream, _) in open.values() {
            let _ = stream.shutdown(std::net::Shutdown::Both);
        }
        for (_, handle) in open.into_values() {
            if let Some(h) = handle
                && h.join().is_err()
            {
                tracing::error!("a control connection's thread panicked");
            }
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        self.shut_down();
    }
}

/// Accepts until `woken` is readable (or the listener fails).
fn accept_loop(listener: &UnixListener, woken: &UnixStream, shared: &Arc<Shared>) {
    loop {
        let mut fds = [
            PollFd::new(listener.as_fd(), PollFlags::POLLIN),
            PollFd::new(woken.as_fd(), PollFlags::POLLIN),
        ];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => {
                tracing::error!(error = %e, "control channel: poll failed; no longer accepting");
                return;
            }
        }
        if shared.stopping.load(Ordering::SeqCst) {
            return;
        }
        match listener.accept() {
            Ok((stream, _)) => admit(stream, shared),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                // EMFILE and the like: back off a little rather than spin.
                tracing::warn!(error = %e, "control channel: accept failed");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// Serves `stream` on its own thread, or closes it if [`MAX_CONNECTIONS`] are open.
fn admit(stream: UnixStream, shared: &Arc<Shared>) {
    let mut open = conns(shared);
    if open.len() >= MAX_CONNECTIONS {
        tracing::warn!("control channel: {MAX_CONNECTIONS} connections open; closing a new one");
        return;
    }
    let handle = match stream.try_clone() {
        Ok(h) => h,
        Err(e) => {
            tracing::warn!(error = %e, "control channel: cloning a connection");
            return;
        }
    };
    let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
    let s = Arc::clone(shared);
    let spawned = std::thread::Builder::new()
        .name("sitrep-control-conn".into())
        .spawn(move || {
            if let Err(e) = serve_connection(stream, &s.log) {
                tracing::debug!(error = %e, "control connection ended");
            }
            // Still registered unless the server is stopping (it joins us then).
            conns(&s).remove(&id);
        });
    match spawned {
        Ok(t) => {
            open.insert(id, (handle, Some(t)));
        }
        Err(e) => tracing::warn!(error = %e, "control channel: no thread for a connection"),
    }
}

/// One connection: a request per line, a reply per line, until the peer closes, sends a
/// line longer than [`MAX_REQUEST_LINE`], or the server stops.
fn serve_connection(stream: UnixStream, log: &SharedLog) -> std::io::Result<()> {
    // A peer that stops reading must not hold a reply (and this thread) forever.
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut writer = stream;
    let mut line = Vec::with_capacity(256);
    loop {
        line.clear();
        let cap = u64::try_from(MAX_REQUEST_LINE + 1).unwrap_or(u64::MAX);
        let n = (&mut reader).take(cap).read_until(b'\n', &mut line)?;
        if n == 0 {
            return Ok(());
        }
        if line.last() == Some(&b'\n') {
            line.pop();
        } else if line.len() > MAX_REQUEST_LINE {
            return Err(std::io::Error::other(format!(
                "a request line over {MAX_REQUEST_LINE} bytes; closing"
            )));
        } else {
            // The peer closed in the middle of a line.
            return Ok(());
        }
        let mut reply = handle(&line, log);
        reply.push(b'\n');
        writer.write_all(&reply)?;
    }
}

/// The reply line (without its newline) to one request line.
fn handle(line: &[u8], log: &SharedLog) -> Vec<u8> {
    let request: Request = match serde_json::from_slice(line) {
        Ok(r) => r,
        Err(e) => return encode(Reply::<()>::Error(format!("bad request: {e}"))),
    };
    match request {
        Request::Cut => encode(match log.cut() {
            Ok(s) => Reply::Ok(CutReply {
                seq: s.header.log_seq.0,
                path: s.path,
                time_ns: s.seal.sealed_unix_ns,
            }),
            Err(e) => Reply::Error(e),
        }),
        Request::Mark { tag } => encode(match log.mark(tag) {
            Ok(()) => Reply::Ok(()),
            Err(e) => Reply::Error(e),
        }),
        Request::Stats => encode(Reply::<ControlStats>::Ok(log.stats())),
    }
}

fn encode<T: serde::Serialize>(reply: Reply<T>) -> Vec<u8> {
    // Our own plain structs and strings: encoding cannot fail, but never panic over it.
    serde_json::to_vec(&reply)
        .unwrap_or_else(|_| br#"{"error":"encoding the reply failed"}"#.to_vec())
}

#[cfg(test)]
mod tests;
