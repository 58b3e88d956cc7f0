//! TLS connections and the version handshake, shared by the agent and the server.

use std::sync::Arc;
use std::time::Duration;

use proto::{EncodeOpts, ErrorCode, Frame, Msg};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// The agent's side of a connection.
pub type ClientStream = tokio_rustls::client::TlsStream<TcpStream>;
/// The server's side of a connection.
pub type ServerStream = tokio_rustls::server::TlsStream<TcpStream>;

/// A replication failure, classified the way the retry rules need it.
#[derive(Debug, thiserror::Error)]
pub enum ReplError {
    /// Network trouble: retried with back-off.
    #[error("network: {0}")]
    Net(String),
    /// TLS authentication failed (unknown CA, expired or missing certificate, wrong name):
    /// not retried.
    #[error("authentication failed: {0}")]
    Auth(String),
    /// The peer refused with an error frame.
    #[error("{peer} refused: {message} ({code:?})")]
    Refused {
        /// Who refused.
        peer: String,
        /// Its code.
        code: ErrorCode,
        /// Its message.
        message: String,
    },
    /// The peer broke the protocol.
    #[error("protocol: {0}")]
    Protocol(String),
    /// A local failure (reading the device or the logs, the store...).
    #[error("{0}")]
    Local(String),
}

impl ReplError {
    /// Whether the retry rules say to try again (network, low space, internal trouble) or to
    /// stop and ask the operator (authentication, authorization, broken chain, mismatch).
    #[must_use]
    pub fn recoverable(&self) -> bool {
        match self {
            Self::Net(_) | Self::Local(_) | Self::Protocol(_) => true,
            Self::Auth(_) => false,
            Self::Refused { code, .. } => matches!(code, ErrorCode::NoSpace | ErrorCode::Internal),
        }
    }

    /// What the operator must do to clear this error on disk `disk`, for the errors that are
    /// not retried (`status` shows it as `action` while the disk is critical); None for the
    /// recoverable ones, which clear by themselves.
    #[must_use]
    pub fn operator_action(&self, disk: &str) -> Option<String> {
        let action = match self {
            Self::Net(_) | Self::Local(_) | Self::Protocol(_) => return None,
            Self::Auth(_) => {
                "check the certificates: this agent's (--pki) must be issued by the server's CA \
                 and not expired (`sitrep certs issue`), its ca.pem must be the server's CA, and \
                 the server's certificate must name the address dialed (`--san`)"
                    .to_string()
            }
            Self::Refused { code, .. } => match code {
                ErrorCode::NoSpace | ErrorCode::Internal => return None,
                ErrorCode::Unauthorized => format!(
                    "the disk {disk} on the server is owned by another client: protect this disk \
                     under another --name, or remove that replica on the server (reverse \
                     replication: that site's operator can allow this client with \
                     `sitrep reverse-accept {disk} --from CN`)"
                ),
                ErrorCode::DiskMismatch => format!(
                    "the name {disk} is already used on the server for another disk (id, size or \
                     block size differ): unprotect and protect again under another --name, or \
                     remove the old replica on the server"
                ),
                ErrorCode::BrokenChain => format!(
                    "resync the disk: `sitrep resync {disk} --now` (during an initial copy: \
                     `sitrep unprotect {disk}` and protect it again)"
                ),
                ErrorCode::FailedOver => format!(
                    "the disk failed over to the secondary site: reverse replication, or stop \
                     protecting it here (`sitrep unprotect {disk}`)"
                ),
                ErrorCode::SplitBrain => format!(
                    "both sites wrote the disk since the failover and nothing was overwritten: \
                     to keep this site's disk, the other site's operator discards that site's \
                     changes there (`sitrep reverse-accept {disk} --discard-local-changes` on \
                     its server) — after saving what it wrote, if it matters — then run \
                     `sitrep reverse {disk} --to HOST:PORT` here again"
                ),
                ErrorCode::BadRequest => "a bug in sitrep: report it with the logs of both \
                                          daemons"
                    .to_string(),
                ErrorCode::VersionMismatch => "upgrade the agent or the server: they share no \
                                               protocol version"
                    .to_string(),
            },
        };
        Some(action)
    }
}

impl From<proto::ProtoError> for ReplError {
    fn from(e: proto::ProtoError) -> Self {
        match e {
            proto::ProtoError::Io(io) => io_error(&io),
            proto::ProtoError::Closed => Self::Net("connection closed by the peer".into()),
            other => Self::Protocol(other.to_string()),
        }
    }
}

/// Classifies an I/O error on a TLS stream: a certificate or authentication failure inside
/// (ours or the peer's alert, see [`is_auth_failure`]) is [`ReplError::Auth`], not retried;
/// anything else — other TLS errors included (a damaged record, an unexpected close) — is
/// [`ReplError::Net`], retried.
#[must_use]
pub fn io_error(e: &std::io::Error) -> ReplError {
    if let Some(inner) = e.get_ref()
        && let Some(tls) = inner.downcast_ref::<rustls::Error>()
    {
        return if is_auth_failure(tls) {
            ReplError::Auth(tls.to_string())
        } else {
            ReplError::Net(format!("TLS: {tls}"))
        };
    }
    ReplError::Net(e.to_string())
}

/// Whether a TLS error means the two sides do not accept each other's certificates (or TLS
/// settings), which no retry can fix: our verifier rejected the peer's certificate, or the
/// peer sent an alert that it rejected ours.
///
/// In TLS 1.3 the client finishes its handshake before the server has checked the client's
/// certificate, so a refused agent learns it from the server's alert on its first read:
/// `bad_certificate`, `certificate_expired`, `unknown_ca` and friends, `decrypt_error`
/// (a handshake signature failed — RFC 8446 §6.2; a damaged record is `bad_record_mac`
/// instead), `certificate_required`, or `handshake_failure` / `protocol_version` /
/// `insufficient_security` when no common TLS settings exist. Other alerts and local record
/// errors are transport trouble.
#[must_use]
pub fn is_auth_failure(e: &rustls::Error) -> bool {
    use rustls::AlertDescription as A;
    match e {
        rustls::Error::InvalidCertificate(_)
        | rustls::Error::InvalidCertRevocationList(_)
        | rustls::Error::NoCertificatesPresented
        | rustls::Error::UnsupportedNameType
        | rustls::Error::PeerIncompatible(_) => true,
        rustls::Error::AlertReceived(a) => matches!(
            a,
            A::BadCertificate
                | A::UnsupportedCertificate
                | A::CertificateRevoked
                | A::CertificateExpired
                | A::CertificateUnknown
                | A::UnknownCA
                | A::AccessDenied
                | A::CertificateRequired
                | A::NoCertificate
                | A::BadCertificateStatusResponse
                | A::DecryptError
                | A::HandshakeFailure
                | A::ProtocolVersion
                | A::InsufficientSecurity
        ),
        _ => false,
    }
}

/// Splits `HOST:PORT` (`[v6]:PORT` too) into the host name for TLS and the address.
///
/// # Errors
/// Not of that form.
pub fn split_host_port(addr: &str) -> Result<(String, u16), String> {
    let bad = || format!("'{addr}' is not HOST:PORT");
    let (host, port) = addr.rsplit_once(':').ok_or_else(bad)?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(bad());
    }
    let port: u16 = port.parse().map_err(|_| bad())?;
    Ok((host.to_string(), port))
}

/// Connects to `addr` and completes TLS (the server's certificate must chain to our CA and
/// name the host we dial).
///
/// # Errors
/// [`ReplError::Net`] or [`ReplError::Auth`].
pub async fn connect(
    addr: &str,
    cfg: Arc<rustls::ClientConfig>,
    timeout: Duration,
) -> Result<ClientStream, ReplError> {
    let (host, port) = split_host_port(addr).map_err(ReplError::Local)?;
    let name = ServerName::try_from(host.clone())
        .map_err(|e| ReplError::Local(format!("'{host}' is not a valid server name: {e}")))?;
    let tcp = tokio::time::timeout(timeout, TcpStream::connect((host.as_str(), port)))
        .await
        .map_err(|_| ReplError::Net(format!("connecting to {addr}: timed out")))?
        .map_err(|e| ReplError::Net(format!("connecting to {addr}: {e}")))?;
    let _ = tcp.set_nodelay(true);
    let tls = tokio::time::timeout(
        timeout,
        tokio_rustls::TlsConnector::from(cfg).connect(name, tcp),
    )
    .await
    .map_err(|_| ReplError::Net(format!("TLS handshake with {addr}: timed out")))?
    .map_err(|e| match io_error(&e) {
        ReplError::Auth(m) => ReplError::Auth(format!("{addr}: {m}")),
        other => other,
    })?;
    Ok(tls)
}

/// A writer whose writes fail with [`std::io::ErrorKind::TimedOut`] when the peer accepts no
/// byte for `limit`: a peer that stops reading cannot pin the task that writes to it (nor its
/// buffers, nor the disk it holds) forever. The limit runs while a write, flush or shutdown
/// is pending and restarts at every bit of progress, so a slow but live link is never cut.
#[derive(Debug)]
pub struct WriteTimeout<W> {
    inner: W,
    limit: Duration,
    deadline: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

impl<W> WriteTimeout<W> {
    /// Wraps `inner`.
    pub fn new(inner: W, limit: Duration) -> Self {
        Self {
            inner,
            limit,
            deadline: None,
        }
    }

    /// `r` from the inner writer: progress clears the timer, waiting starts it (and fails
    /// once it fired).
    fn watch<T>(
        &mut self,
        cx: &mut std::task::Context<'_>,
        r: std::task::Poll<std::io::Result<T>>,
    ) -> std::task::Poll<std::io::Result<T>> {
        use std::future::Future as _;
        use std::task::Poll;
        if r.is_ready() {
            self.deadline = None;
            return r;
        }
        let limit = self.limit;
        let sleep = self
            .deadline
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => {
                self.deadline = None;
                Poll::Ready(Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("the peer read nothing for {limit:?}"),
                )))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<W: AsyncWrite + Unpin> AsyncWrite for WriteTimeout<W> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let r = std::pin::Pin::new(&mut self.inner).poll_write(cx, buf);
        self.watch(cx, r)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let r = std::pin::Pin::new(&mut self.inner).poll_flush(cx);
        self.watch(cx, r)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let r = std::pin::Pin::new(&mut self.inner).poll_shutdown(cx);
        self.watch(cx, r)
    }
}

/// Control frames are never compressed.
pub const CONTROL: EncodeOpts = EncodeOpts {
    compress_level: None,
};

/// Sends a control message.
///
/// # Errors
/// The write failed.
pub async fn send<W: AsyncWrite + Unpin>(w: &mut W, m: Msg) -> Result<(), ReplError> {
    proto::write_frame(w, &Frame::Control(m), &CONTROL).await?;
    Ok(())
}

/// Reads the next frame, expecting a control message; an `Error` message becomes
/// [`ReplError::Refused`].
///
/// # Errors
/// Read failure, a data frame, or the peer's error.
pub async fn recv_control<R: AsyncRead + Unpin>(r: &mut R, peer: &str) -> Result<Msg, ReplError> {
    match proto::read_frame(r).await? {
        // The peer chose the text: escaped and capped before it reaches a log or a status.
        Frame::Control(Msg::Error { code, message, .. }) => Err(ReplError::Refused {
            peer: peer.to_string(),
            code,
            message: crate::peer_text(&message),
        }),
        Frame::Control(m) => Ok(m),
        _ => Err(ReplError::Protocol(format!(
            "{peer} sent a data frame where a control message was expected"
        ))),
    }
}

/// Client side of the version handshake; returns the version agreed.
///
/// # Errors
/// The server refused (e.g. no common version) or the connection failed.
pub async fn client_hello<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    agent: &str,
    peer: &str,
) -> Result<u16, ReplError> {
    send(
        s,
        Msg::Hello {
            versions: proto::SUPPORTED.to_vec(),
            agent: agent.to_string(),
        },
    )
    .await?;
    match recv_control(s, peer).await? {
        Msg::Welcome { version, .. } if proto::SUPPORTED.contains(&version) => Ok(version),
        Msg::Welcome { version, .. } => Err(ReplError::Protocol(format!(
            "{peer} chose version {version}, which this agent does not speak"
        ))),
        m => Err(ReplError::Protocol(format!(
            "{peer} answered Hello with {}",
            m.name()
        ))),
    }
}

/// Sends an error frame (best effort) — the caller closes the connection after it.
pub async fn send_error<W: AsyncWrite + Unpin>(w: &mut W, code: ErrorCode, message: String) {
    let _ = send(
        w,
        Msg::Error {
            code,
            message,
            supported: proto::SUPPORTED.to_vec(),
        },
    )
    .await;
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[tokio::test]
    async fn a_write_the_peer_never_reads_times_out() {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let (a, mut b) = tokio::io::duplex(1024);
        let mut w = WriteTimeout::new(a, Duration::from_millis(50));
        w.write_all(&[1u8; 1000]).await.unwrap();
        let e = w.write_all(&[2u8; 4096]).await.unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::TimedOut);
        // A peer that reads keeps the writer going however long the whole write takes.
        let mut w = WriteTimeout::new(w.inner, Duration::from_millis(50));
        let reader = tokio::spawn(async move {
            let mut got = 0usize;
            let mut buf = [0u8; 4096];
            // 1,024 bytes written before the time-out, then the 64 KiB.
            while got < 1024 + 64 * 1024 {
                tokio::time::sleep(Duration::from_millis(1)).await;
                got += b.read(&mut buf).await.unwrap();
            }
            got
        });
        w.write_all(&[3u8; 64 * 1024]).await.unwrap();
        assert!(reader.await.unwrap() >= 64 * 1024);
    }

    #[test]
    fn host_port() {
        assert_eq!(
            split_host_port("10.0.0.2:9443").unwrap(),
            ("10.0.0.2".into(), 9443)
        );
        assert_eq!(split_host_port("[::1]:1").unwrap(), ("::1".into(), 1));
        assert!(split_host_port("nohost").is_err());
        assert!(split_host_port(":9443").is_err());
    }

    fn tls_io(e: rustls::Error) -> std::io::Error {
        // How tokio-rustls surfaces a TLS failure.
        std::io::Error::new(std::io::ErrorKind::InvalidData, e)
    }

    #[test]
    fn certificate_failures_are_not_retried() {
        use rustls::{AlertDescription as A, CertificateError as C};
        for e in [
            rustls::Error::InvalidCertificate(C::UnknownIssuer),
            rustls::Error::InvalidCertificate(C::Expired),
            rustls::Error::NoCertificatesPresented,
            rustls::Error::AlertReceived(A::BadCertificate),
            rustls::Error::AlertReceived(A::UnknownCA),
            rustls::Error::AlertReceived(A::CertificateExpired),
            rustls::Error::AlertReceived(A::CertificateRequired),
            rustls::Error::AlertReceived(A::DecryptError),
        ] {
            let r = io_error(&tls_io(e.clone()));
            assert!(matches!(r, ReplError::Auth(_)), "{e:?} → {r:?}");
            assert!(!r.recoverable(), "{e:?}");
            assert!(r.operator_action("d").unwrap().contains("certificate"));
            assert!(r.to_string().starts_with("authentication failed"), "{r}");
        }
    }

    #[test]
    fn other_tls_and_io_failures_are_retried() {
        use rustls::AlertDescription as A;
        for e in [
            rustls::Error::DecryptError,
            rustls::Error::AlertReceived(A::BadRecordMac),
            rustls::Error::AlertReceived(A::InternalError),
            rustls::Error::AlertReceived(A::CloseNotify),
            rustls::Error::PeerSentOversizedRecord,
        ] {
            let r = io_error(&tls_io(e.clone()));
            assert!(matches!(r, ReplError::Net(_)), "{e:?} → {r:?}");
            assert!(r.recoverable(), "{e:?}");
            assert_eq!(r.operator_action("d"), None);
        }
        let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        assert!(io_error(&reset).recoverable());
    }

    #[test]
    fn refusals_map_to_an_operator_action() {
        let refused = |code| ReplError::Refused {
            peer: "b:9443".into(),
            code,
            message: "no".into(),
        };
        for (code, recoverable, says) in [
            (ErrorCode::NoSpace, true, None),
            (ErrorCode::Internal, true, None),
            (ErrorCode::Unauthorized, false, Some("another client")),
            (ErrorCode::DiskMismatch, false, Some("another disk")),
            (ErrorCode::BrokenChain, false, Some("sitrep resync d --now")),
            (ErrorCode::FailedOver, false, Some("reverse replication")),
            (
                ErrorCode::SplitBrain,
                false,
                Some("sitrep reverse-accept d --discard-local-changes"),
            ),
            (ErrorCode::BadRequest, false, Some("report it")),
            (ErrorCode::VersionMismatch, false, Some("upgrade")),
        ] {
            let e = refused(code);
            assert_eq!(e.recoverable(), recoverable, "{code:?}");
            let action = e.operator_action("d");
            match says {
                None => assert_eq!(action, None, "{code:?}"),
                Some(s) => assert!(
                    action.as_deref().is_some_and(|a| a.contains(s)),
                    "{code:?}: {action:?}"
                ),
            }
        }
    }
}
