//! Recovery points under a `sitrep workload`: run it, export a server's points, check them
//! with `sitrep check` at their cut times.

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};

use serde_json::Value;

use super::{Sites, ctl, p, sitrep, try_ctl};

/// Starts `sitrep workload DEV` for `seconds` (full rate unless `rate`), its history in
/// `history`.
pub fn workload(dev: &Path, history: &Path, seconds: u32, rate: Option<&str>, qd: u32) -> Child {
    let mut c = sitrep();
    c.args(["workload", &p(dev), "--history", &p(history)])
        .args(["--duration", &format!("{seconds}s")])
        .args(["--queue-depth", &qd.to_string()]);
    if let Some(r) = rate {
        c.args(["--rate", r]);
    }
    c.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits for a workload and asserts it succeeded.
pub fn finish(child: Child) {
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "workload failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The server's points of `name`: (id, cut time in ns), oldest first.
pub fn point_list(sites: &Sites, name: &str) -> Vec<(u64, u64)> {
    let v = ctl(&sites.path("server.sock"), &["points", name]);
    v["points"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|pt| Some((pt["id"].as_u64()?, pt["cut_time_ns"].as_u64()?)))
                .collect()
        })
        .unwrap_or_default()
}

/// Exports point `id` of `name`; None if it was retired before the export started.
pub fn export(sites: &Sites, name: &str, id: u64) -> Option<PathBuf> {
    let out = sites.path(&format!("{name}-{id}.img"));
    match try_ctl(
        &sites.path("server.sock"),
        &["points", "export", name, &id.to_string(), "--out", &p(&out)],
    ) {
        Ok(_) => Some(out),
        Err(e) if e.contains("no recovery point") => None,
        Err(e) => panic!("export {name} {id}: {e}"),
    }
}

/// `sitrep check` of `image` at `t`: Ok on exit 0, Err(json) on exit 3.
pub fn check(history: &Path, image: &Path, t: u64) -> Result<(), Value> {
    let out = sitrep()
        .args(["check", "--history", &p(history), "--image", &p(image)])
        .args(["--point-time", &t.to_string(), "--json"])
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    match out.status.code() {
        Some(0) => Ok(()),
        Some(3) => Err(v),
        c => panic!(
            "check could not run ({c:?}): {}",
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}
