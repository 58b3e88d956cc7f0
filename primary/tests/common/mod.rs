//! The in-process harness: the real agent (`primary::run_with`) against the real server
//! (`secondary::server::InProcess`) in one process — each session over a
//! `tokio::io::duplex`, the disks' changes from the fake source (`primary::source::fake`),
//! the retry schedule on a simulated clock ([`SimClock`]). No TLS (the server is told the
//! client's name, as its certificate would carry it), no root, no loop devices: a "device"
//! is a regular file under the target directory (not tmpfs: the agent reads it O_DIRECT).
//!
//! Faults are injected where the network would cause them ([`Fault`]): a dial refused, a
//! certificate refused, a connection cut after N bytes.
//!
//! Tests need a multi-threaded runtime (the agent calls its source through
//! `block_in_place`): `#[tokio::test(flavor = "multi_thread", worker_threads = 2)]`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::cast_possible_truncation,
    dead_code,
    unreachable_pub
)]

use std::collections::VecDeque;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use base::control::{self, Request, Response};
use base::net::ReplError;
use base::status::{DiskStatus, Job, PointsReport, StatusReport};
use primary::backoff::{Clock, Sleep};
use primary::connect::{Connect, Connected, Connecting};
use primary::source::fake::FakeSource;
use secondary::server::InProcess;
use tokio::io::{AsyncRead, AsyncWrite, DuplexStream, ReadBuf};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

/// The server's certificate name.
pub const SERVER: &str = "server";
/// What the agents dial (never resolved: the connector hands out duplexes).
pub const SERVER_ADDR: &str = "server:7000";
/// The retry unit the agents run with (simulated: nothing waits for it).
pub const UNIT: Duration = Duration::from_secs(60);
/// How long a test waits for something that should happen (a failure, not a measurement).
pub const PATIENCE: Duration = Duration::from_secs(60);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

// ---- the simulated clock ---------------------------------------------------------------

/// A simulated clock. Manual ([`SimClock::manual`]): a `sleep` waits until the test wakes it
/// ([`SimClock::wake_next`]), which moves the time to its end. Automatic
/// ([`SimClock::auto`]): a `sleep` moves the time forward and returns at once.
pub struct SimClock {
    st: Mutex<SimState>,
    /// Sleeps waiting to be woken (manual mode).
    pending: watch::Sender<usize>,
}

struct SimState {
    now_ns: u64,
    auto: bool,
    sleepers: Vec<(u64, oneshot::Sender<()>)>,
}

/// Where simulated time starts (a plausible Unix time).
pub const T0: u64 = 1_700_000_000_000_000_000;

impl SimClock {
    pub fn manual() -> Arc<Self> {
        Self::new(false)
    }

    pub fn auto() -> Arc<Self> {
        Self::new(true)
    }

    fn new(auto: bool) -> Arc<Self> {
        Arc::new(Self {
            st: Mutex::new(SimState {
                now_ns: T0,
                auto,
                sleepers: Vec::new(),
            }),
            pending: watch::channel(0).0,
        })
    }

    fn publish(&self, st: &mut SimState) {
        st.sleepers.retain(|(_, w)| !w.is_closed());
        self.pending.send_replace(st.sleepers.len());
    }

    /// Waits until someone sleeps on the clock; returns when that sleep is due.
    pub async fn next_sleep(&self) -> u64 {
        let mut rx = self.pending.subscribe();
        tokio::time::timeout(PATIENCE, rx.wait_for(|n| *n > 0))
            .await
            .expect("nobody slept on the clock")
            .unwrap();
        let st = lock(&self.st);
        st.sleepers.iter().map(|(due, _)| *due).min().unwrap()
    }

    /// Sleeps waiting now (none once the retry loop ended).
    pub fn sleeping(&self) -> usize {
        let mut st = lock(&self.st);
        self.publish(&mut st);
        st.sleepers.len()
    }

    /// Moves the time to the earliest sleep's end and wakes it; returns that time.
    pub fn wake_next(&self) -> Option<u64> {
        let mut st = lock(&self.st);
        self.publish(&mut st);
        let i = (0..st.sleepers.len()).min_by_key(|&i| st.sleepers[i].0)?;
        let (due, w) = st.sleepers.swap_remove(i);
        st.now_ns = st.now_ns.max(due);
        let _ = w.send(());
        self.publish(&mut st);
        Some(due)
    }
}

impl Clock for SimClock {
    fn now_ns(&self) -> u64 {
        lock(&self.st).now_ns
    }

    fn sleep(&self, d: Duration) -> Sleep<'_> {
        let mut st = lock(&self.st);
        let due = st.now_ns.saturating_add(d.as_nanos() as u64);
        if st.auto {
            st.now_ns = due;
            return Box::pin(std::future::ready(()));
        }
        let (tx, rx) = oneshot::channel();
        st.sleepers.push((due, tx));
        self.publish(&mut st);
        Box::pin(async move {
            let _ = rx.await;
        })
    }
}

// ---- the network -----------------------------------------------------------------------

/// What the next connection attempt meets.
#[derive(Debug, Clone, Copy)]
pub enum Fault {
    /// The dial fails (the server is unreachable): a recoverable network error.
    Down,
    /// The TLS handshake fails on a certificate: not recoverable.
    Auth,
    /// The connection is made, and cut after the agent wrote this many bytes.
    CutAfter(u64),
}

/// The agent's connector: each connection is a duplex whose other end the in-process
/// server serves as client `client`; faults queued by the test come first.
pub struct Net {
    server: Arc<InProcess>,
    clock: Arc<SimClock>,
    client: String,
    faults: Mutex<VecDeque<Fault>>,
    /// Simulated time of every attempt.
    attempts: Mutex<Vec<u64>>,
    /// The server's side of every connection made: how its session ended.
    sessions: Mutex<Vec<JoinHandle<Result<(), ReplError>>>>,
    /// The newest connection's switch: set, it breaks at the agent's next write.
    live: Mutex<Option<Arc<AtomicBool>>>,
}

impl Net {
    /// Queues `f` for the next attempt without one queued.
    pub fn fault(&self, f: Fault) {
        lock(&self.faults).push_back(f);
    }

    /// Breaks the newest connection at the agent's next write.
    pub fn cut_live(&self) {
        if let Some(c) = lock(&self.live).as_ref() {
            c.store(true, Ordering::SeqCst);
        }
    }

    /// The simulated times of the attempts so far.
    pub fn attempts(&self) -> Vec<u64> {
        lock(&self.attempts).clone()
    }

    /// How the server's sessions ended, in order (waits for each to end: only when none is
    /// live).
    pub async fn session_results(&self) -> Vec<Result<(), ReplError>> {
        let n = lock(&self.sessions).len();
        let mut out = Vec::new();
        for i in 0..n {
            out.push(self.session_end(i).await);
        }
        out
    }

    /// How the server's session of connection `i` (0: the first made) ended, once it has.
    pub async fn session_end(&self, i: usize) -> Result<(), ReplError> {
        let h = std::mem::replace(&mut lock(&self.sessions)[i], tokio::spawn(async { Ok(()) }));
        tokio::time::timeout(PATIENCE, h)
            .await
            .expect("the server's session did not end")
            .unwrap()
    }
}

impl Connect for Net {
    fn connect<'a>(&'a self, to: &'a str) -> Connecting<'a> {
        Box::pin(async move {
            lock(&self.attempts).push(self.clock.now_ns());
            let fault = lock(&self.faults).pop_front();
            let (agent_end, server_end) = tokio::io::duplex(1 << 20);
            let cut = match fault {
                Some(Fault::Down) => {
                    return Err(ReplError::Net(format!(
                        "connecting to {to}: Connection refused (os error 111)"
                    )));
                }
                Some(Fault::Auth) => {
                    return Err(ReplError::Auth(format!(
                        "{to}: the server refused our certificate"
                    )));
                }
                Some(Fault::CutAfter(n)) => n,
                None => u64::MAX,
            };
            let h = tokio::spawn(self.server.serve_stream(&self.client, server_end));
            lock(&self.sessions).push(h);
            let stream = CutStream::new(agent_end, cut);
            *lock(&self.live) = Some(stream.now.clone());
            Ok(Connected {
                stream: Box::new(stream),
                server_name: Some(SERVER.to_string()),
            })
        })
    }
}

/// A duplex end that breaks — both ways, as a dead link does — once `left` bytes are written.
struct CutStream {
    inner: Option<DuplexStream>,
    left: u64,
    /// Set: break at the next write ([`Net::cut_live`]).
    now: Arc<AtomicBool>,
    reader: Option<Waker>,
}

impl CutStream {
    fn new(inner: DuplexStream, left: u64) -> Self {
        Self {
            inner: Some(inner),
            left,
            now: Arc::new(AtomicBool::new(false)),
            reader: None,
        }
    }

    fn gone() -> io::Error {
        io::Error::new(io::ErrorKind::ConnectionReset, "connection cut by the test")
    }
}

impl AsyncRead for CutStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.reader = Some(cx.waker().clone());
        match self.inner.as_mut() {
            Some(s) => Pin::new(s).poll_read(cx, buf),
            None => Poll::Ready(Err(Self::gone())),
        }
    }
}

impl AsyncWrite for CutStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.left == 0 || this.now.load(Ordering::SeqCst) {
            // The link dies: the server sees the end, our reader an error.
            this.inner = None;
            if let Some(w) = this.reader.take() {
                w.wake();
            }
        }
        let n = buf
            .len()
            .min(usize::try_from(this.left).unwrap_or(usize::MAX));
        let Some(s) = this.inner.as_mut() else {
            return Poll::Ready(Err(CutStream::gone()));
        };
        let r = Pin::new(s).poll_write(cx, &buf[..n]);
        if let Poll::Ready(Ok(k)) = r {
            this.left -= k as u64;
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.inner.as_mut() {
            Some(s) => Pin::new(s).poll_flush(cx),
            None => Poll::Ready(Err(Self::gone())),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.inner.as_mut() {
            Some(s) => Pin::new(s).poll_shutdown(cx),
            None => Poll::Ready(Ok(())),
        }
    }
}

// ---- the sites -------------------------------------------------------------------------

/// The secondary site: the real server in-process, its store in a temporary directory.
pub struct Site {
    pub dir: tempfile::TempDir,
    pub server: Arc<InProcess>,
}

impl Site {
    pub fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("inproc")
            .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
            .unwrap();
        let opts = secondary::server::ServerOptions {
            listen: "127.0.0.1:0".into(),
            store: dir.path().join("store"),
            socket: dir.path().join("server.sock"),
            retention: base::points::Retention::default(),
            metrics: None,
            adopt_from: None,
            history_budget: secondary::store::HistoryBudget::default(),
            max_store_bytes: None,
            group_points_every: Duration::from_secs(1),
            limits: base::listen::Limits::default(),
        };
        let server = Arc::new(InProcess::start(&opts, SERVER).unwrap());
        Self { dir, server }
    }

    /// A device (a regular file) of `size` bytes filled with bytes derived from `seed`.
    pub fn device(&self, name: &str, size: usize, seed: u64) -> PathBuf {
        let path = self.dir.path().join(format!("{name}.dev"));
        std::fs::write(&path, pattern(size, seed)).unwrap();
        path
    }

    /// The replica of disk `name` as the server holds it.
    pub fn replica(&self, name: &str) -> Vec<u8> {
        std::fs::read(
            self.dir
                .path()
                .join("store/disks")
                .join(name)
                .join("replica.img"),
        )
        .unwrap()
    }

    /// A control request to the server.
    pub async fn request(&self, req: Request) -> Response {
        self.server.request(req).await
    }

    /// The server's recovery points of disk `name`.
    pub async fn points(&self, name: &str) -> PointsReport {
        let r = self.request(Request::Points { name: name.into() }).await;
        assert!(r.ok, "{r:?}");
        serde_json::from_value(r.data).unwrap()
    }

    /// The server's status of disk `name`.
    pub async fn disk_status(&self, name: &str) -> DiskStatus {
        let r = self.request(Request::Status).await;
        assert!(r.ok, "{r:?}");
        let st: StatusReport = serde_json::from_value(r.data).unwrap();
        st.disks.into_iter().find(|d| d.name == name).unwrap()
    }

    /// Starts agent `name` (its client certificate name) with a fresh fake source.
    pub async fn agent(&self, name: &str, clock: Arc<SimClock>) -> Agent {
        Agent::start(self, name, clock, FakeSource::new()).await
    }
}

/// `size` bytes of a cheap pseudo-random pattern (no zero runs: zero chunks travel as
/// zero ranges, and these tests want data on the wire).
pub fn pattern(size: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut out = Vec::with_capacity(size + 8);
    while out.len() < size {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&(x | 0x0101_0101_0101_0101).to_le_bytes());
    }
    out.truncate(size);
    out
}

/// `sitrep protect`'s recovery-point flags (None: the default).
#[derive(Debug, Default, Clone, Copy)]
pub struct PointOpts {
    pub crash_points_every: Option<&'static str>,
    pub retain: Option<&'static str>,
    pub max_point_storage: Option<&'static str>,
    /// The consistency group (`protect --group`).
    pub group: Option<&'static str>,
}

/// An agent (the primary site) in-process.
pub struct Agent {
    pub name: String,
    pub state: PathBuf,
    pub socket: PathBuf,
    pub fake: FakeSource,
    pub clock: Arc<SimClock>,
    pub net: Arc<Net>,
    stop: Option<oneshot::Sender<()>>,
    /// Policy files for the running agent to apply, as the daemon sends one per SIGHUP.
    pub reload: Option<tokio::sync::mpsc::Sender<base::config::PolicyFile>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl Agent {
    /// Starts agent `name` on `site`, with `fake` as its change source, and waits until
    /// its control socket answers.
    pub async fn start(site: &Site, name: &str, clock: Arc<SimClock>, fake: FakeSource) -> Self {
        let net = Arc::new(Net {
            server: site.server.clone(),
            clock: clock.clone(),
            client: name.to_string(),
            faults: Mutex::new(VecDeque::new()),
            attempts: Mutex::new(Vec::new()),
            sessions: Mutex::new(Vec::new()),
            live: Mutex::new(None),
        });
        let state = site.dir.path().join(format!("agent-{name}"));
        let socket = site.dir.path().join(format!("{name}.sock"));
        let mut a = Self {
            name: name.to_string(),
            state,
            socket,
            fake,
            clock,
            net,
            stop: None,
            reload: None,
            task: None,
        };
        a.run().await;
        a
    }

    async fn run(&mut self) {
        // A new socket per run: the stopped run's socket task lives as long as the runtime
        // (in the daemon, the process ends with it) and keeps its lock.
        static RUNS: AtomicU64 = AtomicU64::new(0);
        let run = RUNS.fetch_add(1, Ordering::Relaxed);
        self.socket = self.state.with_extension(format!("{run}.sock"));
        let opts = primary::AgentOptions {
            state: self.state.clone(),
            socket: self.socket.clone(),
            retry_unit: UNIT,
            max_rate: None,
            compress_level: None,
            compress_auto: true,
            policy: None,
            tracker: tracker_bpf::TrackerConfig::default(),
            offer_every_cycle: false,
            resync_window: primary::resync::ResyncWindow::parse("always").unwrap(),
            resync_log_threshold_pct: 50,
            digest: "xxh3".parse().unwrap(),
            metrics: None,
            ublk_logs: false,
        };
        let fake = self.fake.clone();
        let hooks = primary::Hooks {
            name: self.name.clone(),
            source: Box::new(move || Ok(Box::new(fake) as Box<dyn primary::source::ChangeSource>)),
            connect: self.net.clone(),
            clock: self.clock.clone(),
        };
        let (stop, stopped) = oneshot::channel::<()>();
        self.stop = Some(stop);
        let (reload, reloads) = tokio::sync::mpsc::channel(1);
        self.reload = Some(reload);
        self.task = Some(tokio::spawn(primary::run_reloading(
            opts,
            hooks,
            async move {
                let _ = stopped.await;
            },
            reloads,
        )));
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while !self.request(Request::Status).await.ok {
            if self.task.as_ref().is_some_and(JoinHandle::is_finished) {
                let r = self.task.take().unwrap().await.unwrap();
                panic!("the agent stopped at start: {r:?}");
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the agent did not come up"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Stops the agent cleanly (logs sealed) and waits for it.
    pub async fn stop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            tokio::time::timeout(PATIENCE, t)
                .await
                .expect("the agent did not stop")
                .unwrap()
                .unwrap();
        }
    }

    /// Stops and starts the agent again (same state, source, clock and network).
    pub async fn restart(&mut self) {
        self.stop().await;
        self.run().await;
    }

    /// A control request to the agent (through its socket, as the CLI sends it).
    pub async fn request(&self, req: Request) -> Response {
        let socket = self.socket.clone();
        tokio::task::spawn_blocking(move || control::call(&socket, &req, PATIENCE))
            .await
            .unwrap()
            .unwrap_or_else(Response::err)
    }

    /// Protects `device` as disk `name`, continuous cycles.
    pub async fn protect(&self, device: &Path, name: &str) -> Job {
        let r = self.try_protect(device, name).await;
        assert!(r.ok, "{r:?}");
        serde_json::from_value(r.data).unwrap()
    }

    pub async fn try_protect(&self, device: &Path, name: &str) -> Response {
        self.try_protect_with(device, name, PointOpts::default())
            .await
    }

    /// Like [`Self::try_protect`], with the recovery-point flags of `o`.
    pub async fn try_protect_with(&self, device: &Path, name: &str, o: PointOpts) -> Response {
        self.request(Request::Protect {
            device: device.display().to_string(),
            to: SERVER_ADDR.into(),
            name: Some(name.into()),
            frequency: "continuous".into(),
            app_consistent_every: None,
            pre_hook: None,
            post_hook: None,
            crash_points_every: o.crash_points_every.map(String::from),
            retain: o.retain.map(String::from),
            max_point_storage: o.max_point_storage.map(String::from),
            group: o.group.map(String::from),
        })
        .await
    }

    /// The agent's status of disk `name`.
    pub async fn status(&self, name: &str) -> DiskStatus {
        let r = self.request(Request::Status).await;
        assert!(r.ok, "{r:?}");
        let st: StatusReport = serde_json::from_value(r.data).unwrap();
        st.disks.into_iter().find(|d| d.name == name).unwrap()
    }

    /// The agent's jobs.
    pub async fn jobs(&self) -> Vec<Job> {
        let r = self.request(Request::Jobs).await;
        assert!(r.ok, "{r:?}");
        serde_json::from_value(r.data["jobs"].clone()).unwrap()
    }

    /// Waits until disk `name`'s status satisfies `ok` (`what` names it in the failure).
    pub async fn wait_status(
        &self,
        name: &str,
        what: &str,
        ok: impl Fn(&DiskStatus) -> bool,
    ) -> DiskStatus {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let st = self.status(name).await;
            if ok(&st) {
                return st;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "disk {name}: not {what}: {st:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits until every change completed so far is applied on the replica.
    pub async fn wait_applied(&self, name: &str) {
        let r = self
            .request(Request::Wait {
                name: name.into(),
                timeout_secs: PATIENCE.as_secs(),
            })
            .await;
        assert!(r.ok, "{r:?}");
    }

    /// Writes `data` at `offset` of `device` through the fake (logged like a real write).
    pub fn write(&self, device: &Path, offset: u64, data: &[u8]) {
        self.fake.write(device, offset, data).unwrap();
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}
