//! Root tier: health and the retry rules between two "sites" (network namespaces, real TLS,
//! real loop devices, the real daemons).
//!
//! - An authentication failure (a client certificate from another CA, or an agent that does
//!   not trust the server) or an authorization failure (a valid client attaching a disk
//!   another client owns) makes the disk critical at once and is never retried: the agent
//!   dials once, the server sees one attempt.
//! - The server's store running out of space is retried on the schedule (1, 2, 4 … units,
//!   jitter only adds), the disk is a warning naming the cause meanwhile, and once space
//!   returns replication recovers by itself with nothing lost: no resync, the replica equal
//!   to the source byte for byte — whether the store filled up while a cycle was staged or
//!   while an acknowledged cycle was applied.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;
use sitrep_tests::io::MIB;
use sitrep_tests::require;

/// The schedule's first steps, in units (primary::backoff::SCHEDULE).
const FIRST_STEPS: [f64; 3] = [1.0, 2.0, 4.0];

/// An agent in A like [`Sites::agent`], with `--retry-unit UNIT` seconds.
fn agent_unit(sites: &Sites, tag: &str, pki: &str, unit: &str) -> Daemon {
    Daemon::start(
        &sites.net.a,
        &sites.path(&format!("agent-{tag}.log")),
        &[
            "agent".into(),
            "--state".into(),
            p(&sites.path(&format!("state-{tag}"))),
            "--pki".into(),
            p(&sites.path(pki)),
            "--socket".into(),
            p(&sites.sock(tag)),
            "--retry-unit".into(),
            unit.into(),
            "--resync-window".into(),
            "always".into(),
        ],
    )
}

fn protect(sites: &Sites, tag: &str, dev: &Path, name: &str) {
    ctl(
        &sites.sock(tag),
        &["protect", &p(dev), "--to", &sites.to(), "--name", name],
    );
}

/// Polls the status of disk `name` on `sock` until `ok` holds; panics after `limit` with the
/// last status and every distinct error seen meanwhile.
fn wait_status(sock: &Path, name: &str, limit: Duration, ok: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + limit;
    let mut errors: Vec<String> = Vec::new();
    loop {
        let st = disk_status(sock, name);
        if ok(&st) {
            return st;
        }
        if let Some(e) = st["error"].as_str()
            && !errors.iter().any(|x| x == e)
        {
            errors.push(e.to_string());
        }
        assert!(
            Instant::now() < deadline,
            "disk {name}: condition not reached in {limit:?}; last status {st}; errors seen: {errors:#?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn error_of(st: &Value) -> String {
    st["error"].as_str().unwrap_or_default().to_string()
}

fn count(text: &str, all: &[&str]) -> usize {
    text.lines()
        .filter(|l| all.iter().all(|w| l.contains(w)))
        .count()
}

// ---- 1. authentication and authorization ------------------------------------------------

#[test]
fn refused_certificates_and_foreign_clients_are_critical_and_never_retried() {
    if !require!(needs: &NEEDS) {
        return;
    }
    let sites = Sites::new();
    // The legitimate owner of "owned".
    let owner = sitrep_tests_agent(&sites);
    let d0 = loop_dev(32);
    random_region(d0.path(), 0, 8);
    protect(&sites, "a", d0.path(), "owned");
    wait_caught_up(&sites.sock("a"), "owned");
    let replica_before = std::fs::read(sites.replica("owned")).unwrap();

    // Another CA entirely, and a client certificate it issued under the owner's very name
    // ("sitea"): the agent trusts the real server (our CA is in its ca.pem too), so the
    // handshake fails on the server's side, after the client thinks it is done.
    sitrep_ok(&[
        "certs",
        "init",
        "--dir",
        &p(&sites.path("pki-evil")),
        "--name",
        "evilca",
    ]);
    sitrep_ok(&[
        "certs",
        "issue",
        "--ca",
        &p(&sites.path("pki-evil")),
        "--name",
        "sitea",
        "--out",
        &p(&sites.path("pki-foreign")),
    ]);
    let mut cas = std::fs::read(sites.path("pki-foreign").join("ca.pem")).unwrap();
    cas.extend(std::fs::read(sites.path("pki-b").join("ca.pem")).unwrap());
    std::fs::write(sites.path("pki-foreign").join("ca.pem"), cas).unwrap();
    // Our CA, another host, trying to write "owned".
    sitrep_ok(&[
        "certs",
        "issue",
        "--ca",
        &p(&sites.path("pki-b")),
        "--name",
        "rogue",
        "--out",
        &p(&sites.path("pki-rogue")),
    ]);
    // (tag, PKI dir, disk name, what the error must say)
    let cases = [
        // The server refuses the client's certificate.
        ("foreign", "pki-foreign", "foreign", "authentication failed"),
        // The agent refuses the server's certificate (it trusts only the other CA).
        ("evil", "pki-evil", "evil", "authentication failed"),
        // Authenticated, but "owned" belongs to sitea.
        ("rogue", "pki-rogue", "owned", "Unauthorized"),
    ];
    let handshakes_before = tls_handshakes_failed(&sites);
    let mut agents = Vec::new();
    let mut devs = Vec::new();
    for (tag, pki, name, _) in cases {
        let agent = agent_unit(&sites, tag, pki, "1");
        let dev = loop_dev(16);
        random_region(dev.path(), 0, 4);
        protect(&sites, tag, dev.path(), name);
        agents.push(agent);
        devs.push(dev);
    }
    for (tag, _, name, expect) in cases {
        let st = wait_status(&sites.sock(tag), name, Duration::from_secs(20), |st| {
            st["health"] == "critical"
        });
        let err = error_of(&st);
        assert!(
            err.contains(expect),
            "{tag}: error {err:?} should say {expect:?}"
        );
        assert!(
            err.contains(name),
            "{tag}: error {err:?} should name the disk"
        );
        assert_eq!(st["connected"], false, "{tag}: {st}");
    }
    // That each failure is attempted exactly once and never retried is proven without waiting
    // by primary/tests/inproc_refusals.rs (a simulated clock); here, the real TLS and attach
    // refusals must be classified as non-recoverable.
    for ((tag, _, name, expect), _agent) in cases.iter().zip(&agents) {
        let st = disk_status(&sites.sock(tag), name);
        assert_eq!(st["health"], "critical", "{tag}: {st}");
        assert!(error_of(&st).contains(expect), "{tag}: {st}");
        // Non-recoverable: no retry scheduled, none made, and the operator told what to do.
        assert_eq!(st["retries"], 0, "{tag}: {st}");
        assert!(st["next_retry_unix_ns"].is_null(), "{tag}: {st}");
        assert!(st["action"].is_string(), "{tag}: {st}");
        // `wait` reports the failure instead of hanging.
        let w = try_ctl(&sites.sock(tag), &["wait", name, "--timeout", "5"]);
        assert!(w.is_err(), "{tag}: wait succeeded on a refused disk");
    }
    // The server saw one attempt per refused client.
    let slog = sites.server.log_text();
    assert_eq!(
        tls_handshakes_failed(&sites) - handshakes_before,
        2,
        "one refused handshake each for 'foreign' and 'evil':\n{slog}"
    );
    assert_eq!(
        count(&slog, &["session ended", "client 'rogue' may not write"]),
        1,
        "one refused attach for 'rogue':\n{slog}"
    );
    for name in ["foreign", "evil"] {
        assert!(
            !sites.path("store").join("disks").join(name).exists(),
            "the server created a replica for the refused client {name}"
        );
    }
    drop(agents);
    assert_eq!(
        std::fs::read(sites.replica("owned")).unwrap(),
        replica_before,
        "a refused client changed the replica"
    );
    // The owner was not disturbed.
    random_region(d0.path(), 8, 12);
    let st = wait_caught_up(&sites.sock("a"), "owned");
    assert_eq!(st["health"], "normal", "{st}");
    assert_same(d0.path(), &sites.replica("owned"));
    drop(owner);
}

// ---- 2. out of space on the server ------------------------------------------------------

/// The server's store on a tmpfs of `size_mib`, lazily unmounted on drop (the server may
/// still hold files there; the namespace goes when it dies).
struct SmallStore {
    dir: PathBuf,
    ballast: Vec<PathBuf>,
}

impl SmallStore {
    /// Stops the server of `sites`, mounts the tmpfs over its store and starts it again.
    fn mount(sites: &mut Sites, size_mib: u64) -> Self {
        let ready = |sites: &Sites, n: usize| {
            let deadline = Instant::now() + Duration::from_secs(20);
            while count(&sites.server.log_text(), &["server ready"]) < n {
                assert!(Instant::now() < deadline, "the server did not start");
                std::thread::sleep(Duration::from_millis(50));
            }
        };
        ready(sites, 1);
        sites.server.stop();
        let dir = sites.path("store");
        std::fs::create_dir_all(&dir).unwrap();
        let st = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size_mib}m,mode=0700"),
                "sitrep-test-store",
                &p(&dir),
            ])
            .status()
            .unwrap();
        assert!(st.success(), "mount tmpfs on {}", dir.display());
        sites.server.spawn();
        ready(sites, 2);
        Self {
            dir,
            ballast: Vec::new(),
        }
    }

    fn free(&self) -> u64 {
        let s = nix::sys::statvfs::statvfs(&self.dir).unwrap();
        s.blocks_available() * s.fragment_size()
    }

    /// Fills the file system but for `leave` bytes (0: completely).
    fn fill(&mut self, leave: u64) {
        use nix::fcntl::{FallocateFlags, fallocate};
        let path = self.dir.join(format!("ballast-{}", self.ballast.len()));
        let f = File::create(&path).unwrap();
        self.ballast.push(path);
        let mut len = 0i64;
        let want = self.free().saturating_sub(leave);
        if want > 0 {
            let want = i64::try_from(want).unwrap();
            fallocate(&f, FallocateFlags::empty(), 0, want).unwrap();
            len = want;
        }
        if leave == 0 {
            // Top it off page by page, whatever the accounting said.
            while fallocate(&f, FallocateFlags::empty(), len, 4096).is_ok() {
                len += 4096;
            }
        }
        eprintln!(
            "ballast of {} MiB; {} KiB left",
            len >> 20,
            self.free() >> 10
        );
    }

    fn empty(&mut self) {
        for b in self.ballast.drain(..) {
            std::fs::remove_file(b).unwrap();
        }
    }
}

impl Drop for SmallStore {
    fn drop(&mut self) {
        let _ = Command::new("umount").args(["-l", &p(&self.dir)]).status();
    }
}

/// The delays of the "retrying in D" lines of `log`, in seconds.
fn retry_delays(log: &str) -> Vec<f64> {
    log.lines()
        .filter_map(|l| l.split("retrying in ").nth(1))
        .map(|d| parse_duration(d).unwrap_or_else(|| panic!("unparsable retry delay in {d:?}")))
        .collect()
}

/// `1.05s`, `250ms`, `2 s`… (Rust's `Duration` debug format) in seconds.
fn parse_duration(s: &str) -> Option<f64> {
    let s = s.trim();
    let end = s.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
    let v: f64 = s[..end].parse().ok()?;
    let unit = s[end..].trim_start();
    let scale = if unit.starts_with("ms") {
        1e-3
    } else if unit.starts_with("µs") || unit.starts_with("us") {
        1e-6
    } else if unit.starts_with("ns") {
        1e-9
    } else if unit.starts_with("min") {
        60.0
    } else if unit.starts_with('s') {
        1.0
    } else {
        return None;
    };
    Some(v * scale)
}

fn names_no_space(err: &str) -> bool {
    err.contains("NoSpace") || err.contains("No space left")
}

/// What the store holds for disk `name`: state.json (which must parse) and the staging
/// and undo directories' file names.
fn store_files(store: &Path, name: &str) -> (Value, Vec<String>) {
    let dir = store.join("disks").join(name);
    let state: Value = serde_json::from_slice(&std::fs::read(dir.join("state.json")).unwrap())
        .unwrap_or_else(|e| panic!("state.json of {name} is corrupt: {e}"));
    let mut files = Vec::new();
    for sub in ["staging", "undo", "."] {
        for e in std::fs::read_dir(dir.join(sub)).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_file() {
                files.push(format!("{sub}/{}", e.file_name().to_string_lossy()));
            }
        }
    }
    (state, files)
}

fn applied_seq(state: &Value) -> u64 {
    state["applied"]["seq"].as_u64().unwrap_or(0)
}

/// Sites whose server keeps its store on a 64 MiB tmpfs; an agent (retry unit 1 s)
/// protecting a 64 MiB loop device with 8 MiB of data as "data", copied.
fn small_setup() -> (Sites, SmallStore, Daemon, sitrep_tests::loopdev::LoopDevice) {
    let mut sites = Sites::new();
    let store = SmallStore::mount(&mut sites, 64);
    let agent = agent_unit(&sites, "a", "pki-a", "1");
    let dev = loop_dev(64);
    random_region(dev.path(), 0, 8);
    protect(&sites, "a", dev.path(), "data");
    wait_caught_up(&sites.sock("a"), "data");
    assert_same(dev.path(), &sites.replica("data"));
    (sites, store, agent, dev)
}

fn no_space_warning(st: &Value) -> bool {
    st["health"] == "warning" && names_no_space(st["error"].as_str().unwrap_or_default())
}

/// Recovered, nothing lost: caught up, normal, the replica equal to the source, no resync,
/// the store clean.
fn assert_recovered(sites: &Sites, store: &SmallStore, dev: &Path) {
    let st = wait_caught_up(&sites.sock("a"), "data");
    assert_eq!(st["health"], "normal", "{st}");
    assert_eq!(st["connected"], true, "{st}");
    assert_eq!(st["error"], Value::Null, "{st}");
    assert_same(dev, &sites.replica("data"));
    assert_eq!(st["resync_reason"], Value::Null, "{st}");
    assert_eq!(st["resyncs_completed"].as_u64().unwrap_or(0), 0, "{st}");
    assert!(
        !sites.server.log_text().contains("checksum resync"),
        "a resync ran"
    );
    let (state, files) = store_files(&store.dir, "data");
    assert_eq!(state["broken"], Value::Null, "{state}");
    assert!(
        !files
            .iter()
            .any(|f| f.starts_with("staging/") || f.contains(".tmp")),
        "leftovers in the store: {files:?}"
    );
}

#[test]
fn a_full_store_is_retried_on_schedule_and_recovers_by_itself() {
    if !require!(needs: &NEEDS) {
        return;
    }
    let (sites, mut store, agent, dev) = small_setup();
    let s = sites.sock("a");
    // No space at all: the next cycle cannot even be staged.
    let (state, _) = store_files(&store.dir, "data");
    let applied_before = applied_seq(&state);
    let mark = agent.log_text().len();
    store.fill(0);
    random_region(dev.path(), 16, 24);
    // Watch until three retries are logged and the status has named the cause (at most
    // 20 s), noting every error the status shows meanwhile.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut errors: Vec<String> = Vec::new();
    let mut named = false;
    let delays = loop {
        let st = disk_status(&s, "data");
        let e = error_of(&st);
        named |= no_space_warning(&st);
        if !e.is_empty() && !errors.contains(&e) {
            errors.push(e);
        }
        let d = retry_delays(&agent.log_text()[mark..]);
        if (d.len() >= FIRST_STEPS.len() && named) || Instant::now() > deadline {
            break d;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    eprintln!("retry delays: {delays:?}; errors: {errors:#?}");
    let mut wrong = Vec::new();
    if !named {
        wrong.push(format!(
            "the status never showed a warning naming the lack of space; its errors: {errors:#?}"
        ));
    }
    // Each delay at least its step (1, 2, 4 s; jitter only adds), never shrinking.
    let first = &delays[..delays.len().min(FIRST_STEPS.len())];
    if first.len() < FIRST_STEPS.len()
        || first
            .iter()
            .zip(FIRST_STEPS)
            .any(|(d, step)| *d < step - 0.001)
        || first.windows(2).any(|w| w[1] < w[0] - 0.001)
    {
        wrong.push(format!(
            "the first retries came after {first:.3?} s, not at least {FIRST_STEPS:?} s (jitter may only add)"
        ));
    }
    assert!(
        wrong.is_empty(),
        "out of space on the server:\n{}",
        wrong.join("\n")
    );
    // The server's view names the cause too, and its files are whole: state.json parses and
    // has not moved, nothing half-staged is left taking space.
    let srv = disk_status(&sites.path("server.sock"), "data");
    assert!(names_no_space(&error_of(&srv)), "server: {srv}");
    let (state, files) = store_files(&store.dir, "data");
    assert_eq!(applied_seq(&state), applied_before, "{state}");
    assert!(
        !files.iter().any(|f| f.contains(".tmp")),
        "leftover temporary files: {files:?}"
    );
    // Space returns: the agent recovers by itself.
    store.empty();
    assert_recovered(&sites, &store, dev.path());
    drop(agent);
}

#[test]
fn a_cycle_acknowledged_then_not_applied_for_lack_of_space_is_not_lost() {
    if !require!(needs: &NEEDS) {
        return;
    }
    let (sites, mut store, agent, dev) = small_setup();
    let s = sites.sock("a");
    // Room to stage the next 8 MiB but not to apply them as well (the replica is sparse:
    // those 8 MiB are holes). The cycle is acknowledged — the agent drops its log — then
    // its apply fails: the server must keep it and apply it before any later cycle, never
    // apply a later one over the hole.
    let smark = sites.server.log_text().len();
    store.fill(8 * MIB + 256 * 1024);
    random_region(dev.path(), 32, 40);
    let deadline = Instant::now() + Duration::from_secs(20);
    while count(
        &sites.server.log_text()[smark..],
        &["writing replica.img", "No space left"],
    ) == 0
    {
        assert!(
            Instant::now() < deadline,
            "the apply never ran out of space:\n{}",
            &sites.server.log_text()[smark..]
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let (state, files) = store_files(&store.dir, "data");
    let staged: Vec<&String> = files
        .iter()
        .filter(|f| f.starts_with("staging/") && f.ends_with(".cycle"))
        .collect();
    assert_eq!(
        staged.len(),
        1,
        "the acknowledged cycle stays staged: {files:?}"
    );
    assert!(
        staged[0].contains(&format!("{:020}", applied_seq(&state) + 1)),
        "staged {staged:?} is the cycle after applied {}",
        applied_seq(&state)
    );
    // `wait` cuts a new cycle: it must not overtake the unapplied one; the disk is a
    // warning naming the cause.
    let w = try_ctl(&s, &["wait", "data", "--timeout", "4"]);
    assert!(w.is_err(), "wait succeeded with an unapplied cycle: {w:?}");
    let st = wait_status(&s, "data", Duration::from_secs(10), no_space_warning);
    eprintln!("out of space: {st}");
    let (state2, _) = store_files(&store.dir, "data");
    assert_eq!(applied_seq(&state2), applied_seq(&state), "{state2}");
    store.empty();
    assert_recovered(&sites, &store, dev.path());
    drop(agent);
}

/// The server's count of failed TLS handshakes (`status --json`, listener `tls`).
fn tls_handshakes_failed(sites: &Sites) -> u64 {
    let st = ctl(&sites.path("server.sock"), &["status"]);
    st["listeners"]
        .as_array()
        .and_then(|l| l.iter().find(|l| l["name"] == "tls"))
        .and_then(|l| l["handshake_failed"].as_u64())
        .unwrap_or_else(|| panic!("no tls listener in {st}"))
}

/// An agent started before its network is up (at boot) retries its first connection every
/// couple of seconds rather than a retry unit later: with a 60 s unit, the disk replicates
/// within seconds of the link coming up.
#[test]
fn an_agent_started_before_the_network_connects_once_it_is_up() {
    if !sitrep_tests::require!(needs: &NEEDS) {
        return;
    }
    let sites = Sites::new();
    sites.net.a.ip(&["link", "set", "veth0", "down"]).unwrap();
    let _agent = agent_unit(&sites, "a", "pki-a", "60");
    let sock = sites.sock("a");
    let d = loop_dev(8);
    random_region(d.path(), 0, 4);
    protect(&sites, "a", d.path(), "late");
    // Failing to connect, the next attempt is due within the quick step, not a unit.
    let st = wait_status(&sock, "late", Duration::from_secs(30), |st| {
        st["next_retry_unix_ns"].as_u64().is_some()
    });
    let due = st["next_retry_unix_ns"].as_u64().unwrap();
    let wait_s = due.saturating_sub(base::now_ns()) as f64 / 1e9;
    assert!(
        wait_s < 10.0,
        "the first connection is retried in {wait_s:.1} s: {st}"
    );
    assert!(error_of(&st).contains("network"), "{st}");
    sites.net.a.ip(&["link", "set", "veth0", "up"]).unwrap();
    ctl(&sock, &["wait", "late", "--timeout", "30"]);
    assert_same(d.path(), &sites.replica("late"));
}
