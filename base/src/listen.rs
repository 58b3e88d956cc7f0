//! Listening sockets a flood cannot take down (issue 19, item 1). The server's TLS port, the
//! control socket of both daemons and the metrics endpoint accept through [`accept`], and each
//! connection holds a [`Pass`] from a [`Gate`] for its whole life.
//!
//! - **An accept error never ends a listener and never spins.** Out of descriptors (`EMFILE`,
//!   `ENFILE`) or memory (`ENOBUFS`, `ENOMEM`), `accept(2)` fails again at once for as long as
//!   the condition lasts (the connection stays in the backlog), so the loop sleeps
//!   [`BACKOFF_MIN`], doubling up to [`BACKOFF_MAX`], until the next success. An error that
//!   concerns one queued connection only (`ECONNABORTED`: the peer gave up while queued) moves
//!   on to the next one at once. Before this, an `EMFILE` flood cost 100 % CPU and 1.3 GB of
//!   log in 25 s, and the control socket's task ended at its first error.
//! - **Connections are counted, in total and per source address,** by a [`Gate`]; past a cap
//!   the connection is closed at once — before any TLS work — and counted. Caps are counts,
//!   not rates: what exhausts descriptors is connections held open, which a count bounds
//!   directly, while a rate would refuse an honest burst (an agent reconnecting every disk
//!   after an outage) and still let a slow holder through. One mutex covers both counts, so a
//!   connection refused by its address's cap never takes a slot of the total.
//! - **Warnings are rate-limited** ([`RateLimitedLog`]): one line per kind per [`LOG_EVERY`],
//!   carrying the number of lines suppressed since the previous one.
//!
//! The caps and timeouts are [`Limits`] (defaults: the constants below); the counters
//! ([`ListenerStats`]) are in `sitrep status --json` under `listeners`.

use std::collections::HashMap;
use std::fmt::Display;
use std::future::Future;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::status::ListenerStatus;

/// TLS handshakes in progress at once, from all addresses. A pending handshake holds a
/// descriptor and rustls state (tens of KiB) for up to [`TLS_HANDSHAKE_TIMEOUT`]; 128 bounds
/// that to a few MiB and 128 descriptors however many addresses a flood comes from.
pub const TLS_HANDSHAKES_TOTAL: usize = 128;
/// TLS handshakes in progress at once from one address (an IPv6 /64 counts as one). A TLS 1.3
/// handshake takes one round trip and a millisecond or two of CPU, so an honest agent has a
/// few in flight even when all its disks reconnect after an outage; 32 leaves room for a host
/// with many disks on a slow link, and lets one flooding address hold a quarter of the total.
pub const TLS_HANDSHAKES_PER_IP: usize = 32;
/// A connection that has not completed TLS in this long is closed (was 30 s).
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Sessions (connections past TLS, with a certificate of the site's CA) at once, from all
/// addresses. An agent opens one per protected disk, so this is also the number of disks a
/// server replicates at once; it exists so that a buggy or compromised agent cannot take
/// every descriptor. Each needs a descriptor for the socket and a few for its disk's files:
/// the daemon raises its soft descriptor limit to the hard one at start
/// ([`raise_descriptor_limit`]).
pub const SESSIONS_TOTAL: usize = 1024;
/// Sessions at once from one address: one agent host (or a NAT in front of several) with up
/// to 256 protected disks.
pub const SESSIONS_PER_IP: usize = 256;
/// After TLS, the `Hello` must arrive within this long, then the `Attach` within as long again.
pub const SETUP_TIMEOUT: Duration = Duration::from_secs(10);
/// A write to a peer that makes no progress for this long fails and ends the session (a peer
/// that stops reading cannot pin a task, its buffers and its disk forever).
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(60);
/// Control-socket connections at once (per daemon). When all are taken, a new connection
/// closes the oldest one that has not sent its request line yet, so idle connections cannot
/// lock the operator out; the CLI sends its line as soon as it connects.
pub const CONTROL_CONNECTIONS: usize = 64;
/// A control-socket connection must send its whole request line within this long.
pub const CONTROL_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// First pause after an accept error; it doubles with each further error.
pub const BACKOFF_MIN: Duration = Duration::from_millis(10);
/// Longest pause between accept attempts while they fail.
pub const BACKOFF_MAX: Duration = Duration::from_secs(1);
/// At most one warning line per kind this often.
pub const LOG_EVERY: Duration = Duration::from_secs(10);

/// The caps and timeouts of a daemon's listeners; [`Default`] gives the constants above.
/// Tests shrink the timeouts so that a stalled peer is dropped in milliseconds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// [`TLS_HANDSHAKES_TOTAL`].
    pub handshakes_total: usize,
    /// [`TLS_HANDSHAKES_PER_IP`].
    pub handshakes_per_ip: usize,
    /// [`TLS_HANDSHAKE_TIMEOUT`].
    pub handshake_timeout: Duration,
    /// [`SESSIONS_TOTAL`].
    pub sessions_total: usize,
    /// [`SESSIONS_PER_IP`].
    pub sessions_per_ip: usize,
    /// [`SETUP_TIMEOUT`] (for `Hello`, and again for `Attach`).
    pub setup_timeout: Duration,
    /// [`WRITE_TIMEOUT`].
    pub write_timeout: Duration,
    /// [`CONTROL_CONNECTIONS`].
    pub control_connections: usize,
    /// [`CONTROL_READ_TIMEOUT`].
    pub control_read_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            handshakes_total: TLS_HANDSHAKES_TOTAL,
            handshakes_per_ip: TLS_HANDSHAKES_PER_IP,
            handshake_timeout: TLS_HANDSHAKE_TIMEOUT,
            sessions_total: SESSIONS_TOTAL,
            sessions_per_ip: SESSIONS_PER_IP,
            setup_timeout: SETUP_TIMEOUT,
            write_timeout: WRITE_TIMEOUT,
            control_connections: CONTROL_CONNECTIONS,
            control_read_timeout: CONTROL_READ_TIMEOUT,
        }
    }
}

/// Descriptors kept out of the TLS port's caps by [`Limits::fit_descriptors`]: the control
/// socket's connections and the daemon's own files (replicas, undo, logs, sockets).
pub const RESERVED_DESCRIPTORS: u64 = CONTROL_CONNECTIONS as u64 + 64;

impl Limits {
    /// These limits with the TLS port's totals lowered so that its handshakes and sessions
    /// together can never take the descriptors the control socket and the store need: at
    /// most `soft_limit` − [`RESERVED_DESCRIPTORS`], a quarter of that for handshakes. With
    /// caps above the limit a flood runs the daemon out of descriptors and the control
    /// socket's `accept` loses every freed descriptor to the TLS port's until the flood's
    /// handshakes time out (seen: `status` waiting 10 s at `ulimit -n 128`). `soft_limit` 0
    /// (unknown) changes nothing.
    #[must_use]
    pub fn fit_descriptors(&self, soft_limit: u64) -> Self {
        let mut l = self.clone();
        if soft_limit == 0 {
            return l;
        }
        let budget =
            usize::try_from(soft_limit.saturating_sub(RESERVED_DESCRIPTORS)).unwrap_or(usize::MAX);
        l.handshakes_total = l.handshakes_total.min((budget / 4).max(1));
        l.sessions_total = l
            .sessions_total
            .min(budget.saturating_sub(l.handshakes_total).max(1));
        l.handshakes_per_ip = l.handshakes_per_ip.min(l.handshakes_total);
        l.sessions_per_ip = l.sessions_per_ip.min(l.sessions_total);
        l
    }
}

/// The process's soft limit on open descriptors (0 if it cannot be read).
#[must_use]
pub fn descriptor_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into `lim`, which lives across the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut lim) } != 0 {
        return 0;
    }
    lim.rlim_cur
}

use crate::lock;

/// Accepts the next connection with `accept_one` (e.g. `|| listener.accept()`), retrying
/// errors as the module doc says; never returns an error.
pub async fn accept<T, F, Fut>(stats: &ListenerStats, accept_one: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = std::io::Result<T>>,
{
    accept_or_relieve(stats, accept_one, || false).await
}

/// [`accept`], calling `relieve` when out of descriptors or memory: it may close something
/// of the listener's own (an idle connection) and say so, and the next attempt then comes
/// after the shortest pause.
pub async fn accept_or_relieve<T, F, Fut>(
    stats: &ListenerStats,
    mut accept_one: F,
    mut relieve: impl FnMut() -> bool,
) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = std::io::Result<T>>,
{
    let mut pause = BACKOFF_MIN;
    loop {
        match accept_one().await {
            Ok(conn) => {
                stats.accepted.fetch_add(1, Ordering::Relaxed);
                return conn;
            }
            Err(e) => {
                stats.accept_errors.fetch_add(1, Ordering::Relaxed);
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionAborted
                        | std::io::ErrorKind::ConnectionReset
                        | std::io::ErrorKind::Interrupted
                ) {
                    // That connection is gone; the next one is another.
                    tokio::task::yield_now().await;
                    continue;
                }
                stats.log.warn(
                    "accept",
                    format_args!(
                        "{}: accept: {e}; retrying in {pause:?} (out of descriptors? see `ulimit -n` and `listeners` in `sitrep status --json`)",
                        stats.name
                    ),
                );
                let relieved = is_exhaustion(&e) && relieve();
                tokio::time::sleep(pause).await;
                pause = if relieved {
                    BACKOFF_MIN
                } else {
                    next_pause(pause)
                };
            }
        }
    }
}

/// Out of descriptors or memory: the errors that last until something is closed.
fn is_exhaustion(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// The pause after `pause` while accept errors go on: twice as long, at most [`BACKOFF_MAX`].
fn next_pause(pause: Duration) -> Duration {
    (pause * 2).min(BACKOFF_MAX)
}

/// Why a [`Gate`] refused a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Full {
    /// The total cap is reached.
    Total(usize),
    /// The connection's source address has its cap.
    Source(usize),
}

impl Display for Full {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Total(n) => write!(f, "{n} connections open (the cap)"),
            Self::Source(n) => write!(f, "{n} connections open from this address (the cap)"),
        }
    }
}

#[derive(Debug, Default)]
struct GateState {
    open: usize,
    by_source: HashMap<IpAddr, usize>,
}

/// Counts connections, in total and per source address, against caps.
#[derive(Debug)]
pub struct Gate {
    total: usize,
    per_source: usize,
    state: Mutex<GateState>,
}

/// One admitted connection; dropping it gives its slot back.
#[derive(Debug)]
pub struct Pass {
    gate: Arc<Gate>,
    source: Option<IpAddr>,
}

/// The address a per-source cap counts by: IPv4 (an IPv4-mapped IPv6 address too) as is, IPv6
/// by its /64 — one host or site usually holds a whole /64, and would otherwise get a new
/// address per connection.
#[must_use]
pub fn source_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
        v4 => v4,
    }
}

impl Gate {
    /// A gate for at most `total` connections, at most `per_source` from one address.
    #[must_use]
    pub fn new(total: usize, per_source: usize) -> Arc<Self> {
        Arc::new(Self {
            total,
            per_source,
            state: Mutex::new(GateState::default()),
        })
    }

    /// Admits a connection from `source` (None: not counted per source), or says which cap
    /// is reached.
    ///
    /// # Errors
    /// [`Full`] when a cap is reached.
    pub fn try_enter(self: &Arc<Self>, source: Option<IpAddr>) -> Result<Pass, Full> {
        let source = source.map(source_key);
        let mut st = lock(&self.state);
        if st.open >= self.total {
            return Err(Full::Total(self.total));
        }
        if let Some(ip) = source {
            let n = st.by_source.entry(ip).or_insert(0);
            if *n >= self.per_source {
                return Err(Full::Source(self.per_source));
            }
            *n += 1;
        }
        st.open += 1;
        drop(st);
        Ok(Pass {
            gate: self.clone(),
            source,
        })
    }

    /// Connections admitted and still open.
    #[must_use]
    pub fn open(&self) -> usize {
        lock(&self.state).open
    }
}

impl Drop for Pass {
    fn drop(&mut self) {
        let mut st = lock(&self.gate.state);
        st.open = st.open.saturating_sub(1);
        if let Some(ip) = self.source
            && let Some(n) = st.by_source.get_mut(&ip)
        {
            *n = n.saturating_sub(1);
            if *n == 0 {
                st.by_source.remove(&ip);
            }
        }
    }
}

/// Warnings limited to one line per kind per interval, each carrying how many lines of its
/// kind were suppressed since the previous one.
#[derive(Debug)]
pub struct RateLimitedLog {
    every: Duration,
    kinds: Mutex<HashMap<&'static str, (Instant, u64)>>,
}

impl RateLimitedLog {
    /// At most one line per kind per `every`.
    #[must_use]
    pub fn new(every: Duration) -> Self {
        Self {
            every,
            kinds: Mutex::new(HashMap::new()),
        }
    }

    /// Whether a line of `kind` may be written at `now`: `Some(suppressed since the last
    /// one)`, or None (counted as suppressed).
    pub fn admit(&self, kind: &'static str, now: Instant) -> Option<u64> {
        let mut kinds = lock(&self.kinds);
        match kinds.get_mut(kind) {
            Some((last, suppressed)) if now.saturating_duration_since(*last) < self.every => {
                *suppressed += 1;
                None
            }
            Some((last, suppressed)) => {
                *last = now;
                Some(std::mem::take(suppressed))
            }
            None => {
                kinds.insert(kind, (now, 0));
                Some(0)
            }
        }
    }

    /// Logs `msg` as a warning unless a line of `kind` was written less than the interval ago.
    pub fn warn(&self, kind: &'static str, msg: impl Display) {
        match self.admit(kind, Instant::now()) {
            Some(0) => tracing::warn!("{msg}"),
            Some(n) => tracing::warn!(
                "{msg} ({n} more like it suppressed since the last such line, at most one per {:?})",
                self.every
            ),
            None => {}
        }
    }
}

/// Counters of one listener (since the daemon started), and its rate-limited log.
#[derive(Debug)]
pub struct ListenerStats {
    name: &'static str,
    accepted: AtomicU64,
    refused: AtomicU64,
    evicted: AtomicU64,
    timed_out: AtomicU64,
    accept_errors: AtomicU64,
    handshake_failed: AtomicU64,
    /// Warnings of this listener.
    pub log: RateLimitedLog,
}

impl ListenerStats {
    /// Counters of the listener `name` (`tls`, `control`, `metrics`).
    #[must_use]
    pub fn new(name: &'static str) -> Self {
        Self {
            name,
            accepted: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            evicted: AtomicU64::new(0),
            timed_out: AtomicU64::new(0),
            accept_errors: AtomicU64::new(0),
            handshake_failed: AtomicU64::new(0),
            log: RateLimitedLog::new(LOG_EVERY),
        }
    }

    /// A connection from `peer` closed at once because `why` (counted, logged rate-limited).
    pub fn refused(&self, peer: impl Display, what: &str, why: Full) {
        self.refused.fetch_add(1, Ordering::Relaxed);
        self.log.warn(
            "refused",
            format_args!(
                "{}: closed a connection from {peer} at once: {what}: {why}",
                self.name
            ),
        );
    }

    /// A connection closed because a phase took too long (counted, logged rate-limited).
    pub fn timed_out(&self, peer: impl Display, what: &str) {
        self.timed_out.fetch_add(1, Ordering::Relaxed);
        self.log.warn(
            "timeout",
            format_args!("{}: closed the connection from {peer}: {what}", self.name),
        );
    }

    /// A TLS handshake from `peer` that failed (a refused certificate, garbage instead of
    /// TLS): counted, logged rate-limited.
    pub fn handshake_failed(&self, peer: impl Display, why: impl Display) {
        self.handshake_failed.fetch_add(1, Ordering::Relaxed);
        self.log.warn(
            "tls-refused",
            format_args!("{peer}: TLS handshake refused: {why}"),
        );
    }

    /// An idle connection closed to make room for a new one.
    pub fn evicted(&self) {
        self.evicted.fetch_add(1, Ordering::Relaxed);
        self.log.warn(
            "evicted",
            format_args!(
                "{}: every connection slot taken; closed the oldest one that had not sent its request",
                self.name
            ),
        );
    }

    /// The counters, with the connections open now (`open`, of which `handshaking` are still
    /// in the TLS handshake).
    #[must_use]
    pub fn status(&self, open: usize, handshaking: usize) -> ListenerStatus {
        ListenerStatus {
            name: self.name.to_string(),
            open: open as u64,
            handshaking: handshaking as u64,
            accepted: self.accepted.load(Ordering::Relaxed),
            refused: self.refused.load(Ordering::Relaxed),
            evicted: self.evicted.load(Ordering::Relaxed),
            timed_out: self.timed_out.load(Ordering::Relaxed),
            accept_errors: self.accept_errors.load(Ordering::Relaxed),
            handshake_failed: self.handshake_failed.load(Ordering::Relaxed),
        }
    }
}

/// Raises this process's soft limit on open descriptors to its hard limit (what `ulimit -n`
/// shows is often 1024 while the hard limit is far higher), so the caps above, not the
/// limit, decide; returns the soft limit now. Called by the daemons at start.
#[must_use]
pub fn raise_descriptor_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into `lim`, which lives across the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut lim) } != 0 {
        return 0;
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: setrlimit reads one rlimit from `raised`, which lives across the call.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raw const raised) } == 0 {
            lim.rlim_cur = lim.rlim_max;
        }
    }
    lim.rlim_cur
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_tls_caps_fit_under_the_descriptor_limit() {
        let d = Limits::default();
        assert_eq!(d.fit_descriptors(0), d, "unknown limit: unchanged");
        assert_eq!(d.fit_descriptors(1 << 20), d, "a high limit: unchanged");
        let l = d.fit_descriptors(128);
        assert_eq!(
            (l.handshakes_total, l.sessions_total),
            (1, 1),
            "nothing left: one each"
        );
        let l = d.fit_descriptors(1024);
        assert_eq!(l.handshakes_total, 128);
        assert_eq!(l.sessions_total, 1024 - 128 - 128);
        assert!(l.handshakes_per_ip <= l.handshakes_total);
        let l = d.fit_descriptors(400);
        assert_eq!(l.handshakes_total, (400 - 128) / 4);
        assert_eq!(l.sessions_total, 400 - 128 - (400 - 128) / 4);
        assert!(l.sessions_per_ip <= l.sessions_total && l.handshakes_per_ip <= 32);
    }

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn a_gate_caps_the_total_and_each_source_and_frees_on_drop() {
        let g = Gate::new(3, 2);
        let a1 = g.try_enter(ip("10.0.0.1")).unwrap();
        let a2 = g.try_enter(ip("10.0.0.1")).unwrap();
        assert_eq!(
            g.try_enter(ip("10.0.0.1")).unwrap_err(),
            Full::Source(2),
            "a third from the same address"
        );
        assert_eq!(
            g.open(),
            2,
            "a refusal by source takes no slot of the total"
        );
        let b = g.try_enter(ip("10.0.0.2")).unwrap();
        assert_eq!(g.try_enter(ip("10.0.0.3")).unwrap_err(), Full::Total(3));
        drop(a1);
        let a3 = g.try_enter(ip("10.0.0.1")).unwrap();
        drop((a2, a3, b));
        assert_eq!(g.open(), 0);
        assert!(lock(&g.state).by_source.is_empty(), "no entry left behind");
    }

    #[test]
    fn ipv6_counts_per_64_and_mapped_ipv4_as_ipv4() {
        assert_eq!(
            source_key("2001:db8:1:2:aaaa::1".parse().unwrap()),
            "2001:db8:1:2::".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            source_key("::ffff:10.0.0.1".parse().unwrap()),
            "10.0.0.1".parse::<IpAddr>().unwrap()
        );
        let g = Gate::new(10, 1);
        let _a = g.try_enter(ip("2001:db8:1:2::1")).unwrap();
        assert!(g.try_enter(ip("2001:db8:1:2::2")).is_err());
        assert!(g.try_enter(ip("2001:db8:1:3::1")).is_ok());
    }

    #[test]
    fn the_log_writes_one_line_per_kind_per_interval_and_counts_the_rest() {
        let log = RateLimitedLog::new(Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(log.admit("accept", t0), Some(0));
        for i in 1..=1000u64 {
            assert_eq!(log.admit("accept", t0 + Duration::from_millis(i)), None);
        }
        assert_eq!(log.admit("refused", t0), Some(0), "kinds are separate");
        assert_eq!(
            log.admit("accept", t0 + Duration::from_secs(10)),
            Some(1000)
        );
        assert_eq!(log.admit("accept", t0 + Duration::from_secs(11)), None);
    }

    #[test]
    fn the_pause_doubles_from_10_ms_to_1_s() {
        let mut p = BACKOFF_MIN;
        let mut seen = vec![p];
        for _ in 0..10 {
            p = next_pause(p);
            seen.push(p);
        }
        let ms: Vec<u128> = seen.iter().map(Duration::as_millis).collect();
        assert_eq!(ms, [10, 20, 40, 80, 160, 320, 640, 1000, 1000, 1000, 1000]);
    }

    #[tokio::test]
    async fn accept_errors_are_counted_and_never_end_the_listener() {
        let stats = ListenerStats::new("test");
        let calls = std::cell::Cell::new(0u32);
        let got = accept(&stats, || {
            calls.set(calls.get() + 1);
            let n = calls.get();
            async move {
                match n {
                    1..=3 => Err(std::io::Error::from(std::io::ErrorKind::ConnectionAborted)),
                    4 => Err(std::io::Error::from_raw_os_error(libc::EMFILE)),
                    _ => Ok(n),
                }
            }
        })
        .await;
        assert_eq!(got, 5);
        let s = stats.status(0, 0);
        assert_eq!((s.accept_errors, s.accepted), (4, 1));
    }
}
