//! Making certificates: the CA and its host certificates (`init`), and peer certificates
//! signed by an existing CA (`issue`).
//!
//! Design: one small private CA per secondary site. The secondary runs `init`, which makes
//! the CA and the secondary's own host certificate; it then `issue`s one certificate per
//! primary. Both sides trust only that CA, and each side checks that the other's
//! certificate chains to it. Host certificates carry both EKUs (serverAuth and clientAuth)
//! because reverse replication swaps who dials whom. Keys are ECDSA P-256: small,
//! fast handshakes, supported by every TLS 1.3 stack. The rejected alternative, one
//! self-signed certificate per host pinned by fingerprint on the other side, needs a
//! re-pin on every renewal and has no notion of expiry of trust.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256,
    PublicKeyData, SanType,
};
use serde::Serialize;
use time::{Duration, OffsetDateTime};

use crate::files::{self, CERT_MODE, KEY_MODE};
use crate::{CA_CERT_FILE, CA_KEY_FILE, CERT_FILE, CertInfo, KEY_FILE, PkiError};

/// Default validity of a host certificate, in days (the CA/Browser Forum's old maximum).
pub const DEFAULT_DAYS: u32 = 825;
/// Largest accepted validity, in days (100 years).
pub const MAX_DAYS: u32 = 36_500;
/// A CA made by `init` is valid for at least this many days, so that it outlives the host
/// certificates it issues and their renewals.
pub const CA_MIN_DAYS: u32 = 3650;
/// Longest accepted host name (the X.509 upper bound for a common name).
pub const MAX_NAME_LEN: usize = 64;

/// How to make a certificate, beyond the host's name.
#[derive(Debug, Clone)]
pub struct CertOptions {
    /// Extra subject alternative names: IP addresses become IP SANs, others DNS SANs. The
    /// server's certificate must carry the host the client dials (`--to HOST:PORT`).
    pub sans: Vec<String>,
    /// Validity in days, from now (1..=[`MAX_DAYS`]).
    pub days: u32,
    /// Replace existing files instead of refusing.
    pub force: bool,
    /// For tests: make the host certificate already expired (valid from `days + 1` days
    /// ago until yesterday).
    pub expired: bool,
}

impl Default for CertOptions {
    /// No extra SANs, [`DEFAULT_DAYS`], not forcing, not expired.
    fn default() -> Self {
        CertOptions::new(&[], DEFAULT_DAYS)
    }
}

impl CertOptions {
    /// Options with these SANs and validity, not forcing, not expired.
    pub fn new(sans: &[String], days: u32) -> CertOptions {
        CertOptions {
            sans: sans.to_vec(),
            days,
            force: false,
            expired: false,
        }
    }
}

/// What `init` made.
#[derive(Debug, Clone, Serialize)]
pub struct InitReport {
    /// The PKI directory.
    pub dir: PathBuf,
    /// The new CA certificate (ca.pem).
    pub ca: CertInfo,
    /// This host's new certificate (cert.pem).
    pub cert: CertInfo,
    /// The files written.
    pub files: Vec<PathBuf>,
}

/// What `issue` made.
#[derive(Debug, Clone, Serialize)]
pub struct IssueReport {
    /// The directory written, to be copied to the peer.
    pub out_dir: PathBuf,
    /// The CA that signed it (copied to out_dir/ca.pem).
    pub ca: CertInfo,
    /// The peer's new certificate (cert.pem).
    pub cert: CertInfo,
    /// The files written.
    pub files: Vec<PathBuf>,
}

/// Files in a PKI directory: ca.pem (CA certificate), ca.key (CA private key; only in the
/// directory made by `init`), cert.pem (this host's certificate chain), key.pem (its key,
/// mode 0600).
///
/// Makes a new CA and this host's certificate (CN `name`) in `dir`. Refuses to replace
/// existing files; see [`init_with`] for more options.
pub fn init(dir: &Path, name: &str, sans: &[String], days: u32) -> Result<InitReport, PkiError> {
    init_with(dir, name, &CertOptions::new(sans, days))
}

/// [`init`] with all options.
pub fn init_with(dir: &Path, name: &str, opts: &CertOptions) -> Result<InitReport, PkiError> {
    let host_sans = check_request(name, opts)?;
    let paths = [CA_CERT_FILE, CA_KEY_FILE, CERT_FILE, KEY_FILE].map(|f| dir.join(f));
    files::check_absent(&paths, opts.force)?;

    let ca_key = new_key("the CA key")?;
    let ca_params = ca_params(name, &ca_key, opts.days.max(CA_MIN_DAYS));
    let ca_cert = ca_params
        .self_signed(&ca_key)
        .map_err(|e| generate(format!("the CA certificate for {name}"), e))?;
    let issuer = Issuer::from_params(&ca_params, &ca_key);
    let (cert, key) = host_cert(name, host_sans, opts, &issuer, ca_params.not_after)?;

    files::ensure_dir(dir)?;
    let [ca_pem_path, ca_key_path, cert_path, key_path] = &paths;
    files::write_atomic(ca_key_path, ca_key.serialize_pem().as_bytes(), KEY_MODE)?;
    files::write_atomic(ca_pem_path, ca_cert.pem().as_bytes(), CERT_MODE)?;
    files::write_atomic(key_path, key.serialize_pem().as_bytes(), KEY_MODE)?;
    files::write_atomic(cert_path, cert.pem().as_bytes(), CERT_MODE)?;
    Ok(InitReport {
        dir: dir.to_owned(),
        ca: info(ca_cert.der(), ca_pem_path)?,
        cert: info(cert.der(), cert_path)?,
        files: paths.to_vec(),
    })
}

/// Issues a certificate for a peer named `name` signed by the CA in `ca_dir`, writing
/// out_dir/{ca.pem, cert.pem, key.pem} (no CA key). Refuses to replace existing files; see
/// [`issue_with`] for more options.
pub fn issue(
    ca_dir: &Path,
    name: &str,
    sans: &[String],
    days: u32,
    out_dir: &Path,
) -> Result<IssueReport, PkiError> {
    issue_with(ca_dir, name, &CertOptions::new(sans, days), out_dir)
}

/// [`issue`] with all options.
pub fn issue_with(
    ca_dir: &Path,
    name: &str,
    opts: &CertOptions,
    out_dir: &Path,
) -> Result<IssueReport, PkiError> {
    let host_sans = check_request(name, opts)?;
    if out_dir.join(CA_KEY_FILE).exists() || same_dir(ca_dir, out_dir) {
        return Err(PkiError::InvalidInput(format!(
            "{}: holds a CA key; issue the peer's certificate into a new directory (--out)",
            out_dir.display()
        )));
    }
    let paths = [CA_CERT_FILE, CERT_FILE, KEY_FILE].map(|f| out_dir.join(f));
    files::check_absent(&paths, opts.force)?;

    let ca = LoadedCa::load(ca_dir)?;
    let issuer = Issuer::from_ca_cert_der(&ca.der.as_slice().into(), ca.key)
        .map_err(|e| generate(format!("an issuer from {}", ca.pem_path.display()), e))?;
    let (cert, key) = host_cert(name, host_sans, opts, &issuer, ca.not_after)?;

    files::ensure_dir(out_dir)?;
    let [ca_pem_path, cert_path, key_path] = &paths;
    files::write_atomic(ca_pem_path, &ca.pem, CERT_MODE)?;
    files::write_atomic(key_path, key.serialize_pem().as_bytes(), KEY_MODE)?;
    files::write_atomic(cert_path, cert.pem().as_bytes(), CERT_MODE)?;
    Ok(IssueReport {
        out_dir: out_dir.to_owned(),
        ca: info(&ca.der, &ca.pem_path)?,
        cert: info(cert.der(), cert_path)?,
        files: paths.to_vec(),
    })
}

/// The CA of an `init` directory, checked: ca.pem is a CA, within validity, and ca.key is
/// its key.
struct LoadedCa {
    pem_path: PathBuf,
    pem: Vec<u8>,
    der: Vec<u8>,
    key: KeyPair,
    not_after: OffsetDateTime,
}

impl LoadedCa {
    fn load(dir: &Path) -> Result<LoadedCa, PkiError> {
        let pem_path = dir.join(CA_CERT_FILE);
        let key_path = dir.join(CA_KEY_FILE);
        let pem = files::read_capped(&pem_path)?;
        let certs = files::read_certs(&pem_path)?;
        let der = certs.first().map(|c| c.to_vec()).unwrap_or_default();
        let bad = |reason: String| PkiError::Cert {
            path: pem_path.clone(),
            reason,
        };
        let (_, cert) = x509_parser::parse_x509_certificate(&der)
            .map_err(|e| bad(format!("not valid X.509: {e}")))?;
        if !cert.is_ca() {
            return Err(bad(
                "not a CA certificate (basic constraints cA is false)".into()
            ));
        }
        if !cert.validity().is_valid() {
            return Err(bad(format!(
                "the CA certificate is outside its validity ({} .. {}); make a new CA",
                cert.validity().not_before,
                cert.validity().not_after
            )));
        }
        let key_text =
            String::from_utf8(files::read_capped(&key_path)?).map_err(|_| PkiError::Pem {
                path: key_path.clone(),
                reason: "not a PEM private key file (not text)".into(),
            })?;
        let key = KeyPair::from_pem(&key_text).map_err(|e| PkiError::Pem {
            path: key_path.clone(),
            reason: format!("not a usable PEM private key: {e}"),
        })?;
        if key.subject_public_key_info() != cert.public_key().raw {
            return Err(PkiError::KeyMismatch {
                key: key_path,
                cert: pem_path,
            });
        }
        let not_after = cert.validity().not_after.to_datetime();
        Ok(LoadedCa {
            pem_path,
            pem,
            der,
            key,
            not_after,
        })
    }
}

/// Makes a host key and certificate signed by `issuer`.
fn host_cert(
    name: &str,
    sans: Vec<SanType>,
    opts: &CertOptions,
    issuer: &Issuer<'_, impl rcgen::SigningKey>,
    ca_not_after: OffsetDateTime,
) -> Result<(Certificate, KeyPair), PkiError> {
    let key = new_key(&format!("the key of {name}"))?;
    let mut p = CertificateParams::default();
    p.distinguished_name = dn(name);
    p.subject_alt_names = sans;
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    p.use_authority_key_identifier_extension = true;
    (p.not_before, p.not_after) = validity(opts.days, opts.expired);
    // A certificate cannot be trusted longer than its CA is.
    p.not_after = p.not_after.min(ca_not_after);
    let cert = p
        .signed_by(&key, issuer)
        .map_err(|e| generate(format!("the certificate of {name}"), e))?;
    Ok((cert, key))
}

fn ca_params(name: &str, key: &KeyPair, days: u32) -> CertificateParams {
    let mut p = CertificateParams::default();
    // The key id in the CN keeps two CAs made for the same site name apart, in people's
    // eyes and in issuer-name lookups.
    let id: String = p
        .key_identifier(key)
        .iter()
        .take(4)
        .map(|b| format!("{b:02x}"))
        .collect();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "sitrep");
    dn.push(DnType::CommonName, format!("sitrep CA {name} {id}"));
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    (p.not_before, p.not_after) = validity(days, false);
    p
}

fn dn(name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "sitrep");
    dn.push(DnType::CommonName, name);
    dn
}

/// (not_before, not_after). Starts 5 minutes ago so a peer whose clock is a little behind
/// accepts a fresh certificate.
fn validity(days: u32, expired: bool) -> (OffsetDateTime, OffsetDateTime) {
    let now = OffsetDateTime::now_utc();
    let days = Duration::days(i64::from(days));
    if expired {
        (now - days - Duration::days(1), now - Duration::days(1))
    } else {
        (now - Duration::minutes(5), now + days)
    }
}

fn new_key(what: &str) -> Result<KeyPair, PkiError> {
    KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|e| generate(what.to_owned(), e))
}

fn generate(what: String, source: rcgen::Error) -> PkiError {
    PkiError::Generate { what, source }
}

/// Checks name, SANs and days; returns the SAN list: `name` (as an IP or DNS SAN, when it
/// is one) and every extra SAN, without duplicates.
fn check_request(name: &str, opts: &CertOptions) -> Result<Vec<SanType>, PkiError> {
    let name_ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b));
    if !name_ok {
        return Err(PkiError::InvalidInput(format!(
            "name {name:?}: use 1 to {MAX_NAME_LEN} characters of letters, digits, '-', '.', '_'"
        )));
    }
    if !(1..=MAX_DAYS).contains(&opts.days) {
        return Err(PkiError::InvalidInput(format!(
            "days {}: must be 1 to {MAX_DAYS}",
            opts.days
        )));
    }
    let mut sans = Vec::new();
    if let Some(san) = san(name) {
        sans.push(san);
    }
    for s in &opts.sans {
        let san = san(s).ok_or_else(|| {
            PkiError::InvalidInput(format!(
                "--san {s:?}: neither an IP address nor a valid DNS name"
            ))
        })?;
        if !sans.contains(&san) {
            sans.push(san);
        }
    }
    Ok(sans)
}

/// `s` as an IP SAN, or as a DNS SAN if it is a valid DNS name, or None.
fn san(s: &str) -> Option<SanType> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(SanType::IpAddress(ip));
    }
    rustls::pki_types::DnsName::try_from(s).ok()?;
    s.try_into().ok().map(SanType::DnsName)
}

fn same_dir(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

fn info(der: &[u8], path: &Path) -> Result<CertInfo, PkiError> {
    CertInfo::from_der(der).map_err(|reason| PkiError::Cert {
        path: path.to_owned(),
        reason,
    })
}
