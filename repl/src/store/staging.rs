//! Staged cycle files: written while a cycle arrives, made durable before it is
//! acknowledged, read back whole before it is applied (format in the parent module's docs).

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

/// A cycle being received into `staging/SEQ.cycle.tmp.EPOCH`.
#[derive(Debug)]
pub struct Staging {
    tmp: PathBuf,
    fin: PathBuf,
    out: BufWriter<File>,
    seq: u64,
    frames: u64,
    data_bytes: u64,
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

    /// Appends a Data or Zero frame of the cycle, checking it lies inside a `size`-byte disk.
    ///
    /// # Errors
    /// Out of range, a control frame, or a file error.
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
        if offset.checked_add(len).is_none_or(|e| e > size) {
            return Err(StoreError::BadRequest {
                disk: disk.into(),
                why: format!(
                    "cycle {} names {offset}+{len}, past the end of the {size}-byte disk",
                    self.seq
                ),
            });
        }
        self.write(disk, frame)?;
        self.frames += 1;
        if let Frame::Data { data, .. } = frame {
            self.data_bytes += data.len() as u64;
        }
        Ok(())
    }

    pub(super) fn finish(self, disk: &str, end: &Msg) -> Result<PathBuf> {
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
