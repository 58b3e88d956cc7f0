//! Coalescing a window of events into few records: per kind, sort the ranges and merge
//! overlapping and adjacent ones.
//!
//! Within one window the kinds are emitted in a fixed order (writes, write-zeroes,
//! discards, secure erases), not in arrival order. That is sound because in extents mode
//! every kind means the same thing to replication: "these ranges changed; the replica must
//! get their current contents from the source" (docs/tracking.md). Flushes split windows.

use hrl::{Extent, RecordBody, RecordFlags};

use crate::event::{Event, F_FUA, F_PREFLUSH, Op};

/// Most extents put in one record (1 MiB of payload).
pub const MAX_EXTENTS_PER_RECORD: usize = 65_536;

const KINDS: [Op; 4] = [Op::Write, Op::WriteZeroes, Op::Discard, Op::SecureErase];

/// Accumulates one window of events.
#[derive(Debug, Default)]
pub struct Coalescer {
    ranges: [Vec<(u64, u64)>; 4],
    flags: [u8; 4],
    events: u64,
}

/// What one window became.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Drained {
    /// Records to append, in order.
    pub records: Vec<(RecordFlags, RecordBody)>,
    /// Events the window held.
    pub events: u64,
    /// Extents after merging.
    pub extents: u64,
    /// Events that reached past the end of the disk (clamped). Non-zero means the tracker's
    /// idea of the device is wrong: the caller records a whole-disk gap.
    pub out_of_range: u64,
}

impl Coalescer {
    /// Adds a change event. Flush events are not accepted here (the caller drains first,
    /// then logs the flush); returns false for them.
    pub fn push(&mut self, e: &Event) -> bool {
        let Some(i) = KINDS.iter().position(|k| *k == e.op) else {
            return false;
        };
        let start = e.sector.saturating_mul(hrl::SECTOR_SIZE);
        let end = start.saturating_add(u64::from(e.bytes));
        if end > start {
            self.ranges[i].push((start, end));
        }
        self.flags[i] |= e.flags;
        self.events += 1;
        true
    }

    /// Events held.
    #[must_use]
    pub fn len(&self) -> u64 {
        self.events
    }

    /// Whether nothing is held.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.events == 0
    }

    /// Empties the window into records for a disk of `disk_size` bytes.
    pub fn drain(&mut self, disk_size: u64) -> Drained {
        let mut out = Drained {
            events: std::mem::take(&mut self.events),
            ..Drained::default()
        };
        for (i, kind) in KINDS.iter().enumerate() {
            let merged = merge(&mut self.ranges[i], disk_size, &mut out.out_of_range);
            let flags = to_record_flags(std::mem::take(&mut self.flags[i]), *kind);
            out.extents += merged.len() as u64;
            for chunk in merged.chunks(MAX_EXTENTS_PER_RECORD) {
                let v = chunk.to_vec();
                let body = match kind {
                    Op::WriteZeroes => RecordBody::WriteZeroes(v),
                    Op::Discard => RecordBody::Discard(v),
                    Op::SecureErase => RecordBody::SecureErase(v),
                    _ => RecordBody::Write(v),
                };
                out.records.push((flags, body));
            }
        }
        out
    }
}

fn to_record_flags(f: u8, kind: Op) -> RecordFlags {
    if !matches!(kind, Op::Write | Op::WriteZeroes) {
        return RecordFlags::empty();
    }
    let mut r = RecordFlags::empty();
    if f & F_FUA != 0 {
        r = r.union(RecordFlags::FUA);
    }
    if f & F_PREFLUSH != 0 {
        r = r.union(RecordFlags::PREFLUSH);
    }
    r
}

/// Sorts, clamps to the disk and merges overlapping or adjacent ranges; leaves `v` empty.
fn merge(v: &mut Vec<(u64, u64)>, disk_size: u64, out_of_range: &mut u64) -> Vec<Extent> {
    v.sort_unstable();
    let mut out: Vec<Extent> = Vec::new();
    let mut cur: Option<(u64, u64)> = None;
    for (s, e) in v.drain(..) {
        if e > disk_size {
            *out_of_range += 1;
        }
        let (s, e) = (s.min(disk_size), e.min(disk_size));
        if s >= e {
            continue;
        }
        cur = match cur {
            Some((cs, ce)) if s <= ce => Some((cs, ce.max(e))),
            Some((cs, ce)) => {
                out.extend(Extent::from_bounds(cs, ce));
                Some((s, e))
            }
            None => Some((s, e)),
        };
    }
    if let Some((cs, ce)) = cur {
        out.extend(Extent::from_bounds(cs, ce));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(op: Op, sector: u64, bytes: u32, flags: u8) -> Event {
        Event {
            seq: 0,
            sector,
            bytes,
            dev: 0,
            slot: 0,
            op,
            flags,
        }
    }

    fn x(off: u64, len: u64) -> Extent {
        Extent::new(off, len).unwrap()
    }

    #[test]
    fn merges_overlapping_and_adjacent_per_kind() {
        let mut c = Coalescer::default();
        for e in [
            ev(Op::Write, 8, 4096, 0),
            ev(Op::Write, 0, 4096, F_FUA),
            ev(Op::Write, 4, 1024, 0),
            ev(Op::Write, 100, 512, 0),
            ev(Op::Discard, 1000, 512, 0),
        ] {
            assert!(c.push(&e));
        }
        assert!(!c.push(&ev(Op::Flush, 0, 0, F_PREFLUSH)));
        let d = c.drain(1 << 20);
        assert_eq!(d.events, 5);
        assert_eq!(d.extents, 3);
        assert_eq!(
            d.records,
            vec![
                (
                    RecordFlags::FUA,
                    RecordBody::Write(vec![x(0, 8192), x(51200, 512)])
                ),
                (
                    RecordFlags::empty(),
                    RecordBody::Discard(vec![x(512_000, 512)])
                ),
            ]
        );
        assert!(c.is_empty());
        assert_eq!(c.drain(1 << 20), Drained::default());
    }

    #[test]
    fn clamps_and_counts_ranges_past_the_disk() {
        let mut c = Coalescer::default();
        c.push(&ev(Op::Write, 6, 2048, 0));
        c.push(&ev(Op::Write, 100, 512, 0));
        let d = c.drain(4096);
        assert_eq!(d.out_of_range, 2);
        assert_eq!(
            d.records,
            vec![(RecordFlags::empty(), RecordBody::Write(vec![x(3072, 1024)]))]
        );
    }
}
