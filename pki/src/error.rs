//! The one error type of the crate. Every variant that concerns a file names it.

use std::path::PathBuf;

/// What went wrong, and with which file.
///
/// Certificate problems found at load time (`Pem`, `Cert`, `KeyMismatch`, `NotIssuedByCa`) are
/// operator errors: retrying does not help, the PKI directory needs fixing (usually by
/// issuing again). Handshake failures are not reported here: they come from rustls on the
/// connection (`rustls::Error::InvalidCertificate`, `NoCertificatesPresented`, ...).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PkiError {
    /// Reading, writing or renaming a file failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A file is not the PEM it should be (garbage, truncated, wrong block type, too big).
    #[error("{}: {reason}", path.display())]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A certificate in a file does not parse as X.509, or is unusable.
    #[error("{}: {reason}", path.display())]
    Cert {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The private key is not the key of the certificate.
    #[error("{}: this private key does not belong to the certificate in {}", key.display(), cert.display())]
    KeyMismatch {
        /// The key file.
        key: PathBuf,
        /// The certificate file.
        cert: PathBuf,
    },
    /// The certificate was not signed by (any) CA in the CA file.
    #[error("{}: not issued by the CA in {}", cert.display(), ca.display())]
    NotIssuedByCa {
        /// The certificate file.
        cert: PathBuf,
        /// The CA file.
        ca: PathBuf,
    },
    /// A file would be overwritten and the caller did not allow it.
    #[error("{}: already exists (use --force to replace it)", path.display())]
    Exists {
        /// The existing file.
        path: PathBuf,
    },
    /// A name, SAN, validity or directory argument is not acceptable.
    #[error("{0}")]
    InvalidInput(String),
    /// rcgen could not make a key or certificate.
    #[error("generating {what}: {source}")]
    Generate {
        /// Which object was being generated.
        what: String,
        /// The cause.
        source: rcgen::Error,
    },
    /// rustls refused the identity when building a TLS configuration.
    #[error("building the TLS configuration for {name}: {source}")]
    Tls {
        /// The identity's name (CN).
        name: String,
        /// The cause.
        source: rustls::Error,
    },
}

impl PkiError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
}
