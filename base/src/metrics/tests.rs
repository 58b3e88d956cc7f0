//! The exposition text's golden output and syntax, and the endpoint's routing and caps.
use std::pin::Pin;
use std::task::{Context, Poll};

use super::render::resync_ratio;
use super::text::{escape, float};
use super::*;
use crate::status::{
    CycleStatus, DiskStatus, Health, ReplState, ResyncPhase, ResyncStatus, SCHEMA,
};

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
        oldest_point: None,
        newest_point: None,
        point_policy: None,
        points_bytes: 0,
        cycles_judged: 0,
        cycles_consistent: 0,
        resync: None,
        last_resync: None,
        resyncs_completed: 0,
        next_retry_unix_ns: None,
        retries: 0,
        action: None,
        crash_points: None,
        round_freeze_ms: None,
        source: None,
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
    a.crash_points = Some(crate::status::CrashPointStatus {
        last_cut_unix_ns: Some(1),
        age_seconds: 42.5,
        every_seconds: 300,
        overdue: None,
    });
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
        store: None,
        groups: Vec::new(),
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
# HELP sitrep_seconds_since_crash_point Seconds since the cut of the newest crash-consistent point the agent offered (since the agent started, before the first).
# TYPE sitrep_seconds_since_crash_point gauge
sitrep_seconds_since_crash_point{disk="data"} 42.5
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
        store: None,
        groups: Vec::new(),
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
