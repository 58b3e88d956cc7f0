//! Frames over tokio byte streams (in production a tokio-rustls stream).
//!
//! [`FrameReader`] and [`FrameWriter`] keep their buffers and zstd contexts across frames;
//! [`read_frame`] and [`write_frame`] are one-shot conveniences. Reading allocates nothing
//! per frame beyond the frame itself: an uncompressed Data payload is read straight into
//! the `Vec` the frame returns; compressed payloads go through a reused scratch buffer.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::codec::{Decoder, Encoder, data_offset};
use crate::error::ProtoError;
use crate::frame::{
    DATA_PREFIX, EncodeOpts, FLAG_ZSTD, Frame, FrameHeader, FrameKind, FrameStats, HEADER_LEN,
};

/// Reads one frame. `Err(Closed)` on a clean end of stream before a header; an end of
/// stream inside a frame is `Err(Io)` (`UnexpectedEof`).
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> Result<Frame, ProtoError> {
    FrameReader::new().read(r).await
}

/// Encodes and writes one frame (see [`FrameWriter::write`] for when it flushes).
pub async fn write_frame<W: AsyncWrite + Unpin>(
    w: &mut W,
    frame: &Frame,
    opts: &EncodeOpts,
) -> Result<FrameStats, ProtoError> {
    FrameWriter::new(*opts).write(w, frame).await
}

/// Reads frames from a stream, reusing a scratch buffer and a zstd context.
#[derive(Debug, Default)]
pub struct FrameReader {
    decoder: Decoder,
    scratch: Vec<u8>,
}

impl FrameReader {
    /// A reader with empty buffers.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Reads one frame (see [`read_frame`]).
    pub async fn read<R: AsyncRead + Unpin>(&mut self, r: &mut R) -> Result<Frame, ProtoError> {
        let mut hb = [0u8; HEADER_LEN];
        read_header(r, &mut hb).await?;
        let h = FrameHeader::parse(&hb)?;
        let len = h.wire_len();
        if h.kind == FrameKind::Data.as_u16() && h.flags & FLAG_ZSTD == 0 && len > DATA_PREFIX {
            // The common bulk case: read the data straight into the frame's own buffer.
            let mut prefix = [0u8; DATA_PREFIX];
            read_body(r, &mut prefix, &h).await?;
            let mut data = vec![0u8; len - DATA_PREFIX];
            read_body(r, &mut data, &h).await?;
            h.validate(&[&prefix, &data])?;
            crate::codec::check_data(data_offset(&prefix)?, data.len()).map_err(|why| {
                ProtoError::BadPayload {
                    kind: FrameKind::Data,
                    why,
                }
            })?;
            return Ok(Frame::Data {
                offset: u64::from_le_bytes(prefix),
                data,
            });
        }
        self.scratch.clear();
        self.scratch.resize(len, 0);
        read_body(r, &mut self.scratch, &h).await?;
        let frame = self.decoder.finish(&h, &self.scratch);
        if self.scratch.capacity() > KEEP_SCRATCH {
            // Do not pin a 4 MiB buffer for a connection that sent one big frame.
            self.scratch = Vec::new();
        }
        frame
    }
}

/// Scratch capacity kept between frames.
const KEEP_SCRATCH: usize = 2 * crate::frame::MAX_DATA;

/// Fills `hb`, telling a clean close (nothing read) from a close mid-header.
async fn read_header<R: AsyncRead + Unpin>(
    r: &mut R,
    hb: &mut [u8; HEADER_LEN],
) -> Result<(), ProtoError> {
    let mut got = 0;
    while got < HEADER_LEN {
        let n = r.read(&mut hb[got..]).await?;
        if n == 0 {
            if got == 0 {
                return Err(ProtoError::Closed);
            }
            return Err(ProtoError::Io(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("connection closed inside a frame header ({got} of {HEADER_LEN} bytes)"),
            )));
        }
        got += n;
    }
    Ok(())
}

/// `read_exact` with an error that says which frame was cut short.
async fn read_body<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut [u8],
    h: &FrameHeader,
) -> Result<(), ProtoError> {
    match r.read_exact(buf).await {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            Err(ProtoError::Io(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!(
                    "connection closed inside the {}-byte payload of a kind {} frame",
                    h.len, h.kind
                ),
            )))
        }
        Err(e) => Err(e.into()),
    }
}

/// Writes frames to a stream, reusing an output buffer and a zstd context.
#[derive(Debug)]
pub struct FrameWriter {
    encoder: Encoder,
    buf: Vec<u8>,
}

impl FrameWriter {
    /// A writer encoding with `opts`.
    #[must_use]
    pub fn new(opts: EncodeOpts) -> Self {
        Self {
            encoder: Encoder::new(opts),
            buf: Vec::new(),
        }
    }

    /// Encodes and writes one frame. Control frames are flushed (a request must never sit
    /// in a buffer while we wait for its answer); Data and Zero frames are not, so a
    /// buffered transport can batch them — the Control frame that ends a batch flushes it.
    pub async fn write<W: AsyncWrite + Unpin>(
        &mut self,
        w: &mut W,
        frame: &Frame,
    ) -> Result<FrameStats, ProtoError> {
        self.buf.clear();
        let stats = self.encoder.encode(frame, &mut self.buf)?;
        w.write_all(&self.buf).await?;
        if matches!(frame, Frame::Control(_)) {
            w.flush().await?;
        }
        if self.buf.capacity() > KEEP_SCRATCH {
            self.buf = Vec::new();
        }
        Ok(stats)
    }
}
