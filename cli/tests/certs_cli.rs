//! `sitrep certs …` end to end through the real binary: files, text and JSON output, exit
//! codes, refusing to overwrite.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failures should panic

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

fn sitrep(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sitrep"))
        .args(args)
        .output()
        .unwrap()
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "status {:?}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn init_issue_show_workflow() {
    let d = tempfile::tempdir().unwrap();
    let ca = d.path().join("siteb-pki");
    let out = d.path().join("sitea-pki");

    let text = ok(&sitrep(&[
        "certs",
        "init",
        "--dir",
        s(&ca),
        "--name",
        "siteb",
        "--san",
        "10.0.0.2",
    ]));
    assert!(
        text.contains("created a CA and the certificate of siteb"),
        "{text}"
    );
    assert!(text.contains("DNS:siteb, IP:10.0.0.2"), "{text}");
    assert!(text.contains("next: sitrep certs issue"), "{text}");
    let mode = std::fs::metadata(ca.join("ca.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    let v: serde_json::Value = serde_json::from_str(&ok(&sitrep(&[
        "certs",
        "issue",
        "--ca",
        s(&ca),
        "--name",
        "sitea",
        "--out",
        s(&out),
        "--days",
        "30",
        "--json",
    ])))
    .unwrap();
    assert_eq!(v["cert"]["common_name"], "sitea");
    assert_eq!(v["cert"]["sans"], serde_json::json!(["DNS:sitea"]));
    assert_eq!(v["cert"]["expired"], false);
    assert_eq!(v["cert"]["issuer"], v["ca"]["subject"]);
    assert_eq!(v["files"].as_array().unwrap().len(), 3);
    assert!(!out.join("ca.key").exists());

    let text = ok(&sitrep(&["certs", "show", "--dir", s(&ca)]));
    assert!(text.contains("holds the CA key"), "{text}");
    assert!(text.contains("OK: loads as a TLS identity"), "{text}");
    assert!(text.contains("SHA-256"), "{text}");

    let out_show = sitrep(&["certs", "show", "--dir", s(&out), "--json"]);
    let v: serde_json::Value = serde_json::from_str(&ok(&out_show)).unwrap();
    assert_eq!(v["has_ca_key"], false);
    assert_eq!(v["chain"][0]["common_name"], "sitea");
    assert_eq!(v["ca"][0]["is_ca"], true);
    assert_eq!(v["problems"], serde_json::json!([]));
    let fp = v["chain"][0]["sha256_fingerprint"].as_str().unwrap();
    assert_eq!(fp.len(), 95, "{fp}");

    // The JSON field names are a contract for scripts: this fails if one is renamed.
    let keys = |v: &serde_json::Value| {
        let mut k: Vec<_> = v.as_object().unwrap().keys().cloned().collect();
        k.sort();
        k.join(",")
    };
    assert_eq!(keys(&v), "ca,chain,dir,has_ca_key,problems");
    assert_eq!(
        keys(&v["chain"][0]),
        "common_name,expired,is_ca,issuer,not_after,not_after_unix,not_before,sans,serial,\
         sha256_fingerprint,subject"
    );
}

#[test]
fn existing_files_are_not_replaced_without_force() {
    let d = tempfile::tempdir().unwrap();
    let ca = d.path().join("pki");
    let init = [
        "certs",
        "init",
        "--dir",
        s(&ca),
        "--name",
        "siteb",
        "--json",
    ];
    let first: serde_json::Value = serde_json::from_str(&ok(&sitrep(&init))).unwrap();
    let before = std::fs::read(ca.join("ca.key")).unwrap();

    let out = sitrep(&init);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("already exists") && err.contains("--force"),
        "{err}"
    );
    assert_eq!(std::fs::read(ca.join("ca.key")).unwrap(), before, "kept");

    let mut forced = init.to_vec();
    forced.push("--force");
    let second: serde_json::Value = serde_json::from_str(&ok(&sitrep(&forced))).unwrap();
    assert_ne!(
        first["ca"]["sha256_fingerprint"],
        second["ca"]["sha256_fingerprint"]
    );
}

#[test]
fn show_reports_an_expired_or_broken_directory_with_exit_3() {
    let d = tempfile::tempdir().unwrap();
    let ca = d.path().join("ca");
    let old = d.path().join("old");
    ok(&sitrep(&[
        "certs",
        "init",
        "--dir",
        s(&ca),
        "--name",
        "siteb",
    ]));
    ok(&sitrep(&[
        "certs",
        "issue",
        "--ca",
        s(&ca),
        "--name",
        "old",
        "--out",
        s(&old),
        "--expired",
    ]));
    let out = sitrep(&["certs", "show", "--dir", s(&old)]);
    assert_eq!(out.status.code(), Some(3));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("EXPIRED") && text.contains("PROBLEM"),
        "{text}"
    );

    std::fs::write(old.join("key.pem"), "not a key").unwrap();
    let out = sitrep(&["certs", "show", "--dir", s(&old), "--json"]);
    assert_eq!(out.status.code(), Some(3));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let problem = v["problems"][0].as_str().unwrap();
    assert!(problem.contains("key.pem"), "{problem}");
}

#[test]
fn bad_input_is_an_error_naming_the_cause() {
    let d = tempfile::tempdir().unwrap();
    let out = sitrep(&[
        "certs",
        "init",
        "--dir",
        s(&d.path().join("x")),
        "--name",
        "siteb",
        "--san",
        "no such host!",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--san") && err.contains("no such host!"),
        "{err}"
    );

    let out = sitrep(&["certs", "show", "--dir", s(d.path())]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("ca.pem"), "{err}");
}

#[test]
fn help_teaches_the_workflow() {
    let text = ok(&sitrep(&["certs", "--help"]));
    assert!(
        text.contains("certs init  --dir /etc/sitrep/pki --name siteb --san 10.0.0.2"),
        "{text}"
    );
    assert!(text.contains("--san <its address>"), "{text}");
    let text = ok(&sitrep(&["certs", "issue", "--help"]));
    assert!(
        !text.contains("--expired"),
        "test-only option is hidden: {text}"
    );
}
