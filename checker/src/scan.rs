//! Streaming one image of one device through the per-block rule: the part of a check that
//! reads bytes, shared by the single-image check ([`crate::check`]) and the multi-image one
//! ([`crate::group`]).
//!
//! The image is read in 1 MiB chunks (O_DIRECT for a block device, so the bytes are the
//! device's, not a cached copy) by a reader thread while the calling thread judges each
//! block: reading and checking overlap, and memory stays at four buffers. The device's
//! records come sorted by (block, seq), so one cursor walks them alongside the image.

use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::{FileExt, FileTypeExt, OpenOptionsExt};
use std::path::Path;
use std::sync::mpsc;

use crate::block::{BadBlock, BlockHeader, decode};
use crate::buf::AlignedBuf;
use crate::history::{History, HistoryRecord};
use crate::outcome::{Counts, Violation};
use crate::rule::{self, BlockCase, Verdict};
use crate::units::UnixNs;
use crate::{Error, Result};

/// Bytes per image read.
const CHUNK: usize = 1 << 20;

/// How one device's image is to be judged.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ScanOptions {
    /// The device the image is of.
    pub(crate) device: u16,
    /// The point time ([`rule::judge`]), or none ([`rule::judge_intact`]).
    pub(crate) t: Option<UnixNs>,
    /// How many violations to list (all are counted).
    pub(crate) max_listed: usize,
}

/// What one image's scan found.
#[derive(Debug, Clone, Default)]
pub(crate) struct DeviceScan {
    /// Blocks checked (the device's block count).
    pub(crate) checked: u64,
    /// Blocks per outcome.
    pub(crate) counts: Counts,
    /// Violations, counted.
    pub(crate) violations_total: u64,
    /// The first `max_listed` violations, in block order.
    pub(crate) violations: Vec<Violation>,
    /// The image's size in bytes.
    pub(crate) image_size: u64,
    /// The bytes the run's blocks cover on this device.
    pub(crate) need: u64,
}

/// Judges every block of `image` as device `opts.device` of `history`, whose records for
/// that device are `writes` (sorted by block, then seq), calling `visit` with each block's
/// case and content after judging it.
///
/// # Errors
/// The image cannot be read, or is smaller than the device's blocks.
pub(crate) fn scan_device(
    history: &History,
    writes: &[HistoryRecord],
    image: &Path,
    opts: ScanOptions,
    mut visit: impl FnMut(&BlockCase<'_>, &std::result::Result<BlockHeader, BadBlock>),
) -> Result<DeviceScan> {
    let hdr = &history.header;
    let bs = hdr.block_size;
    let blocks = hdr
        .devices
        .get(usize::from(opts.device))
        .map_or(0, |g| g.block_count);
    let (file, size) = open_image(image)?;
    let need = blocks * bs.as_u64();
    if size < need {
        let of = if hdr.devices.len() > 1 {
            format!(" of device {}", opts.device)
        } else {
            String::new()
        };
        return Err(Error::Mismatch {
            path: image.to_path_buf(),
            cause: format!(
                "{size} bytes, smaller than the run's {blocks} blocks of {} bytes{of} ({need} \
                 bytes)",
                bs.bytes()
            ),
        });
    }
    let mut scan = DeviceScan {
        image_size: size,
        need,
        ..DeviceScan::default()
    };
    let mut cursor = 0usize;
    for_each_chunk(file, image, need, |offset, chunk| {
        for (k, bytes) in chunk.chunks_exact(bs.as_usize()).enumerate() {
            let index = offset / bs.as_u64() + k as u64;
            let start = cursor;
            while cursor < writes.len() && writes[cursor].block == index {
                cursor += 1;
            }
            let case = BlockCase {
                device: opts.device,
                index,
                writes: &writes[start..cursor],
                t: opts.t.unwrap_or(UnixNs(0)),
                run_id: hdr.run_id,
                clean: history.clean(),
            };
            let found = decode(bytes);
            scan.judge(&case, &found, opts);
            visit(&case, &found);
        }
    })?;
    Ok(scan)
}

impl DeviceScan {
    fn judge(
        &mut self,
        case: &BlockCase<'_>,
        found: &std::result::Result<BlockHeader, BadBlock>,
        opts: ScanOptions,
    ) {
        let (verdict, allowed) = match opts.t {
            Some(_) => rule::judge(case, found),
            None => (rule::judge_intact(case, found), rule::Allowed::default()),
        };
        self.counts.add(&verdict);
        self.checked += 1;
        if let Verdict::Bad(kind, detail) = verdict {
            self.violations_total += 1;
            if self.violations.len() < opts.max_listed {
                self.violations.push(Violation {
                    block: case.index,
                    kind,
                    found_seq: found.as_ref().ok().map(|h| h.seq),
                    allowed_from_seq: allowed.from_seq,
                    allowed_to_seq: allowed.to_seq,
                    detail,
                });
            }
        }
    }
}

/// Opens the image read-only (O_DIRECT for a block device) and returns it with its size.
fn open_image(path: &Path) -> Result<(File, u64)> {
    let meta = std::fs::metadata(path).map_err(Error::io(path, "stat image"))?;
    let flags = if meta.file_type().is_block_device() {
        libc::O_DIRECT
    } else {
        0
    };
    let mut f = File::options()
        .read(true)
        .custom_flags(flags)
        .open(path)
        .map_err(Error::io(path, "open image"))?;
    let size = f
        .seek(SeekFrom::End(0))
        .map_err(Error::io(path, "size image"))?;
    Ok((f, size))
}

/// Streams `[0, len)` of `file` in [`CHUNK`]s read by a helper thread (two buffers in
/// flight), calling `f(byte_offset, bytes)` for each, in order.
fn for_each_chunk(file: File, path: &Path, len: u64, mut f: impl FnMut(u64, &[u8])) -> Result<()> {
    let (full_tx, full_rx) = mpsc::sync_channel::<(u64, usize, AlignedBuf)>(2);
    let (empty_tx, empty_rx) = mpsc::channel::<AlignedBuf>();
    for _ in 0..3 {
        let _ = empty_tx.send(AlignedBuf::new(CHUNK));
    }
    let reader_path = path.to_path_buf();
    std::thread::scope(|s| {
        let reader = s.spawn(move || -> Result<()> {
            let mut off = 0u64;
            while off < len {
                let Ok(mut buf) = empty_rx.recv() else {
                    return Ok(()); // the checker stopped early
                };
                let n = usize::try_from((len - off).min(CHUNK as u64)).unwrap_or(CHUNK);
                file.read_exact_at(&mut buf.as_mut_slice()[..n], off)
                    .map_err(Error::io(&reader_path, "read image"))?;
                if full_tx.send((off, n, buf)).is_err() {
                    return Ok(());
                }
                off += n as u64;
            }
            Ok(())
        });
        for (off, n, buf) in full_rx.iter() {
            f(off, &buf.as_slice()[..n]);
            let _ = empty_tx.send(buf);
        }
        reader
            .join()
            .unwrap_or_else(|_| Err(Error::Invalid("image reader thread panicked".into())))
    })
}
