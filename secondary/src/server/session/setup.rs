//! A session's setup: the version handshake and the attach (or reverse attach) of its disk,
//! each within the setup time limit.

use std::sync::Arc;

use proto::{ErrorCode, Msg};
use tokio::io::{AsyncBufRead, AsyncWrite};

use super::{Conn, refuse};
use crate::server::{Shared, Slot, reverse};
use crate::store::{AttachRequest, Disk, StoreError};
use base::net::{ReplError, recv_control, send, send_error};

/// The version handshake: `Hello` within the setup time, `Welcome` with the newest version
/// both sides speak (or `VersionMismatch`).
pub(super) async fn hello<R, W>(shared: &Shared, c: &mut Conn<R, W>) -> Result<(), ReplError>
where
    R: AsyncBufRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let client = c.peer.clone();
    let versions =
        match setup_phase(shared, &client, "Hello", recv_control(&mut c.r, &client)).await? {
            Msg::Hello { versions, .. } => versions,
            m => {
                let why = format!("{client} opened with {} instead of Hello", m.name());
                return Err(ReplError::Protocol(why));
            }
        };
    let Some(version) = proto::negotiate(proto::SUPPORTED, &versions) else {
        let msg = format!(
            "no common protocol version: client speaks {versions:?}, server {:?}",
            proto::SUPPORTED
        );
        send_error(&mut c.w, ErrorCode::VersionMismatch, msg.clone()).await;
        return Err(ReplError::Protocol(msg));
    };
    let server = shared.name.clone();
    send(&mut c.w, Msg::Welcome { version, server }).await
}

/// `Attach` or `AttachReverse` within the setup time: the disk's name and slot.
pub(super) async fn attach_phase<R, W>(
    shared: &Shared,
    c: &mut Conn<R, W>,
) -> Result<(String, Arc<Slot>), ReplError>
where
    R: AsyncBufRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let client = c.peer.clone();
    match setup_phase(shared, &client, "Attach", recv_control(&mut c.r, &client)).await? {
        Msg::Attach {
            disk,
            disk_id,
            size,
            block_size,
        } => {
            let geometry = (disk_id, size, block_size);
            attach(shared, c, &client, disk, geometry, None).await
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
            attach(shared, c, &client, disk, geometry, Some(r)).await
        }
        m => Err(ReplError::Protocol(format!(
            "{client} sent {} before Attach",
            m.name()
        ))),
    }
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
