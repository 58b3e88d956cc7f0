//! The raw-copy baseline: `cat DEVICE | nc HOST PORT` on one end, `nc -l > FILE` on the
//! other, without depending on which netcat a machine has. `sitrep-bench pipe send|recv`
//! runs these inside the sites' namespaces.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;

/// Copy buffer: large, like `cat`'s 128 KiB reads are to a pipe; a socket copier with 1 MiB
/// buffers is at least as fast as `cat | nc`.
const BUF: usize = 1 << 20;

/// Reads `from` to its end (or `limit` bytes) and writes it to a TCP connection to `to`.
/// Returns the bytes sent.
///
/// # Errors
/// Reading, connecting or writing fails.
pub fn send(from: &Path, to: &str, limit: Option<u64>) -> anyhow::Result<u64> {
    let mut f = std::fs::File::open(from)?;
    let mut s = TcpStream::connect(to)?;
    let mut buf = vec![0u8; BUF];
    let mut total = 0u64;
    loop {
        let want = limit.map_or(BUF as u64, |l| (l - total).min(BUF as u64));
        if want == 0 {
            break;
        }
        let n = f.read(&mut buf[..usize::try_from(want)?])?;
        if n == 0 {
            break;
        }
        s.write_all(&buf[..n])?;
        total += n as u64;
    }
    s.shutdown(std::net::Shutdown::Write)?;
    Ok(total)
}

/// Accepts one connection on `listen`, writes everything it receives into `to` (created or
/// truncated), fsyncs it (the replica side of sitrep makes its data durable too). Returns
/// the bytes received.
///
/// # Errors
/// Binding, accepting, reading or writing fails.
pub fn recv(listen: &str, to: &Path) -> anyhow::Result<u64> {
    let l = TcpListener::bind(listen)?;
    let (mut s, _) = l.accept()?;
    let mut f = std::fs::File::create(to)?;
    let mut buf = vec![0u8; BUF];
    let mut total = 0u64;
    loop {
        let n = s.read(&mut buf)?;
        if n == 0 {
            break;
        }
        f.write_all(&buf[..n])?;
        total += n as u64;
    }
    f.sync_all()?;
    Ok(total)
}
