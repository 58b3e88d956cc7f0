//! What a certificate says, for people (`sitrep certs show`) and for `--json`.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::Serialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::time::ASN1Time;

use crate::{CA_CERT_FILE, CA_KEY_FILE, CERT_FILE, Identity, PkiError, files};

/// The facts of one certificate.
///
/// JSON field names are a contract for scripts: add fields, never rename them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CertInfo {
    /// The subject's common name (CN), if it has one.
    pub common_name: Option<String>,
    /// The whole subject DN, e.g. `CN=siteb`.
    pub subject: String,
    /// Subject alternative names, `DNS:name` or `IP:address`.
    pub sans: Vec<String>,
    /// The issuer's DN.
    pub issuer: String,
    /// Serial number in hex, `:`-separated.
    pub serial: String,
    /// Start of validity, RFC 3339 UTC.
    pub not_before: String,
    /// End of validity, RFC 3339 UTC.
    pub not_after: String,
    /// End of validity, seconds since the Unix epoch.
    pub not_after_unix: i64,
    /// Whether `not_after` had passed (or `not_before` not yet come) when this was read.
    pub expired: bool,
    /// Whether this is a CA certificate (basic constraints cA=true).
    pub is_ca: bool,
    /// SHA-256 of the DER certificate, upper-case hex, `:`-separated (as `openssl x509
    /// -fingerprint -sha256` prints it).
    pub sha256_fingerprint: String,
}

impl CertInfo {
    /// Parses a DER certificate.
    pub fn from_der(der: &[u8]) -> Result<CertInfo, String> {
        let (_, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| format!("not valid X.509: {e}"))?;
        Ok(Self::from_parsed(&cert, der))
    }

    fn from_parsed(cert: &X509Certificate<'_>, der: &[u8]) -> CertInfo {
        let validity = cert.validity();
        let now = ASN1Time::now();
        CertInfo {
            common_name: common_name(cert),
            subject: cert.subject().to_string(),
            sans: sans(cert),
            issuer: cert.issuer().to_string(),
            serial: cert.raw_serial_as_string(),
            not_before: rfc3339(validity.not_before.to_datetime()),
            not_after: rfc3339(validity.not_after.to_datetime()),
            not_after_unix: validity.not_after.timestamp(),
            expired: now > validity.not_after || now < validity.not_before,
            is_ca: cert.is_ca(),
            sha256_fingerprint: fingerprint(der),
        }
    }
}

/// The CN of a certificate (the first one, if several).
pub(crate) fn common_name(cert: &X509Certificate<'_>) -> Option<String> {
    cert.subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_owned)
}

fn sans(cert: &X509Certificate<'_>) -> Vec<String> {
    let Ok(Some(ext)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    ext.value
        .general_names
        .iter()
        .map(|n| match n {
            GeneralName::DNSName(d) => format!("DNS:{d}"),
            GeneralName::IPAddress(b) => match <[u8; 4]>::try_from(*b) {
                Ok(v4) => format!("IP:{}", IpAddr::from(v4)),
                Err(_) => match <[u8; 16]>::try_from(*b) {
                    Ok(v6) => format!("IP:{}", IpAddr::from(v6)),
                    Err(_) => format!("IP:<{} bytes>", b.len()),
                },
            },
            other => format!("{other}"),
        })
        .collect()
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339)
        .unwrap_or_else(|_| t.unix_timestamp().to_string())
}

/// SHA-256 of `der`, computed with the ring provider's hash (no extra hashing crate).
fn fingerprint(der: &[u8]) -> String {
    let Some(suite) = rustls::crypto::ring::cipher_suite::TLS13_AES_128_GCM_SHA256.tls13() else {
        return String::new();
    };
    let digest = suite.common.hash_provider.hash(der);
    let mut out = String::with_capacity(digest.as_ref().len() * 3);
    for (i, b) in digest.as_ref().iter().enumerate() {
        if i > 0 {
            out.push(':');
        }
        let _ = write!(out, "{b:02X}");
    }
    out
}

/// What a PKI directory holds (`sitrep certs show`).
#[derive(Debug, Clone, Serialize)]
pub struct DirReport {
    /// The directory.
    pub dir: PathBuf,
    /// The trusted CA certificates (ca.pem).
    pub ca: Vec<CertInfo>,
    /// This host's certificate chain (cert.pem), leaf first; empty if cert.pem is missing.
    pub chain: Vec<CertInfo>,
    /// Whether the directory holds the CA's private key (ca.key): it can issue certificates.
    pub has_ca_key: bool,
    /// Why the directory would not work as a TLS identity (empty: it loads, and the
    /// certificate is within its validity).
    pub problems: Vec<String>,
}

/// Describes the PKI directory `dir`. Fails only if ca.pem cannot be read; other problems
/// are listed in [`DirReport::problems`].
pub fn describe(dir: &Path) -> Result<DirReport, PkiError> {
    let ca_path = dir.join(CA_CERT_FILE);
    let ca = infos(&ca_path)?;
    let mut problems = Vec::new();
    let cert_path = dir.join(CERT_FILE);
    let chain = if cert_path.exists() {
        infos(&cert_path).unwrap_or_else(|e| {
            problems.push(e.to_string());
            Vec::new()
        })
    } else {
        problems.push(format!("{}: missing", cert_path.display()));
        Vec::new()
    };
    if problems.is_empty()
        && let Err(e) = Identity::load(dir)
    {
        problems.push(e.to_string());
    }
    for c in ca.iter().chain(chain.first()) {
        if c.expired {
            problems.push(format!(
                "{} is outside its validity ({} .. {})",
                c.subject, c.not_before, c.not_after
            ));
        }
    }
    Ok(DirReport {
        dir: dir.to_owned(),
        ca,
        chain,
        has_ca_key: dir.join(CA_KEY_FILE).exists(),
        problems,
    })
}

fn infos(path: &Path) -> Result<Vec<CertInfo>, PkiError> {
    files::read_certs(path)?
        .iter()
        .map(|der| {
            CertInfo::from_der(der).map_err(|reason| PkiError::Cert {
                path: path.to_owned(),
                reason,
            })
        })
        .collect()
}
