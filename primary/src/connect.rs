//! How a disk's session reaches its server: the [`Connect`] seam.
//!
//! The daemon dials over mutual TLS ([`TlsConnect`]); a test hands the session one end of an
//! in-memory duplex whose other end the real server serves in the same process. Above this
//! seam the session sees only a byte stream ([`BoxStream`]) and the server's certificate
//! name, so the protocol code is the same in both.
//!
//! Alternative rejected: making the session generic over the stream type. Every phase takes
//! a `&mut Session`, so a type parameter would spread to all of them for one virtual call
//! per read or write — nothing next to the TLS record work under it.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};

use base::net::{self, ReplError};

/// How long dialing and the TLS handshake may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A byte stream to the server.
pub trait Stream: AsyncRead + AsyncWrite + Send + Unpin {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin> Stream for T {}

/// The session's connection, whatever carries it.
pub type BoxStream = Box<dyn Stream>;

/// A connection made ([`Connect::connect`]).
pub struct Connected {
    /// The byte stream (the protocol starts with the agent's `Hello`).
    pub stream: BoxStream,
    /// The server's certificate name, if it has a usable one (recorded for reverse
    /// replication after a failover).
    pub server_name: Option<String>,
}

/// A connection being made.
pub type Connecting<'a> = Pin<Box<dyn Future<Output = Result<Connected, ReplError>> + Send + 'a>>;

/// Makes a disk's connection to its server `to` (`HOST:PORT`).
pub trait Connect: Send + Sync {
    /// Connects to `to`. Errors are the session's: [`ReplError::Net`] and
    /// [`ReplError::Auth`] as dialing reports them (retried or not by their type).
    fn connect<'a>(&'a self, to: &'a str) -> Connecting<'a>;
}

/// The daemon's connector: TCP, then TLS with the agent's client certificate.
pub struct TlsConnect {
    cfg: Arc<rustls::ClientConfig>,
}

impl TlsConnect {
    /// A connector presenting `cfg`'s client certificate.
    #[must_use]
    pub fn new(cfg: Arc<rustls::ClientConfig>) -> Self {
        Self { cfg }
    }
}

impl Connect for TlsConnect {
    fn connect<'a>(&'a self, to: &'a str) -> Connecting<'a> {
        Box::pin(async move {
            let stream = net::connect(to, self.cfg.clone(), CONNECT_TIMEOUT).await?;
            let server_name = pki::peer_name(stream.get_ref().1);
            Ok(Connected {
                stream: Box::new(stream),
                server_name,
            })
        })
    }
}
