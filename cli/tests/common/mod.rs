//! The "two sites" harness shared by the replication root tests: network namespaces, PKI,
//! daemons (killed on drop, their logs printed when a test fails), control-socket calls,
//! byte-for-byte comparison.
#![allow(
    dead_code,
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use sitrep_tests::io::MIB;
use sitrep_tests::loopdev::{LoopDevice, LoopOptions};
use sitrep_tests::netns::{NetNs, NetNsPair};
use sitrep_tests::replay::{fio, fio_engine};

mod groups;
#[allow(dead_code)]
pub mod points;
mod reverse_site;
#[allow(unused_imports)] // not every test binary uses every helper
pub use groups::*;
#[allow(unused_imports)]
pub use reverse_site::*;

pub const NEEDS: [sitrep_tests::Need; 5] = [
    sitrep_tests::Need::Root,
    sitrep_tests::Need::LoopDevices,
    sitrep_tests::Need::Bpf,
    sitrep_tests::Need::Netns,
    sitrep_tests::Need::Command("fio"),
];

pub fn sitrep() -> Command {
    Command::new(env!("CARGO_BIN_EXE_sitrep"))
}

pub fn sitrep_ok(args: &[&str]) -> String {
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
pub struct Daemon {
    child: Option<Child>,
    log: PathBuf,
    args: Vec<String>,
    ns: String,
}

impl Daemon {
    pub fn start(ns: &NetNs, log: &Path, args: &[String]) -> Self {
        let mut d = Self {
            child: None,
            log: log.to_path_buf(),
            args: args.to_vec(),
            ns: ns.name().to_string(),
        };
        d.spawn();
        d
    }

    pub fn spawn(&mut self) {
        let log = File::options()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns, env!("CARGO_BIN_EXE_sitrep")])
            .args(&self.args)
            // SITREP_TEST_LOG=info,sitrep_primary=debug to see more of a failing test.
            .env(
                "RUST_LOG",
                std::env::var("SITREP_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    /// SIGTERM and wait: the clean stop.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let pid = nix::unistd::Pid::from_raw(i32::try_from(c.id()).unwrap());
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let _ = c.wait();
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
        // A killed agent leaves its crash sentinel pinned (that is what it is for); the
        // test is over, so its programs go with it.
        if let Some(i) = self.args.iter().position(|a| a == "--state")
            && self.args.first().is_some_and(|a| a == "agent")
        {
            let state = PathBuf::from(&self.args[i + 1]);
            let pins = tracker_bpf::sentinel::dir_for(&test_bpffs(), &state);
            if let Ok(rd) = std::fs::read_dir(&pins) {
                for e in rd.flatten() {
                    let _ = std::fs::remove_file(e.path());
                }
            }
            let _ = std::fs::remove_dir(&pins);
        }
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
pub struct Sites {
    // Dropped in this order: the server first (its log is printed on failure), then the
    // namespaces, then the files.
    pub server: Daemon,
    pub net: NetNsPair,
    pub dir: tempfile::TempDir,
}

pub const PORT: u16 = 9443;

impl Sites {
    pub fn new() -> Self {
        Self::with_server_args(&[])
    }

    /// Sites whose server gets `extra` arguments (e.g. `--keep-points 3`).
    pub fn with_server_args(extra: &[&str]) -> Self {
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
            ]
            .into_iter()
            .chain(extra.iter().map(|s| (*s).to_string()))
            .collect::<Vec<String>>(),
        );
        Self { server, net, dir }
    }

    pub fn path(&self, n: &str) -> PathBuf {
        self.dir.path().join(n)
    }

    pub fn to(&self) -> String {
        format!("{}:{PORT}", NetNsPair::ADDR_B)
    }

    /// An agent in A with state `STATE-<tag>` and the PKI dir `pki`.
    pub fn agent(&self, tag: &str, pki: &str) -> Daemon {
        self.agent_with(tag, pki, &[])
    }

    /// [`Sites::agent`] with extra arguments.
    pub fn agent_with(&self, tag: &str, pki: &str, extra: &[&str]) -> Daemon {
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
                "--bpffs".into(),
                p(&test_bpffs()),
            ]
            .into_iter()
            // Tests resync at once unless they test the window.
            .chain(
                (!extra.contains(&"--resync-window"))
                    .then(|| ["--resync-window".to_string(), "always".to_string()])
                    .into_iter()
                    .flatten(),
            )
            .chain(extra.iter().map(|s| (*s).to_string()))
            .collect::<Vec<String>>(),
        )
    }

    pub fn sock(&self, tag: &str) -> PathBuf {
        self.path(&format!("agent-{tag}.sock"))
    }

    pub fn replica(&self, name: &str) -> PathBuf {
        self.path("store")
            .join("disks")
            .join(name)
            .join("replica.img")
    }
}

pub fn p(path: &Path) -> String {
    path.to_str().unwrap().to_string()
}

/// Runs a control command against a socket (retrying while the daemon starts).
pub fn ctl(sock: &Path, args: &[&str]) -> Value {
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

pub fn try_ctl(sock: &Path, args: &[&str]) -> Result<Value, String> {
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

pub fn disk_status(sock: &Path, name: &str) -> Value {
    let s = ctl(sock, &["status"]);
    s["disks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["name"] == name)
        .cloned()
        .unwrap_or_else(|| panic!("disk {name} not in status: {s}"))
}

pub fn wait_caught_up(sock: &Path, name: &str) -> Value {
    ctl(sock, &["wait", name, "--timeout", "240"])
}

/// First offset where the two files/devices differ, None if equal.
pub fn first_difference(a: &Path, b: &Path) -> Option<u64> {
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

pub fn read_full(f: &mut File, buf: &mut [u8]) -> usize {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..]).unwrap() {
            0 => break,
            k => n += k,
        }
    }
    n
}

pub fn assert_same(src: &Path, replica: &Path) {
    if let Some(off) = first_difference(src, replica) {
        panic!(
            "replica {} differs from {} at byte {off}",
            replica.display(),
            src.display()
        );
    }
}

pub fn loop_dev(size_mib: u64) -> LoopDevice {
    LoopDevice::new(size_mib * MIB, LoopOptions::default()).unwrap()
}

/// Random data in `[from, to)` MiB of `dev` (the rest stays zero).
pub fn random_region(dev: &Path, from_mib: u64, to_mib: u64) {
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

pub fn randwrite(dev: &Path, seconds: u32) {
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

/// A bpffs the agents' crash sentinels pin in: `ip netns exec` gives the agent a fresh /sys,
/// without the host's /sys/fs/bpf, so the tests mount one under /run (seen from every
/// namespace's mount table) once.
pub fn test_bpffs() -> PathBuf {
    static MOUNT: std::sync::Once = std::sync::Once::new();
    let dir = PathBuf::from("/run/sitrep-tests-bpffs");
    MOUNT.call_once(|| {
        std::fs::create_dir_all(&dir).unwrap();
        let mounted = std::fs::read_to_string("/proc/self/mounts")
            .unwrap_or_default()
            .lines()
            .any(|l| l.split_whitespace().nth(1) == Some("/run/sitrep-tests-bpffs"));
        if !mounted {
            let st = Command::new("mount")
                .args(["-t", "bpf", "bpf", "/run/sitrep-tests-bpffs"])
                .status()
                .unwrap();
            assert!(st.success(), "mount -t bpf");
        }
    });
    dir
}

pub fn sitrep_tests_agent(sites: &Sites) -> Daemon {
    sites.agent("a", "pki-a")
}

/// Runs `prog args…`; the test fails with its output unless it succeeds.
pub fn run_ok(prog: &str, args: &[&str]) {
    let out = Command::new(prog).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{prog} {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A mounted filesystem, unmounted on drop — thawed first, in case a planned failover or a
/// group round left it frozen.
pub struct Mounted(pub PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("fsfreeze")
            .args(["-u", &p(&self.0)])
            .stderr(Stdio::null())
            .status();
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// An agent crash under writes: `fio ARGS` runs on `dev` (protected as disk `name`), the
/// agent is killed with SIGKILL 1.5 s in, 2 MiB more is written with no agent running, and
/// the agent is started again. Afterwards the restart used the crash sentinel: no resync,
/// less than `disk_bytes` shipped again, replica == source.
pub fn crash_costs_no_resync(
    sites: &Sites,
    agent: &mut Daemon,
    dev: &Path,
    name: &str,
    fio_args: &[&str],
    disk_bytes: u64,
) {
    let s = sites.sock("a");
    let (d, args) = (
        dev.to_owned(),
        fio_args
            .iter()
            .map(|a| (*a).to_string())
            .collect::<Vec<_>>(),
    );
    let writer = std::thread::spawn(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        fio(&d, &args);
    });
    std::thread::sleep(Duration::from_millis(1500));
    agent.kill9();
    writer.join().unwrap();
    random_region(dev, 40, 42);
    agent.spawn();
    wait_caught_up(&s, name);
    let st = disk_status(&s, name);
    let log = agent.log_text();
    assert!(
        log.contains("crash sentinel kept tracking"),
        "the restart did not use the sentinel:\n{log}"
    );
    assert_eq!(st["resyncs_completed"], 0, "{st}");
    assert!(
        st["resync"].is_null() && st["resync_reason"].is_null(),
        "{st}"
    );
    // Only what changed was shipped again, not the disk.
    let shipped = st["bytes_shipped"].as_u64().unwrap();
    assert!(shipped < disk_bytes, "re-shipped {shipped} bytes: {st}");
    agent.stop();
    assert_same(dev, &sites.replica(name));
}
