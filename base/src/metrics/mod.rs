//! The Prometheus endpoint (`--metrics ADDR:PORT` on `sitrep agent` and `sitrep server`):
//! `GET /metrics` answers the daemon's [`StatusReport`] — the data `sitrep status --json`
//! shows — in the text exposition format 0.0.4, one series per disk (label `disk`).
//!
//! A deliberately tiny HTTP/1.1 server on tokio rather than hyper: one request per
//! connection, its head capped at [`MAX_HEAD`] bytes (a fixed buffer, allocated before any
//! read) and read within [`HEAD_TIMEOUT`], at most [`MAX_CONNECTIONS`] connections at once
//! (more are closed unanswered), the answer closes the connection. A scraper needs no more,
//! and the endpoint adds neither a dependency nor much to attack. It is unauthenticated and
//! read-only: bind it to an address only the monitoring network reaches.
//!
//! The report is built on the blocking pool from what the control socket's `status` reads
//! (published snapshots on the server), so nothing here waits for a busy disk or stalls the
//! async workers.
//!
//! The HTTP endpoint is here; the exposition text is built in `render.rs`.

mod render;
mod space;
#[cfg(test)]
mod tests;
mod text;

pub use render::render;

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::status::StatusReport;

/// Longest request head (request line and headers) accepted; longer gets 431.
pub const MAX_HEAD: usize = 8 * 1024;
/// Time a client has to send its request head (then 408), and to take the answer.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections served at once; more are closed at once.
pub const MAX_CONNECTIONS: usize = 16;
/// `Content-Type` of the metrics.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Where the metrics come from: the daemon's status, built on demand.
type Source = Arc<dyn Fn() -> StatusReport + Send + Sync>;

/// Binds the endpoint's listener (before the daemon starts anything, so a bad address fails
/// the start).
///
/// # Errors
/// The address does not parse or cannot be bound.
pub async fn bind(addr: &str) -> anyhow::Result<TcpListener> {
    let l = TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("--metrics {addr}: {e}"))?;
    match l.local_addr() {
        Ok(a) => tracing::info!(addr = %a, "metrics endpoint: GET /metrics"),
        Err(_) => tracing::info!(addr, "metrics endpoint: GET /metrics"),
    }
    Ok(l)
}

/// Serves `GET /metrics` on `listener` until the runtime stops, rendering what `source`
/// returns at each request.
pub fn spawn<F>(listener: TcpListener, source: F) -> tokio::task::JoinHandle<()>
where
    F: Fn() -> StatusReport + Send + Sync + 'static,
{
    let source: Source = Arc::new(source);
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let stats = crate::listen::ListenerStats::new("metrics endpoint");
    tokio::spawn(async move {
        loop {
            // Errors (e.g. out of descriptors) pause and retry, rate-limited in the log.
            let (tcp, _) = crate::listen::accept(&stats, || listener.accept()).await;
            // Busy: close unanswered; the scraper tries again at its next interval.
            let Ok(permit) = slots.clone().try_acquire_owned() else {
                continue;
            };
            let source = source.clone();
            tokio::spawn(async move {
                serve_one(tcp, &source, HEAD_TIMEOUT).await;
                drop(permit);
            });
        }
    })
}

/// What a request asks for, or why it gets an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    /// `GET /metrics`, or `HEAD /metrics` (`head_only`).
    Metrics { head_only: bool },
    /// 400: not an HTTP/1.x request.
    BadRequest,
    /// 404: another path.
    NotFound,
    /// 405: a method other than GET and HEAD.
    MethodNotAllowed,
    /// 408: the head did not arrive in time.
    Timeout,
    /// 431: the head is longer than [`MAX_HEAD`].
    TooLarge,
}

/// Answers one connection: reads the request head, answers, closes.
async fn serve_one<S: AsyncRead + AsyncWrite + Unpin>(mut s: S, source: &Source, limit: Duration) {
    let route = match tokio::time::timeout(limit, read_head(&mut s)).await {
        Ok(Ok(head)) => route(&head),
        Ok(Err(r)) => r,
        Err(_) => Route::Timeout,
    };
    let answer = match route {
        Route::Metrics { head_only } => {
            let src = source.clone();
            match tokio::task::spawn_blocking(move || render(&src())).await {
                Ok(body) => response("200 OK", CONTENT_TYPE, &body, head_only, ""),
                Err(e) => {
                    tracing::warn!("metrics endpoint: building the status: {e}");
                    text("500 Internal Server Error", "status unavailable\n", "")
                }
            }
        }
        Route::BadRequest => text("400 Bad Request", "not an HTTP/1.x request\n", ""),
        Route::NotFound => text("404 Not Found", "try /metrics\n", ""),
        Route::MethodNotAllowed => text(
            "405 Method Not Allowed",
            "only GET and HEAD\n",
            "Allow: GET, HEAD\r\n",
        ),
        Route::Timeout => text("408 Request Timeout", "request head too slow\n", ""),
        Route::TooLarge => text(
            "431 Request Header Fields Too Large",
            "request head too large\n",
            "",
        ),
    };
    let _ = tokio::time::timeout(limit, async {
        s.write_all(&answer).await?;
        s.shutdown().await
    })
    .await;
}

/// Reads until the blank line that ends a request head; the head (without it) or the error
/// route: [`Route::TooLarge`] past [`MAX_HEAD`], [`Route::BadRequest`] on EOF or a read error.
async fn read_head<R: AsyncRead + Unpin>(r: &mut R) -> Result<Vec<u8>, Route> {
    let mut buf = vec![0u8; MAX_HEAD];
    let mut n = 0;
    loop {
        let Some(free) = buf.get_mut(n..).filter(|f| !f.is_empty()) else {
            return Err(Route::TooLarge);
        };
        let k = r.read(free).await.map_err(|_| Route::BadRequest)?;
        if k == 0 {
            return Err(Route::BadRequest);
        }
        // The terminator may straddle two reads.
        let from = n.saturating_sub(3);
        n += k;
        if let Some(end) = head_end(buf.get(from..n).unwrap_or_default()) {
            buf.truncate(from + end);
            return Ok(buf);
        }
    }
}

/// Offset of the blank line (`\r\n\r\n`, or a bare `\n\n`) in `b`.
fn head_end(b: &[u8]) -> Option<usize> {
    let crlf = b.windows(4).position(|w| w == b"\r\n\r\n");
    let lf = b.windows(2).position(|w| w == b"\n\n");
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Routes a request head by its request line (`METHOD TARGET HTTP/1.x`); headers are ignored.
fn route(head: &[u8]) -> Route {
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let Ok(line) = std::str::from_utf8(line) else {
        return Route::BadRequest;
    };
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Route::BadRequest;
    };
    let token = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphabetic());
    if !token(method) || !target.starts_with('/') || !version.starts_with("HTTP/1.") {
        return Route::BadRequest;
    }
    let head_only = match method {
        "GET" => false,
        "HEAD" => true,
        _ => return Route::MethodNotAllowed,
    };
    let path = target.split_once('?').map_or(target, |(p, _)| p);
    if path == "/metrics" {
        Route::Metrics { head_only }
    } else {
        Route::NotFound
    }
}

fn text(status: &str, body: &str, extra: &str) -> Vec<u8> {
    response(status, "text/plain; charset=utf-8", body, false, extra)
}

fn response(status: &str, content_type: &str, body: &str, head_only: bool, extra: &str) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Connection: close\r\n{extra}\r\n",
        body.len()
    )
    .into_bytes();
    if !head_only {
        out.extend_from_slice(body.as_bytes());
    }
    out
}
