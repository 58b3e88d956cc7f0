//! The hostile-peer harness: the real server (`secondary::server::run`) in-process on loopback,
//! with a private CA, and a scripted client that holds a valid certificate and sends raw
//! protocol frames over real TLS — whatever a compromised or buggy agent could send.
//!
//! Each test file under `secondary/tests/hostile_*.rs` uses it with `mod common;`. Nothing here
//! needs root: the server listens on 127.0.0.1 and its store is a temporary directory.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::cast_possible_truncation,
    dead_code,
    unreachable_pub
)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use base::control::{self, Request, Response};
use base::net::{self, ClientStream};
use proto::{EncodeOpts, Frame, Msg};
use tokio::sync::oneshot;

/// A private CA with a server identity (`server`, SAN 127.0.0.1) and client identities
/// issued on demand.
pub struct Pki {
    pub dir: tempfile::TempDir,
}

impl Pki {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        pki::init(
            &dir.path().join("server"),
            "server",
            &["127.0.0.1".to_string()],
            30,
        )
        .unwrap();
        Self { dir }
    }

    /// The server's PKI directory (holds the CA key).
    pub fn server_dir(&self) -> PathBuf {
        self.dir.path().join("server")
    }

    /// A client identity named `name` (certificate CN), issued once.
    pub fn client(&self, name: &str) -> pki::Identity {
        let out = self.dir.path().join(format!("client-{name}"));
        if !out.exists() {
            pki::issue(&self.server_dir(), name, &[], 30, &out).unwrap();
        }
        pki::Identity::load(&out).unwrap()
    }
}

/// A port free on 127.0.0.1 right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The real server, running on its own runtime thread until dropped.
pub struct Server {
    pub pki: Pki,
    pub store: tempfile::TempDir,
    pub addr: String,
    pub socket: PathBuf,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<anyhow::Result<()>>>,
}

impl Server {
    /// Starts a server with default options and waits until its control socket answers.
    pub fn start() -> Self {
        Self::start_with(|_| {})
    }

    /// Starts a server after `tweak` adjusted its options.
    pub fn start_with(tweak: impl FnOnce(&mut secondary::server::ServerOptions)) -> Self {
        let pki = Pki::new();
        let store = tempfile::tempdir().unwrap();
        let addr = format!("127.0.0.1:{}", free_port());
        let socket = store.path().join("server.sock");
        let mut opts = secondary::server::ServerOptions {
            listen: addr.clone(),
            store: store.path().join("store"),
            socket: socket.clone(),
            retention: base::points::Retention::default(),
            metrics: None,
            adopt_from: None,
            history_budget: secondary::store::HistoryBudget::default(),
            max_store_bytes: None,
            group_points_every: Duration::from_secs(1),
            limits: base::listen::Limits::default(),
        };
        tweak(&mut opts);
        let id = pki::Identity::load(&pki.server_dir()).unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap()
                .block_on(secondary::server::run(opts, &id, async move {
                    let _ = stopped.await;
                }))
        });
        let s = Self {
            pki,
            store,
            addr,
            socket,
            stop: Some(stop),
            thread: Some(thread),
        };
        s.wait_ready();
        s
    }

    fn wait_ready(&self) {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            if control::call(&self.socket, &Request::Status, Duration::from_secs(2)).is_ok()
                && std::net::TcpStream::connect(&self.addr).is_ok()
            {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the server did not come up"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The store directory the server was given.
    pub fn store_dir(&self) -> PathBuf {
        self.store.path().join("store")
    }

    /// A control request; panics if the socket does not answer within `timeout`.
    pub fn call_within(&self, req: &Request, timeout: Duration) -> Response {
        control::call(&self.socket, req, timeout).unwrap()
    }

    /// A control request (10 s timeout).
    pub fn call(&self, req: &Request) -> Response {
        self.call_within(req, Duration::from_secs(10))
    }

    /// The server's status report (`data` of `Request::Status`).
    pub fn status(&self) -> serde_json::Value {
        let r = self.call(&Request::Status);
        assert!(r.ok, "{r:?}");
        r.data
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A scripted client: real TLS with a valid certificate, raw frames.
pub struct Client {
    pub s: ClientStream,
    pub name: String,
}

/// A fixed disk id for tests (`[n; 16]`).
pub fn disk_id(n: u8) -> [u8; 16] {
    [n; 16]
}

impl Client {
    /// Connects as `name` (a certificate of the server's CA) and completes TLS only.
    pub async fn tls(server: &Server, name: &str) -> Self {
        let id = server.pki.client(name);
        let s = net::connect(
            &server.addr,
            id.client_config().unwrap(),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
        Self {
            s,
            name: name.to_string(),
        }
    }

    /// TLS + Hello/Welcome.
    pub async fn hello(server: &Server, name: &str) -> Self {
        let mut c = Self::tls(server, name).await;
        net::client_hello(&mut c.s, name, "server").await.unwrap();
        c
    }

    /// TLS + Hello + `Attach` of disk `disk` (id `[id; 16]`, `size` bytes, 512-byte blocks);
    /// returns the server's answer (`Attached` or the refusal).
    pub async fn attach(
        server: &Server,
        name: &str,
        disk: &str,
        id: u8,
        size: u64,
    ) -> (Self, Result<Msg, net::ReplError>) {
        let mut c = Self::hello(server, name).await;
        c.send(Msg::Attach {
            disk: disk.into(),
            disk_id: disk_id(id),
            size,
            block_size: 512,
        })
        .await;
        let r = c.recv().await;
        (c, r)
    }

    /// Sends a control message.
    pub async fn send(&mut self, m: Msg) {
        net::send(&mut self.s, m).await.unwrap();
    }

    /// Sends any frame (uncompressed); an error means the server closed the connection.
    pub async fn frame(&mut self, f: &Frame) -> Result<(), proto::ProtoError> {
        proto::write_frame(
            &mut self.s,
            f,
            &EncodeOpts {
                compress_level: None,
            },
        )
        .await
        .map(|_| ())
    }

    /// The next control message (an `Error` frame becomes `Err(Refused)`).
    pub async fn recv(&mut self) -> Result<Msg, net::ReplError> {
        tokio::time::timeout(
            Duration::from_secs(30),
            net::recv_control(&mut self.s, "server"),
        )
        .await
        .unwrap_or_else(|_| Err(net::ReplError::Net("no answer within 30 s".into())))
    }
}

impl Client {
    /// A whole initial copy of `data` (the disk's full contents) from log `from_seq`:
    /// CopyBegin, one Data frame per 64 KiB (Zero for zero chunks), CopyDone.
    pub async fn copy(&mut self, data: &[u8], from_seq: u64, restart: bool) {
        self.send(Msg::CopyBegin { from_seq, restart }).await;
        match self.recv().await.unwrap() {
            Msg::CopyAck { .. } => {}
            m => panic!("CopyBegin answered with {}", m.name()),
        }
        for (i, chunk) in data.chunks(64 << 10).enumerate() {
            let offset = (i * (64 << 10)) as u64;
            let f = if chunk.iter().all(|&b| b == 0) {
                Frame::Zero {
                    offset,
                    len: chunk.len() as u64,
                }
            } else {
                Frame::Data {
                    offset,
                    data: chunk.to_vec(),
                }
            };
            self.frame(&f).await.unwrap();
        }
        self.send(Msg::CopyDone { from_seq }).await;
        match self.recv().await.unwrap() {
            Msg::CopyAck { .. } => {}
            m => panic!("CopyDone answered with {}", m.name()),
        }
    }

    /// Cycle `seq` made of `frames` (Data/Zero); returns the answers to its end: `CycleAck`
    /// then `Applied`, or the refusal.
    pub async fn cycle(&mut self, seq: u64, frames: &[Frame]) -> Result<(), net::ReplError> {
        let data_bytes: u64 = frames
            .iter()
            .map(|f| match f {
                Frame::Data { data, .. } => data.len() as u64,
                _ => 0,
            })
            .sum();
        self.send(Msg::CycleBegin {
            seq,
            log_id: [seq as u8; 16],
            cut_time_ns: 1_000_000 + seq,
            extents: frames.len() as u64,
            data_bytes,
        })
        .await;
        for f in frames {
            if self.frame(f).await.is_err() {
                break;
            }
        }
        self.send(Msg::CycleEnd {
            seq,
            frames: frames.len() as u64,
            data_bytes,
        })
        .await;
        match self.recv().await? {
            Msg::CycleAck { seq: s } if s == seq => {}
            m => panic!("CycleEnd answered with {}", m.name()),
        }
        match self.recv().await? {
            Msg::Applied { seq: s, .. } if s == seq => Ok(()),
            m => panic!("expected Applied, got {}", m.name()),
        }
    }

    /// The source's verdict on cycle `seq`: consistent, a crash-consistent point.
    pub async fn consistent(&mut self, seq: u64) {
        self.send(Msg::Verdict {
            seq,
            crash_consistent: true,
            label: None,
        })
        .await;
    }
}

impl Client {
    /// An initial copy of a disk of `size` bytes as one zero range: no byte of the replica
    /// is allocated.
    pub async fn copy_zero(&mut self, size: u64) {
        self.send(Msg::CopyBegin {
            from_seq: 1,
            restart: false,
        })
        .await;
        assert!(matches!(self.recv().await.unwrap(), Msg::CopyAck { .. }));
        self.frame(&Frame::Zero {
            offset: 0,
            len: size,
        })
        .await
        .unwrap();
        self.send(Msg::CopyDone { from_seq: 1 }).await;
        assert!(matches!(self.recv().await.unwrap(), Msg::CopyAck { .. }));
    }

    /// Cycles `seqs`, each writing `len` bytes of the byte `seq` at offset `len × seq`, each
    /// judged consistent: one recovery point per cycle.
    pub async fn write_points(&mut self, seqs: std::ops::RangeInclusive<u64>, len: usize) {
        for seq in seqs {
            let frame = Frame::Data {
                offset: len as u64 * seq,
                data: vec![seq as u8; len],
            };
            self.cycle(seq, &[frame]).await.unwrap();
            self.consistent(seq).await;
        }
    }
}

/// `client`'s disk `disk` (1 MiB, id 1): attached, copied (all 7s), then `points` cycles of
/// 4 KiB judged consistent; the session then ends.
pub async fn replicate_points(server: &Server, client: &str, disk: &str, points: u64) {
    let size = 1u64 << 20;
    let (mut c, r) = Client::attach(server, client, disk, 1, size).await;
    r.unwrap();
    c.copy(&vec![7u8; 1 << 20], 1, false).await;
    c.write_points(1..=points, 4096).await;
    c.send(Msg::Bye).await;
}

/// The points of `disk` (`sitrep points`), as JSON.
pub fn points(server: &Server, disk: &str) -> Vec<serde_json::Value> {
    let r = server.call(&Request::Points { name: disk.into() });
    assert!(r.ok, "{r:?}");
    r.data["points"].as_array().cloned().unwrap_or_default()
}

/// A runtime for a test body.
pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// The files of a directory tree, recursively.
pub fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                todo.push(p.clone());
            }
            out.push(p);
        }
    }
    out
}

/// Keeps `Arc` in use for tests that share a server across threads.
pub type Shared<T> = Arc<T>;

/// Polls `server`'s status until `done` holds; panics after 20 s, naming `what` and showing
/// the last status.
pub fn wait_for_status(
    server: &Server,
    what: &str,
    done: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let s = server.status();
        if done(&s) {
            return s;
        }
        assert!(std::time::Instant::now() < deadline, "{what}: {s}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The files in the staging directory of disk `disk` of the store at `store`.
pub fn staged_files(store: &Path, disk: &str) -> Vec<PathBuf> {
    let dir = store.join("disks").join(disk).join("staging");
    std::fs::read_dir(&dir)
        .map(|rd| rd.flatten().map(|e| e.path()).collect())
        .unwrap_or_default()
}

/// Root and a loop device (a test failover attaches one), as CI runs; else the caller skips,
/// or fails when `SITREP_REQUIRE_TIERS=1` says every tier must run.
pub fn can_attach_loop_devices() -> bool {
    let root = std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .find(|l| l.starts_with("Uid:"))
            .and_then(|l| l.split_whitespace().nth(2))
            == Some("0")
    });
    if root && Path::new("/dev/loop-control").exists() {
        return true;
    }
    assert!(
        std::env::var("SITREP_REQUIRE_TIERS").as_deref() != Ok("1"),
        "a test failover needs root and loop devices"
    );
    eprintln!("SKIP: a test failover needs root and loop devices");
    false
}
