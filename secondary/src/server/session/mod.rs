//! One agent connection: the version handshake, the attach (or reverse attach) of one
//! disk, then the disk's frames until the connection ends.
//!
//! The disk's frames are served by a [`disk::DiskSession`]: one method per (mode, frame) in
//! [`copy`], [`cycle`] and [`resync`]; the mode is a value the frame loop owns, and the cycle
//! being staged sits in it behind a guard ([`cycle::StagedCycle`]) whose `Drop` removes the
//! staging file. So however the session ends — a refusal, a failed write of a reply, an idle
//! timeout, a newer session, the task cancelled — a partly received cycle leaves nothing
//! behind. (The loop this replaced called `abandon` by hand on each way out, and one early
//! `?` on the Pong skipped it: the temp file stayed until a restart.)

mod copy;
mod cycle;
mod disk;
pub(crate) mod group;
mod policy;
mod resync;
mod setup;
mod staged;

use std::sync::Arc;
use std::sync::atomic::Ordering;

use proto::ErrorCode;
use tokio::io::{AsyncRead, AsyncWrite};

use super::{Shared, Slot, lock};
use crate::store::{Disk, StoreError};
use base::net::{ReplError, ServerStream, WriteTimeout, send_error};
use setup::{attach_phase, hello};

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

/// The connection to one agent: its two halves and its certificate name.
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

/// `r`, or its error sent to the peer as the refusal that ends the session.
async fn or_refuse<T, R, W: AsyncWrite + Unpin>(
    c: &mut Conn<R, W>,
    r: Result<T, StoreError>,
) -> Result<T, ReplError> {
    match r {
        Ok(v) => Ok(v),
        Err(e) => Err(refuse(c, e).await),
    }
}

/// Serves one agent's TLS connection until it ends, as [`serve`] for the name its
/// certificate carries.
///
/// # Errors
/// No usable certificate name, or why the session ended, if not cleanly.
pub(super) async fn session(shared: Arc<Shared>, stream: ServerStream) -> Result<(), ReplError> {
    let client = pki::peer_name(stream.get_ref().1)
        .ok_or_else(|| ReplError::Auth("client presented no usable certificate name".into()))?;
    serve(shared, client, stream).await
}

/// Serves agent `client` on `stream` until it ends: the handshake, the attach, the disk's
/// frames. Generic over the stream, so a test can run it over an in-memory duplex. The slot
/// records whether the disk is connected and why its last session ended (unless a newer
/// session of the disk took over).
///
/// # Errors
/// Why the session ended, if not cleanly.
pub(super) async fn serve<S>(
    shared: Arc<Shared>,
    client: String,
    stream: S,
) -> Result<(), ReplError>
where
    S: AsyncRead + AsyncWrite,
{
    let (r, w) = tokio::io::split(stream);
    let mut c = Conn {
        // Buffered so that the session can wait for the next frame without consuming any of
        // it (`fill_buf` is cancel-safe) while it also waits for a group round to send.
        r: tokio::io::BufReader::new(r),
        // Every write to the peer: a peer that stops reading ends the session.
        w: WriteTimeout::new(w, shared.limits.write_timeout),
        peer: client.clone(),
    };
    hello(&shared, &mut c).await?;
    let (name, slot) = attach_phase(&shared, &mut c).await?;
    let epoch = slot.epoch.fetch_add(1, Ordering::SeqCst) + 1;
    slot.connected.store(true, Ordering::Relaxed);
    *lock(&slot.error) = None;
    let res = disk::DiskSession::new(&shared, &slot, epoch, &name, &mut c)
        .run()
        .await;
    if slot.epoch.load(Ordering::SeqCst) == epoch {
        slot.connected.store(false, Ordering::Relaxed);
        if let Err(e) = &res {
            *lock(&slot.error) = Some(e.to_string());
        }
    }
    res
}
