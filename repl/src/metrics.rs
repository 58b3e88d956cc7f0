//! The Prometheus endpoint (`--metrics ADDR:PORT` on `sitrep agent` and `sitrep server`):
//! `GET /metrics` answers the daemon's [`StatusReport`] — the data `sitrep status --json`
//! shows — in the text exposition format 0.0.4, one series per disk (label `disk`).
//!
//! A deliberately tiny HTTP/1.1 server on tokio rather than hyper: one request per
//! connection, its head capped at [`MAX_HEAD`] bytes (a fixed buffer, allocated before any
//! read) and read within [`HEAD_TIMEOUT`], at most [`MAX_CONNECTIONS`] connections at once
//! (more are closed unanswered), the answer closes the connection. A scraper needs no more,
//! and the endpoint adds neither a dependency nor much to attack. It is unauthenticated and
//! read-only: bind it to an address only the monitoring network reaches.
//!
//! The report is built on the blocking pool from what the control socket's `status` reads
//! (published snapshots on the server), so nothing here waits for a busy disk or stalls the
//! async workers.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::status::{DiskStatus, Health, ResyncPhase, ResyncStatus, StatusReport};

/// Longest request head (request line and headers) accepted; longer gets 431.
pub const MAX_HEAD: usize = 8 * 1024;
/// Time a client has to send its request head (then 408), and to take the answer.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections served at once; more are closed at once.
pub const MAX_CONNECTIONS: usize = 16;
/// `Content-Type` of the metrics.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Where the metrics come from: the daemon's status, built on demand.
type Source = Arc<dyn Fn() -> StatusReport + Send + Sync>;

/// Binds the endpoint's listener (before the daemon starts anything, so a bad address fails
/// the start).
///
/// # Errors
/// The address does not parse or cannot be bound.
pub async fn bind(addr: &str) -> anyhow::Result<TcpListener> {
    let l = TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("--metrics {addr}: {e}"))?;
    match l.local_addr() {
        Ok(a) => tracing::info!(addr = %a, "metrics endpoint: GET /metrics"),
        Err(_) => tracing::info!(addr, "metrics endpoint: GET /metrics"),
    }
    Ok(l)
}

/// Serves `GET /metrics` on `listener` until the runtime stops, rendering what `source`
/// returns at each request.
pub fn spawn<F>(listener: TcpListener, source: F) -> tokio::task::JoinHandle<()>
where
    F: Fn() -> StatusReport + Send + Sync + 'static,
{
    let source: Source = Arc::new(source);
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let stats = crate::listen::ListenerStats::new("metrics endpoint");
    tokio::spawn(async move {
        loop {
            // Errors (e.g. out of descriptors) pause and retry, rate-limited in the log.
            let (tcp, _) = crate::listen::accept(&stats, || listener.accept()).await;
            // Busy: close unanswered; the scraper tries again at its next interval.
            let Ok(permit) = slots.clone().try_acquire_owned() else {
                continue;
            };
            let source = source.clone();
            tokio::spawn(async move {
                serve_one(tcp, &source, HEAD_TIMEOUT).await;
                drop(permit);
            });
        }
    })
}

/// What a request asks for, or why it gets an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    /// `GET /metrics`, or `HEAD /metrics` (`head_only`).
    Metrics { head_only: bool },
    /// 400: not an HTTP/1.x request.
    BadRequest,
    /// 404: another path.
    NotFound,
    /// 405: a method other than GET and HEAD.
    MethodNotAllowed,
    /// 408: the head did not arrive in time.
    Timeout,
    /// 431: the head is longer than [`MAX_HEAD`].
    TooLarge,
}

/// Answers one connection: reads the request head, answers, closes.
async fn serve_one<S: AsyncRead + AsyncWrite + Unpin>(mut s: S, source: &Source, limit: Duration) {
    let route = match tokio::time::timeout(limit, read_head(&mut s)).await {
        Ok(Ok(head)) => route(&head),
        Ok(Err(r)) => r,
        Err(_) => Route::Timeout,
    };
    let answer = match route {
        Route::Metrics { head_only } => {
            let src = source.clone();
            match tokio::task::spawn_blocking(move || render(&src())).await {
                Ok(body) => response("200 OK", CONTENT_TYPE, &body, head_only, ""),
                Err(e) => {
                    tracing::warn!("metrics endpoint: building the status: {e}");
                    text("500 Internal Server Error", "status unavailable\n", "")
                }
            }
        }
        Route::BadRequest => text("400 Bad Request", "not an HTTP/1.x request\n", ""),
        Route::NotFound => text("404 Not Found", "try /metrics\n", ""),
        Route::MethodNotAllowed => text(
            "405 Method Not Allowed",
            "only GET and HEAD\n",
            "Allow: GET, HEAD\r\n",
        ),
        Route::Timeout => text("408 Request Timeout", "request head too slow\n", ""),
        Route::TooLarge => text(
            "431 Request Header Fields Too Large",
            "request head too large\n",
            "",
        ),
    };
    let _ = tokio::time::timeout(limit, async {
        s.write_all(&answer).await?;
        s.shutdown().await
    })
    .await;
}

/// Reads until the blank line that ends a request head; the head (without it) or the error
/// route: [`Route::TooLarge`] past [`MAX_HEAD`], [`Route::BadRequest`] on EOF or a read error.
async fn read_head<R: AsyncRead + Unpin>(r: &mut R) -> Result<Vec<u8>, Route> {
    let mut buf = vec![0u8; MAX_HEAD];
    let mut n = 0;
    loop {
        let Some(free) = buf.get_mut(n..).filter(|f| !f.is_empty()) else {
            return Err(Route::TooLarge);
        };
        let k = r.read(free).await.map_err(|_| Route::BadRequest)?;
        if k == 0 {
            return Err(Route::BadRequest);
        }
        // The terminator may straddle two reads.
        let from = n.saturating_sub(3);
        n += k;
        if let Some(end) = head_end(buf.get(from..n).unwrap_or_default()) {
            buf.truncate(from + end);
            return Ok(buf);
        }
    }
}

/// Offset of the blank line (`\r\n\r\n`, or a bare `\n\n`) in `b`.
fn head_end(b: &[u8]) -> Option<usize> {
    let crlf = b.windows(4).position(|w| w == b"\r\n\r\n");
    let lf = b.windows(2).position(|w| w == b"\n\n");
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Routes a request head by its request line (`METHOD TARGET HTTP/1.x`); headers are ignored.
fn route(head: &[u8]) -> Route {
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let Ok(line) = std::str::from_utf8(line) else {
        return Route::BadRequest;
    };
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Route::BadRequest;
    };
    let token = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphabetic());
    if !token(method) || !target.starts_with('/') || !version.starts_with("HTTP/1.") {
        return Route::BadRequest;
    }
    let head_only = match method {
        "GET" => false,
        "HEAD" => true,
        _ => return Route::MethodNotAllowed,
    };
    let path = target.split_once('?').map_or(target, |(p, _)| p);
    if path == "/metrics" {
        Route::Metrics { head_only }
    } else {
        Route::NotFound
    }
}

fn text(status: &str, body: &str, extra: &str) -> Vec<u8> {
    response(status, "text/plain; charset=utf-8", body, false, extra)
}

fn response(status: &str, content_type: &str, body: &str, head_only: bool, extra: &str) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Connection: close\r\n{extra}\r\n",
        body.len()
    )
    .into_bytes();
    if !head_only {
        out.extend_from_slice(body.as_bytes());
    }
    out
}

/// The exposition text of `r`: every family with `# HELP` and `# TYPE`, one sample per disk.
/// `sitrep_retries_total` is the agent's, `sitrep_points` the server's;
/// `sitrep_resync_progress_ratio` has a sample only for a disk with a resync.
#[must_use]
pub fn render(r: &StatusReport) -> String {
    let server = r.role == "server";
    let mut out = String::with_capacity(2048 + 1024 * r.disks.len());
    family(
        &mut out,
        "sitrep_info",
        "gauge",
        "The daemon (role agent or server, host: its certificate name); always 1.",
    );
    let _ = writeln!(
        out,
        "sitrep_info{{role=\"{}\",host=\"{}\"}} 1",
        escape(&r.role),
        escape(&r.host)
    );
    let families: [Family; 9] = [
        (
            "sitrep_health",
            "gauge",
            "Health: 0 normal, 1 warning (retrying a recoverable error, or a resync is \
             required), 2 critical (stopped: operator action needed).",
            &|d| Some(health(d.health).to_string()),
        ),
        (
            "sitrep_connected",
            "gauge",
            "1 while the disk's session with the peer is up.",
            &|d| Some(u8::from(d.connected).to_string()),
        ),
        (
            "sitrep_lag_seconds",
            "gauge",
            "Replication lag (RPO): 0 when every change is applied on the replica, else \
             seconds since the cut of the newest applied cycle.",
            &|d| Some(float(d.lag_seconds)),
        ),
        (
            "sitrep_backlog_bytes",
            "gauge",
            "Bytes of changed ranges recorded but not yet applied on the replica (an upper \
             bound).",
            &|d| Some(d.backlog_bytes.to_string()),
        ),
        (
            "sitrep_bytes_shipped_total",
            "counter",
            "Data bytes shipped (agent) or received (server), before compression; zero \
             ranges not counted.",
            &|d| Some(d.bytes_shipped.to_string()),
        ),
        (
            "sitrep_wire_bytes_total",
            "counter",
            "Bytes on the wire (frames, after compression).",
            &|d| Some(d.wire_bytes.to_string()),
        ),
        (
            "sitrep_zero_bytes_total",
            "counter",
            "Bytes described as zero ranges (never sent as bytes).",
            &|d| Some(d.zero_bytes.to_string()),
        ),
        (
            "sitrep_cycles_applied_total",
            "counter",
            "Cycles applied on the replica.",
            &|d| Some(d.cycles_applied.to_string()),
        ),
        (
            "sitrep_resync_progress_ratio",
            "gauge",
            "Progress of the running checksum resync, 0 to 1: the repair pass is the first \
             half, the confirmation the second (0 while it waits for its window).",
            &|d| d.resync.as_ref().map(|r| float(resync_ratio(r))),
        ),
    ];
    for (name, kind, help, value) in families {
        per_disk(&mut out, r, name, kind, help, value);
    }
    if server {
        per_disk(
            &mut out,
            r,
            "sitrep_points",
            "gauge",
            "Recovery points retained.",
            &|d| Some(d.points.to_string()),
        );
    } else {
        per_disk(
            &mut out,
            r,
            "sitrep_retries_total",
            "counter",
            "Attempts retried after recoverable errors since the agent started.",
            &|d| Some(d.retries.to_string()),
        );
    }
    out
}

/// Name, type, help, and the sample value of a disk (None: no sample).
type Family<'a> = (
    &'a str,
    &'a str,
    &'a str,
    &'a dyn Fn(&DiskStatus) -> Option<String>,
);

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {}", escape_help(help));
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn per_disk(
    out: &mut String,
    r: &StatusReport,
    name: &str,
    kind: &str,
    help: &str,
    value: &dyn Fn(&DiskStatus) -> Option<String>,
) {
    family(out, name, kind, help);
    for d in &r.disks {
        if let Some(v) = value(d) {
            let _ = writeln!(out, "{name}{{disk=\"{}\"}} {v}", escape(&d.name));
        }
    }
}

fn health(h: Health) -> u8 {
    match h {
        Health::Normal => 0,
        Health::Warning => 1,
        Health::Critical => 2,
    }
}

#[allow(clippy::cast_precision_loss)] // a ratio
fn resync_ratio(r: &ResyncStatus) -> f64 {
    let pass = if r.scope_bytes == 0 {
        0.0
    } else {
        (r.bytes_done as f64 / r.scope_bytes as f64).clamp(0.0, 1.0)
    };
    match r.phase {
        ResyncPhase::WaitingForWindow => 0.0,
        ResyncPhase::CompareAndRepair => pass / 2.0,
        ResyncPhase::Confirm => 0.5 + pass / 2.0,
        ResyncPhase::Done => 1.0,
    }
}

/// A sample value as Prometheus spells it (`NaN`, `+Inf`, `-Inf`; never an exponent-free
/// `inf`).
fn float(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else {
        format!("{v}")
    }
}

/// A label value: backslash, double quote and line feed escaped.
fn escape(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// Help text: backslash and line feed escaped.
fn escape_help(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use super::*;
    use crate::status::{CycleStatus, ReplState, SCHEMA};

    fn disk(name: &str) -> DiskStatus {
        DiskStatus {
            name: name.into(),
            device: Some("/dev/loop0".into()),
            peer: "10.0.0.2:9443".into(),
            state: ReplState::Protected,
            health: Health::Normal,
            lag_seconds: 0.0,
            rpo_target_seconds: None,
            backlog_bytes: 0,
            bytes_shipped: 0,
            wire_bytes: 0,
            zero_bytes: 0,
            cycles_applied: 0,
            last_applied: None,
            copy: None,
            connected: true,
            error: None,
            resync_reason: None,
            points: 0,
            points_bytes: 0,
            cycles_judged: 0,
            cycles_consistent: 0,
            resync: None,
            last_resync: None,
            resyncs_completed: 0,
            next_retry_unix_ns: None,
            retries: 0,
            action: None,
        }
    }

    fn agent_report() -> StatusReport {
        let mut a = disk("data");
        a.lag_seconds = 1.5;
        a.backlog_bytes = 4096;
        a.bytes_shipped = 1 << 20;
        a.wire_bytes = 700_000;
        a.zero_bytes = 3 << 20;
        a.cycles_applied = 7;
        a.last_applied = Some(CycleStatus {
            seq: 9,
            cut_time_unix_ns: 1,
        });
        a.retries = 2;
        let mut b = disk("logs");
        b.health = Health::Warning;
        b.connected = false;
        b.next_retry_unix_ns = Some(5);
        b.error = Some("disk logs: network: connection refused".into());
        b.retries = 3;
        b.resync = Some(ResyncStatus {
            phase: ResyncPhase::Confirm,
            reason: "tracking was interrupted".into(),
            scope_bytes: 1000,
            bytes_done: 500,
            compared_bytes: 1500,
            differing_bytes: 0,
            data_bytes_sent: 0,
            wire_bytes: 0,
            rate_bytes_per_sec: 0.0,
            eta_seconds: None,
            seconds: 1.0,
            window: "always".into(),
        });
        StatusReport {
            schema: SCHEMA,
            role: "agent".into(),
            host: "site\"a\\".into(),
            disks: vec![a, b],
            listeners: Vec::new(),
        }
    }

    const GOLDEN_AGENT: &str = r#"# HELP sitrep_info The daemon (role agent or server, host: its certificate name); always 1.
# TYPE sitrep_info gauge
sitrep_info{role="agent",host="site\"a\\"} 1
# HELP sitrep_health Health: 0 normal, 1 warning (retrying a recoverable error, or a resync is required), 2 critical (stopped: operator action needed).
# TYPE sitrep_health gauge
sitrep_health{disk="data"} 0
sitrep_health{disk="logs"} 1
# HELP sitrep_connected 1 while the disk's session with the peer is up.
# TYPE sitrep_connected gauge
sitrep_connected{disk="data"} 1
sitrep_connected{disk="logs"} 0
# HELP sitrep_lag_seconds Replication lag (RPO): 0 when every change is applied on the replica, else seconds since the cut of the newest applied cycle.
# TYPE sitrep_lag_seconds gauge
sitrep_lag_seconds{disk="data"} 1.5
sitrep_lag_seconds{disk="logs"} 0
# HELP sitrep_backlog_bytes Bytes of changed ranges recorded but not yet applied on the replica (an upper bound).
# TYPE sitrep_backlog_bytes gauge
sitrep_backlog_bytes{disk="data"} 4096
sitrep_backlog_bytes{disk="logs"} 0
# HELP sitrep_bytes_shipped_total Data bytes shipped (agent) or received (server), before compression; zero ranges not counted.
# TYPE sitrep_bytes_shipped_total counter
sitrep_bytes_shipped_total{disk="data"} 1048576
sitrep_bytes_shipped_total{disk="logs"} 0
# HELP sitrep_wire_bytes_total Bytes on the wire (frames, after compression).
# TYPE sitrep_wire_bytes_total counter
sitrep_wire_bytes_total{disk="data"} 700000
sitrep_wire_bytes_total{disk="logs"} 0
# HELP sitrep_zero_bytes_total Bytes described as zero ranges (never sent as bytes).
# TYPE sitrep_zero_bytes_total counter
sitrep_zero_bytes_total{disk="data"} 3145728
sitrep_zero_bytes_total{disk="logs"} 0
# HELP sitrep_cycles_applied_total Cycles applied on the replica.
# TYPE sitrep_cycles_applied_total counter
sitrep_cycles_applied_total{disk="data"} 7
sitrep_cycles_applied_total{disk="logs"} 0
# HELP sitrep_resync_progress_ratio Progress of the running checksum resync, 0 to 1: the repair pass is the first half, the confirmation the second (0 while it waits for its window).
# TYPE sitrep_resync_progress_ratio gauge
sitrep_resync_progress_ratio{disk="logs"} 0.75
# HELP sitrep_retries_total Attempts retried after recoverable errors since the agent started.
# TYPE sitrep_retries_total counter
sitrep_retries_total{disk="data"} 2
sitrep_retries_total{disk="logs"} 3
"#;

    #[test]
    fn renders_the_agent_golden_text() {
        assert_eq!(render(&agent_report()), GOLDEN_AGENT);
    }

    #[test]
    fn the_server_exports_points_and_no_retries() {
        let mut d = disk("data");
        d.device = None;
        d.points = 24;
        d.cycles_applied = 3;
        d.health = Health::Critical;
        let r = StatusReport {
            schema: SCHEMA,
            role: "server".into(),
            host: "siteb".into(),
            disks: vec![d],
            listeners: Vec::new(),
        };
        let text = render(&r);
        assert!(text.ends_with(
            "# HELP sitrep_points Recovery points retained.\n\
             # TYPE sitrep_points gauge\n\
             sitrep_points{disk=\"data\"} 24\n"
        ));
        assert!(text.contains("sitrep_cycles_applied_total{disk=\"data\"} 3\n"));
        assert!(text.contains("sitrep_health{disk=\"data\"} 2\n"));
        assert!(!text.contains("sitrep_retries_total"));
        // No resync: the family is declared, without samples.
        assert!(text.contains("# TYPE sitrep_resync_progress_ratio gauge\n# HELP"));
    }

    #[test]
    fn every_line_is_valid_exposition_syntax() {
        for line in render(&agent_report()).lines() {
            if let Some(meta) = line.strip_prefix("# ") {
                assert!(meta.starts_with("HELP sitrep_") || meta.starts_with("TYPE sitrep_"));
                continue;
            }
            let (series, value) = line.rsplit_once(' ').unwrap();
            assert!(value.parse::<f64>().is_ok(), "{line}");
            let (name, labels) = series.split_once('{').unwrap();
            assert!(name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'));
            assert!(labels.ends_with('}'), "{line}");
        }
    }

    #[test]
    fn values_and_labels_are_spelled_as_prometheus_wants() {
        assert_eq!(float(f64::NAN), "NaN");
        assert_eq!(float(f64::INFINITY), "+Inf");
        assert_eq!(float(f64::NEG_INFINITY), "-Inf");
        assert_eq!(float(0.25), "0.25");
        assert_eq!(float(3.0), "3");
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }

    #[test]
    fn resync_progress_runs_over_both_passes() {
        let mut r = agent_report().disks[1].resync.clone().unwrap();
        for (phase, done, ratio) in [
            ("waiting-for-window", 0, 0.0),
            ("compare-and-repair", 0, 0.0),
            ("compare-and-repair", 500, 0.25),
            ("confirm", 0, 0.5),
            ("confirm", 1000, 1.0),
            ("confirm", 5000, 1.0),
            ("done", 1000, 1.0),
        ] {
            // The schema's strings parse to the typed phase.
            r.phase = serde_json::from_value(serde_json::json!(phase)).unwrap();
            r.bytes_done = done;
            assert!((resync_ratio(&r) - ratio).abs() < 1e-9, "{phase} {done}");
        }
        r.scope_bytes = 0;
        r.phase = ResyncPhase::CompareAndRepair;
        assert!(resync_ratio(&r).abs() < 1e-9);
    }

    #[test]
    fn routes_by_request_line() {
        let cases: [(&[u8], Route); 12] = [
            (
                b"GET /metrics HTTP/1.1\r\nHost: x",
                Route::Metrics { head_only: false },
            ),
            (
                b"GET /metrics?name[]=x HTTP/1.0",
                Route::Metrics { head_only: false },
            ),
            (
                b"HEAD /metrics HTTP/1.1",
                Route::Metrics { head_only: true },
            ),
            (b"GET / HTTP/1.1", Route::NotFound),
            (b"GET /metrics/ HTTP/1.1", Route::NotFound),
            (b"GET /metricsx HTTP/1.1", Route::NotFound),
            (b"POST /metrics HTTP/1.1", Route::MethodNotAllowed),
            (b"DELETE / HTTP/1.1", Route::MethodNotAllowed),
            (b"GET /metrics HTTP/2", Route::BadRequest),
            (b"GET /metrics", Route::BadRequest),
            (b"GET  /metrics HTTP/1.1", Route::BadRequest),
            (b"G\xffT /metrics HTTP/1.1", Route::BadRequest),
        ];
        for (head, want) in cases {
            assert_eq!(route(head), want, "{}", String::from_utf8_lossy(head));
        }
    }

    /// Hands out one byte per read.
    struct Trickle<'a>(&'a [u8]);

    impl AsyncRead for Trickle<'_> {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            if let Some((first, rest)) = self.0.split_first() {
                buf.put_slice(&[*first]);
                self.0 = rest;
            }
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn the_head_ends_at_the_blank_line_even_split_across_reads() {
        let req = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\nbody";
        let head = read_head(&mut Trickle(req)).await.unwrap();
        assert_eq!(head, b"GET /metrics HTTP/1.1\r\nHost: x");
        let head = read_head(&mut Trickle(b"GET / HTTP/1.1\n\n"))
            .await
            .unwrap();
        assert_eq!(head, b"GET / HTTP/1.1");
        // EOF before the end of the head.
        assert_eq!(
            read_head(&mut Trickle(b"GET / HTTP/1.1\r\n")).await,
            Err(Route::BadRequest)
        );
        // Exactly at the cap, and one byte past it.
        let mut big = b"GET / HTTP/1.1\r\nX: ".to_vec();
        big.resize(MAX_HEAD - 4, b'a');
        big.extend_from_slice(b"\r\n\r\n");
        assert!(read_head(&mut big.as_slice()).await.is_ok());
        big.insert(20, b'a');
        assert_eq!(read_head(&mut big.as_slice()).await, Err(Route::TooLarge));
    }

    /// Sends `req` (and keeps the connection open), returns the whole answer.
    async fn exchange(req: &[u8], limit: Duration) -> String {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let source: Source = Arc::new(agent_report);
        let task = tokio::spawn(async move { serve_one(server, &source, limit).await });
        client.write_all(req).await.unwrap();
        let mut answer = Vec::new();
        client.read_to_end(&mut answer).await.unwrap();
        task.await.unwrap();
        String::from_utf8(answer).unwrap()
    }

    fn status_line(answer: &str) -> &str {
        answer.lines().next().unwrap()
    }

    #[tokio::test]
    async fn answers_get_metrics_with_the_exposition_text() {
        let a = exchange(
            b"GET /metrics HTTP/1.1\r\nHost: a\r\nAccept: */*\r\n\r\n",
            HEAD_TIMEOUT,
        )
        .await;
        let (head, body) = a.split_once("\r\n\r\n").unwrap();
        assert_eq!(status_line(head), "HTTP/1.1 200 OK");
        assert!(head.contains("\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n"));
        assert!(head.contains(&format!("\r\nContent-Length: {}\r\n", GOLDEN_AGENT.len())));
        assert!(head.contains("\r\nConnection: close"));
        assert_eq!(body, GOLDEN_AGENT);
        // HEAD: the same headers, no body.
        let a = exchange(b"HEAD /metrics HTTP/1.1\r\n\r\n", HEAD_TIMEOUT).await;
        assert!(a.starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(a.ends_with("\r\n\r\n"), "{a}");
    }

    #[tokio::test]
    async fn refuses_wrong_paths_methods_and_garbage() {
        let a = exchange(b"GET /other HTTP/1.1\r\n\r\n", HEAD_TIMEOUT).await;
        assert_eq!(status_line(&a), "HTTP/1.1 404 Not Found");
        let a = exchange(b"POST /metrics HTTP/1.1\r\n\r\n", HEAD_TIMEOUT).await;
        assert_eq!(status_line(&a), "HTTP/1.1 405 Method Not Allowed");
        assert!(a.contains("\r\nAllow: GET, HEAD\r\n"));
        let a = exchange(
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\n\n",
            HEAD_TIMEOUT,
        )
        .await;
        assert_eq!(status_line(&a), "HTTP/1.1 400 Bad Request");
    }

    #[tokio::test]
    async fn refuses_an_oversized_head_without_reading_past_the_cap() {
        let mut req = b"GET /metrics HTTP/1.1\r\nX-Pad: ".to_vec();
        req.resize(MAX_HEAD + 1024, b'x');
        let a = exchange(&req, HEAD_TIMEOUT).await;
        assert_eq!(
            status_line(&a),
            "HTTP/1.1 431 Request Header Fields Too Large"
        );
    }

    #[tokio::test]
    async fn a_slow_head_times_out() {
        let a = exchange(b"GET /metrics HTTP/1.1\r\n", Duration::from_millis(100)).await;
        assert_eq!(status_line(&a), "HTTP/1.1 408 Request Timeout");
    }

    #[tokio::test]
    async fn serves_over_tcp() {
        let l = bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let task = spawn(l, agent_report);
        let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
        c.write_all(b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n")
            .await
            .unwrap();
        let mut answer = String::new();
        c.read_to_string(&mut answer).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(answer.ends_with(GOLDEN_AGENT));
        task.abort();
        assert!(bind("not an address").await.is_err());
    }
}
