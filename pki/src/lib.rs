//! sitrep's private CA and mutual-TLS configurations.
//!
//! A PKI directory holds:
//!
//! | file     | what                                             | mode |
//! |----------|--------------------------------------------------|------|
//! | ca.pem   | the CA certificate(s) this host trusts           | 0644 |
//! | ca.key   | the CA's private key — only in the `init` dir    | 0600 |
//! | cert.pem | this host's certificate chain, leaf first        | 0644 |
//! | key.pem  | this host's private key (PKCS#8 PEM)             | 0600 |
//!
//! Workflow: the secondary runs [`init`] (a new CA and its own host certificate), then
//! [`issue`]s a directory for each primary, which is copied there. Each side loads its
//! directory with [`Identity::load`] and gets its rustls configurations from it. The
//! certificate of the listening side must carry, as a SAN, the host name or address the other
//! side dials.
//!
//! Files are written atomically (temp file + fsync + rename) and existing files are never
//! replaced unless [`CertOptions::force`] is set.

mod error;
mod files;
mod identity;
mod info;
mod issue;

pub use error::PkiError;
pub use identity::{Identity, peer_name};
pub use info::{CertInfo, DirReport, describe};
pub use issue::{
    CA_MIN_DAYS, CertOptions, DEFAULT_DAYS, InitReport, IssueReport, MAX_DAYS, MAX_NAME_LEN, init,
    init_with, issue, issue_with,
};

/// The CA certificate(s) this host trusts.
pub const CA_CERT_FILE: &str = "ca.pem";
/// The CA's private key (only in the directory made by [`init`]).
pub const CA_KEY_FILE: &str = "ca.key";
/// This host's certificate chain, leaf first.
pub const CERT_FILE: &str = "cert.pem";
/// This host's private key.
pub const KEY_FILE: &str = "key.pem";
