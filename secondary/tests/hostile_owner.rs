//! Hostile peer: the owner binding holds on every path (issue 19, items 2 and 12). A client
//! with a valid certificate of the same CA cannot take another client's disk over with
//! `AttachReverse`, cannot override a split brain with a flag, and cannot even make the
//! server open (and recover) a disk it may not write. Only a local command on the site whose
//! data would be overwritten (`Request::AcceptReverse`) changes who may adopt or what is
//! discarded.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::cast_possible_truncation
)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use base::control::Request;
use base::net::ReplError;
use common::{Client, Server, disk_id, points, rt};
use proto::{ErrorCode, Frame, Msg};

const SIZE: u64 = 1 << 20;

/// A local agent's state as `--adopt-from` reads it: disk `name` protected from `device`
/// (a regular file of SIZE bytes standing in for the block device), failed over to the
/// other site, no logs left (so any reverse is a split brain unless discarded).
struct AgentState {
    dir: tempfile::TempDir,
    device: PathBuf,
}

impl AgentState {
    fn new(name: &str, server_name: Option<&str>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let device = dir.path().join("device.img");
        std::fs::write(&device, vec![0x5Au8; SIZE as usize]).unwrap();
        let disk = dir.path().join("state").join("disks").join(name);
        std::fs::create_dir_all(disk.join("logs")).unwrap();
        let mut prot = serde_json::json!({
            "version": 1,
            "name": name,
            "device": device,
            "to": "127.0.0.1:9",
            "frequency": "30s",
            "disk_id": "01010101010101010101010101010101",
            "created_unix_ns": 1,
            "copy": {"from_seq": 1, "done": true, "restart": false},
            "resync_reason": null,
            "failed_over": {
                "kind": "unplanned", "unix_ns": 2, "point": 0, "cut_time_unix_ns": 0,
                "device": "", "image": "", "quiesced": "not quiesced"
            }
        });
        if let Some(s) = server_name {
            prot["server_name"] = serde_json::json!(s);
        }
        std::fs::write(
            disk.join("protection.json"),
            serde_json::to_vec_pretty(&prot).unwrap(),
        )
        .unwrap();
        Self { dir, device }
    }

    fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }
}

fn start_adopting(agent: &AgentState) -> Server {
    let state = agent.state();
    Server::start_with(move |o| o.adopt_from = Some(state))
}

/// TLS + Hello + `AttachReverse` of `disk` as `client`; the server's answer.
async fn attach_reverse(
    server: &Server,
    client: &str,
    disk: &str,
    id: u8,
    discard: bool,
) -> (Client, Result<Msg, ReplError>) {
    let mut c = Client::hello(server, client).await;
    c.send(Msg::AttachReverse {
        disk: disk.into(),
        disk_id: disk_id(id),
        size: SIZE,
        block_size: 512,
        fork_seq: 2,
        from_seq: 3,
        discard_target_changes: discard,
    })
    .await;
    let r = c.recv().await;
    (c, r)
}

fn refused_with(r: &Result<Msg, ReplError>, want: ErrorCode) -> String {
    match r {
        Err(ReplError::Refused { code, message, .. }) if *code == want => message.clone(),
        other => panic!("expected a {want:?} refusal, got {other:?}"),
    }
}

/// alice's disk `d`: copy + two points.
async fn alice_replicates(server: &Server) {
    common::replicate_points(server, "alice", "d", 2).await;
}

fn wait_points(server: &Server, disk: &str, n: usize) -> Vec<serde_json::Value> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let p = points(server, disk);
        if p.len() >= n {
            return p;
        }
        assert!(std::time::Instant::now() < deadline, "{p:?}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn reverse_attach_with_another_id_cannot_take_over_a_disk_it_does_not_own() {
    let agent = AgentState::new("d", None);
    let server = start_adopting(&agent);
    rt().block_on(alice_replicates(&server));
    let before_points = wait_points(&server, "d", 2);
    let entry = server.store_dir().join("disks").join("d");
    let state_before = std::fs::read(entry.join("state.json")).unwrap();
    let device_before = std::fs::read(&agent.device).unwrap();
    // mallory holds a certificate of the same CA; another disk id, and she even claims the
    // operator chose to discard the target's changes.
    let (_c, r) = rt().block_on(attach_reverse(&server, "mallory", "d", 9, true));
    let msg = refused_with(&r, ErrorCode::Unauthorized);
    assert!(msg.contains("alice") && msg.contains("mallory"), "{msg}");
    assert_eq!(
        std::fs::read(entry.join("state.json")).unwrap(),
        state_before,
        "alice's entry was changed"
    );
    assert_eq!(points(&server, "d"), before_points);
    assert!(
        !server.store_dir().join("retired").exists(),
        "alice's entry was moved aside"
    );
    assert_eq!(
        std::fs::read(&agent.device).unwrap(),
        device_before,
        "the site's own device was touched"
    );
    // alice still replicates as before.
    let (_c, r) = rt().block_on(Client::attach(&server, "alice", "d", 1, SIZE));
    assert!(matches!(r, Ok(Msg::Attached { .. })), "{r:?}");
}

#[test]
fn a_peer_flag_does_not_override_a_split_brain_only_a_local_grant_does() {
    // This site's agent replicated disk `r` to the server named "bob"; it failed over there
    // and this site's logs are gone: a split brain for any reverse.
    let agent = AgentState::new("r", Some("bob"));
    let server = start_adopting(&agent);
    let device_before = std::fs::read(&agent.device).unwrap();
    let entry = server.store_dir().join("disks").join("r");
    let (_c, r) = rt().block_on(attach_reverse(&server, "bob", "r", 2, true));
    let msg = refused_with(&r, ErrorCode::SplitBrain);
    assert!(
        msg.contains("sitrep reverse-accept r --discard-local-changes"),
        "{msg}"
    );
    assert!(!entry.exists(), "an entry was made");
    assert_eq!(std::fs::read(&agent.device).unwrap(), device_before);
    // Another client of the same CA is not who this site replicated to.
    let (_c, r) = rt().block_on(attach_reverse(&server, "mallory", "r", 3, true));
    let msg = refused_with(&r, ErrorCode::Unauthorized);
    assert!(msg.contains("--from mallory"), "{msg}");
    // This site's operator decides: discard the local changes.
    let resp = server.call(&Request::AcceptReverse {
        name: "r".into(),
        from: None,
        discard_local_changes: true,
        revoke: false,
    });
    assert!(resp.ok, "{resp:?}");
    assert_eq!(resp.data["recorded_server"], "bob", "{resp:?}");
    assert!(
        resp.data["local_changes"]
            .as_str()
            .is_some_and(|s| s.contains("no log")),
        "the operator is shown what would be discarded: {resp:?}"
    );
    let grant = server.store_dir().join("grants").join("r.json");
    assert_eq!(
        std::fs::metadata(&grant).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // The grant names nobody new: mallory is still refused, and nothing moved.
    let (_c, r) = rt().block_on(attach_reverse(&server, "mallory", "r", 3, false));
    refused_with(&r, ErrorCode::Unauthorized);
    assert!(!entry.exists());
    // bob's reverse is adopted now (with or without the flag), and uses up the grant.
    let (_c, r) = rt().block_on(attach_reverse(&server, "bob", "r", 2, false));
    assert!(matches!(r, Ok(Msg::Attached { .. })), "{r:?}");
    assert!(!grant.exists(), "the grant was not consumed");
    let st: serde_json::Value =
        serde_json::from_slice(&std::fs::read(entry.join("state.json")).unwrap()).unwrap();
    assert_eq!(st["owner"], "bob");
    assert_eq!(st["replica_device"], serde_json::json!(agent.device));
}

#[test]
fn a_first_reverse_from_an_unrecorded_peer_needs_a_grant_naming_it() {
    // The agent never recorded its server (protected before the upgrade).
    let agent = AgentState::new("r", None);
    let server = start_adopting(&agent);
    let (_c, r) = rt().block_on(attach_reverse(&server, "carol", "r", 4, true));
    let msg = refused_with(&r, ErrorCode::Unauthorized);
    assert!(
        msg.contains("sitrep reverse-accept r --from carol"),
        "{msg}"
    );
    let resp = server.call(&Request::AcceptReverse {
        name: "r".into(),
        from: Some("carol".into()),
        discard_local_changes: true,
        revoke: false,
    });
    assert!(resp.ok, "{resp:?}");
    let (_c, r) = rt().block_on(attach_reverse(&server, "dave", "r", 5, false));
    refused_with(&r, ErrorCode::Unauthorized);
    let (_c, r) = rt().block_on(attach_reverse(&server, "carol", "r", 4, false));
    assert!(matches!(r, Ok(Msg::Attached { .. })), "{r:?}");
}

/// A staged cycle `seq` of disk `name` writing 4 KiB of `fill` at 0, as the server
/// stages it (`SRSTAGE1` + frames).
fn staged_cycle(seq: u64, fill: u8) -> Vec<u8> {
    let opts = proto::EncodeOpts {
        compress_level: None,
    };
    let mut out = b"SRSTAGE1".to_vec();
    for f in [
        Frame::Control(Msg::CycleBegin {
            seq,
            log_id: [seq as u8; 16],
            cut_time_ns: 1_000_000 + seq,
            extents: 1,
            data_bytes: 4096,
        }),
        Frame::Data {
            offset: 0,
            data: vec![fill; 4096],
        },
        Frame::Control(Msg::CycleEnd {
            seq,
            frames: 1,
            data_bytes: 4096,
        }),
    ] {
        proto::encode(&f, &opts, &mut out).unwrap();
    }
    out
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let t = to.join(e.file_name());
        if e.path().is_dir() {
            copy_dir(&e.path(), &t);
        } else {
            std::fs::copy(e.path(), t).unwrap();
        }
    }
}

#[test]
fn an_unauthorized_attach_does_not_open_or_recover_another_clients_disk() {
    let server = Server::start();
    rt().block_on(async {
        let (mut c, r) = Client::attach(&server, "alice", "d", 1, SIZE).await;
        r.unwrap();
        c.copy(&vec![7u8; SIZE as usize], 1, false).await;
        c.send(Msg::Bye).await;
    });
    // Disk `e` of alice, not open in the server yet, with cycle 1 staged (acknowledged,
    // not applied: what a crash leaves).
    let disks = server.store_dir().join("disks");
    let e = disks.join("e");
    copy_dir(&disks.join("d"), &e);
    let mut st: serde_json::Value =
        serde_json::from_slice(&std::fs::read(e.join("state.json")).unwrap()).unwrap();
    st["name"] = "e".into();
    std::fs::write(
        e.join("state.json"),
        serde_json::to_vec_pretty(&st).unwrap(),
    )
    .unwrap();
    let staged = e.join("staging").join(format!("{:020}.cycle", 1));
    std::fs::write(&staged, staged_cycle(1, 0xEE)).unwrap();
    let state_before = std::fs::read(e.join("state.json")).unwrap();
    let replica_before = std::fs::read(e.join("replica.img")).unwrap();
    let (_c, r) = rt().block_on(Client::attach(&server, "mallory", "e", 1, SIZE));
    refused_with(&r, ErrorCode::Unauthorized);
    assert!(staged.exists(), "the staged cycle was applied for mallory");
    assert_eq!(std::fs::read(e.join("state.json")).unwrap(), state_before);
    assert_eq!(
        std::fs::read(e.join("replica.img")).unwrap(),
        replica_before
    );
    // The staged cycle is valid: its owner's attach applies it.
    let (_c, r) = rt().block_on(Client::attach(&server, "alice", "e", 1, SIZE));
    match r {
        Ok(Msg::Attached { applied, .. }) => {
            assert_eq!(applied.map(|a| a.seq), Some(1));
        }
        other => panic!("{other:?}"),
    }
    assert!(!staged.exists());
    assert_eq!(
        &std::fs::read(e.join("replica.img")).unwrap()[..4096],
        &[0xEE; 4096][..]
    );
}

#[test]
fn a_full_copy_into_an_adopted_device_keeps_its_points() {
    // Reverse replication into this site's own device, two points, then the peer starts a
    // full copy over it (a failback with --mode full-download): the device is rewritten,
    // the points stay exportable from the retired copy, byte for byte.
    let agent = AgentState::new("r", Some("bob"));
    let server = start_adopting(&agent);
    let resp = server.call(&Request::AcceptReverse {
        name: "r".into(),
        from: None,
        discard_local_changes: true,
        revoke: false,
    });
    assert!(resp.ok, "{resp:?}");
    rt().block_on(async {
        let (mut c, r) = attach_reverse(&server, "bob", "r", 2, false).await;
        assert!(matches!(r, Ok(Msg::Attached { .. })), "{r:?}");
        c.write_points(3..=4, 8192).await;
        c.send(Msg::Bye).await;
    });
    let pts = wait_points(&server, "r", 2);
    let out = tempfile::tempdir().unwrap();
    let export = |disk: &str, id: u64| {
        let f = out
            .path()
            .join(format!("{}-{id}.img", disk.replace('@', "_")));
        let r = server.call(&Request::Export {
            name: disk.into(),
            point: base::points::PointSel::Id(id),
            out: f.display().to_string(),
            force: true,
        });
        assert!(r.ok, "{r:?}");
        std::fs::read(f).unwrap()
    };
    let before: Vec<(u64, Vec<u8>)> = pts
        .iter()
        .map(|p| p["id"].as_u64().unwrap())
        .map(|id| (id, export("r", id)))
        .collect();
    rt().block_on(async {
        let (mut c, r) = attach_reverse(&server, "bob", "r", 2, false).await;
        assert!(matches!(r, Ok(Msg::Attached { .. })), "{r:?}");
        c.copy(&vec![0x33u8; SIZE as usize], 20, true).await;
        c.send(Msg::Bye).await;
    });
    assert_eq!(
        std::fs::read(&agent.device).unwrap(),
        vec![0x33u8; SIZE as usize],
        "the copy went into the device"
    );
    let r = server.call(&Request::Retired { purge: None });
    let copies = r.data["retired"].as_array().cloned().unwrap_or_default();
    assert_eq!(copies.len(), 1, "{r:?}");
    assert_eq!(copies[0]["replica_kept"], true);
    let id = copies[0]["id"].as_str().unwrap().to_string();
    for (p, bytes) in &before {
        assert!(export(&id, *p) == *bytes, "point {p} changed");
    }
}
