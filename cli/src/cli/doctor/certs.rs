//! The PKI directory the daemons load: the CA certificate(s) and this host's certificate
//! within their validity (a warning 30 days ahead), and the directory loading as a TLS
//! identity (key matches the certificate, certificate issued by ca.pem).

use std::path::Path;

use pki::CertInfo;

use super::check::{Check, Status};

/// Warn when a certificate ends within this many days.
pub(crate) const WARN_DAYS: i64 = 30;
const DAY: i64 = 86_400;

/// The verdict on one certificate at `now` (Unix seconds): fail when outside its validity,
/// warn within [`WARN_DAYS`] of its end. Returns the status and what was found.
pub(crate) fn expiry(info: &CertInfo, now: i64) -> (Status, String) {
    let name = info.common_name.as_deref().unwrap_or(&info.subject);
    let left = info.not_after_unix - now;
    if info.expired || left <= 0 {
        (
            Status::Fail,
            format!(
                "{name}: outside its validity ({} .. {})",
                info.not_before, info.not_after
            ),
        )
    } else if left < WARN_DAYS * DAY {
        (
            Status::Warn,
            format!(
                "{name}: expires in {} day(s), {}",
                left / DAY,
                info.not_after
            ),
        )
    } else {
        (
            Status::Ok,
            format!(
                "{name}: valid until {} ({} days)",
                info.not_after,
                left / DAY
            ),
        )
    }
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

fn verdict(id: &'static str, title: &str, info: &CertInfo, now: i64, fix: String) -> Check {
    match expiry(info, now) {
        (Status::Ok, d) => Check::ok(id, title, d),
        (Status::Warn, d) => Check::warn(id, title, d, fix),
        (_, d) => Check::fail(id, title, d, fix),
    }
}

/// `pki-ca`, `pki-cert` and `pki-identity` for the PKI directory `dir`.
pub(crate) fn pki_checks(dir: &Path) -> Vec<Check> {
    pki_checks_at(dir, now())
}

/// [`pki_checks`] as of `now` (Unix seconds).
pub(crate) fn pki_checks_at(dir: &Path, now: i64) -> Vec<Check> {
    let d = dir.display();
    let report = match pki::describe(dir) {
        Ok(r) => r,
        Err(e) => {
            let fix = format!(
                "copy the PKI directory made by `sitrep certs init` / `sitrep certs issue` to {d}"
            );
            return vec![
                Check::fail("pki-ca", "CA certificate", e.to_string(), fix),
                Check::skip("pki-cert", "host certificate", "no usable ca.pem"),
                Check::skip("pki-identity", "TLS identity", "no usable ca.pem"),
            ];
        }
    };
    let mut out = Vec::new();
    // The CA that ends first decides.
    match report.ca.iter().min_by_key(|c| c.not_after_unix) {
        Some(ca) => out.push(verdict(
            "pki-ca",
            "CA certificate",
            ca,
            now,
            "on the CA's host: `sitrep certs init --force` makes a new CA; then issue every \
             host a new certificate (`sitrep certs issue`) and copy each its directory"
                .into(),
        )),
        None => out.push(Check::fail(
            "pki-ca",
            "CA certificate",
            format!("{d}/ca.pem holds no certificate"),
            "copy ca.pem from the CA's host",
        )),
    }
    match report.chain.first() {
        Some(cert) => {
            let cn = cert.common_name.as_deref().unwrap_or("NAME");
            let fix = format!(
                "on the CA's host: `sitrep certs issue --ca CA_DIR --name {cn} --out NEW_DIR` \
                 (with the same --san), copy NEW_DIR/cert.pem and key.pem into {d}, restart \
                 the daemon"
            );
            out.push(verdict("pki-cert", "host certificate", cert, now, fix));
        }
        None => out.push(Check::fail(
            "pki-cert",
            "host certificate",
            report.problems.join("; "),
            format!("put this host's cert.pem and key.pem (from `sitrep certs issue`) in {d}"),
        )),
    }
    out.push(match pki::Identity::load(dir) {
        Ok(_) => Check::ok(
            "pki-identity",
            "TLS identity",
            format!("{d}: key matches cert.pem, issued by ca.pem"),
        ),
        Err(e) => Check::fail(
            "pki-identity",
            "TLS identity",
            e.to_string(),
            format!("`sitrep certs show --dir {d}` explains; reissue with `sitrep certs issue`"),
        ),
    });
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn statuses(checks: &[Check]) -> Vec<(&'static str, Status)> {
        checks.iter().map(|c| (c.id, c.status)).collect()
    }

    #[test]
    fn a_fresh_pki_is_ok() {
        let d = tempfile::tempdir().unwrap();
        pki::init(d.path(), "siteb", &[], 400).unwrap();
        let checks = pki_checks(d.path());
        assert_eq!(
            statuses(&checks),
            [
                ("pki-ca", Status::Ok),
                ("pki-cert", Status::Ok),
                ("pki-identity", Status::Ok)
            ]
        );
    }

    #[test]
    fn expiry_thresholds() {
        let d = tempfile::tempdir().unwrap();
        let r = pki::init(d.path(), "siteb", &[], 10).unwrap();
        let end = r.cert.not_after_unix;
        // 10 days left: a warning, with the fix naming the host.
        let c = pki_checks_at(d.path(), end - 10 * DAY);
        assert_eq!(c[1].status, Status::Warn, "{c:?}");
        assert!(c[1].fix.as_deref().unwrap().contains("--name siteb"));
        assert_eq!(expiry(&r.cert, end - WARN_DAYS * DAY).0, Status::Ok);
        assert_eq!(expiry(&r.cert, end - WARN_DAYS * DAY + 1).0, Status::Warn);
        assert_eq!(expiry(&r.cert, end - 1).0, Status::Warn);
        assert_eq!(expiry(&r.cert, end).0, Status::Fail);
        // The CA (at least 10 years) is fine meanwhile.
        assert_eq!(c[0].status, Status::Ok);
    }

    #[test]
    fn an_expired_cert_fails() {
        let d = tempfile::tempdir().unwrap();
        let opts = pki::CertOptions {
            expired: true,
            ..pki::CertOptions::new(&[], 30)
        };
        pki::init_with(d.path(), "siteb", &opts).unwrap();
        let c = pki_checks(d.path());
        assert_eq!(c[1].id, "pki-cert");
        assert_eq!(c[1].status, Status::Fail);
    }

    #[test]
    fn a_missing_dir_fails() {
        let d = tempfile::tempdir().unwrap();
        let c = pki_checks(&d.path().join("nope"));
        assert_eq!(
            statuses(&c),
            [
                ("pki-ca", Status::Fail),
                ("pki-cert", Status::Skip),
                ("pki-identity", Status::Skip)
            ]
        );
    }
}
