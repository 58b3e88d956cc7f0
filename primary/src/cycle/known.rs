//! What a journal log says the disk holds after its last record, where it says it: the
//! pieces a cycle ships from the log (the parent module's docs).

use std::collections::BTreeMap;
use std::rc::Rc;

use hrl::RecordBody;

use super::{CycleError, Logged};

/// A piece's content.
#[derive(Debug, Clone)]
enum Content {
    /// Bytes of one record's data, which starts at disk offset `base`: the piece
    /// `[s, e)` is `buf[s - base..e - base]`, so splitting a piece copies nothing.
    Data { buf: Rc<Vec<u8>>, base: u64 },
    /// Zeros.
    Zero,
}

/// A piece `[its key, end)`.
#[derive(Debug)]
struct Piece {
    end: u64,
    content: Content,
}

/// The known pieces of a journal log so far: disjoint, keyed by their start. A record
/// replaces whatever earlier records said of its bytes (splitting the pieces it partly
/// covers), so after the last record every byte has the content of the last record that
/// touched it.
#[derive(Debug)]
pub(super) struct Known {
    pieces: BTreeMap<u64, Piece>,
    /// Data bytes kept so far: every kept record's whole data, even once later records
    /// replaced some of it (a bound on the memory held, not a count of what is left).
    kept: u64,
    /// The most data bytes to keep.
    max_data: u64,
    /// `max_data` was reached: write data is no longer kept.
    capped: bool,
}

impl Known {
    /// Nothing known yet; at most `max_data` bytes of write data will be kept.
    pub(super) fn new(max_data: u64) -> Self {
        Self {
            pieces: BTreeMap::new(),
            kept: 0,
            max_data,
            capped: false,
        }
    }

    /// Whether write data past the cap was given back ([`Known::take`]).
    pub(super) fn capped(&self) -> bool {
        self.capped
    }

    /// Takes the next record of the log: `None` if its content is now known (write data,
    /// write-zeroes, discard), else the record back, for its ranges to be read from the
    /// device — extents records, gaps, barriers and tags (which have no ranges), and every
    /// write's data once `max_data` would be passed.
    pub(super) fn take(&mut self, body: RecordBody) -> Option<RecordBody> {
        match body {
            RecordBody::WriteData { offset, data } => {
                let len = data.len() as u64;
                if self.capped || self.kept.saturating_add(len) > self.max_data {
                    self.capped = true;
                    return Some(RecordBody::WriteData { offset, data });
                }
                self.kept += len;
                let content = Content::Data {
                    buf: Rc::new(data),
                    base: offset,
                };
                self.put(offset, offset.saturating_add(len), content);
                None
            }
            RecordBody::WriteZeroes(v) | RecordBody::Discard(v) => {
                for e in v {
                    self.put(
                        e.offset(),
                        e.offset().saturating_add(e.len()),
                        Content::Zero,
                    );
                }
                None
            }
            other => Some(other),
        }
    }

    /// `[start, end)` now holds `content`.
    fn put(&mut self, start: u64, end: u64, content: Content) {
        if start >= end {
            return;
        }
        // A piece from before `start` reaching into the range keeps its head, and its tail
        // past `end` if it has one.
        let mut tail = None;
        if let Some((_, p)) = self.pieces.range_mut(..start).next_back()
            && p.end > start
        {
            let old_end = std::mem::replace(&mut p.end, start);
            if old_end > end {
                tail = Some(Piece {
                    end: old_end,
                    content: p.content.clone(),
                });
            }
        }
        if let Some(t) = tail {
            self.pieces.insert(end, t);
        }
        // Pieces starting inside the range go, but for a tail past `end`.
        let inside: Vec<u64> = self.pieces.range(start..end).map(|(&s, _)| s).collect();
        for s in inside {
            if let Some(p) = self.pieces.remove(&s)
                && p.end > end
            {
                self.pieces.insert(end, p);
            }
        }
        self.pieces.insert(start, Piece { end, content });
    }

    /// The pieces outside `device` (sorted, disjoint ranges read from the device: newer
    /// than any record), in offset order, touching pieces of one kind merged and data cut
    /// into pieces of at most `max_frame` bytes; and the bytes they cover. Each record's
    /// data is freed once its last piece is copied out.
    ///
    /// # Errors
    /// A piece outside its record's data (a bug).
    pub(super) fn finish(
        self,
        device: &[(u64, u64)],
        max_frame: usize,
    ) -> Result<(Vec<Logged>, u64), CycleError> {
        let mut out = Vec::new();
        let mut bytes = 0u64;
        let mut d = 0usize;
        for (start, p) in self.pieces {
            let mut at = start;
            while at < p.end {
                while device.get(d).is_some_and(|r| r.1 <= at) {
                    d += 1;
                }
                match device.get(d) {
                    Some(&(s, e)) if s <= at => at = e,
                    next => {
                        let stop = next.map_or(p.end, |r| r.0.min(p.end));
                        push(&mut out, at, stop, &p.content, max_frame.max(1))?;
                        bytes += stop - at;
                        at = stop;
                    }
                }
            }
        }
        Ok((out, bytes))
    }
}

/// Appends `[start, end)` of `content` to `out`, merged into the last piece if it is of the
/// same kind and ends at `start` (data up to `max_frame` bytes a piece).
fn push(
    out: &mut Vec<Logged>,
    start: u64,
    end: u64,
    content: &Content,
    max_frame: usize,
) -> Result<(), CycleError> {
    let (base, buf) = match content {
        Content::Zero => {
            match out.last_mut() {
                Some(Logged::Zero { offset, len }) if offset.saturating_add(*len) == start => {
                    *len += end - start;
                }
                _ => out.push(Logged::Zero {
                    offset: start,
                    len: end - start,
                }),
            }
            return Ok(());
        }
        Content::Data { buf, base } => (*base, buf),
    };
    let slice = usize::try_from(start.wrapping_sub(base))
        .ok()
        .zip(usize::try_from(end.wrapping_sub(base)).ok())
        .and_then(|(a, b)| buf.get(a..b))
        .ok_or_else(|| {
            CycleError::Pieces(format!(
                "piece {start}..{end} outside its record's {} bytes at {base}",
                buf.len()
            ))
        })?;
    let mut at = start;
    let mut rest = slice;
    while !rest.is_empty() {
        if let Some(Logged::Data { offset, data }) = out.last_mut()
            && offset.saturating_add(data.len() as u64) == at
            && data.len() < max_frame
        {
            let (head, tail) = rest.split_at(rest.len().min(max_frame - data.len()));
            data.extend_from_slice(head);
            at += head.len() as u64;
            rest = tail;
            continue;
        }
        let (head, tail) = rest.split_at(rest.len().min(max_frame));
        out.push(Logged::Data {
            offset: at,
            data: head.to_vec(),
        });
        at += head.len() as u64;
        rest = tail;
    }
    Ok(())
}
