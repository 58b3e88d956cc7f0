//! A host's TLS identity (CA roots, certificate chain, private key) and the mutual-TLS
//! configurations built from it.
//!
//! Policy, fixed here so no caller can weaken it: TLS 1.3 only; the ring provider, passed
//! explicitly (never the process-wide default, which another crate could install); the server
//! requires a client certificate; both sides accept only certificates chaining to the CA in
//! ca.pem. Authorization (which CN may replicate which disk) is the caller's business, using
//! [`peer_name`].

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, CommonState, InconsistentKeys, RootCertStore, ServerConfig};

use crate::info::common_name;
use crate::{CA_CERT_FILE, CERT_FILE, CertInfo, KEY_FILE, PkiError, files};

/// This host's side of mutual TLS: whom to trust and who we are.
pub struct Identity {
    name: String,
    roots: Arc<RootCertStore>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    provider: Arc<CryptoProvider>,
    cert: CertInfo,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("name", &self.name)
            .field("roots", &self.roots.len())
            .field("chain", &self.chain.len())
            .finish_non_exhaustive()
    }
}

impl Clone for Identity {
    fn clone(&self) -> Self {
        Identity {
            name: self.name.clone(),
            roots: Arc::clone(&self.roots),
            chain: self.chain.clone(),
            key: self.key.clone_key(),
            provider: Arc::clone(&self.provider),
            cert: self.cert.clone(),
        }
    }
}

impl Identity {
    /// Loads dir/{ca.pem, cert.pem, key.pem}, checking that the key is the certificate's and
    /// that the certificate was issued by (a CA in) ca.pem. Errors name the file and the
    /// cause. An expired certificate loads (see [`Identity::certificate`]); peers refuse it.
    pub fn load(dir: &Path) -> Result<Identity, PkiError> {
        let ca_path = dir.join(CA_CERT_FILE);
        let cert_path = dir.join(CERT_FILE);
        let key_path = dir.join(KEY_FILE);
        let cas = files::read_certs(&ca_path)?;
        let chain = files::read_certs(&cert_path)?;
        let key = files::read_key(&key_path)?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());

        let mut roots = RootCertStore::empty();
        for (i, ca) in cas.iter().enumerate() {
            roots.add(ca.clone()).map_err(|e| PkiError::Cert {
                path: ca_path.clone(),
                reason: format!("certificate #{} is not usable as a CA: {e}", i + 1),
            })?;
        }
        match CertifiedKey::from_der(chain.clone(), key.clone_key(), &provider) {
            Ok(_) => {}
            Err(rustls::Error::InconsistentKeys(InconsistentKeys::KeyMismatch)) => {
                return Err(PkiError::KeyMismatch {
                    key: key_path,
                    cert: cert_path,
                });
            }
            Err(e) => {
                return Err(PkiError::Pem {
                    path: key_path,
                    reason: format!("not a usable private key: {e}"),
                });
            }
        }
        check_issued_by(&chain, &cas, &cert_path, &ca_path)?;
        let leaf = chain.first().map(|c| c.as_ref()).unwrap_or_default();
        let cert = CertInfo::from_der(leaf).map_err(|reason| PkiError::Cert {
            path: cert_path.clone(),
            reason,
        })?;
        let name = cert.common_name.clone().ok_or_else(|| PkiError::Cert {
            path: cert_path.clone(),
            reason: "the certificate has no common name (CN)".into(),
        })?;
        Ok(Identity {
            name,
            roots: Arc::new(roots),
            chain,
            key,
            provider,
            cert,
        })
    }

    /// This host's name: the CN of its certificate.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// This host's certificate (the leaf of cert.pem), e.g. to warn before it expires.
    pub fn certificate(&self) -> &CertInfo {
        &self.cert
    }

    /// The listening side: TLS 1.3 only, a client certificate chaining to the CA REQUIRED,
    /// presents our certificate.
    pub fn server_config(&self) -> Result<Arc<ServerConfig>, PkiError> {
        let verifier = WebPkiClientVerifier::builder_with_provider(
            Arc::clone(&self.roots),
            Arc::clone(&self.provider),
        )
        .build()
        .map_err(|e| self.tls(rustls::Error::General(e.to_string())))?;
        let cfg = ServerConfig::builder_with_provider(Arc::clone(&self.provider))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| self.tls(e))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.chain.clone(), self.key.clone_key())
            .map_err(|e| self.tls(e))?;
        Ok(Arc::new(cfg))
    }

    /// The dialing side: TLS 1.3 only, the server's certificate must chain to the CA and
    /// name the host dialled (rustls `ServerName`); presents our certificate.
    pub fn client_config(&self) -> Result<Arc<ClientConfig>, PkiError> {
        let cfg = ClientConfig::builder_with_provider(Arc::clone(&self.provider))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| self.tls(e))?
            .with_root_certificates(Arc::clone(&self.roots))
            .with_client_auth_cert(self.chain.clone(), self.key.clone_key())
            .map_err(|e| self.tls(e))?;
        Ok(Arc::new(cfg))
    }

    fn tls(&self, source: rustls::Error) -> PkiError {
        PkiError::Tls {
            name: self.name.clone(),
            source,
        }
    }
}

/// Checks that the top of `chain` is signed by one of `cas` (or is one of them).
fn check_issued_by(
    chain: &[CertificateDer<'_>],
    cas: &[CertificateDer<'_>],
    cert_path: &Path,
    ca_path: &Path,
) -> Result<(), PkiError> {
    let not_issued = || PkiError::NotIssuedByCa {
        cert: cert_path.to_owned(),
        ca: ca_path.to_owned(),
    };
    let top = chain.last().ok_or_else(not_issued)?;
    if cas.contains(top) {
        return Ok(());
    }
    let (_, top) = x509_parser::parse_x509_certificate(top).map_err(|_| not_issued())?;
    let signed = cas.iter().any(|ca| {
        x509_parser::parse_x509_certificate(ca)
            .is_ok_and(|(_, ca)| top.verify_signature(Some(ca.public_key())).is_ok())
    });
    if signed { Ok(()) } else { Err(not_issued()) }
}

/// The CN of the peer's leaf certificate after a completed handshake (None if no cert).
pub fn peer_name(conn: &CommonState) -> Option<String> {
    let leaf = conn.peer_certificates()?.first()?;
    let (_, cert) = x509_parser::parse_x509_certificate(leaf).ok()?;
    common_name(&cert)
}
