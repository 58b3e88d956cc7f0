//! Test images, the raw-copy baseline run between the sites, and byte comparison.

use std::io::{Read, Write};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use super::sites::{ADDR_B, Sites};

/// Port of the raw-copy baseline's receiver.
pub const PIPE_PORT: u16 = 9601;

/// Writes `size` bytes to `path`: chunks of `chunk` bytes alternate between random data
/// (xorshift, incompressible) and zeros (left as holes), starting with random data. Returns
/// the zero bytes.
///
/// # Errors
/// Writing fails.
pub fn half_zero_image(path: &Path, size: u64, chunk: u64, seed: u64) -> anyhow::Result<u64> {
    let mut f = std::fs::File::create(path)?;
    f.set_len(size)?;
    let mut x = seed | 1;
    let mut buf = vec![0u8; usize::try_from(chunk)?];
    let (mut off, mut zeros) = (0u64, 0u64);
    let mut i = 0u64;
    while off < size {
        let len = chunk.min(size - off);
        if i.is_multiple_of(2) {
            for w in buf.chunks_exact_mut(8) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                w.copy_from_slice(&x.to_le_bytes());
            }
            use std::io::Seek;
            f.seek(std::io::SeekFrom::Start(off))?;
            f.write_all(&buf[..usize::try_from(len)?])?;
        } else {
            zeros += len;
        }
        off += len;
        i += 1;
    }
    f.sync_all()?;
    Ok(zeros)
}

/// Whether two files or devices hold the same bytes (the first `len`).
///
/// # Errors
/// Reading fails.
pub fn same_bytes(a: &Path, b: &Path, len: u64) -> anyhow::Result<bool> {
    let mut fa = std::fs::File::open(a).with_context(|| a.display().to_string())?;
    let mut fb = std::fs::File::open(b).with_context(|| b.display().to_string())?;
    let (mut ba, mut bb) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    let mut left = len;
    while left > 0 {
        let n = usize::try_from(left.min(1 << 20))?;
        fa.read_exact(&mut ba[..n])?;
        fb.read_exact(&mut bb[..n])?;
        if ba[..n] != bb[..n] {
            return Ok(false);
        }
        left -= n as u64;
    }
    Ok(true)
}

/// The baseline copy: `from` (in site A) streamed over one TCP connection into `to` (in
/// site B), fsynced. Returns (seconds, bytes on the link).
///
/// # Errors
/// Either end fails.
pub fn raw_copy(
    sites: &Sites,
    from: &Path,
    to: &Path,
    limit: Option<u64>,
    logs: &Path,
) -> anyhow::Result<(f64, u64)> {
    let me = std::env::current_exe()?;
    let listen = format!("{ADDR_B}:{PIPE_PORT}");
    let mut rx = Sites::spawn_in(
        &sites.ns_b,
        &me,
        &[
            "pipe".into(),
            "recv".into(),
            "--listen".into(),
            listen.clone(),
            "--to".into(),
            to.display().to_string(),
        ],
        &logs.join("pipe-recv.log"),
    )?;
    // Wait for the listener (connect from site A).
    let t0 = Instant::now();
    loop {
        let ok = Command::new("ip")
            .args([
                "netns",
                "exec",
                &sites.ns_b,
                "ss",
                "-Hltn",
                &format!("sport = :{PIPE_PORT}"),
            ])
            .output()
            .map(|o| !o.stdout.is_empty())
            .unwrap_or(false);
        if ok {
            break;
        }
        if let Some(st) = rx.try_wait()? {
            bail!(
                "the raw-copy receiver exited ({st}); see {}",
                logs.display()
            );
        }
        if t0.elapsed() > Duration::from_secs(10) {
            let _ = rx.kill();
            bail!("the raw-copy receiver did not listen within 10 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let (r0, t0b) = sites.link_bytes()?;
    let mut args = vec![
        "pipe".into(),
        "send".into(),
        "--from".into(),
        from.display().to_string(),
        "--to".into(),
        listen,
    ];
    if let Some(l) = limit {
        args.extend(["--limit".into(), l.to_string()]);
    }
    let start = Instant::now();
    let mut tx = Sites::spawn_in(&sites.ns_a, &me, &args, &logs.join("pipe-send.log"))?;
    let st = tx.wait()?;
    let sr = rx.wait()?;
    let secs = start.elapsed().as_secs_f64();
    if !st.success() || !sr.success() {
        bail!(
            "the raw copy failed (sender {st}, receiver {sr}); see {}",
            logs.display()
        );
    }
    let (r1, t1) = sites.link_bytes()?;
    Ok((secs, (r1 - r0) + (t1 - t0b)))
}
