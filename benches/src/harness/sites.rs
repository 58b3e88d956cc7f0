//! Two sites on one machine for the end-to-end scenarios: network namespaces A and B joined
//! by a veth pair, a private CA, `sitrep server` in B, `sitrep agent` in A, loop devices
//! over files. Everything is undone on drop (daemons killed, loops detached, namespaces
//! deleted, files removed), also when a scenario fails half-way.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// Site A's address (the agent's side).
pub const ADDR_A: &str = "10.78.0.1";
/// Site B's address (the server's side).
pub const ADDR_B: &str = "10.78.0.2";
/// The server's port.
pub const PORT: u16 = 9543;

/// Runs a command, fails with its stderr if it fails; returns stdout.
///
/// # Errors
/// The command cannot start or exits non-zero.
pub fn run(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A daemon started by [`Sites`], with its log file.
#[derive(Debug)]
pub struct Daemon {
    child: Child,
    /// Its control socket.
    pub socket: PathBuf,
    /// Its stdout+stderr.
    pub log: PathBuf,
}

impl Daemon {
    /// The daemon's pid (`ip netns exec` execs it, so this is the sitrep process).
    #[must_use]
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Peak and current resident set size (VmHWM, VmRSS) in bytes.
    ///
    /// # Errors
    /// The process is gone.
    pub fn rss(&self) -> anyhow::Result<(u64, u64)> {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))?;
        let field = |k: &str| -> u64 {
            s.lines()
                .find(|l| l.starts_with(k))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
                .map_or(0, |kib| kib * 1024)
        };
        Ok((field("VmHWM:"), field("VmRSS:")))
    }

    /// User + system CPU seconds used so far (all threads).
    ///
    /// # Errors
    /// The process is gone.
    pub fn cpu_seconds(&self) -> anyhow::Result<f64> {
        let s = std::fs::read_to_string(format!("/proc/{}/stat", self.pid()))?;
        let rest = s.rsplit_once(") ").map_or("", |(_, r)| r);
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
        // SAFETY: sysconf has no memory-safety preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        Ok((ticks(11) + ticks(12)) / hz.max(1.0))
    }

    /// Bytes the process caused to be written to storage so far (`/proc/PID/io`
    /// `write_bytes`: what reached the block layer, page-cache writeback included).
    ///
    /// # Errors
    /// The process is gone.
    pub fn io_write_bytes(&self) -> anyhow::Result<u64> {
        let s = std::fs::read_to_string(format!("/proc/{}/io", self.pid()))?;
        s.lines()
            .find_map(|l| l.strip_prefix("write_bytes: "))
            .and_then(|v| v.trim().parse().ok())
            .context("no write_bytes in /proc/PID/io")
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The two sites.
#[derive(Debug)]
pub struct Sites {
    /// Namespace of site A.
    pub ns_a: String,
    /// Namespace of site B.
    pub ns_b: String,
    /// Work directory (certificates, state, store, images).
    pub work: PathBuf,
    /// The sitrep binary.
    pub sitrep: PathBuf,
    /// The server (site B).
    pub server: Option<Daemon>,
    /// The agent (site A).
    pub agent: Option<Daemon>,
    loops: Vec<PathBuf>,
    logs: PathBuf,
}

impl Sites {
    /// Creates the namespaces and the link, the CA and certificates, and starts both
    /// daemons. `work` must not exist yet; `logs` receives the daemons' output.
    ///
    /// # Errors
    /// Any step fails (not root, no `ip`, the daemons do not come up).
    pub fn up(sitrep: &Path, work: &Path, logs: &Path, tag: &str) -> anyhow::Result<Self> {
        std::fs::create_dir_all(work)?;
        let id = std::process::id();
        let mut s = Self {
            ns_a: format!("sitrep-bench-{tag}-{id}-a"),
            ns_b: format!("sitrep-bench-{tag}-{id}-b"),
            work: work.to_owned(),
            sitrep: sitrep.to_owned(),
            server: None,
            agent: None,
            loops: Vec::new(),
            logs: logs.to_owned(),
        };
        let ip = |args: &[&str]| run(Command::new("ip").args(args));
        ip(&["netns", "add", &s.ns_a])?;
        ip(&["netns", "add", &s.ns_b])?;
        let (a, b) = (s.ns_a.clone(), s.ns_b.clone());
        ip(&["-n", &a, "link", "set", "lo", "up"])?;
        ip(&["-n", &b, "link", "set", "lo", "up"])?;
        ip(&[
            "-n", &a, "link", "add", "veth0", "type", "veth", "peer", "name", "veth0", "netns", &b,
        ])?;
        ip(&[
            "-n",
            &a,
            "addr",
            "add",
            &format!("{ADDR_A}/24"),
            "dev",
            "veth0",
        ])?;
        ip(&[
            "-n",
            &b,
            "addr",
            "add",
            &format!("{ADDR_B}/24"),
            "dev",
            "veth0",
        ])?;
        ip(&["-n", &a, "link", "set", "veth0", "up"])?;
        ip(&["-n", &b, "link", "set", "veth0", "up"])?;

        let (pki_a, pki_b) = (work.join("pki-a"), work.join("pki-b"));
        run(Command::new(sitrep)
            .args(["certs", "init", "--name", "siteb", "--san", ADDR_B])
            .arg("--dir")
            .arg(&pki_b))?;
        run(Command::new(sitrep)
            .args(["certs", "issue", "--name", "sitea"])
            .arg("--ca")
            .arg(&pki_b)
            .arg("--out")
            .arg(&pki_a))?;
        let listen = format!("{ADDR_B}:{PORT}");
        let server = s.start(
            &b,
            "server",
            &["server", "--listen", &listen],
            &[("--store", work.join("store")), ("--pki", pki_b)],
        )?;
        s.server = Some(server);
        // Extra agent flags for experiments (e.g. SITREP_BENCH_AGENT_ARGS="--compress-level 0").
        let extra = std::env::var("SITREP_BENCH_AGENT_ARGS").unwrap_or_default();
        let mut agent_args = vec!["agent", "--resync-window", "always"];
        agent_args.extend(extra.split_whitespace());
        let agent = s.start(
            &a,
            "agent",
            &agent_args,
            &[("--state", work.join("state")), ("--pki", pki_a)],
        )?;
        s.agent = Some(agent);
        Ok(s)
    }

    fn start(
        &self,
        ns: &str,
        name: &str,
        args: &[&str],
        paths: &[(&str, PathBuf)],
    ) -> anyhow::Result<Daemon> {
        let socket = self.work.join(format!("{name}.sock"));
        let log = self.logs.join(format!("{name}.log"));
        let f = std::fs::File::create(&log)?;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns]).arg(&self.sitrep).args(args);
        for (flag, p) in paths {
            cmd.arg(flag).arg(p);
        }
        cmd.arg("--socket").arg(&socket);
        let child = cmd
            .env(
                "RUST_LOG",
                std::env::var("SITREP_BENCH_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(f.try_clone()?)
            .stderr(f)
            .spawn()
            .with_context(|| format!("starting {cmd:?}"))?;
        let mut d = Daemon { child, socket, log };
        let t0 = Instant::now();
        loop {
            if let Some(st) = d.child.try_wait()? {
                bail!("sitrep {name} exited ({st}); log: {}", d.log.display());
            }
            if self.status_of(&d.socket).is_ok() {
                return Ok(d);
            }
            if t0.elapsed() > Duration::from_secs(30) {
                d.kill();
                bail!(
                    "sitrep {name} does not answer after 30 s; log: {}",
                    d.log.display()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn status_of(&self, socket: &Path) -> anyhow::Result<serde_json::Value> {
        let out = run(Command::new(&self.sitrep)
            .args(["status", "--json", "--socket"])
            .arg(socket))?;
        Ok(serde_json::from_str(&out)?)
    }

    /// The agent's status of disk `name` (`status --json`, `disks[]`).
    ///
    /// # Errors
    /// The agent does not answer or does not know the disk.
    pub fn agent_disk(&self, name: &str) -> anyhow::Result<serde_json::Value> {
        let a = self.agent.as_ref().context("no agent")?;
        let v = self.status_of(&a.socket)?;
        v["disks"]
            .as_array()
            .and_then(|d| d.iter().find(|d| d["name"] == name))
            .cloned()
            .with_context(|| format!("agent status has no disk {name}"))
    }

    /// A loop device (direct I/O) over a new file of `size` bytes (sparse) at `file`.
    ///
    /// # Errors
    /// losetup fails.
    pub fn loop_device(&mut self, file: &Path, size: u64) -> anyhow::Result<PathBuf> {
        std::fs::File::create(file)?.set_len(size)?;
        self.attach_loop(file)
    }

    /// A loop device (direct I/O) over an existing file.
    ///
    /// # Errors
    /// losetup fails.
    pub fn attach_loop(&mut self, file: &Path) -> anyhow::Result<PathBuf> {
        let dev = run(Command::new("losetup")
            .args(["-f", "--show", "--direct-io=on"])
            .arg(file))?;
        let dev = PathBuf::from(dev.trim());
        self.loops.push(dev.clone());
        Ok(dev)
    }

    /// `sitrep protect DEVICE --to B --name NAME --frequency continuous`.
    ///
    /// # Errors
    /// The agent refuses.
    pub fn protect(&self, dev: &Path, name: &str) -> anyhow::Result<()> {
        self.protect_with(dev, name, &[])
    }

    /// [`Sites::protect`] with `extra` arguments (e.g. `--crash-points-every 30s`).
    ///
    /// # Errors
    /// The agent refuses.
    pub fn protect_with(&self, dev: &Path, name: &str, extra: &[&str]) -> anyhow::Result<()> {
        let a = self.agent.as_ref().context("no agent")?;
        run(Command::new(&self.sitrep)
            .arg("protect")
            .arg(dev)
            .args([
                "--to",
                &format!("{ADDR_B}:{PORT}"),
                "--name",
                name,
                "--frequency",
                "continuous",
                "--socket",
            ])
            .arg(&a.socket)
            .args(extra))?;
        Ok(())
    }

    /// The server's status of disk `name` (`status --json`, `disks[]`).
    ///
    /// # Errors
    /// The server does not answer or does not know the disk.
    pub fn server_disk(&self, name: &str) -> anyhow::Result<serde_json::Value> {
        let s = self.server.as_ref().context("no server")?;
        let v = self.status_of(&s.socket)?;
        v["disks"]
            .as_array()
            .and_then(|d| d.iter().find(|d| d["name"] == name))
            .cloned()
            .with_context(|| format!("server status has no disk {name}"))
    }

    /// `sitrep wait NAME`: an exact cut, returns once the replica applied it.
    ///
    /// # Errors
    /// Timeout or a replication error.
    pub fn wait(&self, name: &str, timeout_s: u32) -> anyhow::Result<()> {
        let a = self.agent.as_ref().context("no agent")?;
        run(Command::new(&self.sitrep)
            .args([
                "wait",
                name,
                "--timeout",
                &timeout_s.to_string(),
                "--socket",
            ])
            .arg(&a.socket))?;
        Ok(())
    }

    /// The server's replica image of disk `name`.
    #[must_use]
    pub fn replica(&self, name: &str) -> PathBuf {
        self.work.join("store/disks").join(name).join("replica.img")
    }

    /// (rx, tx) bytes of site A's end of the link so far.
    ///
    /// # Errors
    /// `ip` fails or prints something unexpected.
    pub fn link_bytes(&self) -> anyhow::Result<(u64, u64)> {
        let out =
            run(Command::new("ip").args(["-j", "-s", "-n", &self.ns_a, "link", "show", "veth0"]))?;
        let v: serde_json::Value = serde_json::from_str(&out)?;
        let st = &v[0]["stats64"];
        Ok((
            st["rx"]["bytes"].as_u64().context("rx bytes")?,
            st["tx"]["bytes"].as_u64().context("tx bytes")?,
        ))
    }

    /// Runs `cmd` inside namespace `ns` (spawned, not waited for).
    ///
    /// # Errors
    /// It cannot start.
    pub fn spawn_in(
        ns: &str,
        program: &Path,
        args: &[String],
        log: &Path,
    ) -> anyhow::Result<Child> {
        let f = std::fs::File::create(log)?;
        Ok(Command::new("ip")
            .args(["netns", "exec", ns])
            .arg(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(f.try_clone()?)
            .stderr(f)
            .spawn()?)
    }
}

impl Drop for Sites {
    fn drop(&mut self) {
        if let Some(mut a) = self.agent.take() {
            a.kill();
        }
        if let Some(mut s) = self.server.take() {
            s.kill();
        }
        for d in &self.loops {
            let _ = Command::new("losetup").arg("-d").arg(d).status();
        }
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.ns_a])
            .status();
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.ns_b])
            .status();
        let _ = std::fs::remove_dir_all(&self.work);
    }
}

/// Drops the page cache (so both sides of a comparison start cold).
pub fn drop_caches() {
    // SAFETY: sync has no preconditions.
    unsafe { libc::sync() };
    let _ = std::fs::write("/proc/sys/vm/drop_caches", "3");
}
