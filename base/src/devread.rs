//! Reading a protected device's data for the copy and the cycles: O_DIRECT (the page cache
//! of a disk being replicated is not ours to pollute, and a direct read sees what the device
//! holds), chunks of at most [`proto::MAX_DATA`], all-zero chunks reported as zero ranges so
//! they cross the wire as 16 bytes.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Direct-I/O alignment of buffers and offsets.
pub const ALIGN: usize = 4096;

/// One piece of a range read from the device.
#[derive(Debug, PartialEq, Eq)]
pub enum Chunk<'a> {
    /// Bytes at `offset` (not all zero).
    Data {
        /// Byte offset on the device.
        offset: u64,
        /// The bytes.
        bytes: &'a [u8],
    },
    /// `len` zero bytes at `offset` (consecutive zero chunks are merged).
    Zero {
        /// Byte offset on the device.
        offset: u64,
        /// Length.
        len: u64,
    },
}

/// A device opened for reading its data.
#[derive(Debug)]
pub struct DevReader {
    path: PathBuf,
    file: File,
    size: u64,
    chunk: usize,
    store: Vec<u8>,
}

/// Whether every byte of `b` is zero.
#[must_use]
pub fn is_zero(b: &[u8]) -> bool {
    let mut words = b.chunks_exact(16);
    let all = words
        .by_ref()
        .all(|w| u128::from_ne_bytes(w.try_into().unwrap_or([1; 16])) == 0);
    all && words.remainder().iter().all(|&x| x == 0)
}

impl DevReader {
    /// Opens `path` (a block device or file of `size` bytes) for direct reads in chunks of
    /// `chunk` bytes (a multiple of [`ALIGN`], at most [`proto::MAX_DATA`]).
    ///
    /// # Errors
    /// The device cannot be opened.
    pub fn open(path: &Path, size: u64, chunk: usize) -> std::io::Result<Self> {
        let chunk = chunk.clamp(ALIGN, proto::MAX_DATA) / ALIGN * ALIGN;
        let file = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECT)
            .open(path)
            .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
        Ok(Self {
            path: path.to_path_buf(),
            file,
            size,
            chunk,
            store: vec![0u8; chunk + ALIGN],
        })
    }

    /// The device size.
    #[must_use]
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Reads `[start, end)` (512-byte aligned, inside the device) and hands each chunk to
    /// `sink`, zero runs merged. Returns the bytes read.
    ///
    /// # Errors
    /// A read failed or came back short, or `sink` failed.
    pub fn read_range<E>(
        &mut self,
        start: u64,
        end: u64,
        mut sink: impl FnMut(Chunk<'_>) -> Result<(), E>,
    ) -> Result<u64, E>
    where
        E: From<std::io::Error>,
    {
        let end = end.min(self.size);
        if !start.is_multiple_of(512) || (!end.is_multiple_of(512) && end != self.size) {
            return Err(std::io::Error::other(format!(
                "{}: range {start}..{end} is not sector aligned",
                self.path.display()
            ))
            .into());
        }
        let off = self.store.as_ptr().align_offset(ALIGN).min(ALIGN);
        let mut zero_run: Option<(u64, u64)> = None;
        let mut at = start;
        while at < end {
            let n = usize::try_from((end - at).min(self.chunk as u64)).unwrap_or(self.chunk);
            let buf = &mut self.store[off..off + n];
            let mut got = 0;
            while got < n {
                let r = self
                    .file
                    .read_at(&mut buf[got..], at + got as u64)
                    .map_err(|e| {
                        std::io::Error::new(
                            e.kind(),
                            format!(
                                "{}: reading at {}: {e}",
                                self.path.display(),
                                at + got as u64
                            ),
                        )
                    })?;
                if r == 0 {
                    return Err(std::io::Error::other(format!(
                        "{}: short read at {} (device shrank?)",
                        self.path.display(),
                        at + got as u64
                    ))
                    .into());
                }
                got += r;
            }
            let bytes = &self.store[off..off + n];
            if is_zero(bytes) {
                zero_run = match zero_run {
                    Some((o, l)) => Some((o, l + n as u64)),
                    None => Some((at, n as u64)),
                };
            } else {
                if let Some((o, l)) = zero_run.take() {
                    sink(Chunk::Zero { offset: o, len: l })?;
                }
                sink(Chunk::Data { offset: at, bytes })?;
            }
            at += n as u64;
        }
        if let Some((o, l)) = zero_run {
            sink(Chunk::Zero { offset: o, len: l })?;
        }
        Ok(end.saturating_sub(start))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn zero_detection() {
        assert!(is_zero(&[0; 4096]));
        assert!(is_zero(&[]));
        let mut b = vec![0u8; 4099];
        assert!(is_zero(&b));
        b[4098] = 1;
        assert!(!is_zero(&b));
        b[4098] = 0;
        b[17] = 1;
        assert!(!is_zero(&b));
    }

    #[test]
    fn reads_chunks_and_merges_zero_runs() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("d");
        let mut data = vec![0u8; 64 << 10];
        data[20 << 10] = 7; // chunk 5 (4 KiB chunks) non-zero
        std::fs::write(&p, &data).unwrap();
        // tmpfs may refuse O_DIRECT; skip the check there (the root tier reads loop devices).
        let Ok(mut r) = DevReader::open(&p, data.len() as u64, 4096) else {
            return;
        };
        let mut got = Vec::new();
        let res: Result<u64, std::io::Error> = r.read_range(0, 64 << 10, |c| {
            got.push(match c {
                Chunk::Data { offset, bytes } => (offset, bytes.len() as u64, true),
                Chunk::Zero { offset, len } => (offset, len, false),
            });
            Ok(())
        });
        if res.is_err() {
            return;
        }
        assert_eq!(
            got,
            vec![
                (0, 20 << 10, false),
                (20 << 10, 4096, true),
                (24 << 10, 40 << 10, false)
            ]
        );
    }
}
