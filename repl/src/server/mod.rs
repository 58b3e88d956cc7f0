//! The secondary's daemon (`sitrep server`): accepts agents over mutual TLS, never connects
//! out, stages and applies their cycles into the [`store`](mod@crate::store).
//!
//! One session per connection, one connection per disk. A new attach of a disk supersedes
//! an older session of the same disk (after a network cut the old TCP connection may linger
//! half-open): the old one notices at its next frame and ends without touching the disk.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use proto::{CopyState, CycleInfo, ErrorCode, Frame, Msg};
use tokio::io::{AsyncRead, AsyncWrite, ReadHalf, WriteHalf};
use tokio::sync::mpsc;

use crate::control::{self, Call, Request, Response};
use crate::net::{self, ReplError, ServerStream, recv_control, send, send_error};
use crate::status::{self, DiskStatus, Health, ReplState, StatusReport};
use crate::store::{self, Admit, AttachRequest, Disk, StoreError};

pub mod failover;
mod jobs;
mod reverse;

/// A session that sends nothing for this long is dropped (agents ping when idle).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(120);

/// How to run the server.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// `ADDR:PORT` to listen on.
    pub listen: String,
    /// The store directory.
    pub store: PathBuf,
    /// The control socket.
    pub socket: PathBuf,
    /// Which recovery points to keep.
    pub retention: crate::points::Retention,
    /// `ADDR:PORT` of the Prometheus endpoint (`--metrics`; None: no endpoint).
    pub metrics: Option<String>,
    /// The local agent's state directory: reverse replication adopts the disks it failed
    /// over (`--adopt-from`; None: no reverse replication into this site).
    pub adopt_from: Option<PathBuf>,
}

#[derive(Default)]
struct Slot {
    disk: Mutex<Option<Disk>>,
    epoch: AtomicU64,
    connected: AtomicBool,
    wire_bytes: AtomicU64,
    error: Mutex<Option<String>>,
}

struct Shared {
    store: PathBuf,
    name: String,
    retention: crate::points::Retention,
    slots: Mutex<BTreeMap<String, Arc<Slot>>>,
    jobs: jobs::Jobs,
    adopt_from: Option<PathBuf>,
}

impl Shared {
    fn slot(&self, name: &str) -> Arc<Slot> {
        let mut slots = self
            .slots
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        slots.entry(name.to_string()).or_default().clone()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Runs the server until `shutdown` resolves.
///
/// # Errors
/// The store, the listener or the control socket cannot be set up.
pub async fn run(
    opts: ServerOptions,
    identity: &pki::Identity,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(opts.store.join("disks"))
        .map_err(|e| anyhow::anyhow!("store {}: {e}", opts.store.display()))?;
    let shared = Arc::new(Shared {
        store: opts.store.clone(),
        name: identity.name().to_string(),
        retention: opts.retention.clone(),
        slots: Mutex::new(BTreeMap::new()),
        jobs: jobs::Jobs::default(),
        adopt_from: opts.adopt_from.clone(),
    });
    // Finish whatever a crash left staged before anything connects.
    for name in store::list_disks(&opts.store)? {
        let slot = shared.slot(&name);
        match Disk::open(&opts.store, &name) {
            Ok(mut d) => {
                tracing::info!(disk = %name, "replica open");
                d.set_retention(opts.retention.clone());
                *lock(&slot.disk) = Some(d);
            }
            Err(e) => {
                tracing::error!("{e}");
                *lock(&slot.error) = Some(e.to_string());
            }
        }
    }
    let tls = tokio_rustls::TlsAcceptor::from(identity.server_config()?);
    let listener = tokio::net::TcpListener::bind(&opts.listen)
        .await
        .map_err(|e| anyhow::anyhow!("listening on {}: {e}", opts.listen))?;
    if let Some(addr) = &opts.metrics {
        let metrics = crate::metrics::bind(addr).await?;
        let sh = shared.clone();
        crate::metrics::spawn(metrics, move || status_report(&sh));
    }
    tracing::info!(listen = %opts.listen, store = %opts.store.display(), "server ready");
    let (ctx, mut crx) = mpsc::channel::<Call>(16);
    let sock = opts.socket.clone();
    tokio::spawn(async move {
        if let Err(e) = control::serve(&sock, ctx).await {
            tracing::error!("control socket {}: {e}", sock.display());
        }
    });
    let sh = shared.clone();
    tokio::spawn(async move {
        while let Some((req, reply)) = crx.recv().await {
            let resp = match req {
                Request::Status => Response::ok(status_report(&sh)),
                Request::Jobs => Response::ok(status::JobsReport {
                    schema: status::SCHEMA,
                    jobs: sh.jobs.report(),
                }),
                Request::Points { name } => points_report(&sh, &name),
                Request::Export {
                    name,
                    point,
                    out,
                    force,
                } => {
                    let sh = sh.clone();
                    let reply2 = reply;
                    tokio::task::spawn_blocking(move || {
                        let r = export(
                            &sh,
                            &name,
                            &point,
                            std::path::Path::new(&out),
                            force,
                            &|_, _| {},
                        );
                        let _ = reply2.send(match r {
                            Ok(v) => Response::ok(v),
                            Err(e) => Response::err(format!("{e:#}")),
                        });
                    });
                    continue;
                }
                Request::Failover {
                    name,
                    point,
                    test,
                    cleanup,
                } => {
                    let sh = sh.clone();
                    tokio::task::spawn_blocking(move || {
                        let kind = if test {
                            failover::Kind::Test
                        } else {
                            failover::Kind::Unplanned
                        };
                        let r = failover::run(&sh, &name, &point, kind, cleanup);
                        let _ = reply.send(match r {
                            Ok(v) => Response::ok(v),
                            Err(e) => Response::err(format!("{e:#}")),
                        });
                    });
                    continue;
                }
                Request::FailoverRecord { name } => match failover::record(&sh, &name) {
                    Ok(v) => Response::ok(v),
                    Err(e) => Response::err(format!("{e:#}")),
                },
                Request::Commit { name } => match failover::commit(&sh, &name) {
                    Ok(v) => Response::ok(v),
                    Err(e) => Response::err(format!("{e:#}")),
                },
                other => Response::err(format!(
                    "{other:?} is an agent request; this is the server's socket"
                )),
            };
            let _ = reply.send(resp);
        }
    });
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            acc = listener.accept() => {
                let (tcp, peer) = match acc {
                    Ok(x) => x,
                    Err(e) => { tracing::warn!("accept: {e}"); continue; }
                };
                let _ = tcp.set_nodelay(true);
                let tls = tls.clone();
                let sh = shared.clone();
                tokio::spawn(async move {
                    let stream = match tokio::time::timeout(Duration::from_secs(30), tls.accept(tcp)).await {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            tracing::warn!(%peer, "TLS handshake refused: {}", net::io_error(&e));
                            return;
                        }
                        Err(_) => { tracing::warn!(%peer, "TLS handshake timed out"); return; }
                    };
                    if let Err(e) = session(sh, stream).await {
                        tracing::warn!(%peer, "session ended: {e}");
                    }
                });
            }
        }
    }
    tracing::info!("server stopping");
    Ok(())
}

fn status_report(sh: &Shared) -> StatusReport {
    let slots = lock(&sh.slots).clone();
    let now = crate::now_ns();
    let mut disks = Vec::new();
    for (name, slot) in slots {
        let guard = lock(&slot.disk);
        let err = lock(&slot.error).clone();
        let Some(d) = guard.as_ref() else {
            if let Some(e) = err {
                disks.push(DiskStatus {
                    name,
                    device: None,
                    peer: String::new(),
                    state: ReplState::Critical,
                    health: Health::Critical,
                    lag_seconds: 0.0,
                    rpo_target_seconds: None,
                    backlog_bytes: 0,
                    bytes_shipped: 0,
                    wire_bytes: 0,
                    zero_bytes: 0,
                    cycles_applied: 0,
                    last_applied: None,
                    copy: None,
                    connected: false,
                    error: Some(e),
                    resync_reason: None,
                    points: 0,
                    points_bytes: 0,
                    cycles_judged: 0,
                    cycles_consistent: 0,
                    resync: None,
                    last_resync: None,
                    resyncs_completed: 0,
                    next_retry_unix_ns: None,
                    retries: 0,
                    action: None,
                });
            }
            continue;
        };
        let st = d.state();
        let c = d.counters();
        let copy_done = st.copy.is_some_and(|c| c.done);
        let state = if st.failed_over.is_some() {
            ReplState::FailedOver
        } else if st.broken.is_some() {
            ReplState::Critical
        } else if st.resync.is_some() {
            ReplState::Resynchronizing
        } else if copy_done {
            ReplState::Replicating
        } else {
            ReplState::InitialReplication
        };
        disks.push(DiskStatus {
            name,
            device: None,
            peer: st.owner.clone(),
            state,
            health: if st.broken.is_some() {
                Health::Critical
            } else if err.is_some() {
                Health::Warning
            } else {
                Health::Normal
            },
            lag_seconds: st
                .applied
                .map_or(0.0, |a| now.saturating_sub(a.cut_time_ns) as f64 / 1e9),
            rpo_target_seconds: None,
            backlog_bytes: 0,
            bytes_shipped: c.data_bytes,
            wire_bytes: slot.wire_bytes.load(Ordering::Relaxed),
            zero_bytes: c.zero_bytes,
            cycles_applied: c.cycles_applied,
            last_applied: st.applied.map(|a| status::CycleStatus {
                seq: a.seq,
                cut_time_unix_ns: a.cut_time_ns,
            }),
            copy: st.copy.map(|cp| status::CopyStatus {
                done: cp.done,
                bytes_done: cp.cursor,
                size: st.size,
                rate_bytes_per_sec: 0.0,
                eta_seconds: None,
            }),
            connected: slot.connected.load(Ordering::Relaxed),
            error: st.broken.clone().or(err),
            resync_reason: st.broken.clone(),
            points: d.points().len() as u64,
            points_bytes: d.points_bytes(),
            cycles_judged: 0,
            cycles_consistent: 0,
            resync: None,
            last_resync: None,
            resyncs_completed: 0,
            next_retry_unix_ns: None,
            retries: 0,
            action: None,
        });
    }
    StatusReport {
        schema: status::SCHEMA,
        role: "server".into(),
        host: sh.name.clone(),
        disks,
    }
}

fn points_report(sh: &Shared, name: &str) -> Response {
    let slot = lock(&sh.slots).get(name).cloned();
    let Some(slot) = slot else {
        return Response::err(format!("disk {name} is not replicated here"));
    };
    let g = lock(&slot.disk);
    let Some(d) = g.as_ref() else {
        return Response::err(format!("disk {name} is not open (see `sitrep status`)"));
    };
    Response::ok(status::PointsReport {
        schema: status::SCHEMA,
        disk: name.to_string(),
        size: d.state().size,
        storage_bytes: d.points_bytes(),
        points: d.points().to_vec(),
    })
}

/// Chunk size of an export: the disk's lock is held for one chunk at a time, so replication
/// goes on between chunks, and each chunk is consistent with the undo data of that moment.
const EXPORT_CHUNK: usize = 4 << 20;

/// The point `sel` names: `latest`, `latest-processed` (the same here: the server applies
/// every cycle as soon as it is staged, so nothing received waits unapplied),
/// `latest-app-consistent`, or an id.
pub(crate) fn select_point(
    d: &Disk,
    name: &str,
    sel: &str,
) -> anyhow::Result<crate::points::Point> {
    let pts = d.points();
    match sel {
        "latest" | "latest-processed" => pts.last(),
        "latest-app-consistent" => pts
            .iter()
            .rev()
            .find(|p| p.kind == crate::points::PointKind::AppConsistent),
        id => {
            let id: u64 = id.parse().map_err(|_| {
                anyhow::anyhow!(
                    "point '{id}': expected a point id, latest, latest-processed or latest-app-consistent"
                )
            })?;
            pts.iter().find(|p| p.id == id)
        }
    }
    .cloned()
    .ok_or_else(|| {
        anyhow::anyhow!("disk {name} has no recovery point '{sel}' (see `sitrep points {name}`)")
    })
}

fn export(
    sh: &Shared,
    name: &str,
    point: &str,
    out: &std::path::Path,
    force: bool,
    progress: &dyn Fn(u64, u64),
) -> anyhow::Result<status::ExportReport> {
    use std::os::unix::fs::FileExt;
    let slot = lock(&sh.slots)
        .get(name)
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("disk {name} is not replicated here"))?;
    let (id, size, p) = {
        let g = lock(&slot.disk);
        let d = g
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("disk {name} is not open"))?;
        let p = select_point(d, name, point)?;
        (p.id, d.state().size, p)
    };
    if out.exists() && !force {
        anyhow::bail!("{} exists (use --force to overwrite it)", out.display());
    }
    let tmp = out.with_extension("partial");
    let f = std::fs::File::create(&tmp).map_err(|e| anyhow::anyhow!("{}: {e}", tmp.display()))?;
    f.set_len(size)?;
    let mut buf = vec![0u8; EXPORT_CHUNK];
    let mut at = 0u64;
    let mut written = 0u64;
    while at < size {
        let n = usize::try_from((size - at).min(EXPORT_CHUNK as u64)).unwrap_or(EXPORT_CHUNK);
        {
            let g = lock(&slot.disk);
            let d = g
                .as_ref()
                .ok_or_else(|| anyhow::anyhow!("disk {name} closed during the export"))?;
            d.export_chunk(id, at, &mut buf[..n])?;
        }
        if !crate::devread::is_zero(&buf[..n]) {
            f.write_all_at(&buf[..n], at)?;
            written += n as u64;
        }
        at += n as u64;
        progress(at, size);
    }
    f.sync_all()?;
    std::fs::rename(&tmp, out)?;
    Ok(status::ExportReport {
        disk: name.to_string(),
        point: p,
        out: out.display().to_string(),
        size,
        bytes_written: written,
    })
}

fn code_of(e: &StoreError) -> ErrorCode {
    match e {
        StoreError::Unauthorized { .. } => ErrorCode::Unauthorized,
        StoreError::Mismatch { .. } => ErrorCode::DiskMismatch,
        StoreError::BrokenChain { .. } => ErrorCode::BrokenChain,
        StoreError::BadRequest { .. } => ErrorCode::BadRequest,
        StoreError::FailedOver { .. } => ErrorCode::FailedOver,
        StoreError::SplitBrain { .. } => ErrorCode::SplitBrain,
        StoreError::Io { source, .. } if source.raw_os_error() == Some(libc::ENOSPC) => {
            ErrorCode::NoSpace
        }
        StoreError::Io { .. } | StoreError::Corrupt { .. } => ErrorCode::Internal,
    }
}

/// Runs `f` on the disk of `slot` (blocking file I/O, off the async workers).
fn with_disk<T>(
    slot: &Slot,
    f: impl FnOnce(&mut Disk) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    tokio::task::block_in_place(|| {
        let mut g = lock(&slot.disk);
        match g.as_mut() {
            Some(d) => f(d),
            None => Err(StoreError::BadRequest {
                disk: String::new(),
                why: "disk is not open".into(),
            }),
        }
    })
}

enum Mode {
    Idle,
    Copy,
    Resync,
    Cycle(store::Staging),
    Duplicate(u64),
}

struct Conn<R, W> {
    r: R,
    w: W,
    peer: String,
}

async fn refuse<R, W: AsyncWrite + Unpin>(c: &mut Conn<R, W>, e: StoreError) -> ReplError {
    let code = code_of(&e);
    send_error(&mut c.w, code, e.to_string()).await;
    ReplError::Refused {
        peer: c.peer.clone(),
        code,
        message: e.to_string(),
    }
}

async fn session(shared: Arc<Shared>, stream: ServerStream) -> Result<(), ReplError> {
    let client = pki::peer_name(stream.get_ref().1)
        .ok_or_else(|| ReplError::Auth("client presented no usable certificate name".into()))?;
    let (r, w): (ReadHalf<ServerStream>, WriteHalf<ServerStream>) = tokio::io::split(stream);
    let mut c = Conn {
        r,
        w,
        peer: client.clone(),
    };
    // Version handshake.
    match recv_control(&mut c.r, &client).await? {
        Msg::Hello { versions, .. } => match proto::negotiate(proto::SUPPORTED, &versions) {
            Some(v) => {
                send(
                    &mut c.w,
                    Msg::Welcome {
                        version: v,
                        server: shared.name.clone(),
                    },
                )
                .await?;
            }
            None => {
                let msg = format!(
                    "no common protocol version: client speaks {versions:?}, server {:?}",
                    proto::SUPPORTED
                );
                send_error(&mut c.w, ErrorCode::VersionMismatch, msg.clone()).await;
                return Err(ReplError::Protocol(msg));
            }
        },
        m => {
            return Err(ReplError::Protocol(format!(
                "{client} opened with {} instead of Hello",
                m.name()
            )));
        }
    }
    // Attach.
    let (name, slot) = match recv_control(&mut c.r, &client).await? {
        Msg::Attach {
            disk,
            disk_id,
            size,
            block_size,
        } => {
            if !crate::valid_disk_name(&disk) {
                let e = StoreError::BadRequest {
                    disk: disk.clone(),
                    why: "invalid disk name".into(),
                };
                return Err(refuse(&mut c, e).await);
            }
            let req = AttachRequest {
                name: &disk,
                disk_id: crate::hex16(&disk_id),
                size,
                block_size,
                client: &client,
            };
            let slot = shared.slot(&disk);
            let res = tokio::task::block_in_place(|| {
                let mut g = lock(&slot.disk);
                match g.as_ref() {
                    Some(d) => d.check_attach(&req),
                    None => {
                        let mut d = Disk::attach(&shared.store, &req)?;
                        d.set_retention(shared.retention.clone());
                        *g = Some(d);
                        Ok(())
                    }
                }
            });
            if let Err(e) = res {
                tracing::warn!("{e}");
                return Err(refuse(&mut c, e).await);
            }
            (disk, slot)
        }
        Msg::AttachReverse {
            disk,
            disk_id,
            size,
            block_size,
            fork_seq,
            from_seq,
            discard_target_changes,
        } => {
            if !crate::valid_disk_name(&disk) {
                let e = StoreError::BadRequest {
                    disk: disk.clone(),
                    why: "invalid disk name".into(),
                };
                return Err(refuse(&mut c, e).await);
            }
            let req = AttachRequest {
                name: &disk,
                disk_id: crate::hex16(&disk_id),
                size,
                block_size,
                client: &client,
            };
            let slot = shared.slot(&disk);
            let res = tokio::task::block_in_place(|| {
                let mut g = lock(&slot.disk);
                let resumed = g.as_ref().is_some_and(|d| {
                    d.state().replica_device.is_some() && d.state().disk_id == req.disk_id
                });
                if resumed {
                    return g.as_ref().map_or(Ok(()), |d| d.check_attach(&req));
                }
                let mut d = reverse::open(
                    &shared,
                    &req,
                    reverse::ReverseReq {
                        fork_seq,
                        from_seq,
                        discard_target_changes,
                    },
                )?;
                d.set_retention(shared.retention.clone());
                *g = Some(d);
                Ok(())
            });
            if let Err(e) = res {
                tracing::warn!("{e}");
                return Err(refuse(&mut c, e).await);
            }
            (disk, slot)
        }
        m => {
            return Err(ReplError::Protocol(format!(
                "{client} sent {} before Attach",
                m.name()
            )));
        }
    };
    let epoch = slot.epoch.fetch_add(1, Ordering::SeqCst) + 1;
    slot.connected.store(true, Ordering::Relaxed);
    *lock(&slot.error) = None;
    let res = serve_disk(&shared, &slot, epoch, &name, &mut c).await;
    if slot.epoch.load(Ordering::SeqCst) == epoch {
        slot.connected.store(false, Ordering::Relaxed);
        if let Err(e) = &res {
            *lock(&slot.error) = Some(e.to_string());
        }
    }
    res
}

async fn serve_disk<R, W>(
    shared: &Shared,
    slot: &Slot,
    epoch: u64,
    name: &str,
    c: &mut Conn<R, W>,
) -> Result<(), ReplError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let attached = with_disk(slot, |d| {
        let st = d.state();
        Ok(Msg::Attached {
            copy: st.copy.map(|cp| CopyState {
                done: cp.done,
                from_seq: cp.from_seq,
                cursor: cp.cursor,
            }),
            applied: st.applied.map(|a| CycleInfo {
                seq: a.seq,
                cut_time_ns: a.cut_time_ns,
            }),
            expected_seq: d.expected_seq()?,
        })
    });
    match attached {
        Ok(m) => send(&mut c.w, m).await?,
        Err(e) => return Err(refuse(c, e).await),
    }
    tracing::info!(disk = name, client = %c.peer, "attached");
    let size = with_disk(slot, |d| Ok(d.state().size)).unwrap_or(0);
    let mut mode = Mode::Idle;
    let mut rs = store::ResyncSession::default();
    // One reader per session: it keeps its zstd context across frames.
    let mut reader = proto::FrameReader::new();
    loop {
        let frame = match tokio::time::timeout(IDLE_TIMEOUT, reader.read(&mut c.r)).await {
            Ok(Ok(f)) => f,
            Ok(Err(proto::ProtoError::Closed)) => {
                if let Mode::Cycle(s) = mode {
                    s.abandon();
                }
                return Ok(());
            }
            Ok(Err(e)) => {
                if let Mode::Cycle(s) = mode {
                    s.abandon();
                }
                return Err(e.into());
            }
            Err(_) => {
                if let Mode::Cycle(s) = mode {
                    s.abandon();
                }
                return Err(ReplError::Net(format!("{name}: idle for {IDLE_TIMEOUT:?}")));
            }
        };
        if slot.epoch.load(Ordering::SeqCst) != epoch {
            if let Mode::Cycle(s) = mode {
                s.abandon();
            }
            return Err(ReplError::Net(format!(
                "{name}: superseded by a newer session"
            )));
        }
        let wire = frame_wire_estimate(&frame);
        slot.wire_bytes.fetch_add(wire, Ordering::Relaxed);
        mode = match (mode, frame) {
            (m, Frame::Control(Msg::Ping { nonce })) => {
                send(&mut c.w, Msg::Pong { nonce }).await?;
                m
            }
            (m, Frame::Control(Msg::Bye)) => {
                if let Mode::Cycle(s) = m {
                    s.abandon();
                }
                return Ok(());
            }
            (Mode::Idle | Mode::Copy, Frame::Control(Msg::CopyBegin { from_seq, restart })) => {
                match with_disk(slot, |d| d.copy_begin(from_seq, restart)) {
                    Ok(cp) => {
                        send(&mut c.w, Msg::CopyAck { cursor: cp.cursor }).await?;
                        Mode::Copy
                    }
                    Err(e) => return Err(refuse(c, e).await),
                }
            }
            (Mode::Copy, Frame::Data { offset, data }) => {
                if let Err(e) = with_disk(slot, |d| d.write_data(offset, &data)) {
                    return Err(refuse(c, e).await);
                }
                Mode::Copy
            }
            (Mode::Copy, Frame::Zero { offset, len }) => {
                if let Err(e) = with_disk(slot, |d| d.write_zero(offset, len)) {
                    return Err(refuse(c, e).await);
                }
                Mode::Copy
            }
            (Mode::Copy, Frame::Control(Msg::CopyCheckpoint { cursor })) => {
                if let Err(e) = with_disk(slot, |d| d.copy_checkpoint(cursor)) {
                    return Err(refuse(c, e).await);
                }
                send(&mut c.w, Msg::CopyAck { cursor }).await?;
                Mode::Copy
            }
            (Mode::Copy, Frame::Control(Msg::CopyDone { from_seq })) => {
                if let Err(e) = with_disk(slot, |d| d.copy_done(from_seq)) {
                    return Err(refuse(c, e).await);
                }
                tracing::info!(disk = name, "initial copy complete");
                send(&mut c.w, Msg::CopyAck { cursor: size }).await?;
                Mode::Idle
            }
            (m @ (Mode::Idle | Mode::Resync), Frame::Control(Msg::DigestKey { algo, key })) => {
                if let Err(e) = rs.set_key(name, algo, &key) {
                    return Err(refuse(c, e).await);
                }
                m
            }
            (
                m @ (Mode::Idle | Mode::Resync),
                Frame::Control(Msg::DigestReq {
                    req,
                    coarse,
                    ranges,
                }),
            ) => {
                let digests = match with_disk(slot, |d| d.digests(&mut rs, coarse, &ranges)) {
                    Ok(d) => d,
                    Err(e) => return Err(refuse(c, e).await),
                };
                send(&mut c.w, Msg::Digests { req, digests }).await?;
                m
            }
            (Mode::Idle, Frame::Control(Msg::PlannedFailover { seq })) => {
                tracing::info!(disk = name, seq, client = %c.peer, "planned failover requested");
                match tokio::task::block_in_place(|| failover::planned(shared, name, seq)) {
                    Ok(r) => {
                        send(
                            &mut c.w,
                            Msg::FailoverDone {
                                point: r.point.id,
                                cut_time_ns: r.point.cut_time_ns,
                                device: r.device,
                                image: r.image.display().to_string(),
                            },
                        )
                        .await?;
                        return Ok(());
                    }
                    Err(e) => {
                        let msg = format!("{e:#}");
                        tracing::warn!("{msg}");
                        send_error(&mut c.w, ErrorCode::Internal, msg.clone()).await;
                        return Err(ReplError::Refused {
                            peer: c.peer.clone(),
                            code: ErrorCode::Internal,
                            message: msg,
                        });
                    }
                }
            }
            (Mode::Idle, Frame::Control(Msg::ResyncBegin { id, from_seq })) => {
                match with_disk(slot, |d| d.resync_begin(id, from_seq)) {
                    Ok(cursor) => {
                        tracing::info!(disk = name, id, from_seq, cursor, "checksum resync");
                        send(&mut c.w, Msg::ResyncReady { id, cursor }).await?;
                        Mode::Resync
                    }
                    Err(e) => return Err(refuse(c, e).await),
                }
            }
            (Mode::Resync, f @ (Frame::Data { .. } | Frame::Zero { .. })) => {
                if let Err(e) = with_disk(slot, |d| d.resync_put(&mut rs, f)) {
                    return Err(refuse(c, e).await);
                }
                Mode::Resync
            }
            (Mode::Resync, Frame::Control(Msg::ResyncCommit { cursor })) => {
                if let Err(e) = with_disk(slot, |d| d.resync_commit(&mut rs, cursor)) {
                    return Err(refuse(c, e).await);
                }
                send(&mut c.w, Msg::ResyncAck { cursor }).await?;
                Mode::Resync
            }
            (Mode::Resync, Frame::Control(Msg::ResyncDone { id, from_seq })) => {
                if let Err(e) = with_disk(slot, |d| d.resync_done(&mut rs, id, from_seq)) {
                    return Err(refuse(c, e).await);
                }
                tracing::info!(disk = name, id, from_seq, "checksum resync complete");
                send(&mut c.w, Msg::ResyncFinished { id }).await?;
                Mode::Idle
            }
            (Mode::Idle, Frame::Control(begin @ Msg::CycleBegin { .. })) => {
                let Msg::CycleBegin { seq, .. } = begin else {
                    unreachable!("matched above")
                };
                match with_disk(slot, |d| d.cycle_admit(seq)) {
                    Ok(Admit::Duplicate) => Mode::Duplicate(seq),
                    Ok(Admit::Stage) => {
                        match with_disk(slot, |d| d.stage_begin(seq, epoch, &begin)) {
                            Ok(s) => Mode::Cycle(s),
                            Err(e) => return Err(refuse(c, e).await),
                        }
                    }
                    Err(e) => {
                        tracing::error!("{e}");
                        return Err(refuse(c, e).await);
                    }
                }
            }
            (Mode::Cycle(mut s), f @ (Frame::Data { .. } | Frame::Zero { .. })) => {
                // A frame goes into the staging file's 1 MiB buffer: a copy, and a page-cache
                // write once per MiB. Handing the worker thread over (`block_in_place`) for
                // every frame cost more than that (a third of the time of a 4 KiB frame).
                if let Err(e) = s.push(name, size, &f) {
                    s.abandon();
                    return Err(refuse(c, e).await);
                }
                Mode::Cycle(s)
            }
            (Mode::Cycle(s), Frame::Control(end @ Msg::CycleEnd { .. })) => {
                let Msg::CycleEnd { seq, .. } = end else {
                    unreachable!("matched above")
                };
                let path = match with_disk(slot, |d| d.stage_commit(s, &end)) {
                    Ok(p) => p,
                    Err(e) => return Err(refuse(c, e).await),
                };
                send(&mut c.w, Msg::CycleAck { seq }).await?;
                rs.forget_digests();
                match with_disk(slot, |d| d.apply_staged(seq, &path)) {
                    Ok(a) => {
                        send(
                            &mut c.w,
                            Msg::Applied {
                                seq,
                                cut_time_ns: a.cut_time_ns,
                            },
                        )
                        .await?;
                    }
                    Err(e) => {
                        tracing::error!("{e}");
                        return Err(refuse(c, e).await);
                    }
                }
                Mode::Idle
            }
            (
                Mode::Idle,
                Frame::Control(Msg::Verdict {
                    seq,
                    crash_consistent,
                    label,
                }),
            ) => {
                match with_disk(slot, |d| {
                    d.verdict(seq, crash_consistent, label, crate::now_ns())
                }) {
                    Ok(Some(p)) => {
                        tracing::info!(disk = name, point = p.id, kind = ?p.kind, "recovery point");
                    }
                    Ok(None) => {}
                    Err(e) => return Err(refuse(c, e).await),
                }
                Mode::Idle
            }
            (Mode::Duplicate(seq), Frame::Data { .. } | Frame::Zero { .. }) => Mode::Duplicate(seq),
            (Mode::Duplicate(seq), Frame::Control(Msg::CycleEnd { .. })) => {
                send(&mut c.w, Msg::CycleAck { seq }).await?;
                let applied = with_disk(slot, |d| Ok(d.state().applied)).ok().flatten();
                if let Some(a) = applied.filter(|a| a.seq >= seq) {
                    send(
                        &mut c.w,
                        Msg::Applied {
                            seq: a.seq,
                            cut_time_ns: a.cut_time_ns,
                        },
                    )
                    .await?;
                }
                Mode::Idle
            }
            (m, f) => {
                let what = match &m {
                    Mode::Idle => "between cycles",
                    Mode::Copy => "during the copy",
                    Mode::Resync => "during a resync",
                    Mode::Cycle(_) => "inside a cycle",
                    Mode::Duplicate(_) => "inside a duplicate cycle",
                };
                if let Mode::Cycle(s) = m {
                    s.abandon();
                }
                let e = StoreError::BadRequest {
                    disk: name.into(),
                    why: format!("unexpected {} {what}", store::frame_name(&f)),
                };
                return Err(refuse(c, e).await);
            }
        };
    }
}

fn frame_wire_estimate(f: &Frame) -> u64 {
    proto::HEADER_LEN as u64
        + match f {
            Frame::Data { data, .. } => 8 + data.len() as u64,
            Frame::Zero { .. } => 16,
            Frame::Control(_) => 32,
        }
}
