//! Staged cycle files: written while a cycle arrives, made durable before it is
//! acknowledged, read back whole before it is applied (format in the parent module's docs).
//!
//! **Caps** (checked as each frame arrives, so a peer that never ends its cycle is stopped
//! without the server holding more than the caps; all before the acknowledgement):
//! - frames: at most [`max_cycle_frames`] of the disk (≤ [`MAX_CYCLE_FRAMES`]);
//! - the bytes the frames name (data and zero ranges together): at most the disk's size.
//!   The agent merges a cycle's ranges and reads each once, so a real cycle names every byte
//!   at most once; more is a peer repeating itself. This also bounds a staged file: at most
//!   the disk's size of data plus 32 bytes of framing per frame.
//!
//! A peer past a cap is refused; its partial file is removed and nothing else changes.

use std::fs::{self, File};
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use proto::{EncodeOpts, Frame, Msg};

use super::{Result, STAGE_MAGIC, StoreError, io_err};

/// Reads one frame from a staged file (None at a clean end of file).
pub(super) fn read_frame_sync(
    r: &mut impl Read,
    buf: &mut Vec<u8>,
) -> std::result::Result<Option<Frame>, String> {
    buf.clear();
    buf.resize(proto::HEADER_LEN, 0);
    match r.read_exact(&mut buf[..]) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.to_string()),
    }
    let len = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if len > proto::MAX_WIRE_PAYLOAD {
        return Err(format!("frame of {len} bytes exceeds the limit"));
    }
    buf.resize(proto::HEADER_LEN + len, 0);
    r.read_exact(&mut buf[proto::HEADER_LEN..])
        .map_err(|e| format!("truncated frame: {e}"))?;
    match proto::decode(buf) {
        Ok(Some((f, _))) => Ok(Some(f)),
        Ok(None) => Err("truncated frame".into()),
        Err(e) => Err(e.to_string()),
    }
}

/// Most Data/Zero frames in one cycle, whatever the disk: 4 Mi. Applying a cycle sorts its
/// ranges in memory (16 bytes a frame: 64 MiB at most, held while it is received and while
/// it is applied), and its undo file holds at most [`crate::undo::MAX_ENTRIES`] (also 4 Mi)
/// entries. A cycle of the agent reaches it only past 4 TiB of data or 4 Mi scattered
/// ranges in one cycle; it is then refused with `BrokenChain`, and the agent replaces it with
/// a checksum resync, which carries any amount of change in bounded batches.
pub const MAX_CYCLE_FRAMES: u64 = 1 << 22;

/// The shortest frame the agent sends, but for one at the disk's end: it ships ranges rounded
/// out to 4 KiB and reads them in chunks that are multiples of that.
const MIN_FRAME_LEN: u64 = 4096;

/// Most Data/Zero frames in one cycle of a `size`-byte disk: one per 4 KiB of the disk plus a
/// few (a real cycle names each byte once, in frames of at least 4 KiB but at the disk's
/// end), and never more than [`MAX_CYCLE_FRAMES`].
#[must_use]
pub fn max_cycle_frames(size: u64) -> u64 {
    size.div_ceil(MIN_FRAME_LEN)
        .saturating_add(16)
        .min(MAX_CYCLE_FRAMES)
}

/// A cycle being received into `staging/SEQ.cycle.tmp.EPOCH`.
#[derive(Debug)]
pub struct Staging {
    tmp: PathBuf,
    fin: PathBuf,
    out: BufWriter<File>,
    seq: u64,
    frames: u64,
    data_bytes: u64,
    /// Bytes named by the frames so far (data and zero ranges).
    named: u64,
    /// The ranges named so far, each run of touching frames as one (for the undo bound).
    ranges: Vec<(u64, u64)>,
    buf: Vec<u8>,
}

impl Staging {
    pub(super) fn create(
        disk: &str,
        dir: &Path,
        seq: u64,
        epoch: u64,
        begin: &Msg,
    ) -> Result<Self> {
        let tmp = dir.join(format!("{seq:020}.cycle.tmp.{epoch}"));
        let fin = dir.join(format!("{seq:020}.cycle"));
        let f = File::create(&tmp).map_err(io_err(disk, format!("creating {}", tmp.display())))?;
        let mut s = Self {
            tmp,
            fin,
            out: BufWriter::with_capacity(1 << 20, f),
            seq,
            frames: 0,
            data_bytes: 0,
            named: 0,
            ranges: Vec::new(),
            buf: Vec::new(),
        };
        s.out
            .write_all(STAGE_MAGIC)
            .map_err(io_err(disk, "writing a staged cycle"))?;
        s.write(disk, &Frame::Control(begin.clone()))?;
        Ok(s)
    }

    fn write(&mut self, disk: &str, frame: &Frame) -> Result<()> {
        self.buf.clear();
        proto::encode(
            frame,
            &EncodeOpts {
                compress_level: None,
            },
            &mut self.buf,
        )
        .map_err(|e| StoreError::BadRequest {
            disk: disk.into(),
            why: format!("cannot stage frame: {e}"),
        })?;
        self.out
            .write_all(&self.buf)
            .map_err(io_err(disk, format!("writing {}", self.tmp.display())))
    }

    /// The cycle's sequence.
    #[must_use]
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Appends a Data or Zero frame of the cycle, checking it lies inside a `size`-byte disk
    /// and that the cycle stays within the caps (module docs).
    ///
    /// # Errors
    /// Out of range, an empty range, a control frame, past a cap ([`StoreError::TooLarge`]
    /// for the frames, [`StoreError::BadRequest`] for the bytes), or a file error.
    pub fn push(&mut self, disk: &str, size: u64, frame: &Frame) -> Result<()> {
        let (offset, len) = match frame {
            Frame::Data { offset, data } => (*offset, data.len() as u64),
            Frame::Zero { offset, len } => (*offset, *len),
            Frame::Control(m) => {
                return Err(StoreError::BadRequest {
                    disk: disk.into(),
                    why: format!("{} inside cycle {}", m.name(), self.seq),
                });
            }
        };
        let bad = |why: String| StoreError::BadRequest {
            disk: disk.into(),
            why,
        };
        if offset.checked_add(len).is_none_or(|e| e > size) {
            return Err(bad(format!(
                "cycle {} names {offset}+{len}, past the end of the {size}-byte disk",
                self.seq
            )));
        }
        if len == 0 {
            return Err(bad(format!(
                "cycle {} names an empty range at {offset}",
                self.seq
            )));
        }
        let cap = max_cycle_frames(size);
        if self.frames >= cap {
            return Err(StoreError::TooLarge {
                disk: disk.into(),
                why: format!(
                    "cycle {} has more than {cap} frames (the cap for a {size}-byte disk)",
                    self.seq
                ),
            });
        }
        self.named = self.named.saturating_add(len);
        if self.named > size {
            return Err(bad(format!(
                "cycle {} names more bytes than the {size}-byte disk holds (a range sent twice?)",
                self.seq
            )));
        }
        self.write(disk, frame)?;
        match self.ranges.last_mut() {
            Some((o, l)) if *o + *l == offset => *l += len,
            _ => self.ranges.push((offset, len)),
        }
        self.frames += 1;
        if let Frame::Data { data, .. } = frame {
            self.data_bytes += data.len() as u64;
        }
        Ok(())
    }

    /// Checks the counts of `end`, then runs `check` on the cycle's ranges (in arrival order,
    /// unmerged), then makes the file durable under its final name. On any failure the
    /// partial file is removed: nothing was acknowledged.
    pub(super) fn finish(
        mut self,
        disk: &str,
        end: &Msg,
        check: impl FnOnce(Vec<(u64, u64)>) -> Result<()>,
    ) -> Result<PathBuf> {
        let Msg::CycleEnd {
            seq,
            frames,
            data_bytes,
        } = end
        else {
            return Err(StoreError::BadRequest {
                disk: disk.into(),
                why: format!("{} where CycleEnd was expected", end.name()),
            });
        };
        if *seq != self.seq || *frames != self.frames || *data_bytes != self.data_bytes {
            let _ = fs::remove_file(&self.tmp);
            return Err(StoreError::BadRequest {
                disk: disk.into(),
                why: format!(
                    "CycleEnd says cycle {seq} with {frames} frames and {data_bytes} bytes; received cycle {} with {} frames and {} bytes",
                    self.seq, self.frames, self.data_bytes
                ),
            });
        }
        if let Err(e) = check(std::mem::take(&mut self.ranges)) {
            let _ = fs::remove_file(&self.tmp);
            return Err(e);
        }
        let tmp = self.tmp.clone();
        let durable = self.write_durably(disk, end);
        if durable.is_err() {
            // Out of space, typically: nothing was acknowledged; give the space back.
            let _ = fs::remove_file(&tmp);
        }
        durable
    }

    fn write_durably(mut self, disk: &str, end: &Msg) -> Result<PathBuf> {
        self.write(disk, &Frame::Control(end.clone()))?;
        let f = self
            .out
            .into_inner()
            .map_err(|e| io_err(disk, "flushing a staged cycle")(e.into_error()))?;
        f.sync_all()
            .map_err(io_err(disk, "syncing a staged cycle"))?;
        fs::rename(&self.tmp, &self.fin).map_err(io_err(disk, "renaming a staged cycle"))?;
        if let Some(dir) = self.fin.parent() {
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(io_err(disk, "syncing staging/"))?;
        }
        Ok(self.fin)
    }

    /// Throws a partly received cycle away.
    pub fn abandon(self) {
        let _ = fs::remove_file(&self.tmp);
    }
}
