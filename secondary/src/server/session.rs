//! One agent connection: the version handshake, the attach (or reverse attach) of one
//! disk, then the disk's frames until the connection ends.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use proto::{CopyState, CycleInfo, ErrorCode, Frame, Msg};
use tokio::io::{AsyncRead, AsyncWrite, ReadHalf, WriteHalf};

use super::{IDLE_TIMEOUT, Shared, Slot, failover, lock, reverse};
use crate::store::{self, Admit, AttachRequest, Disk, StoreError};
use base::net::{ReplError, ServerStream, WriteTimeout, recv_control, send, send_error};

fn code_of(e: &StoreError) -> ErrorCode {
    match e {
        StoreError::Unauthorized { .. } | StoreError::NotAllowed { .. } => ErrorCode::Unauthorized,
        StoreError::HistoryFull { .. } => ErrorCode::NoSpace,
        StoreError::Mismatch { .. } => ErrorCode::DiskMismatch,
        // Past a cap the agent can reach: it replaces the cycle with a checksum resync.
        StoreError::BrokenChain { .. } | StoreError::TooLarge { .. } => ErrorCode::BrokenChain,
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
        let mut g = slot.disk.lock();
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

/// `Attach` (`reverse` None) or `AttachReverse` of disk `disk` by `client`: the name checked,
/// the owner binding checked before the disk is opened, the disk opened (created, adopted)
/// into its slot. Refused with an `Error` frame, nothing touched, on any failure.
async fn attach<R, W: AsyncWrite + Unpin>(
    shared: &Shared,
    c: &mut Conn<R, W>,
    client: &str,
    disk: String,
    (disk_id, size, block_size): ([u8; 16], u64, u32),
    reverse: Option<reverse::ReverseReq>,
) -> Result<(String, Arc<Slot>), ReplError> {
    if !base::valid_disk_name(&disk) {
        return Err(refuse(c, invalid_name(&disk)).await);
    }
    let req = AttachRequest {
        name: &disk,
        disk_id: base::hex16(&disk_id),
        size,
        block_size,
        client,
    };
    let slot = shared.slot(&disk);
    let res = tokio::task::block_in_place(|| {
        let mut g = slot.disk.lock();
        let opened = match (reverse, g.as_ref()) {
            (Some(r), current) => reverse::open(shared, current, &req, r)?,
            (None, Some(d)) => {
                d.check_attach(&req)?;
                None
            }
            (None, None) => Some(Disk::attach(&shared.store, &req)?),
        };
        if let Some(mut d) = opened {
            shared.configure(&mut d);
            *g = Some(d);
        }
        Ok(())
    });
    if let Err(e) = res {
        tracing::warn!("{e}");
        return Err(refuse(c, e).await);
    }
    Ok((disk, slot))
}

/// The refusal of a disk name that is not 1–64 of `[A-Za-z0-9._-]`: the name is quoted
/// escaped and capped ([`base::peer_text`]) — it is logged, and a CR/LF in it must not forge
/// a log line.
fn invalid_name(disk: &str) -> StoreError {
    StoreError::BadRequest {
        disk: format!("'{}'", base::peer_text_max(disk, 100)),
        why: "invalid disk name (1-64 of A-Z a-z 0-9 . _ -, not starting with a dot)".into(),
    }
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

/// `recv` (the `Hello` or the `Attach`) within the setup time limit.
async fn setup_phase(
    shared: &Shared,
    client: &str,
    what: &str,
    recv: impl Future<Output = Result<Msg, ReplError>>,
) -> Result<Msg, ReplError> {
    let limit = shared.limits.setup_timeout;
    match tokio::time::timeout(limit, recv).await {
        Ok(r) => r,
        Err(_) => {
            let why = format!("no {what} within {limit:?}");
            shared.tls.stats.timed_out(client, &why);
            Err(ReplError::Net(format!("{client} sent {why}")))
        }
    }
}

pub(super) async fn session(shared: Arc<Shared>, stream: ServerStream) -> Result<(), ReplError> {
    let client = pki::peer_name(stream.get_ref().1)
        .ok_or_else(|| ReplError::Auth("client presented no usable certificate name".into()))?;
    let (r, w): (ReadHalf<ServerStream>, WriteHalf<ServerStream>) = tokio::io::split(stream);
    let mut c = Conn {
        r,
        // Every write to the peer: a peer that stops reading ends the session.
        w: WriteTimeout::new(w, shared.limits.write_timeout),
        peer: client.clone(),
    };
    // Version handshake.
    match setup_phase(&shared, &client, "Hello", recv_control(&mut c.r, &client)).await? {
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
    let (name, slot) =
        match setup_phase(&shared, &client, "Attach", recv_control(&mut c.r, &client)).await? {
            Msg::Attach {
                disk,
                disk_id,
                size,
                block_size,
            } => {
                let geometry = (disk_id, size, block_size);
                attach(&shared, &mut c, &client, disk, geometry, None).await?
            }
            Msg::AttachReverse {
                disk,
                disk_id,
                size,
                block_size,
                fork_seq,
                from_seq,
                // Ignored: what the server's site discards is its operator's decision
                // (`sitrep reverse-accept --discard-local-changes`), never a peer's.
                discard_target_changes: _,
            } => {
                let geometry = (disk_id, size, block_size);
                let r = reverse::ReverseReq { fork_seq, from_seq };
                attach(&shared, &mut c, &client, disk, geometry, Some(r)).await?
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
                    d.verdict(seq, crash_consistent, label, base::now_ns())
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
