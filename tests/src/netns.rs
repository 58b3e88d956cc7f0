//! Network namespaces as test hosts: [`NetNs`] (deleted on drop) and [`NetNsPair`], two
//! namespaces joined by a veth pair.
//!
//! Addresses are `10.99.0.1/24` and `10.99.0.2/24` and exist *only inside* the namespaces:
//! nothing here touches the host's own interfaces or routes, and traffic between the pair
//! cannot leave it. Names carry the process id and a counter, so parallel tests (and parallel
//! test processes) never collide; each namespace's interface is called `veth0`.

use std::fs::File;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::Context;

use crate::cmd::try_run;

static NEXT_ID: AtomicU32 = AtomicU32::new(0);

/// A named network namespace (`ip netns add`), deleted on drop.
#[derive(Debug)]
pub struct NetNs {
    name: String,
}

impl NetNs {
    /// Creates a fresh namespace with its loopback interface up.
    pub fn new() -> anyhow::Result<Self> {
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let name = netns_name(std::process::id(), id);
        try_run("ip", &["netns", "add", &name])?;
        let ns = Self { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// The namespace's name (under `/run/netns`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `ip -n <ns> args...` and returns its stdout.
    pub fn ip(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut full = vec!["-n", &self.name];
        full.extend_from_slice(args);
        try_run("ip", &full)
    }

    /// Runs `program args...` inside the namespace (`ip netns exec`).
    pub fn exec(&self, program: &str, args: &[&str]) -> anyhow::Result<String> {
        let mut full = vec!["netns", "exec", &self.name, program];
        full.extend_from_slice(args);
        try_run("ip", &full)
    }

    /// Runs `f` on a new thread that has joined this namespace (setns affects only the calling
    /// thread), and returns its result. Sockets created in `f` belong to the namespace for
    /// their whole life, whichever thread uses them afterwards.
    pub fn run_in<T: Send>(&self, f: impl FnOnce() -> T + Send) -> anyhow::Result<T> {
        let path = format!("/run/netns/{}", self.name);
        let ns = File::open(&path).with_context(|| format!("open {path}"))?;
        std::thread::scope(|s| {
            s.spawn(|| {
                // SAFETY: setns with a valid namespace fd; it changes only this (fresh) thread's
                // network namespace, and the thread ends when the scope does.
                let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
                if rc != 0 {
                    return Err(std::io::Error::last_os_error())
                        .with_context(|| format!("setns into {path}"));
                }
                Ok(f())
            })
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
        })
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        // Deleting the namespace also destroys the veth end inside it (and so its peer).
        if let Err(e) = try_run("ip", &["netns", "delete", &self.name]) {
            use std::io::Write;
            let _ = writeln!(std::io::stderr(), "warning: could not delete netns: {e:#}");
        }
    }
}

/// Two namespaces `a` and `b` with a veth pair between them.
#[derive(Debug)]
pub struct NetNsPair {
    /// The first host; its `veth0` has [`NetNsPair::ADDR_A`].
    pub a: NetNs,
    /// The second host; its `veth0` has [`NetNsPair::ADDR_B`].
    pub b: NetNs,
}

impl NetNsPair {
    /// Address of `a`'s end.
    pub const ADDR_A: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 1);
    /// Address of `b`'s end.
    pub const ADDR_B: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 2);

    /// Creates both namespaces and the veth pair, addressed and up.
    pub fn new() -> anyhow::Result<Self> {
        let a = NetNs::new()?;
        let b = NetNs::new()?;
        // Created directly inside `a` with its peer directly inside `b`: the pair never
        // appears in the host namespace, so its names cannot clash with anything there.
        a.ip(&[
            "link",
            "add",
            "veth0",
            "type",
            "veth",
            "peer",
            "name",
            "veth0",
            "netns",
            b.name(),
        ])?;
        for (ns, addr) in [(&a, Self::ADDR_A), (&b, Self::ADDR_B)] {
            ns.ip(&["addr", "add", &format!("{addr}/24"), "dev", "veth0"])?;
            ns.ip(&["link", "set", "veth0", "up"])?;
        }
        Ok(Self { a, b })
    }
}

/// `sitrep-<pid>-<id>`: unique per process and per namespace within it.
pub fn netns_name(pid: u32, id: u32) -> String {
    format!("sitrep-{pid}-{id}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_per_process_and_counter() {
        assert_eq!(netns_name(42, 0), "sitrep-42-0");
        assert_ne!(netns_name(42, 1), netns_name(43, 1));
    }

    #[test]
    fn addresses_stay_in_the_test_range() {
        for addr in [NetNsPair::ADDR_A, NetNsPair::ADDR_B] {
            assert_eq!(addr.octets()[..3], [10, 99, 0]);
        }
    }
}
