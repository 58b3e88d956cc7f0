//! VM tier: the operator's `sitrep disk` commands end to end on the real ublk kernel —
//! add (detached server), list, a filesystem on the disk, del refused while mounted, del,
//! and a chain that verifies. `scripts/vm-tests.sh` builds `target/debug/sitrep` first.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::process::{Command, Output};

use sitrep_tests::cmd::run;
use sitrep_tests::{Need, require};

fn sitrep_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/debug/sitrep")
}

fn sitrep(args: &[&str]) -> Output {
    Command::new(sitrep_bin()).args(args).output().unwrap()
}

fn ok(args: &[&str]) -> String {
    let out = sitrep(args);
    assert!(
        out.status.success(),
        "sitrep {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn disk_add_list_mount_del_through_the_cli() {
    if !require!(
        Need::InVm,
        Need::Root,
        Need::Path("/dev/ublk-control"),
        Need::Command("mkfs.ext4")
    ) {
        return;
    }
    assert!(
        sitrep_bin().exists(),
        "{} not built",
        sitrep_bin().display()
    );
    let dir = tempfile::tempdir().unwrap();
    let backing = dir.path().join("disk.img");
    std::fs::File::create(&backing)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    let b = backing.to_str().unwrap();

    let added: serde_json::Value =
        serde_json::from_str(&ok(&["disk", "add", "--backing", b, "--json"])).unwrap();
    let id = added["id"].as_u64().unwrap().to_string();
    let dev = added["device"].as_str().unwrap().to_owned();
    assert_eq!(added["log_resume"], "fresh", "{added}");

    let list: serde_json::Value = serde_json::from_str(&ok(&["disk", "list", "--json"])).unwrap();
    let listed = list
        .as_array()
        .unwrap()
        .iter()
        .any(|d| d["device"] == dev.as_str());
    assert!(listed, "{list}");

    // A second server on the same backing is refused with a clear error, and nothing is
    // left behind.
    let twice = sitrep(&["disk", "add", "--backing", b]);
    assert!(!twice.status.success());
    let err = String::from_utf8_lossy(&twice.stderr);
    assert!(err.contains("already served"), "{err}");

    run("mkfs.ext4", &["-q", "-F", &dev]);
    let mnt = tempfile::tempdir().unwrap();
    let m = mnt.path().to_str().unwrap();
    run("mount", &[&dev, m]);
    std::fs::write(mnt.path().join("hello"), b"replicate me").unwrap();
    let refused = sitrep(&["disk", "del", &id]);
    let err = String::from_utf8_lossy(&refused.stderr).into_owned();
    run("umount", &[m]);
    assert!(!refused.status.success(), "del must refuse a mounted disk");
    assert!(err.contains("mounted"), "{err}");

    ok(&["disk", "del", &id]);
    assert!(!std::path::Path::new(&dev).exists(), "{dev} removed");
    let log_dir = format!("{b}.hrl");
    let verify = ok(&["log", "verify", &log_dir]);
    assert!(verify.contains("chain OK"), "{verify}");
}
