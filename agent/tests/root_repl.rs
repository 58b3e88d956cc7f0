//! Root tier: replication between two "sites" — two network namespaces joined by a veth pair
//! — with the real `sitrep agent` (eBPF tracking a loop device) in site A and the real
//! `sitrep server` in site B, mutual TLS with certificates from `sitrep certs`.
//!
//! Every test ends by comparing the replica with the source byte for byte after `sitrep
//! wait` (every change made before it is applied on the replica), and checks the counters
//! its scenario is about (zero regions never sent as bytes, a resumed copy not restarted).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use sitrep_tests::io::MIB;
use sitrep_tests::loopdev::{LoopDevice, LoopOptions};
use sitrep_tests::netns::{NetNs, NetNsPair};
use sitrep_tests::replay::{fio, fio_engine, fio_spawn};
use sitrep_tests::{Need, require};

const NEEDS: [Need; 5] = [
    Need::Root,
    Need::LoopDevices,
    Need::Bpf,
    Need::Netns,
    Need::Command("fio"),
];

fn sitrep() -> Command {
    Command::new(env!("CARGO_BIN_EXE_sitrep"))
}

fn sitrep_ok(args: &[&str]) -> String {
    let out = sitrep().args(args).output().unwrap();
    assert!(
        out.status.success(),
        "sitrep {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A daemon process in a namespace, killed on drop; its log is printed if the test fails.
struct Daemon {
    child: Option<Child>,
    log: PathBuf,
    args: Vec<String>,
    ns: String,
}

impl Daemon {
    fn start(ns: &NetNs, log: &Path, args: &[String]) -> Self {
        let mut d = Self {
            child: None,
            log: log.to_path_buf(),
            args: args.to_vec(),
            ns: ns.name().to_string(),
        };
        d.spawn();
        d
    }

    fn spawn(&mut self) {
        let log = File::options()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns, env!("CARGO_BIN_EXE_sitrep")])
            .args(&self.args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    /// SIGTERM and wait: the clean stop.
    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let pid = nix::unistd::Pid::from_raw(i32::try_from(c.id()).unwrap());
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let _ = c.wait();
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
        if std::thread::panicking() {
            let t = self.log_text();
            let tail: Vec<&str> = t.lines().rev().take(40).collect();
            eprintln!("---- {} (last lines) ----", self.log.display());
            for l in tail.iter().rev() {
                eprintln!("{l}");
            }
        }
    }
}

/// Two sites, PKI, a server in B.
struct Sites {
    // Dropped in this order: the server first (its log is printed on failure), then the
    // namespaces, then the files.
    server: Daemon,
    net: NetNsPair,
    dir: tempfile::TempDir,
}

const PORT: u16 = 9443;

impl Sites {
    fn new() -> Self {
        let net = NetNsPair::new().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let b = NetNsPair::ADDR_B.to_string();
        sitrep_ok(&[
            "certs",
            "init",
            "--dir",
            &p(&d.join("pki-b")),
            "--name",
            "siteb",
            "--san",
            &b,
        ]);
        sitrep_ok(&[
            "certs",
            "issue",
            "--ca",
            &p(&d.join("pki-b")),
            "--name",
            "sitea",
            "--out",
            &p(&d.join("pki-a")),
        ]);
        let server = Daemon::start(
            &net.b,
            &d.join("server.log"),
            &[
                "server".into(),
                "--listen".into(),
                format!("{b}:{PORT}"),
                "--store".into(),
                p(&d.join("store")),
                "--pki".into(),
                p(&d.join("pki-b")),
                "--socket".into(),
                p(&d.join("server.sock")),
            ],
        );
        Self { server, net, dir }
    }

    fn path(&self, n: &str) -> PathBuf {
        self.dir.path().join(n)
    }

    fn to(&self) -> String {
        format!("{}:{PORT}", NetNsPair::ADDR_B)
    }

    /// An agent in A with state `STATE-<tag>` and the PKI dir `pki`.
    fn agent(&self, tag: &str, pki: &str) -> Daemon {
        Daemon::start(
            &self.net.a,
            &self.path(&format!("agent-{tag}.log")),
            &[
                "agent".into(),
                "--state".into(),
                p(&self.path(&format!("state-{tag}"))),
                "--pki".into(),
                p(&self.path(pki)),
                "--socket".into(),
                p(&self.sock(tag)),
                "--retry-unit".into(),
                "0.2".into(),
            ],
        )
    }

    fn sock(&self, tag: &str) -> PathBuf {
        self.path(&format!("agent-{tag}.sock"))
    }

    fn replica(&self, name: &str) -> PathBuf {
        self.path("store")
            .join("disks")
            .join(name)
            .join("replica.img")
    }
}

fn p(path: &Path) -> String {
    path.to_str().unwrap().to_string()
}

/// Runs a control command against a socket (retrying while the daemon starts).
fn ctl(sock: &Path, args: &[&str]) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = sitrep()
            .args(args)
            .args(["--socket", &p(sock), "--json"])
            .output()
            .unwrap();
        if out.status.success() {
            return serde_json::from_slice(&out.stdout).unwrap();
        }
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(
            err.contains("cannot reach") && Instant::now() < deadline,
            "sitrep {args:?}: {err}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn try_ctl(sock: &Path, args: &[&str]) -> Result<Value, String> {
    let out = sitrep()
        .args(args)
        .args(["--socket", &p(sock), "--json"])
        .output()
        .unwrap();
    if out.status.success() {
        Ok(serde_json::from_slice(&out.stdout).unwrap())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn disk_status(sock: &Path, name: &str) -> Value {
    let s = ctl(sock, &["status"]);
    s["disks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["name"] == name)
        .cloned()
        .unwrap_or_else(|| panic!("disk {name} not in status: {s}"))
}

fn wait_caught_up(sock: &Path, name: &str) -> Value {
    ctl(sock, &["wait", name, "--timeout", "240"])
}

/// First offset where the two files/devices differ, None if equal.
fn first_difference(a: &Path, b: &Path) -> Option<u64> {
    let _ = Command::new("blockdev")
        .args(["--flushbufs", &p(a)])
        .status();
    let mut fa = File::open(a).unwrap();
    let mut fb = File::open(b).unwrap();
    let mut ba = vec![0u8; 1 << 20];
    let mut bb = vec![0u8; 1 << 20];
    let mut off = 0u64;
    loop {
        let na = read_full(&mut fa, &mut ba);
        let nb = read_full(&mut fb, &mut bb);
        if na != nb || ba[..na] != bb[..nb] {
            let i = ba[..na.min(nb)]
                .iter()
                .zip(&bb[..na.min(nb)])
                .position(|(x, y)| x != y)
                .unwrap_or(na.min(nb));
            return Some(off + i as u64);
        }
        if na == 0 {
            return None;
        }
        off += na as u64;
    }
}

fn read_full(f: &mut File, buf: &mut [u8]) -> usize {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..]).unwrap() {
            0 => break,
            k => n += k,
        }
    }
    n
}

fn assert_same(src: &Path, replica: &Path) {
    if let Some(off) = first_difference(src, replica) {
        panic!(
            "replica {} differs from {} at byte {off}",
            replica.display(),
            src.display()
        );
    }
}

fn loop_dev(size_mib: u64) -> LoopDevice {
    LoopDevice::new(size_mib * MIB, LoopOptions::default()).unwrap()
}

/// Random data in `[from, to)` MiB of `dev` (the rest stays zero).
fn random_region(dev: &Path, from_mib: u64, to_mib: u64) {
    let st = Command::new("dd")
        .args([
            "if=/dev/urandom",
            &format!("of={}", p(dev)),
            "bs=1M",
            &format!("seek={from_mib}"),
            &format!("count={}", to_mib - from_mib),
            "oflag=direct",
            "conv=notrunc",
            "status=none",
        ])
        .status()
        .unwrap();
    assert!(st.success(), "dd to {}", dev.display());
}

fn randwrite(dev: &Path, seconds: u32) {
    fio(
        dev,
        &[
            "--rw=randwrite",
            "--bsrange=4k-256k",
            "--direct=1",
            &format!("--ioengine={}", fio_engine()),
            "--iodepth=8",
            "--time_based",
            &format!("--runtime={seconds}"),
            "--rate=20m",
        ],
    );
}

#[test]
fn initial_copy_skips_zeros_and_cycles_converge_at_two_frequencies() {
    if !require!(needs: &NEEDS) {
        return;
    }
    let sites = Sites::new();
    let agent = sitrep_tests_agent(&sites);
    let d1 = loop_dev(256);
    let d2 = loop_dev(64);
    // 96 MiB of data in two regions, 160 MiB of zeros.
    random_region(d1.path(), 0, 64);
    random_region(d1.path(), 160, 192);
    random_region(d2.path(), 8, 24);
    let s = sites.sock("a");
    let job = ctl(
        &s,
        &[
            "protect",
            &p(d1.path()),
            "--to",
            &sites.to(),
            "--name",
            "one",
        ],
    );
    assert_eq!(job["kind"], "enable-protection");
    ctl(
        &s,
        &[
            "protect",
            &p(d2.path()),
            "--to",
            &sites.to(),
            "--name",
            "two",
            "--frequency",
            "30s",
        ],
    );
    let st = wait_caught_up(&s, "one");
    assert_eq!(st["state"], "protected", "{st}");
    assert_eq!(st["lag_seconds"], 0.0);
    assert_same(d1.path(), &sites.replica("one"));
    // Zero regions crossed the wire as zero extents, never as bytes.
    let shipped = st["bytes_shipped"].as_u64().unwrap();
    assert!(
        shipped <= 96 * MIB + 4 * MIB,
        "shipped {shipped} bytes for 96 MiB of data"
    );
    assert!(st["zero_bytes"].as_u64().unwrap() >= 160 * MIB, "{st}");
    let jobs = ctl(&s, &["jobs"]);
    assert!(
        jobs["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .any(|j| j["disk"] == "one" && j["state"] == "succeeded"),
        "{jobs}"
    );
    // Delta cycles: continuous for "one", 30 s for "two" (wait forces the cut).
    let bg = fio_spawn(
        d2.path(),
        &[
            "--rw=randwrite",
            "--bs=4k",
            "--direct=1",
            "--time_based",
            "--runtime=4",
            "--rate=5m",
        ],
    );
    randwrite(d1.path(), 4);
    bg.wait();
    for (name, dev) in [("one", &d1), ("two", &d2)] {
        let st = wait_caught_up(&s, name);
        assert_same(dev.path(), &sites.replica(name));
        assert!(st["cycles_applied"].as_u64().unwrap() >= 1, "{st}");
        assert!(st["last_applied"]["seq"].as_u64().is_some(), "{st}");
    }
    // The server's view agrees.
    let srv = ctl(&sites.path("server.sock"), &["status"]);
    assert_eq!(srv["role"], "server");
    assert_eq!(srv["disks"].as_array().unwrap().len(), 2, "{srv}");
    drop(agent);
}

fn sitrep_tests_agent(sites: &Sites) -> Daemon {
    sites.agent("a", "pki-a")
}

#[test]
fn kill9_of_server_and_agent_at_random_moments_converges() {
    if !require!(needs: &NEEDS) {
        return;
    }
    let mut sites = Sites::new();
    let mut agent = sitrep_tests_agent(&sites);
    let d = loop_dev(64);
    random_region(d.path(), 0, 32);
    let s = sites.sock("a");
    ctl(
        &s,
        &["protect", &p(d.path()), "--to", &sites.to(), "--name", "k"],
    );
    wait_caught_up(&s, "k");
    let bg = fio_spawn(
        d.path(),
        &[
            "--rw=randwrite",
            "--bsrange=4k-128k",
            "--direct=1",
            "--time_based",
            "--runtime=14",
            "--rate=10m",
        ],
    );
    let mut seed = std::process::id();
    let mut rand_ms = |lo: u32, hi: u32| {
        seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
        u64::from(lo + (seed >> 8) % (hi - lo))
    };
    for round in 0..3 {
        std::thread::sleep(Duration::from_millis(rand_ms(500, 1500)));
        sites.server.kill9();
        std::thread::sleep(Duration::from_millis(rand_ms(100, 600)));
        sites.server.restart();
        std::thread::sleep(Duration::from_millis(rand_ms(500, 1500)));
        agent.kill9();
        std::thread::sleep(Duration::from_millis(rand_ms(100, 600)));
        agent.restart();
        eprintln!("round {round}: killed and restarted both");
    }
    bg.wait();
    let st = wait_caught_up(&s, "k");
    assert_eq!(st["state"], "protected", "{st}");
    assert_same(d.path(), &sites.replica("k"));
    // The server recovered whatever it had staged and applied cycles in order.
    assert!(
        sites.server.log_text().contains("replica open"),
        "the restarted server reopened the replica"
    );
    // A clean stop (SIGTERM) and restart continues without a re-copy.
    agent.stop();
    let before = disk_status_after_restart(&mut agent, &s, "k");
    assert_eq!(before["resync_reason"], Value::Null, "{before}");
    randwrite(d.path(), 2);
    wait_caught_up(&s, "k");
    assert_same(d.path(), &sites.replica("k"));
}

fn disk_status_after_restart(agent: &mut Daemon, sock: &Path, name: &str) -> Value {
    agent.spawn();
    disk_status(sock, name)
}

#[test]
fn network_cut_resumes_the_copy_and_a_cycle() {
    if !require!(needs: &NEEDS) {
        return;
    }
    let sites = Sites::new();
    // Slow the copy down so the cut lands in the middle of it.
    let mut agent = Daemon::start(
        &sites.net.a,
        &sites.path("agent-a.log"),
        &[
            "agent".into(),
            "--state".into(),
            p(&sites.path("state-a")),
            "--pki".into(),
            p(&sites.path("pki-a")),
            "--socket".into(),
            p(&sites.sock("a")),
            "--retry-unit".into(),
            "0.2".into(),
            "--max-rate".into(),
            "24M".into(),
        ],
    );
    let d = loop_dev(160);
    random_region(d.path(), 0, 160);
    let s = sites.sock("a");
    ctl(
        &s,
        &["protect", &p(d.path()), "--to", &sites.to(), "--name", "n"],
    );
    // Wait until the first checkpoint (64 MiB) is durable, then cut the link.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let st = disk_status(&s, "n");
        if st["copy"]["bytes_done"].as_u64().unwrap_or(0) >= 64 * MIB {
            assert_eq!(st["copy"]["done"], false, "the cut must land mid-copy: {st}");
            break;
        }
        assert!(Instant::now() < deadline, "copy did not progress: {st}");
        std::thread::sleep(Duration::from_millis(100));
    }
    cut_link(&sites, Duration::from_secs(2));
    let st = wait_caught_up(&s, "n");
    assert_same(d.path(), &sites.replica("n"));
    let shipped = st["bytes_shipped"].as_u64().unwrap();
    // A restarted copy would have sent ≥ 64 MiB + 160 MiB.
    assert!(
        shipped < 160 * MIB + 64 * MIB,
        "the copy restarted from zero: {shipped} bytes shipped for a 160 MiB disk"
    );
    assert!(
        agent.log_text().contains("retrying"),
        "the agent noticed the cut"
    );
    // Mid-cycle: a big cycle at 24 MB/s, cut while it ships.
    random_region(d.path(), 16, 112);
    std::thread::sleep(Duration::from_millis(1500));
    cut_link(&sites, Duration::from_secs(2));
    wait_caught_up(&s, "n");
    assert_same(d.path(), &sites.replica("n"));
    agent.stop();
}

/// Takes site A's link down, destroys its TCP connections (a real outage times them out;
/// this one is short), and brings it back after `down`.
fn cut_link(sites: &Sites, down: Duration) {
    sites.net.a.ip(&["link", "set", "veth0", "down"]).unwrap();
    let _ = sites
        .net
        .a
        .exec("ss", &["-K", "dst", &NetNsPair::ADDR_B.to_string()]);
    std::thread::sleep(down);
    sites.net.a.ip(&["link", "set", "veth0", "up"]).unwrap();
}

#[test]
fn refuses_wrong_ca_expired_cert_and_foreign_client() {
    if !require!(needs: &NEEDS) {
        return;
    }
    let sites = Sites::new();
    let good = sitrep_tests_agent(&sites);
    let d = loop_dev(32);
    random_region(d.path(), 0, 8);
    let s = sites.sock("a");
    ctl(
        &s,
        &[
            "protect",
            &p(d.path()),
            "--to",
            &sites.to(),
            "--name",
            "owned",
        ],
    );
    wait_caught_up(&s, "owned");
    let replica_before = std::fs::read(sites.replica("owned")).unwrap();
    // Another CA entirely.
    sitrep_ok(&[
        "certs",
        "init",
        "--dir",
        &p(&sites.path("pki-evil")),
        "--name",
        "sitea",
    ]);
    // Our CA, but expired.
    sitrep_ok(&[
        "certs",
        "issue",
        "--ca",
        &p(&sites.path("pki-b")),
        "--name",
        "old",
        "--out",
        &p(&sites.path("pki-old")),
        "--expired",
    ]);
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
    for (tag, pki, name, expect) in [
        ("evil", "pki-evil", "evil", "authentication failed"),
        ("old", "pki-old", "old", "authentication failed"),
        ("rogue", "pki-rogue", "owned", "may not write"),
    ] {
        let agent = sites.agent(tag, pki);
        let dev = loop_dev(16);
        random_region(dev.path(), 0, 4);
        ctl(
            &sites.sock(tag),
            &[
                "protect",
                &p(dev.path()),
                "--to",
                &sites.to(),
                "--name",
                name,
            ],
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        let st = loop {
            let st = disk_status(&sites.sock(tag), name);
            if st["health"] == "critical" {
                break st;
            }
            assert!(Instant::now() < deadline, "{tag}: never refused: {st}");
            std::thread::sleep(Duration::from_millis(100));
        };
        let err = st["error"].as_str().unwrap_or_default().to_string();
        assert!(
            err.contains(expect),
            "{tag}: error {err:?} should say {expect:?}"
        );
        assert!(
            err.contains(name),
            "{tag}: error {err:?} should name the disk"
        );
        // `wait` reports the failure instead of hanging.
        let w = try_ctl(&sites.sock(tag), &["wait", name, "--timeout", "5"]);
        assert!(w.is_err(), "{tag}: wait succeeded on a refused disk");
        drop(agent);
        if name != "owned" {
            assert!(
                !sites.path("store").join("disks").join(name).exists(),
                "{tag}: the server created a replica for a refused client"
            );
        }
    }
    assert_eq!(
        std::fs::read(sites.replica("owned")).unwrap(),
        replica_before,
        "a refused client changed the replica"
    );
    drop(good);
}
