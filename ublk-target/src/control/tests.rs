#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hrl::{
    ChainSpec, DiskId, DiskIdentity, Generation, LogReader, LogWriter, RecordBody, RecoveryMode,
    SyncPolicy, WriterConfig,
};

use super::*;
use crate::commit::{Change, QueueLog};
use crate::config::Durability;

fn shared_log(dir: &Path) -> Arc<SharedLog> {
    let spec = ChainSpec {
        disk: DiskIdentity {
            id: DiskId([2; 16]),
            size: 64 << 20,
            logical_block_size: 512,
        },
        journal: false,
        generation: Generation(1),
    };
    let cfg = WriterConfig {
        sync: SyncPolicy::Explicit,
        max_total_bytes: Some(1 << 30),
        ..WriterConfig::default()
    };
    let (w, _) = LogWriter::open(dir, spec, cfg).unwrap();
    SharedLog::new(w, false, Durability::Flush, Some(1 << 30)).unwrap()
}

/// Logs `n` plain writes as a queue does (`Flush` durability: written at `after_tick`).
fn writes(q: &QueueLog, n: u64) {
    let data = [0u8; 4096];
    for i in 0..n {
        let t = q
            .append(Change::Write {
                offset: i * 4096,
                data: &data,
                fua: false,
            })
            .unwrap();
        q.after_tick();
        assert_eq!(q.state(t), Some(true));
        // Performed and completed, as a queue would: a cut waits for that.
        q.performed(t.parity().unwrap());
    }
}

/// A served log in a temporary directory, its socket beside it.
struct Setup {
    // Dropped in this order: the server, the log, the directory.
    server: Option<ControlServer>,
    log: Arc<SharedLog>,
    dir: tempfile::TempDir,
}

impl Setup {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let logs = dir.path().join("logs");
        std::fs::create_dir(&logs).unwrap();
        let log = shared_log(&logs);
        let server = ControlServer::start(&dir.path().join("run/ctl.sock"), Arc::clone(&log));
        Self {
            server: Some(server.unwrap()),
            log,
            dir,
        }
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("run/ctl.sock")
    }

    /// A raw connection, to send anything.
    fn raw(&self) -> (UnixStream, BufReader<UnixStream>) {
        let s = UnixStream::connect(self.socket()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let r = BufReader::new(s.try_clone().unwrap());
        (s, r)
    }
}

fn ask(s: &mut UnixStream, r: &mut BufReader<UnixStream>, line: &str) -> serde_json::Value {
    s.write_all(line.as_bytes()).unwrap();
    s.write_all(b"\n").unwrap();
    let mut reply = String::new();
    r.read_line(&mut reply).unwrap();
    serde_json::from_str(&reply).unwrap()
}

#[test]
fn a_client_cuts_tags_and_reads_the_counters() {
    let t = Setup::new();
    let mode = std::fs::metadata(t.socket()).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let dir_mode = std::fs::metadata(t.dir.path().join("run")).unwrap();
    assert_eq!(dir_mode.permissions().mode() & 0o777, 0o700);
    let q = QueueLog::new(Arc::clone(&t.log)).unwrap();
    let mut c = Client::connect(&t.socket()).unwrap();
    assert_eq!(c.stats().unwrap().records, 0);
    writes(&q, 7);
    c.mark(77).unwrap();
    let cut = c.cut().unwrap();
    assert_eq!(cut.seq, 0);
    assert!(cut.time_ns > 0);
    let mut r = LogReader::open(&cut.path, RecoveryMode::Strict).unwrap();
    assert!(r.seal().is_some(), "the cut log is sealed");
    let recs = r.read_all().unwrap();
    assert_eq!(recs.len(), 8);
    assert!(matches!(
        recs[7].body,
        RecordBody::ConsistencyTag { tag: 77, .. }
    ));
    writes(&q, 2);
    let s = c.stats().unwrap();
    assert_eq!(
        s,
        ControlStats {
            records: 9,
            log_bytes: s.log_bytes,
            log_cap: Some(1 << 30),
            overflows: 0,
            journal: false,
            next_seq: recs[7].seq.0 + 3,
        }
    );
    let cut2 = c.cut().unwrap();
    assert_eq!(cut2.seq, 1);
    assert_ne!(cut2.path, cut.path);
}

#[test]
fn every_request_form_parses_and_garbage_gets_an_error_on_a_usable_connection() {
    let t = Setup::new();
    let (mut s, mut r) = t.raw();
    let v = ask(&mut s, &mut r, r#"{"cut":null}"#);
    assert_eq!(v["ok"]["seq"], 0, "{v}");
    let v = ask(&mut s, &mut r, r#""cut""#);
    assert_eq!(v["ok"]["seq"], 1, "{v}");
    let v = ask(&mut s, &mut r, r#"{"mark":{"tag":5}}"#);
    assert_eq!(v, serde_json::json!({"ok": null}));
    for bad in [
        "not json",
        "",
        r#"{"mark":{"tag":-1}}"#,
        r#"{"mark":{}}"#,
        r#""reboot""#,
    ] {
        let v = ask(&mut s, &mut r, bad);
        assert!(
            v["error"].as_str().unwrap().contains("bad request"),
            "{bad}: {v}"
        );
    }
    let v = ask(&mut s, &mut r, r#""stats""#);
    assert_eq!(v["ok"]["records"], 0, "{v}");
    assert_eq!(v["ok"]["log_cap"], 1u64 << 30, "{v}");
}

#[test]
fn an_oversize_request_line_closes_the_connection() {
    let t = Setup::new();
    let (mut s, mut r) = t.raw();
    // The longest line accepted is served.
    let pad = " ".repeat(MAX_REQUEST_LINE - r#""stats""#.len());
    let v = ask(&mut s, &mut r, &format!("{pad}\"stats\""));
    assert!(v["ok"].is_object(), "{v}");
    // One byte more and the connection is closed (a reset: the server left bytes unread).
    let long = "x".repeat(MAX_REQUEST_LINE + 1);
    let _ = s.write_all(long.as_bytes());
    let mut rest = Vec::new();
    match r.read_to_end(&mut rest) {
        Ok(_) => assert!(rest.is_empty(), "{}", String::from_utf8_lossy(&rest)),
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
    }
    // Other connections are served.
    let mut c = Client::connect(&t.socket()).unwrap();
    c.stats().unwrap();
}

#[test]
fn connections_past_the_limit_are_closed() {
    let t = Setup::new();
    let mut open: Vec<Client> = (0..MAX_CONNECTIONS)
        .map(|_| Client::connect(&t.socket()).unwrap())
        .collect();
    for c in &mut open {
        c.stats().unwrap();
    }
    let mut extra = Client::connect(&t.socket()).unwrap();
    let e = extra.stats().unwrap_err();
    assert!(
        matches!(
            e.kind(),
            std::io::ErrorKind::UnexpectedEof
                | std::io::ErrorKind::ConnectionReset
                | std::io::ErrorKind::BrokenPipe
        ),
        "{e}"
    );
    // One closes; a new one is served once the server noticed.
    drop(open.pop());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if Client::connect(&t.socket())
            .and_then(|mut c| c.stats())
            .is_ok()
        {
            break;
        }
        assert!(Instant::now() < deadline, "no room for a new connection");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn stopping_closes_connections_and_removes_the_socket() {
    let mut t = Setup::new();
    let mut c = Client::connect(&t.socket()).unwrap();
    c.stats().unwrap();
    t.server.take().unwrap().stop();
    assert!(!t.socket().exists());
    assert!(c.stats().is_err());
    assert!(Client::connect(&t.socket()).is_err());
}

#[test]
fn a_stale_socket_is_replaced_and_anything_else_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let log = shared_log(dir.path());
    let path = dir.path().join("ctl.sock");
    // A crashed server's socket: bound, nobody listening any more.
    drop(UnixListener::bind(&path).unwrap());
    let server = ControlServer::start(&path, Arc::clone(&log)).unwrap();
    Client::connect(&path).unwrap().stats().unwrap();
    server.stop();
    std::fs::write(&path, b"not a socket").unwrap();
    let e = ControlServer::start(&path, log).unwrap_err();
    assert!(e.to_string().contains("not a socket"), "{e}");
    assert_eq!(std::fs::read(&path).unwrap(), b"not a socket");
}

#[test]
fn a_failed_request_is_an_error_reply_and_the_client_says_it() {
    let t = Setup::new();
    let mut c = Client::connect(&t.socket()).unwrap();
    let w = t.log.take().unwrap();
    let e = c.cut().unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::Other);
    assert!(e.to_string().contains("closed"), "{e}");
    // Still in step: the next request is answered.
    assert!(c.mark(1).unwrap_err().to_string().contains("closed"));
    c.stats().unwrap();
    w.close().unwrap();
}

#[test]
fn only_a_ublk_block_device_has_an_id() {
    assert_eq!(ublk_id(Path::new("/dev/ublkb3")), Some(3));
    assert_eq!(ublk_id(Path::new("/dev/ublkc3")), None);
    assert_eq!(ublk_id(Path::new("/tmp/ublkb3")), None);
    assert_eq!(ublk_id(Path::new("/dev/ublkbx")), None);
    assert_eq!(find(Path::new("/nonexistent/ublkb0")), None);
}

#[test]
fn the_target_data_of_older_servers_has_no_control_socket() {
    let old = serde_json::json!({
        "backing": "/srv/d.img", "log_dir": "/srv/d.img.hrl", "mode": "extents",
        "durability": "flush", "disk_id": "00"
    });
    let t: TargetData = serde_json::from_value(old).unwrap();
    assert_eq!(t.control, None);
    assert_eq!(socket_path("ab"), PathBuf::from("/run/sitrep/ublk/ab.sock"));
}
