//! Data at rest and local users (issue 19, items 6, 9, 10): everything the server writes is
//! root-only, an export cannot be redirected through a planted symlink, a peer's label is
//! capped.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::cast_possible_truncation
)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use base::control::Request;
use common::{Client, Server, points, rt, walk};
use proto::{Frame, Msg};

const SIZE: u64 = 1 << 20;

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o777
}

/// Copy + cycle 1 applied, not judged yet.
async fn one_cycle(server: &Server, disk: &str) -> Client {
    let (mut c, r) = Client::attach(server, "alice", disk, 1, SIZE).await;
    r.unwrap();
    c.copy(&vec![7u8; SIZE as usize], 1, false).await;
    c.cycle(
        1,
        &[Frame::Data {
            offset: 0,
            data: vec![1; 4096],
        }],
    )
    .await
    .unwrap();
    c
}

/// Copy + one cycle judged consistent: one point (id 1).
async fn one_point(server: &Server, disk: &str) {
    let mut c = one_cycle(server, disk).await;
    c.consistent(1).await;
    c.send(Msg::Bye).await;
}

fn wait_points(server: &Server, disk: &str, n: usize) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while points(server, disk).len() < n {
        assert!(std::time::Instant::now() < deadline, "no point offered");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

fn export(server: &Server, disk: &str, out: &Path, force: bool) -> base::control::Response {
    server.call(&Request::Export {
        name: disk.into(),
        point: base::points::PointSel::Latest,
        out: out.display().to_string(),
        force,
    })
}

#[test]
fn everything_the_server_stores_is_root_only() {
    let server = Server::start();
    rt().block_on(one_point(&server, "d"));
    wait_points(&server, "d", 1);
    let out_dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(out_dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = out_dir.path().join("p.img");
    let r = export(&server, "d", &out, false);
    assert!(r.ok, "{r:?}");
    assert_eq!(mode(&out), 0o600, "the exported image");
    let store = server.store_dir();
    let mut checked = 0;
    for p in walk(&store).into_iter().chain([store.clone()]) {
        let ft = std::fs::symlink_metadata(&p).unwrap().file_type();
        if ft.is_dir() {
            assert_eq!(mode(&p), 0o700, "{}", p.display());
        } else if ft.is_file() {
            assert_eq!(mode(&p), 0o600, "{}", p.display());
        }
        checked += 1;
    }
    assert!(checked >= 6, "only {checked} entries under the store");
    assert!(store.join("disks/d/replica.img").exists());
}

#[test]
fn a_store_left_readable_by_an_older_version_is_made_root_only_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("old-store");
    std::fs::create_dir_all(store.join("disks")).unwrap();
    std::fs::write(store.join("leftover.img"), b"secret").unwrap();
    for (p, m) in [("", 0o755), ("disks", 0o755), ("leftover.img", 0o644)] {
        std::fs::set_permissions(store.join(p), std::fs::Permissions::from_mode(m)).unwrap();
    }
    let store2 = store.clone();
    let _server = Server::start_with(move |o| o.store = store2);
    assert_eq!(mode(&store), 0o700);
    assert_eq!(mode(&store.join("disks")), 0o700);
    assert_eq!(mode(&store.join("leftover.img")), 0o600);
}

#[test]
fn an_export_never_writes_through_a_planted_symlink() {
    let server = Server::start();
    rt().block_on(one_point(&server, "d"));
    wait_points(&server, "d", 1);
    let dir = tempfile::tempdir().unwrap();
    let victim = dir.path().join("victim");
    std::fs::write(&victim, b"precious").unwrap();
    let out = dir.path().join("p.img");
    // The temporary names an older server used, planted by a local user.
    for planted in ["p.partial", "p.img.partial"] {
        std::os::unix::fs::symlink(&victim, dir.path().join(planted)).unwrap();
    }
    let r = export(&server, "d", &out, false);
    assert!(r.ok, "{r:?}");
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
    assert!(
        std::fs::symlink_metadata(&out)
            .unwrap()
            .file_type()
            .is_file()
    );
    assert_eq!(std::fs::metadata(&out).unwrap().len(), SIZE);
    // --force over a symlink named like the output replaces the link, not its target.
    std::fs::remove_file(&out).unwrap();
    std::os::unix::fs::symlink(&victim, &out).unwrap();
    let r = export(&server, "d", &out, true);
    assert!(r.ok, "{r:?}");
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
    assert!(
        std::fs::symlink_metadata(&out)
            .unwrap()
            .file_type()
            .is_file()
    );
    // Nothing half-written is left behind.
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".partial."))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn a_verdict_label_longer_than_the_cap_is_refused_and_not_stored() {
    let server = Server::start();
    rt().block_on(async {
        let mut c = one_cycle(&server, "d").await;
        c.send(Msg::Verdict {
            seq: 1,
            crash_consistent: true,
            label: Some("\u{1b}[2J".repeat(300_000)),
        })
        .await;
        let e = c.recv().await.unwrap_err().to_string();
        assert!(e.contains("label"), "{e}");
    });
    assert!(points(&server, "d").is_empty());
    let text =
        std::fs::read_to_string(server.store_dir().join("disks/d/points.json")).unwrap_or_default();
    assert!(text.len() < 4096, "points.json holds {} bytes", text.len());
}

#[test]
fn a_rejected_disk_name_is_escaped_and_capped_in_the_refusal() {
    let server = Server::start();
    let forged = format!(
        "x\r\n2026-12-05T00:00:00Z INFO forged\u{1b}[2J{}",
        "y".repeat(5000)
    );
    let e = rt().block_on(async {
        let (_c, r) = Client::attach(&server, "alice", &forged, 1, SIZE).await;
        r.unwrap_err().to_string()
    });
    assert!(e.contains("invalid disk name"), "{e}");
    assert!(
        !e.contains('\r') && !e.contains('\n') && !e.contains('\u{1b}'),
        "{e:?}"
    );
    assert!(e.contains("x\\r\\n2026"), "{e}");
    assert!(e.len() < 2000, "{} bytes", e.len());
}
