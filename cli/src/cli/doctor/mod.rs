//! `sitrep doctor`: checks what this host needs to run sitrep and prints what to fix.
//!
//! Every check is a small read-only function returning a typed [`check::Check`] (a stable
//! id, a status, what was found, the fix). Nothing on the host is changed: the one check that
//! touches the kernel (`bpf-load`) loads the tracker's programs with the smallest maps,
//! attaches, detaches and unloads them — nothing is pinned, nothing stays behind. Checks are
//! grouped by topic: [`kernel`] (BPF), [`devices`] (ublk, loop, fsfreeze), [`clock`],
//! [`certs`], [`space`] (state and store directories), [`config`] (the daemons' config files)
//! and [`daemons`] (sockets, units).
//!
//! Which checks run follows `--role`: the agent needs BPF, fsfreeze and its state directory;
//! the server its store; both need the clock, the PKI directory, loop devices (failover) and
//! their daemon. Directories default to where the package puts them, when those exist.

mod certs;
mod check;
mod clock;
mod config;
mod daemons;
mod devices;
mod kernel;
mod space;

use std::path::{Path, PathBuf};

use base::control::{AGENT_SOCKET, SERVER_SOCKET};
use clap::{Args, ValueEnum};

use self::check::{Check, Report};
use crate::Outcome;

/// The agent's state directory the package makes.
const DEFAULT_STATE: &str = "/var/lib/sitrep/agent";
/// The server's store the package makes.
const DEFAULT_STORE: &str = "/var/lib/sitrep/server";
/// The config files the package's units name.
const DEFAULT_AGENT_CONFIG: &str = "/etc/sitrep/agent.toml";
const DEFAULT_SERVER_CONFIG: &str = "/etc/sitrep/server.toml";
/// The PKI directory the package's units name.
const DEFAULT_PKI: &str = "/etc/sitrep/pki";

/// Which daemons this host runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Role {
    /// The primary's agent.
    Agent,
    /// The secondary's server.
    Server,
    /// Both (a host that is primary for some disks and secondary for others).
    Both,
}

impl Role {
    fn agent(self) -> bool {
        self != Role::Server
    }

    fn server(self) -> bool {
        self != Role::Agent
    }
}

/// Arguments of `sitrep doctor`.
#[derive(Args)]
pub(crate) struct DoctorArgs {
    /// Which daemons this host runs: their checks only.
    #[arg(long, value_enum, default_value_t = Role::Both)]
    role: Role,
    /// The agent's state directory [default: /var/lib/sitrep/agent, if it exists].
    #[arg(long)]
    state: Option<PathBuf>,
    /// The server's store [default: /var/lib/sitrep/server, if it exists].
    #[arg(long)]
    store: Option<PathBuf>,
    /// The PKI directory (ca.pem, cert.pem, key.pem) [default: /etc/sitrep/pki, if it
    /// exists].
    #[arg(long)]
    pki: Option<PathBuf>,
    /// The agent's config file [default: /etc/sitrep/agent.toml, if it exists].
    #[arg(long, value_name = "FILE")]
    agent_config: Option<PathBuf>,
    /// The server's config file [default: /etc/sitrep/server.toml, if it exists].
    #[arg(long, value_name = "FILE")]
    server_config: Option<PathBuf>,
    /// The agent's control socket.
    #[arg(long, default_value = AGENT_SOCKET)]
    agent_socket: PathBuf,
    /// The server's control socket.
    #[arg(long, default_value = SERVER_SOCKET)]
    server_socket: PathBuf,
    /// Print one JSON object: {"schema":1,"ok":BOOL,"checks":[{"id","title","status",
    /// "detail","fix"}]}; status is ok, warn, fail or skip.
    #[arg(long)]
    json: bool,
}

/// Where a directory to check is.
enum Dir {
    /// Named by its flag, or the package's default, which exists.
    At(PathBuf),
    /// No flag, and the default does not exist.
    Absent(&'static str, &'static str),
}

fn locate(flag: Option<&Path>, name: &'static str, default: &'static str) -> Dir {
    match flag {
        Some(p) => Dir::At(p.to_owned()),
        None if Path::new(default).exists() => Dir::At(PathBuf::from(default)),
        None => Dir::Absent(name, default),
    }
}

impl Dir {
    fn absent(name: &str, default: &str) -> String {
        format!("no {name} given, and {default} does not exist")
    }
}

/// `state-space` + `state-mode` (or the store's): the directory's filesystem and modes. A
/// named directory that does not exist yet is measured at its nearest existing parent (the
/// daemon creates it, 0700).
fn data_dir(dir: &Dir, ids: [&'static str; 2], what: &str) -> [Check; 2] {
    let (space_t, mode_t) = (format!("{what} space"), format!("{what} modes"));
    match dir {
        Dir::Absent(name, default) => [
            Check::skip(ids[0], space_t, Dir::absent(name, default)),
            Check::skip(ids[1], mode_t, Dir::absent(name, default)),
        ],
        Dir::At(p) if !p.exists() => {
            let parent = p.ancestors().find(|a| a.exists()).unwrap_or(Path::new("/"));
            [
                space::space(ids[0], &space_t, parent),
                Check::skip(
                    ids[1],
                    mode_t,
                    format!("{}: not made yet (the daemon makes it 0700)", p.display()),
                ),
            ]
        }
        Dir::At(p) => [
            space::space(ids[0], &space_t, p),
            space::mode(ids[1], &mode_t, p),
        ],
    }
}

fn daemon(d: daemons::Daemon, socket: &Path, root: bool) -> [Check; 2] {
    // Without root the socket (and /run/sitrep) cannot even be looked at reliably.
    let sock = if root {
        daemons::socket(d, socket)
    } else {
        Check::skip(
            d.socket_id,
            format!("{} control socket", d.role),
            "needs root (the socket is root's only)",
        )
    };
    [sock, daemons::unit(d)]
}

/// `agent-config` / `server-config`.
fn config_file(flag: Option<&Path>, daemon: &'static str) -> Check {
    let (id, flag_name, default) = if daemon == "agent" {
        ("agent-config", "--agent-config", DEFAULT_AGENT_CONFIG)
    } else {
        ("server-config", "--server-config", DEFAULT_SERVER_CONFIG)
    };
    match locate(flag, flag_name, default) {
        Dir::At(p) => config::config(id, daemon, &p),
        Dir::Absent(name, default) => Check::skip(
            id,
            format!("{daemon} config file"),
            Dir::absent(name, default),
        ),
    }
}

/// Every check for `a`, in the order printed.
fn gather(a: &DoctorArgs) -> Vec<Check> {
    let root = kernel::is_root();
    let (agent, server) = (a.role.agent(), a.role.server());
    let mut c = vec![kernel::root(root), kernel::kernel_version()];
    if agent {
        c.push(kernel::kernel_btf());
        c.push(kernel::tracepoints());
        c.push(if root {
            kernel::bpf_capability()
        } else {
            Check::skip("bpf-capability", "BPF capabilities", "needs root")
        });
        c.push(kernel::bpffs());
        c.push(kernel::bpf_load(root));
        c.push(devices::ublk());
        c.push(devices::fsfreeze());
    }
    c.push(devices::loop_devices());
    c.push(clock::clock_sync());
    match locate(a.pki.as_deref(), "--pki", DEFAULT_PKI) {
        Dir::At(p) => c.extend(certs::pki_checks(&p)),
        Dir::Absent(name, default) => {
            let why = Dir::absent(name, default);
            c.push(Check::skip("pki-ca", "CA certificate", why.clone()));
            c.push(Check::skip("pki-cert", "host certificate", why.clone()));
            c.push(Check::skip("pki-identity", "TLS identity", why));
        }
    }
    if agent {
        let dir = locate(a.state.as_deref(), "--state", DEFAULT_STATE);
        c.extend(data_dir(&dir, ["state-space", "state-mode"], "state"));
    }
    if server {
        let dir = locate(a.store.as_deref(), "--store", DEFAULT_STORE);
        c.extend(data_dir(&dir, ["store-space", "store-mode"], "store"));
    }
    if agent {
        c.push(config_file(a.agent_config.as_deref(), "agent"));
    }
    if server {
        c.push(config_file(a.server_config.as_deref(), "server"));
    }
    if agent {
        c.extend(daemon(daemons::AGENT, &a.agent_socket, root));
    }
    if server {
        c.extend(daemon(daemons::SERVER, &a.server_socket, root));
    }
    c
}

/// `sitrep doctor`: exits 0 when no check failed (warnings allowed), 3 when one did.
pub(crate) fn run(a: &DoctorArgs) -> anyhow::Result<Outcome> {
    let report = Report::new(gather(a));
    if a.json {
        crate::outln!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        crate::out!("{}", report.human());
    }
    Ok(if report.ok {
        Outcome::Ok
    } else {
        Outcome::Invalid
    })
}
