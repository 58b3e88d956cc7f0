//! PKI directories on disk: what `init` and `issue` write, what they refuse, and the
//! errors `Identity::load` gives for broken files.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failures should panic

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use pki::{CertOptions, Identity, PkiError};
use x509_parser::extensions::ParsedExtension;
use x509_parser::oid_registry::{OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY};

fn mode(p: &Path) -> u32 {
    fs::metadata(p).unwrap().permissions().mode() & 0o777
}

fn load_err(dir: &Path) -> String {
    Identity::load(dir).unwrap_err().to_string()
}

#[test]
fn init_writes_a_ca_and_a_host_certificate_with_private_keys_0600() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("pki/siteb");
    let r = pki::init(
        &dir,
        "siteb",
        &["10.0.0.2".into(), "siteb.example".into()],
        825,
    )
    .unwrap();
    assert_eq!(r.files.len(), 4);
    assert_eq!(mode(&dir.join("ca.key")), 0o600);
    assert_eq!(mode(&dir.join("key.pem")), 0o600);
    assert_eq!(mode(&dir.join("ca.pem")), 0o644);
    assert_eq!(mode(&dir.join("cert.pem")), 0o644);
    assert_eq!(mode(&dir), 0o700, "a new PKI directory is private");
    // No temporary files left behind.
    let mut names: Vec<_> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["ca.key", "ca.pem", "cert.pem", "key.pem"]);

    assert!(r.ca.is_ca);
    assert!(
        r.ca.common_name
            .as_deref()
            .unwrap()
            .starts_with("sitrep CA siteb ")
    );
    assert!(!r.cert.is_ca);
    assert_eq!(r.cert.common_name.as_deref(), Some("siteb"));
    assert_eq!(r.cert.issuer, r.ca.subject);
    assert_eq!(
        r.cert.sans,
        ["DNS:siteb", "IP:10.0.0.2", "DNS:siteb.example"],
        "the name first, then every --san"
    );
    assert!(!r.cert.expired);
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let want = now + 825 * 86_400;
    assert!(
        (r.cert.not_after_unix - want).abs() < 120,
        "825 days of validity"
    );
    assert!(
        r.ca.not_after_unix >= now + 3650 * 86_400 - 120,
        "the CA outlives its certificates"
    );
    assert_eq!(r.cert.sha256_fingerprint.len(), 32 * 3 - 1);

    let id = Identity::load(&dir).unwrap();
    assert_eq!(id.name(), "siteb");
    assert_eq!(id.certificate(), &r.cert);
}

#[test]
fn host_certificates_are_ecdsa_p256_with_both_ekus() {
    let d = tempfile::tempdir().unwrap();
    let ca = d.path().join("ca");
    let out = d.path().join("sitea");
    pki::init(&ca, "siteb", &[], 825).unwrap();
    pki::issue(&ca, "sitea", &["192.0.2.7".into()], 90, &out).unwrap();
    let pem = fs::read(out.join("cert.pem")).unwrap();
    let (_, pem) = x509_parser::pem::parse_x509_pem(&pem).unwrap();
    let cert = pem.parse_x509().unwrap();
    let spki = cert.public_key();
    assert_eq!(spki.algorithm.algorithm, OID_KEY_TYPE_EC_PUBLIC_KEY);
    let curve = spki
        .algorithm
        .parameters
        .as_ref()
        .unwrap()
        .as_oid()
        .unwrap();
    assert_eq!(curve, OID_EC_P256);
    let eku = cert.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.server_auth && eku.client_auth, "{eku:?}");
    assert!(!cert.is_ca());
    let has_aki = cert.extensions().iter().any(|e| {
        matches!(
            e.parsed_extension(),
            ParsedExtension::AuthorityKeyIdentifier(_)
        )
    });
    assert!(has_aki);
}

#[test]
fn issue_writes_no_ca_key_and_chains_to_the_ca() {
    let d = tempfile::tempdir().unwrap();
    let ca = d.path().join("ca");
    let out = d.path().join("sitea");
    let init = pki::init(&ca, "siteb", &[], 825).unwrap();
    let r = pki::issue(&ca, "sitea", &[], 825, &out).unwrap();
    assert!(!out.join("ca.key").exists());
    assert_eq!(mode(&out.join("key.pem")), 0o600);
    assert_eq!(
        fs::read(out.join("ca.pem")).unwrap(),
        fs::read(ca.join("ca.pem")).unwrap()
    );
    assert_eq!(r.ca, init.ca);
    assert_eq!(r.cert.issuer, init.ca.subject);
    assert_eq!(r.cert.sans, ["DNS:sitea"]);
    assert_eq!(Identity::load(&out).unwrap().name(), "sitea");
    let shown = pki::describe(&out).unwrap();
    assert!(!shown.has_ca_key);
    assert!(shown.problems.is_empty(), "{:?}", shown.problems);
    assert!(pki::describe(&ca).unwrap().has_ca_key);
}

#[test]
fn existing_files_are_kept_unless_forced() {
    let d = tempfile::tempdir().unwrap();
    let ca = d.path().join("ca");
    let out = d.path().join("sitea");
    let first = pki::init(&ca, "siteb", &[], 825).unwrap();
    let err = pki::init(&ca, "siteb", &[], 825).unwrap_err();
    assert!(matches!(err, PkiError::Exists { .. }), "{err}");
    assert!(
        err.to_string().contains("ca.pem") && err.to_string().contains("--force"),
        "{err}"
    );
    assert_eq!(
        Identity::load(&ca).unwrap().certificate(),
        &first.cert,
        "untouched"
    );

    pki::issue(&ca, "sitea", &[], 825, &out).unwrap();
    let err = pki::issue(&ca, "sitea", &[], 825, &out).unwrap_err();
    assert!(err.to_string().contains("already exists"), "{err}");

    // Issuing into the CA's own directory would replace its host certificate.
    let forced = CertOptions {
        force: true,
        ..CertOptions::new(&[], 825)
    };
    let err = pki::issue_with(&ca, "sitea", &forced, &ca).unwrap_err();
    assert!(err.to_string().contains("holds a CA key"), "{err}");

    let again = pki::init_with(&ca, "siteb", &forced).unwrap();
    assert_ne!(
        again.ca.sha256_fingerprint, first.ca.sha256_fingerprint,
        "a new CA"
    );
    // --force re-issues the peer's directory from the new CA.
    let reissued = pki::issue_with(&ca, "sitea", &forced, &out).unwrap();
    assert_eq!(reissued.ca, again.ca);
    assert_eq!(Identity::load(&out).unwrap().certificate(), &reissued.cert);
}

#[test]
fn bad_names_sans_and_days_are_refused() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("x");
    for (name, sans, days, want) in [
        ("", vec![], 825, "name"),
        ("site b", vec![], 825, "name"),
        (&"a".repeat(65) as &str, vec![], 825, "name"),
        ("siteb", vec!["not a host!".to_owned()], 825, "--san"),
        ("siteb", vec![], 0, "days"),
        ("siteb", vec![], pki::MAX_DAYS + 1, "days"),
    ] {
        let err = pki::init(&dir, name, &sans, days).unwrap_err();
        assert!(matches!(err, PkiError::InvalidInput(_)), "{err}");
        assert!(err.to_string().contains(want), "{err}");
    }
    assert!(!dir.exists(), "nothing written for a refused request");
}

fn good_dir(root: &Path, name: &str) -> std::path::PathBuf {
    let dir = root.join(name);
    pki::init(&dir, name, &[], 825).unwrap();
    dir
}

#[test]
fn a_missing_file_is_named() {
    let d = tempfile::tempdir().unwrap();
    for f in ["ca.pem", "cert.pem", "key.pem"] {
        let dir = good_dir(d.path(), &format!("m-{}", &f[..2]));
        fs::remove_file(dir.join(f)).unwrap();
        let err = load_err(&dir);
        assert!(err.contains(&dir.join(f).display().to_string()), "{err}");
        assert!(err.contains("No such file"), "{err}");
    }
}

#[test]
fn garbage_pem_is_named_with_the_cause() {
    let d = tempfile::tempdir().unwrap();
    let dir = good_dir(d.path(), "g");
    let cert = dir.join("cert.pem");
    fs::write(&cert, "hello, I am not a certificate\n").unwrap();
    let err = load_err(&dir);
    assert!(
        err.contains("cert.pem") && err.contains("no certificate PEM block"),
        "{err}"
    );

    fs::write(
        &cert,
        "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let err = load_err(&dir);
    assert!(
        err.contains("cert.pem") && err.contains("not a valid PEM certificate"),
        "{err}"
    );

    // Good base64, not X.509.
    fs::write(
        &cert,
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let err = load_err(&dir);
    assert!(
        err.contains("cert.pem") && err.contains("not valid X.509"),
        "{err}"
    );

    let dir2 = good_dir(d.path(), "k");
    fs::write(dir2.join("key.pem"), "garbage").unwrap();
    let err = load_err(&dir2);
    assert!(
        err.contains("key.pem") && err.contains("no private key PEM block"),
        "{err}"
    );
}

#[test]
fn an_oversized_file_is_refused_before_reading_it_all() {
    let d = tempfile::tempdir().unwrap();
    let dir = good_dir(d.path(), "big");
    let f = fs::File::create(dir.join("ca.pem")).unwrap();
    f.set_len(1 << 30).unwrap(); // sparse 1 GiB
    let err = load_err(&dir);
    assert!(
        err.contains("ca.pem") && err.contains("larger than"),
        "{err}"
    );
}

#[test]
fn a_key_of_another_certificate_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let a = good_dir(d.path(), "a");
    let b = good_dir(d.path(), "b");
    fs::copy(b.join("key.pem"), a.join("key.pem")).unwrap();
    let err = Identity::load(&a).unwrap_err();
    assert!(matches!(err, PkiError::KeyMismatch { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("key.pem") && msg.contains("cert.pem") && msg.contains("does not belong"),
        "{msg}"
    );

    // Same for the CA key when issuing.
    fs::copy(b.join("ca.key"), a.join("ca.key")).unwrap();
    let err = pki::issue(&a, "x", &[], 1, &d.path().join("x")).unwrap_err();
    assert!(matches!(err, PkiError::KeyMismatch { .. }), "{err}");
    assert!(err.to_string().contains("ca.key"), "{err}");
}

#[test]
fn a_certificate_from_another_ca_is_refused_at_load() {
    let d = tempfile::tempdir().unwrap();
    let a = good_dir(d.path(), "a");
    let b = good_dir(d.path(), "b");
    fs::copy(b.join("ca.pem"), a.join("ca.pem")).unwrap();
    let err = Identity::load(&a).unwrap_err();
    assert!(matches!(err, PkiError::NotIssuedByCa { .. }), "{err}");
    assert!(err.to_string().contains("not issued by the CA"), "{err}");
    let shown = pki::describe(&a).unwrap();
    assert_eq!(shown.problems.len(), 1, "{:?}", shown.problems);
}

#[test]
fn an_expired_certificate_loads_and_is_reported() {
    let d = tempfile::tempdir().unwrap();
    let ca = good_dir(d.path(), "ca");
    let out = d.path().join("old");
    let opts = CertOptions {
        expired: true,
        ..CertOptions::new(&[], 10)
    };
    let r = pki::issue_with(&ca, "old", &opts, &out).unwrap();
    assert!(r.cert.expired);
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    assert!(r.cert.not_after_unix < now - 86_000);
    let shown = pki::describe(&out).unwrap();
    assert!(
        shown
            .problems
            .iter()
            .any(|p| p.contains("outside its validity")),
        "{:?}",
        shown.problems
    );
}
