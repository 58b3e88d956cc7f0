//! Facts about the machine and the tree, recorded with every run.

use std::path::Path;
use std::process::Command;

use crate::results::Machine;

fn out(cmd: &str, args: &[&str]) -> Option<String> {
    let o = Command::new(cmd).args(args).output().ok()?;
    o.status
        .success()
        .then(|| String::from_utf8_lossy(&o.stdout).trim().to_owned())
}

/// Reads the machine facts (never fails: unknown facts are left empty).
#[must_use]
pub fn facts(root: &Path) -> Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let root_s = root.display().to_string();
    let first_line = |s: Option<String>| s.and_then(|s| s.lines().next().map(str::to_owned));
    let mut tools = Vec::new();
    for (name, v) in [
        ("fio", first_line(out("fio", &["--version"]))),
        ("rsync", first_line(out("rsync", &["--version"]))),
        (
            "qemu",
            first_line(out("qemu-system-x86_64", &["--version"])),
        ),
        ("rustc", first_line(out("rustc", &["--version"]))),
    ] {
        if let Some(v) = v {
            tools.push((name.to_owned(), v));
        }
    }
    Machine {
        kernel: out("uname", &["-r"]).unwrap_or_default(),
        cores: std::thread::available_parallelism()
            .map_or(0, |n| u32::try_from(n.get()).unwrap_or(0)),
        cpu_model: cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_owned())
            .unwrap_or_default(),
        memory_bytes: meminfo
            .lines()
            .find(|l| l.starts_with("MemTotal:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .map_or(0, |k| k * 1024),
        git_rev: out("git", &["-C", &root_s, "rev-parse", "--short", "HEAD"])
            .unwrap_or_else(|| "unknown".into()),
        git_modified_files: out(
            "git",
            &[
                "-C",
                &root_s,
                "status",
                "--porcelain",
                "--untracked-files=no",
            ],
        )
        .map_or(0, |s| u32::try_from(s.lines().count()).unwrap_or(u32::MAX)),
        loadavg_start: std::fs::read_to_string("/proc/loadavg")
            .ok()
            .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
            .unwrap_or(f64::NAN),
        tools,
    }
}

/// Now as RFC 3339 UTC (seconds).
#[must_use]
pub fn now_utc() -> String {
    out("date", &["-u", "+%Y-%m-%dT%H:%M:%SZ"]).unwrap_or_default()
}
