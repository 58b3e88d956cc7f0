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

/// Classifies an I/O error on a TLS stream: a rustls error inside means authentication.
#[must_use]
pub fn io_error(e: &std::io::Error) -> ReplError {
    if let Some(inner) = e.get_ref()
        && let Some(tls) = inner.downcast_ref::<rustls::Error>()
    {
        return ReplError::Auth(tls.to_string());
    }
    ReplError::Net(e.to_string())
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
        Frame::Control(Msg::Error { code, message, .. }) => Err(ReplError::Refused {
            peer: peer.to_string(),
            code,
            message,
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
}
