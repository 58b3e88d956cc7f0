//! Streaming a device's ranges to the server: a reader thread reads (O_DIRECT), detects zero
//! runs and encodes frames (compressing when it pays) while the async side writes the
//! previous frames to the TLS stream — reading, compressing and sending overlap, and the
//! channel between them bounds the memory in flight. A journal log's pieces (no read) go
//! the same way ([`spawn_logged`]).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use proto::{EncodeOpts, Frame, Msg};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use base::devread::{Chunk, DevReader, is_zero};
use base::net::ReplError;

use crate::cycle::Logged;

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

/// Reader threads for a cycle's ranges. A cycle of small scattered changes is bound by the
/// latency of one direct read at a time (about 100 µs per 4 KiB extent on a loop device: a
/// ceiling near 40 MB/s); several readers keep several reads in flight.
pub const CYCLE_READERS: usize = 4;

/// Starts a thread reading `ranges` of `device`, emitting a [`Item::Mark`] after each range
/// (callers pass checkpoint-sized ranges for the copy).
#[must_use]
pub fn spawn_reader(
    device: PathBuf,
    size: u64,
    ranges: Vec<(u64, u64)>,
    opts: EncodeOpts,
) -> mpsc::Receiver<Item> {
    spawn_readers(device, size, ranges, opts, 1, None)
}

/// Like [`spawn_reader`] with `readers` threads reading disjoint shares of `ranges` (every
/// `readers`-th range) concurrently; frames arrive in no particular order and there are no
/// [`Item::Mark`]s, so this is for cycles (whose frames the server stages and applies as a
/// whole), not for the copy's checkpoints. [`Item::Done`] comes after every thread finished.
#[must_use]
pub fn spawn_readers(
    device: PathBuf,
    size: u64,
    ranges: Vec<(u64, u64)>,
    opts: EncodeOpts,
    readers: usize,
    compress: Option<Arc<AtomicBool>>,
) -> mpsc::Receiver<Item> {
    let (tx, rx) = mpsc::channel(FRAMES_IN_FLIGHT);
    let readers = readers.clamp(1, ranges.len().max(1));
    if readers == 1 {
        std::thread::spawn(move || {
            if let Some((frames, data_bytes)) =
                read_share(&device, size, &ranges, opts, compress.as_deref(), &tx, true)
            {
                let _ = tx.blocking_send(Item::Done { frames, data_bytes });
            }
        });
        return rx;
    }
    let mut shares = vec![Vec::new(); readers];
    for (i, r) in ranges.into_iter().enumerate() {
        shares[i % readers].push(r);
    }
    std::thread::spawn(move || {
        let handles: Vec<_> = shares
            .into_iter()
            .map(|share| {
                let (device, tx, compress) = (device.clone(), tx.clone(), compress.clone());
                std::thread::spawn(move || {
                    read_share(&device, size, &share, opts, compress.as_deref(), &tx, false)
                })
            })
            .collect();
        let (mut frames, mut data_bytes) = (0u64, 0u64);
        for h in handles {
            match h.join() {
                Ok(Some((f, d))) => {
                    frames += f;
                    data_bytes += d;
                }
                // The thread reported its failure (or the receiver is gone).
                Ok(None) => return,
                Err(_) => {
                    let _ =
                        tx.blocking_send(Item::Failed("a device reader thread panicked".into()));
                    return;
                }
            }
        }
        let _ = tx.blocking_send(Item::Done { frames, data_bytes });
    });
    rx
}

/// Reads `ranges` and sends their frames (and a mark after each range when `marks`),
/// encoded by a [`FrameEncoder`] following `compress`.
/// Returns (frames, data bytes), or None after a failure was sent or the receiver left.
fn read_share(
    device: &std::path::Path,
    size: u64,
    ranges: &[(u64, u64)],
    opts: EncodeOpts,
    compress: Option<&AtomicBool>,
    tx: &mpsc::Sender<Item>,
    marks: bool,
) -> Option<(u64, u64)> {
    let mut r = match DevReader::open(device, size, proto::MAX_DATA) {
        Ok(r) => r,
        Err(e) => {
            let _ = tx.blocking_send(Item::Failed(e.to_string()));
            return None;
        }
    };
    let mut frames = 0u64;
    let mut data_bytes = 0u64;
    let mut enc = FrameEncoder::new(opts);
    for &(s, e) in ranges {
        let res: Result<u64, std::io::Error> = r.read_range(s, e, |c| {
            let frame = match c {
                Chunk::Data { offset, bytes } => Frame::Data {
                    offset,
                    data: bytes.to_vec(),
                },
                Chunk::Zero { offset, len } => Frame::Zero { offset, len },
            };
            let item = enc.item(&frame, compress).map_err(std::io::Error::other)?;
            frames += 1;
            data_bytes += item.data_bytes();
            tx.blocking_send(item)
                .map_err(|_| std::io::Error::other("sender gone"))
        });
        if let Err(e) = res {
            let _ = tx.blocking_send(Item::Failed(e.to_string()));
            return None;
        }
        if marks && tx.blocking_send(Item::Mark(e.min(size))).is_err() {
            return None;
        }
    }
    Some((frames, data_bytes))
}

/// Encodes a stream's Data and Zero frames as a session sends them: compressed as its
/// [`EncodeOpts`] say while the session's compression flag ([`Compression::flag`], if
/// given) is on, else raw. One encoder for the whole stream: it keeps its zstd context
/// (creating one per frame cost more than compressing a 4 KiB frame: ~15 % of the CPU at
/// 4 KiB writes).
pub struct FrameEncoder {
    enc: proto::Encoder,
    raw: proto::Encoder,
}

impl FrameEncoder {
    /// An encoder compressing as `opts` says.
    #[must_use]
    pub fn new(opts: EncodeOpts) -> Self {
        Self {
            enc: proto::Encoder::new(opts),
            raw: proto::Encoder::new(EncodeOpts {
                compress_level: None,
            }),
        }
    }

    /// `frame` encoded, as the [`Item::Frame`] the sender writes.
    ///
    /// # Errors
    /// The frame cannot be encoded (e.g. more than [`proto::MAX_DATA`] bytes of data).
    pub fn item(&mut self, frame: &Frame, compress: Option<&AtomicBool>) -> Result<Item, String> {
        let e = if compress.is_none_or(|c| c.load(Ordering::Relaxed)) {
            &mut self.enc
        } else {
            &mut self.raw
        };
        let mut bytes = Vec::new();
        e.encode(frame, &mut bytes).map_err(|e| e.to_string())?;
        let (data, zero) = match frame {
            Frame::Data { data, .. } => (data.len() as u64, 0),
            Frame::Zero { len, .. } => (0, *len),
            Frame::Control(_) => (0, 0),
        };
        Ok(Item::Frame { bytes, data, zero })
    }
}

impl Item {
    /// Data bytes a [`Item::Frame`] carries (0 for anything else).
    fn data_bytes(&self) -> u64 {
        match self {
            Self::Frame { data, .. } => *data,
            _ => 0,
        }
    }
}

/// Starts a thread encoding the pieces of a cycle its journal log holds (`logged`, from
/// `crate::cycle::read_cycle_logged`) into frames — no device read — then [`Item::Done`].
/// Encoded like the readers' frames ([`FrameEncoder`], `compress` as in
/// [`spawn_readers`]); all-zero data goes as a zero range, as the readers send it. One frame
/// per piece (a piece of more than [`proto::MAX_DATA`] bytes, which `read_cycle_logged`
/// never makes, would be split).
#[must_use]
pub fn spawn_logged(
    logged: Vec<Logged>,
    opts: EncodeOpts,
    compress: Option<Arc<AtomicBool>>,
) -> mpsc::Receiver<Item> {
    let (tx, rx) = mpsc::channel(FRAMES_IN_FLIGHT);
    std::thread::spawn(move || {
        let mut enc = FrameEncoder::new(opts);
        let (mut frames, mut data_bytes) = (0u64, 0u64);
        for piece in logged {
            for frame in frames_of(piece) {
                let item = match enc.item(&frame, compress.as_deref()) {
                    Ok(i) => i,
                    Err(e) => {
                        let _ = tx.blocking_send(Item::Failed(e));
                        return;
                    }
                };
                frames += 1;
                data_bytes += item.data_bytes();
                if tx.blocking_send(item).is_err() {
                    return;
                }
            }
        }
        let _ = tx.blocking_send(Item::Done { frames, data_bytes });
    });
    rx
}

/// The frames of one logged piece: usually one; data in [`proto::MAX_DATA`] chunks, each
/// all-zero chunk as a zero range.
fn frames_of(piece: Logged) -> Vec<Frame> {
    let as_frame = |offset: u64, data: Vec<u8>| {
        if is_zero(&data) {
            Frame::Zero {
                offset,
                len: data.len() as u64,
            }
        } else {
            Frame::Data { offset, data }
        }
    };
    match piece {
        Logged::Zero { offset, len } => vec![Frame::Zero { offset, len }],
        Logged::Data { offset, data } if data.len() <= proto::MAX_DATA => {
            vec![as_frame(offset, data)]
        }
        Logged::Data { offset, data } => {
            let mut at = offset;
            data.chunks(proto::MAX_DATA)
                .map(|c| {
                    let f = as_frame(at, c.to_vec());
                    at += c.len() as u64;
                    f
                })
                .collect()
        }
    }
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

/// Bytes of data frames gathered before they are written to the TLS stream: one TLS record
/// and one `sendmsg` per 4 KiB frame capped a cycle of scattered 4 KiB changes at ~10 000
/// frames/s. Control messages flush at once, and so does every wait for an answer.
pub const WIRE_BUFFER: usize = 256 << 10;

/// Decides, while a cycle ships, whether its frames are compressed (`--compression auto`).
///
/// The sender notes how long it waited for the readers' next frame (the CPU — reading,
/// compressing — is the limit) and how long writing to the connection took (the link is
/// the limit). Every [`Compression::WINDOW`] it compresses the next frames only if the link
/// was the limit: compression then buys throughput; otherwise it costs throughput (zstd on
/// 4 KiB blocks is the most expensive step per frame: ~10 µs at level 1) and frames go raw.
/// Raw and compressed frames are equally valid, so this changes wire bytes, never data.
#[derive(Debug)]
pub struct Compression {
    on: Arc<AtomicBool>,
    auto: bool,
    starved: Duration,
    sending: Duration,
    since: Instant,
}

impl Compression {
    /// How often the decision is made.
    pub const WINDOW: Duration = Duration::from_millis(100);

    /// Starts compressing; with `auto` false it never changes its mind.
    #[must_use]
    pub fn new(auto: bool) -> Self {
        Self {
            on: Arc::new(AtomicBool::new(true)),
            auto,
            starved: Duration::ZERO,
            sending: Duration::ZERO,
            since: Instant::now(),
        }
    }

    /// The flag the reader threads follow.
    #[must_use]
    pub fn flag(&self) -> Arc<AtomicBool> {
        self.on.clone()
    }

    /// Whether frames are being compressed now.
    #[must_use]
    pub fn is_on(&self) -> bool {
        self.on.load(Ordering::Relaxed)
    }

    /// The sender waited `waited` for the next frame, then spent `sent` writing it.
    pub fn note(&mut self, waited: Duration, sent: Duration) {
        self.starved += waited;
        self.sending += sent;
        if self.auto && self.since.elapsed() >= Self::WINDOW {
            self.on
                .store(link_bound(self.sending, self.starved), Ordering::Relaxed);
            self.starved = Duration::ZERO;
            self.sending = Duration::ZERO;
            self.since = Instant::now();
        }
    }
}

/// Whether the link limited shipping in a window: writing took longer than waiting for data.
#[must_use]
pub fn link_bound(sending: Duration, starved: Duration) -> bool {
    sending > starved
}

/// The writing half of a session, with counters and the optional bandwidth limit. Frames are
/// buffered ([`WIRE_BUFFER`]); [`Wire::msg`] and [`Wire::flush`] send everything.
pub struct Wire<W> {
    w: tokio::io::BufWriter<W>,
    limit: Option<RateLimit>,
    /// Bytes written.
    pub wire_bytes: u64,
}

impl<W: AsyncWrite + Unpin> Wire<W> {
    /// Wraps `w`.
    pub fn new(w: W, max_rate: Option<u64>) -> Self {
        Self {
            w: tokio::io::BufWriter::with_capacity(WIRE_BUFFER, w),
            limit: max_rate.map(RateLimit::new),
            wire_bytes: 0,
        }
    }

    /// Writes pre-encoded frame bytes (buffered: see [`Wire::flush`]).
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
            .map_err(|e| base::net::io_error(&e))?;
        self.wire_bytes += b.len() as u64;
        Ok(())
    }

    /// Sends a control message (and flushes).
    ///
    /// # Errors
    /// The connection failed.
    pub async fn msg(&mut self, m: Msg) -> Result<(), ReplError> {
        let mut b = Vec::new();
        proto::encode(&Frame::Control(m), &base::net::CONTROL, &mut b)
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
            .map_err(|e| base::net::io_error(&e))
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
    fn compression_follows_the_bottleneck() {
        assert!(link_bound(
            Duration::from_millis(80),
            Duration::from_millis(20)
        ));
        assert!(!link_bound(
            Duration::from_millis(10),
            Duration::from_millis(90)
        ));
        let mut c = Compression::new(true);
        assert!(c.is_on(), "starts compressing");
        // A window in which the sender mostly waited for frames: the CPU is the limit.
        c.since = Instant::now() - Compression::WINDOW;
        c.note(Duration::from_millis(90), Duration::from_millis(5));
        assert!(!c.is_on());
        // Then one in which writing blocked: the link is the limit.
        c.since = Instant::now() - Compression::WINDOW;
        c.note(Duration::from_millis(1), Duration::from_millis(60));
        assert!(c.is_on());
        // `always` never turns it off.
        let mut a = Compression::new(false);
        a.since = Instant::now() - Compression::WINDOW;
        a.note(Duration::from_millis(90), Duration::ZERO);
        assert!(a.is_on());
    }

    #[test]
    fn logged_pieces_become_frames_without_a_device() {
        let big = proto::MAX_DATA + 512;
        let logged = vec![
            Logged::Zero {
                offset: 0,
                len: 4096,
            },
            Logged::Data {
                offset: 4096,
                data: vec![7; 1024],
            },
            // All zeros: sent as a zero range.
            Logged::Data {
                offset: 8192,
                data: vec![0; 512],
            },
            // Past a frame's cap: split.
            Logged::Data {
                offset: 1 << 20,
                data: vec![1; big],
            },
        ];
        let opts = EncodeOpts {
            compress_level: Some(1),
        };
        let mut rx = spawn_logged(logged, opts, None);
        let mut got = Vec::new();
        let done = loop {
            match rx.blocking_recv() {
                Some(Item::Frame { bytes, data, zero }) => {
                    let (f, _) = proto::decode(&bytes).unwrap().unwrap();
                    let (kind, offset, len) = match f {
                        Frame::Data { offset, data: d } => ('d', offset, d.len() as u64),
                        Frame::Zero { offset, len } => ('z', offset, len),
                        Frame::Control(m) => panic!("{m:?}"),
                    };
                    assert_eq!(if kind == 'd' { (len, 0) } else { (0, len) }, (data, zero));
                    got.push((kind, offset, len));
                }
                Some(Item::Done { frames, data_bytes }) => break (frames, data_bytes),
                other => panic!("{other:?}"),
            }
        };
        let max = proto::MAX_DATA as u64;
        assert_eq!(
            got,
            vec![
                ('z', 0, 4096),
                ('d', 4096, 1024),
                ('z', 8192, 512),
                ('d', 1 << 20, max),
                ('d', (1 << 20) + max, 512),
            ]
        );
        assert_eq!(done, (5, 1024 + max + 512));
    }

    #[test]
    fn rate_limit_paces() {
        let mut l = RateLimit::new(1000);
        assert!(l.take(500) <= Duration::from_millis(500));
        let d = l.take(1500);
        assert!(d > Duration::from_millis(1500) && d <= Duration::from_millis(2000));
    }
}
