//! The server's TLS port (docs/architecture.md, *Connections and caps*): accept with back-off
//! ([`base::listen::accept`]), a cap on TLS handshakes in progress and then on sessions —
//! each in total and per source address — a time limit on the handshake, then the session.
//!
//! A connection past a cap is closed at once, before any TLS work: a flood of idle
//! connections costs the server at most `handshakes_total` descriptors, each for at most
//! `handshake_timeout`, and a flooding address at most `handshakes_per_ip` of them.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

use super::Shared;
use super::session::session;
use base::listen::{self, Gate, Limits, ListenerStats, Pass};
use base::net;
use base::status::ListenerStatus;

/// The TLS port's gates and counters.
#[derive(Debug)]
pub(super) struct TlsGates {
    /// Connections in the TLS handshake.
    handshakes: Arc<Gate>,
    /// Connections past TLS.
    sessions: Arc<Gate>,
    /// Counters and the rate-limited log.
    pub(super) stats: ListenerStats,
}

impl TlsGates {
    pub(super) fn new(l: &Limits) -> Self {
        Self {
            handshakes: Gate::new(l.handshakes_total, l.handshakes_per_ip),
            sessions: Gate::new(l.sessions_total, l.sessions_per_ip),
            stats: ListenerStats::new("TLS port"),
        }
    }

    /// The counters for `status` (`listeners`, name `tls`).
    pub(super) fn status(&self) -> ListenerStatus {
        let handshaking = self.handshakes.open();
        let mut s = self
            .stats
            .status(handshaking + self.sessions.open(), handshaking);
        s.name = "tls".into();
        s
    }
}

/// Accepts agents until the runtime stops.
pub(super) async fn serve(sh: Arc<Shared>, tcp: TcpListener, tls: TlsAcceptor) {
    loop {
        let (stream, peer) = listen::accept(&sh.tls.stats, || tcp.accept()).await;
        let pass = match sh.tls.handshakes.try_enter(Some(peer.ip())) {
            Ok(p) => p,
            Err(full) => {
                sh.tls.stats.refused(peer, "TLS handshake", full);
                continue;
            }
        };
        tokio::spawn(connection(sh.clone(), tls.clone(), stream, peer, pass));
    }
}

/// One connection: the TLS handshake within the time limit, a session slot, the session.
async fn connection(
    sh: Arc<Shared>,
    tls: TlsAcceptor,
    tcp: TcpStream,
    peer: SocketAddr,
    handshake: Pass,
) {
    let _ = tcp.set_nodelay(true);
    let stream = match tokio::time::timeout(sh.limits.handshake_timeout, tls.accept(tcp)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            sh.tls.stats.handshake_failed(peer, net::io_error(&e));
            return;
        }
        Err(_) => {
            sh.tls.stats.timed_out(
                peer,
                &format!(
                    "TLS handshake not complete after {:?}",
                    sh.limits.handshake_timeout
                ),
            );
            return;
        }
    };
    drop(handshake);
    let _session = match sh.tls.sessions.try_enter(Some(peer.ip())) {
        Ok(p) => p,
        Err(full) => {
            sh.tls.stats.refused(peer, "session", full);
            return;
        }
    };
    match session(sh.clone(), stream).await {
        Ok(()) => {}
        // A refusal names the disk and the cause (it is also the disk's status): logged.
        Err(e @ net::ReplError::Refused { .. }) => tracing::warn!(%peer, "session ended: {e}"),
        // Network trouble and protocol breaches — what a flood of connections produces —
        // are rate-limited like the port's other warnings.
        Err(e) => sh
            .tls
            .stats
            .log
            .warn("session-ended", format_args!("{peer}: session ended: {e}")),
    }
}
