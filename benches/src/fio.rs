//! Running fio and reading its JSON output.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, bail};

/// One fio job's result.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FioResult {
    /// Write IOPS.
    pub write_iops: f64,
    /// Write bandwidth, bytes/s.
    pub write_bw: f64,
    /// Writes issued.
    pub writes: u64,
}

/// Runs fio on `target` with `args` (job options) for `seconds`, returns the write side.
///
/// # Errors
/// fio is missing, fails, or prints something that is not its JSON.
pub fn run(target: &Path, seconds: u32, args: &[&str]) -> anyhow::Result<FioResult> {
    let out = Command::new("fio")
        .arg("--name=bench")
        .arg(format!("--filename={}", target.display()))
        .args(args)
        .args(["--time_based", "--output-format=json"])
        .arg(format!("--runtime={seconds}"))
        .output()
        .context("running fio (apt-get install fio)")?;
    if !out.status.success() {
        bail!("fio failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    parse(&out.stdout)
}

/// Parses fio's `--output-format=json`.
///
/// # Errors
/// If the document lacks the write statistics.
pub fn parse(json: &[u8]) -> anyhow::Result<FioResult> {
    // fio may print warnings before the JSON document.
    let start = json
        .iter()
        .position(|&b| b == b'{')
        .context("no JSON in fio output")?;
    let v: serde_json::Value = serde_json::from_slice(&json[start..]).context("fio JSON")?;
    let w = &v["jobs"][0]["write"];
    Ok(FioResult {
        write_iops: w["iops"].as_f64().context("write.iops")?,
        write_bw: w["bw_bytes"].as_f64().context("write.bw_bytes")?,
        writes: w["total_ios"].as_u64().context("write.total_ios")?,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_fio_json_after_warnings() {
        let doc = br#"fio: some warning
{"jobs":[{"write":{"iops":1234.5,"bw_bytes":5056512,"total_ios":6172}}]}"#;
        let r = super::parse(doc).unwrap();
        assert_eq!(r.writes, 6172);
        assert!((r.write_iops - 1234.5).abs() < 1e-9);
    }
}
