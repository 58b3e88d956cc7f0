//! The ring-buffer event, mirrored from `bpf/tracker.h` (`struct trk_event`).

use hrl::Extent;

/// Event kinds (`TRK_OP_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Op {
    /// A write with data.
    Write,
    /// A discard (TRIM/UNMAP).
    Discard,
    /// A secure erase.
    SecureErase,
    /// A write-zeroes.
    WriteZeroes,
    /// An empty write carrying PREFLUSH: a cache flush barrier.
    Flush,
}

impl Op {
    fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            1 => Op::Write,
            2 => Op::Discard,
            3 => Op::SecureErase,
            4 => Op::WriteZeroes,
            5 => Op::Flush,
            _ => return None,
        })
    }
}

/// `TRK_F_FUA`.
pub const F_FUA: u8 = 1;
/// `TRK_F_PREFLUSH`.
pub const F_PREFLUSH: u8 = 2;

/// Size of `struct trk_event`.
pub const EVENT_SIZE: usize = 32;

/// One block-layer change on a tracked device, as the BPF program reported it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Event {
    /// Global sequence number.
    pub seq: u64,
    /// First sector, relative to the tracked device.
    pub sector: u64,
    /// Size in bytes (0 for a flush).
    pub bytes: u32,
    /// Kernel `dev_t` of the device.
    pub dev: u32,
    /// The device's slot.
    pub slot: u16,
    /// What happened.
    pub op: Op,
    /// `F_FUA` / `F_PREFLUSH`.
    pub flags: u8,
}

impl Event {
    /// Decodes a ring-buffer record (little-endian `struct trk_event`); `None` if it is not
    /// one (wrong size or unknown op), which the consumer counts as a lost event.
    #[must_use]
    pub fn parse(b: &[u8]) -> Option<Self> {
        if b.len() != EVENT_SIZE {
            return None;
        }
        let u64_at = |i: usize| {
            b.get(i..i + 8)
                .and_then(|s| s.try_into().ok())
                .map(u64::from_le_bytes)
        };
        let u32_at = |i: usize| {
            b.get(i..i + 4)
                .and_then(|s| s.try_into().ok())
                .map(u32::from_le_bytes)
        };
        let u16_at = |i: usize| {
            b.get(i..i + 2)
                .and_then(|s| s.try_into().ok())
                .map(u16::from_le_bytes)
        };
        Some(Event {
            seq: u64_at(0)?,
            sector: u64_at(8)?,
            bytes: u32_at(16)?,
            dev: u32_at(20)?,
            slot: u16_at(24)?,
            op: Op::from_u8(*b.get(26)?)?,
            flags: *b.get(27)?,
        })
    }

    /// The byte range the event covers, if any (flushes cover none).
    #[must_use]
    pub fn extent(&self) -> Option<Extent> {
        let off = self.sector.checked_mul(hrl::SECTOR_SIZE)?;
        Extent::new(off, u64::from(self.bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_c_layout() {
        let mut b = [0u8; 32];
        b[0..8].copy_from_slice(&7u64.to_le_bytes());
        b[8..16].copy_from_slice(&16u64.to_le_bytes());
        b[16..20].copy_from_slice(&4096u32.to_le_bytes());
        b[20..24].copy_from_slice(&((7u32 << 20) | 3).to_le_bytes());
        b[24..26].copy_from_slice(&5u16.to_le_bytes());
        b[26] = 1;
        b[27] = F_FUA;
        let e = Event::parse(&b).unwrap();
        assert_eq!(e.seq, 7);
        assert_eq!(e.op, Op::Write);
        assert_eq!(e.slot, 5);
        assert_eq!(e.flags, F_FUA);
        assert_eq!(e.extent(), Extent::new(8192, 4096));
        b[26] = 9;
        assert_eq!(Event::parse(&b), None);
        assert_eq!(Event::parse(&b[..31]), None);
    }

    #[test]
    fn flush_covers_nothing() {
        let e = Event {
            seq: 0,
            sector: 0,
            bytes: 0,
            dev: 0,
            slot: 0,
            op: Op::Flush,
            flags: F_PREFLUSH,
        };
        assert_eq!(e.extent(), None);
    }
}
