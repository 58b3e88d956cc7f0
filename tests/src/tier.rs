//! What a test needs from the machine, and what happens when the machine lacks it.
//!
//! A test starts with `if !require!(Need::Root, Need::LoopDevices) { return; }`. Each need is
//! probed; if one is missing the test is *skipped*: it prints `SKIP <test>: <reason>` straight
//! to stderr (past libtest's output capture, so the line shows even for a passing test) and
//! returns early. With `SITREP_REQUIRE_TIERS=1` (set by `scripts/test-all.sh` and CI) a missing
//! need is a *failure* instead: the test panics with the same reason, so a CI machine that
//! lost a capability goes red rather than green-with-nothing-run.
//!
//! One exception: [`Need::InVm`]. VM-tier tests run on the host too (as part of
//! `cargo test --workspace`) and skip there even under `SITREP_REQUIRE_TIERS=1`, because
//! `scripts/vm-tests.sh` runs the same binary inside the VM, where `SITREP_IN_VM=1`.

use std::ffi::OsStr;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Environment variable that turns skips into failures when set to `1`.
pub const REQUIRE_TIERS_ENV: &str = "SITREP_REQUIRE_TIERS";
/// Environment variable the VM runner sets to `1` inside the guest.
pub const IN_VM_ENV: &str = "SITREP_IN_VM";
/// Skip reason of a VM-tier test on the host.
pub const VM_TIER_REASON: &str = "VM tier: run by scripts/vm-tests.sh";

/// One capability a test depends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Effective user id 0.
    Root,
    /// Root and a loop device driver (`/dev/loop-control`).
    LoopDevices,
    /// Root, `/sys/kernel/btf/vmlinux`, and a `bpf(BPF_MAP_CREATE)` that succeeds.
    Bpf,
    /// Root, `ip` from iproute2, and network namespaces in the kernel.
    Netns,
    /// Running inside the VM started by `scripts/vm-tests.sh` (`SITREP_IN_VM=1`).
    InVm,
    /// An executable of this name on `PATH` (or in `/sbin`, `/usr/sbin`).
    Command(&'static str),
    /// A file or device node that must exist, e.g. `/dev/ublk-control`.
    Path(&'static str),
}

/// What a test should do once its needs are probed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Every need is met.
    Run,
    /// Print `SKIP <test>: <reason>` and return.
    Skip(String),
    /// Panic with the reason (`SITREP_REQUIRE_TIERS=1`).
    Fail(String),
}

/// Decides from the first unmet need (if any) and the `SITREP_REQUIRE_TIERS` setting.
///
/// `missing` pairs each unmet need with the reason it is unmet, in the order requested.
pub fn decide(missing: &[(Need, String)], require_tiers: bool) -> Decision {
    // A VM-tier test on the host is never a failure: the VM runner covers it.
    if let Some((_, reason)) = missing.iter().find(|(n, _)| *n == Need::InVm) {
        return Decision::Skip(reason.clone());
    }
    match missing.first() {
        None => Decision::Run,
        Some((_, reason)) if require_tiers => Decision::Fail(reason.clone()),
        Some((_, reason)) => Decision::Skip(reason.clone()),
    }
}

/// Probes `needs` for the test `name`; returns whether the test should run.
///
/// Prints `SKIP <name>: <reason>` for a skip; panics for a required-but-missing need.
/// Prefer the [`require!`](crate::require) macro, which fills in `name`.
pub fn require(name: &str, needs: &[Need]) -> bool {
    let missing: Vec<(Need, String)> = needs
        .iter()
        .filter_map(|&n| probe(n).err().map(|reason| (n, reason)))
        .collect();
    match decide(&missing, env_is_one(REQUIRE_TIERS_ENV)) {
        Decision::Run => true,
        Decision::Skip(reason) => {
            // Write to the stream directly: eprintln! would be swallowed by libtest's capture.
            // One write call, so lines from parallel tests and libtest's own output don't mix.
            let line = format!("SKIP {name}: {reason}\n");
            let _ = std::io::stderr().lock().write_all(line.as_bytes());
            false
        }
        Decision::Fail(reason) => {
            panic!("{name}: {reason} ({REQUIRE_TIERS_ENV}=1 makes a missing tier a failure)")
        }
    }
}

/// Probes one need: `Ok(())` if met, else the exact reason it is not.
pub fn probe(need: Need) -> Result<(), String> {
    match need {
        Need::Root => probe_root(),
        Need::LoopDevices => {
            probe_root()?;
            probe_path("/dev/loop-control")
                .map_err(|e| format!("{e} (loop driver not loaded? try `modprobe loop`)"))
        }
        Need::Bpf => {
            probe_root()?;
            probe_path("/sys/kernel/btf/vmlinux")
                .map_err(|e| format!("{e} (kernel built without CONFIG_DEBUG_INFO_BTF)"))?;
            crate::bpf::probe()
        }
        Need::Netns => {
            probe_root()?;
            probe_command("ip")?;
            probe_path("/proc/self/ns/net")
                .map_err(|e| format!("{e} (kernel built without CONFIG_NET_NS)"))
        }
        Need::InVm => {
            if env_is_one(IN_VM_ENV) {
                Ok(())
            } else {
                Err(VM_TIER_REASON.to_owned())
            }
        }
        Need::Command(name) => probe_command(name),
        Need::Path(path) => probe_path(path),
    }
}

fn probe_root() -> Result<(), String> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if euid == 0 {
        Ok(())
    } else {
        Err(format!("needs root (euid is {euid})"))
    }
}

fn probe_path(path: &str) -> Result<(), String> {
    if Path::new(path).exists() {
        Ok(())
    } else {
        Err(format!("{path} does not exist"))
    }
}

fn probe_command(name: &str) -> Result<(), String> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    find_in_path(name, &path).map(|_| ()).ok_or_else(|| {
        format!(
            "command `{name}` not found on PATH, /sbin or /usr/sbin (see scripts/install-deps.sh)"
        )
    })
}

/// Finds an executable `name` in the `PATH`-style list `path`, then in `/sbin` and `/usr/sbin`
/// (root tools live there and a non-login shell's `PATH` may lack them).
pub fn find_in_path(name: &str, path: &OsStr) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    std::env::split_paths(path)
        .chain([PathBuf::from("/sbin"), PathBuf::from("/usr/sbin")])
        .map(|dir| dir.join(name))
        .find(|p| {
            p.metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

fn env_is_one(var: &str) -> bool {
    std::env::var_os(var).is_some_and(|v| v == "1")
}

/// Turns the type name of a function nested in a test (what [`require!`](crate::require)
/// produces) into the test's path: `root_tier::loop_round_trip::f` → `loop_round_trip`,
/// `vm_tier::tests::dm::f` → `tests::dm`.
pub fn test_name_from_probe_fn(type_name: &str) -> &str {
    let without_fn = type_name.strip_suffix("::f").unwrap_or(type_name);
    // Drop `{{closure}}` frames if the macro was used inside a closure.
    let trimmed = without_fn.trim_end_matches("::{{closure}}");
    // The first segment is the crate (the test binary); the rest is what libtest prints.
    trimmed.split_once("::").map_or(trimmed, |(_, rest)| rest)
}

/// `require!(Need::Root, ...)`: [`require`](crate::tier::require) with the calling test's name.
///
/// Evaluates to `true` when the test should run; see the [module docs](crate::tier).
#[macro_export]
macro_rules! require {
    // A shared list, for tests of one family: `require!(needs: UBLK_FIO)`.
    (needs: $needs:expr) => {{
        fn f() {}
        $crate::tier::require(
            $crate::tier::test_name_from_probe_fn(::std::any::type_name_of_val(&f)),
            $needs,
        )
    }};
    ($($need:expr),+ $(,)?) => {{
        fn f() {}
        $crate::tier::require(
            $crate::tier::test_name_from_probe_fn(::std::any::type_name_of_val(&f)),
            &[$($need),+],
        )
    }};
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_met_runs() {
        assert_eq!(decide(&[], false), Decision::Run);
        assert_eq!(decide(&[], true), Decision::Run);
    }

    #[test]
    fn missing_skips_unless_required() {
        let missing = [(Need::Root, "needs root (euid is 1000)".to_owned())];
        assert_eq!(
            decide(&missing, false),
            Decision::Skip("needs root (euid is 1000)".into())
        );
        assert_eq!(
            decide(&missing, true),
            Decision::Fail("needs root (euid is 1000)".into())
        );
    }

    #[test]
    fn first_missing_need_gives_the_reason() {
        let missing = [
            (Need::Root, "a".to_owned()),
            (Need::Command("fio"), "b".to_owned()),
        ];
        assert_eq!(decide(&missing, true), Decision::Fail("a".into()));
    }

    #[test]
    fn vm_tier_on_host_skips_even_when_required() {
        let missing = [
            (Need::Root, "a".to_owned()),
            (Need::InVm, VM_TIER_REASON.to_owned()),
        ];
        assert_eq!(
            decide(&missing, true),
            Decision::Skip(VM_TIER_REASON.into())
        );
        assert_eq!(
            decide(&missing, false),
            Decision::Skip(VM_TIER_REASON.into())
        );
    }

    #[test]
    fn test_names_drop_crate_and_probe_fn() {
        assert_eq!(
            test_name_from_probe_fn("root_tier::loop_round_trip::f"),
            "loop_round_trip"
        );
        assert_eq!(
            test_name_from_probe_fn("vm_tier::tests::dm::f"),
            "tests::dm"
        );
        assert_eq!(test_name_from_probe_fn("t::a::{{closure}}::f"), "a");
        assert_eq!(test_name_from_probe_fn("weird"), "weird");
    }

    #[test]
    fn macro_names_this_test() {
        fn f() {}
        let name = test_name_from_probe_fn(std::any::type_name_of_val(&f));
        assert_eq!(name, "tier::tests::macro_names_this_test");
    }

    #[test]
    fn find_in_path_searches_dirs_then_sbin() {
        let dir = tempfile::tempdir().unwrap();
        let exe = dir.path().join("sitrep-fake-tool");
        std::fs::write(&exe, "#!/bin/sh\n").unwrap();
        let path = std::env::join_paths([dir.path()]).unwrap();
        assert_eq!(
            find_in_path("sitrep-fake-tool", &path),
            None,
            "not executable yet"
        );
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(find_in_path("sitrep-fake-tool", &path), Some(exe));
        assert_eq!(find_in_path("sitrep-no-such-tool", &path), None);
    }

    #[test]
    fn in_vm_probe_reads_env_reason() {
        // The reason text is part of the contract with scripts/vm-tests.sh and docs.
        if std::env::var_os(IN_VM_ENV).is_none() {
            assert_eq!(probe(Need::InVm), Err(VM_TIER_REASON.to_owned()));
        }
    }
}
