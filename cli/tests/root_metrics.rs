//! Root tier: the Prometheus endpoints (`--metrics`) of both daemons, scraped over real TCP
//! inside the two sites' network namespaces after a protection has caught up.
//!
//! The agent's endpoint listens on site A's own loopback (each namespace has one) and is
//! scraped from inside A; the server's listens on site B's address and is scraped from A,
//! across the link, as a monitoring host elsewhere would.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;
use sitrep_tests::netns::{NetNs, NetNsPair};
use sitrep_tests::require;

/// The agent's endpoint, on site A's loopback.
const AGENT_METRICS: &str = "127.0.0.1:9464";
/// The server's endpoint port, on site B's address.
const SERVER_METRICS_PORT: u16 = 9465;

/// One HTTP exchange from inside `ns` (retried while the daemon starts): the whole answer.
fn http_get(ns: &NetNs, addr: &str, path: &str) -> String {
    let addr = addr.to_string();
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: */*\r\n\r\n");
    ns.run_in(move || {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let attempt = (|| -> std::io::Result<String> {
                let mut c = TcpStream::connect(&addr)?;
                c.set_read_timeout(Some(Duration::from_secs(10)))?;
                c.write_all(req.as_bytes())?;
                let mut answer = String::new();
                c.read_to_string(&mut answer)?;
                Ok(answer)
            })();
            match attempt {
                Ok(a) => return a,
                Err(e) => {
                    assert!(Instant::now() < deadline, "GET http://{addr}{path}: {e}");
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
    })
    .unwrap()
}

/// The body of a `200 OK` exposition answer.
fn scrape(ns: &NetNs, addr: &str) -> String {
    let answer = http_get(ns, addr, "/metrics");
    let (head, body) = answer
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP head in {answer:?}"));
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(
        head.contains("Content-Type: text/plain; version=0.0.4"),
        "{head}"
    );
    body.to_string()
}

/// The value of exactly `series` (name and labels) in an exposition text.
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("{series} not in the metrics:\n{text}"))
}

#[test]
fn both_daemons_export_replication_metrics() {
    if !require!(needs: &NEEDS) {
        return;
    }
    let server_metrics = format!("{}:{SERVER_METRICS_PORT}", NetNsPair::ADDR_B);
    let sites = Sites::with_server_args(&["--metrics", &server_metrics]);
    let agent = sites.agent_with("a", "pki-a", &["--metrics", AGENT_METRICS]);
    let d = loop_dev(32);
    random_region(d.path(), 0, 8);
    let s = sites.sock("a");
    ctl(
        &s,
        &["protect", &p(d.path()), "--to", &sites.to(), "--name", "x"],
    );
    wait_caught_up(&s, "x");
    // A delta cycle after the copy, so the server has applied at least one.
    random_region(d.path(), 8, 12);
    let st = wait_caught_up(&s, "x");
    assert_eq!(st["health"], "normal", "{st}");
    assert_same(d.path(), &sites.replica("x"));

    let a = scrape(&sites.net.a, AGENT_METRICS);
    eprintln!("---- agent metrics ----\n{a}");
    assert_eq!(sample(&a, r#"sitrep_info{role="agent",host="sitea"}"#), 1.0);
    let shipped = sample(&a, r#"sitrep_bytes_shipped_total{disk="x"}"#);
    assert!(shipped > 0.0, "nothing shipped: {shipped}");
    // 8 MiB copied and 4 MiB in the cycle (zero regions are not counted as shipped).
    assert!(shipped >= f64::from(12u32 << 20), "shipped {shipped}");
    assert_eq!(sample(&a, r#"sitrep_health{disk="x"}"#), 0.0);
    assert_eq!(sample(&a, r#"sitrep_connected{disk="x"}"#), 1.0);
    assert!(sample(&a, r#"sitrep_cycles_applied_total{disk="x"}"#) >= 1.0);
    assert!(sample(&a, r#"sitrep_zero_bytes_total{disk="x"}"#) > 0.0);
    assert!(sample(&a, r#"sitrep_wire_bytes_total{disk="x"}"#) > 0.0);
    assert_eq!(sample(&a, r#"sitrep_retries_total{disk="x"}"#), 0.0);
    assert!(
        a.contains("# TYPE sitrep_bytes_shipped_total counter\n"),
        "{a}"
    );
    assert!(a.contains("# TYPE sitrep_lag_seconds gauge\n"), "{a}");

    let b = scrape(&sites.net.a, &server_metrics);
    eprintln!("---- server metrics ----\n{b}");
    assert_eq!(
        sample(&b, r#"sitrep_info{role="server",host="siteb"}"#),
        1.0
    );
    assert!(
        sample(&b, r#"sitrep_cycles_applied_total{disk="x"}"#) > 0.0,
        "{b}"
    );
    assert!(
        sample(&b, r#"sitrep_bytes_shipped_total{disk="x"}"#) > 0.0,
        "{b}"
    );
    // Present (how many depends on which cycles were proved consistent).
    assert!(sample(&b, r#"sitrep_points{disk="x"}"#) >= 0.0, "{b}");
    assert_eq!(sample(&b, r#"sitrep_health{disk="x"}"#), 0.0);

    // Anything but GET /metrics is refused.
    let nf = http_get(&sites.net.a, AGENT_METRICS, "/");
    assert!(nf.starts_with("HTTP/1.1 404 Not Found\r\n"), "{nf}");
    drop(agent);
}
