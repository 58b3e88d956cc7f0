//! Streaming a device's ranges to the server: a reader thread reads (O_DIRECT), detects zero
//! runs and encodes frames (compressing when it pays) while the async side writes the
//! previous frames to the TLS stream — reading, compressing and sending overlap, and the
//! channel between them bounds the memory in flight.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use proto::{EncodeOpts, Frame, Msg};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::devread::{Chunk, DevReader};
use crate::net::ReplError;

/// A write or an expected answer that makes no progress for this long means the peer or
/// the path is gone (TCP alone would take ~15 minutes to say so).
pub const STALL: Duration = Duration::from_secs(90);

/// Encoded frames in flight between the reader thread and the sender.
pub const FRAMES_IN_FLIGHT: usize = 8;

/// What the reader thread produces.
#[derive(Debug)]
pub enum Item {
    /// One encoded frame.
    Frame {
        /// Wire bytes.
        bytes: Vec<u8>,
        /// Data bytes it carries (0 for a zero range).
        data: u64,
        /// Zero bytes it describes.
        zero: u64,
    },
    /// Everything before this offset has been produced (copy checkpoints).
    Mark(u64),
    /// Reading failed.
    Failed(String),
    /// All ranges done.
    Done {
        /// Frames produced.
        frames: u64,
        /// Data bytes produced.
        data_bytes: u64,
    },
}

/// Starts a thread reading `ranges` of `device`, emitting a [`Item::Mark`] after each range
/// (callers pass checkpoint-sized ranges for the copy).
#[must_use]
pub fn spawn_reader(
    device: PathBuf,
    size: u64,
    ranges: Vec<(u64, u64)>,
    opts: EncodeOpts,
) -> mpsc::Receiver<Item> {
    let (tx, rx) = mpsc::channel(FRAMES_IN_FLIGHT);
    std::thread::spawn(move || {
        let mut r = match DevReader::open(&device, size, proto::MAX_DATA) {
            Ok(r) => r,
            Err(e) => {
                let _ = tx.blocking_send(Item::Failed(e.to_string()));
                return;
            }
        };
        let mut frames = 0u64;
        let mut data_bytes = 0u64;
        for (s, e) in ranges {
            let res: Result<u64, std::io::Error> = r.read_range(s, e, |c| {
                let (frame, data, zero) = match c {
                    Chunk::Data { offset, bytes } => (
                        Frame::Data {
                            offset,
                            data: bytes.to_vec(),
                        },
                        bytes.len() as u64,
                        0,
                    ),
                    Chunk::Zero { offset, len } => (Frame::Zero { offset, len }, 0, len),
                };
                let mut bytes = Vec::new();
                proto::encode(&frame, &opts, &mut bytes)
                    .map_err(|e| std::io::Error::other(e.to_string()))?;
                frames += 1;
                data_bytes += data;
                tx.blocking_send(Item::Frame { bytes, data, zero })
                    .map_err(|_| std::io::Error::other("sender gone"))
            });
            if let Err(e) = res {
                let _ = tx.blocking_send(Item::Failed(e.to_string()));
                return;
            }
            if tx.blocking_send(Item::Mark(e.min(size))).is_err() {
                return;
            }
        }
        let _ = tx.blocking_send(Item::Done { frames, data_bytes });
    });
    rx
}

/// Bandwidth limit: at most `rate` bytes per second on average, in bursts of ≤ 1 s.
#[derive(Debug)]
pub struct RateLimit {
    rate: u64,
    start: Instant,
    sent: u64,
}

impl RateLimit {
    /// A limit of `rate` bytes/s.
    #[must_use]
    pub fn new(rate: u64) -> Self {
        Self {
            rate: rate.max(1),
            start: Instant::now(),
            sent: 0,
        }
    }

    /// Accounts `n` bytes and returns how long to wait before sending them.
    pub fn take(&mut self, n: u64) -> Duration {
        let elapsed = self.start.elapsed();
        if elapsed > Duration::from_secs(1) && self.sent <= self.rate {
            // Idle for a while: do not bank more than a second of credit.
            self.start = Instant::now() - Duration::from_secs(1);
            self.sent = 0;
        }
        self.sent += n;
        let due = Duration::from_secs_f64(self.sent as f64 / self.rate as f64);
        due.saturating_sub(self.start.elapsed())
    }
}

/// The writing half of a session, with counters and the optional bandwidth limit.
pub struct Wire<W> {
    w: W,
    limit: Option<RateLimit>,
    /// Bytes written.
    pub wire_bytes: u64,
}

impl<W: AsyncWrite + Unpin> Wire<W> {
    /// Wraps `w`.
    pub fn new(w: W, max_rate: Option<u64>) -> Self {
        Self {
            w,
            limit: max_rate.map(RateLimit::new),
            wire_bytes: 0,
        }
    }

    /// Writes pre-encoded frame bytes.
    ///
    /// # Errors
    /// The connection failed.
    pub async fn bytes(&mut self, b: &[u8]) -> Result<(), ReplError> {
        if let Some(l) = &mut self.limit {
            let d = l.take(b.len() as u64);
            if !d.is_zero() {
                tokio::time::sleep(d).await;
            }
        }
        tokio::time::timeout(STALL, self.w.write_all(b))
            .await
            .map_err(|_| ReplError::Net(format!("the connection stalled for {STALL:?}")))?
            .map_err(|e| crate::net::io_error(&e))?;
        self.wire_bytes += b.len() as u64;
        Ok(())
    }

    /// Sends a control message (and flushes).
    ///
    /// # Errors
    /// The connection failed.
    pub async fn msg(&mut self, m: Msg) -> Result<(), ReplError> {
        let mut b = Vec::new();
        proto::encode(&Frame::Control(m), &crate::net::CONTROL, &mut b)
            .map_err(|e| ReplError::Local(e.to_string()))?;
        self.bytes(&b).await?;
        self.flush().await
    }

    /// Flushes.
    ///
    /// # Errors
    /// The connection failed.
    pub async fn flush(&mut self) -> Result<(), ReplError> {
        tokio::time::timeout(STALL, self.w.flush())
            .await
            .map_err(|_| ReplError::Net(format!("the connection stalled for {STALL:?}")))?
            .map_err(|e| crate::net::io_error(&e))
    }

    /// Closes the TLS stream politely.
    pub async fn shutdown(&mut self) {
        let _ = self.w.shutdown().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limit_paces() {
        let mut l = RateLimit::new(1000);
        assert!(l.take(500) <= Duration::from_millis(500));
        let d = l.take(1500);
        assert!(d > Duration::from_millis(1500) && d <= Duration::from_millis(2000));
    }
}
