//! Units as types: byte extents on a disk, sequence numbers, ids and generations.
//!
//! Offsets and lengths on a disk are always **bytes** (`u64`), never sectors: the kernel's
//! 512-byte sector, a device's logical block size and sitrep's resync chunk are three
//! different units, and mixing them is the classic replication bug. Conversions from sectors
//! happen once, at the interceptor's edge, through [`Extent::from_sectors`].

use std::fmt;

/// The kernel's sector size: block-layer addresses (`bi_sector`) are always in these units,
/// whatever the device's logical block size.
pub const SECTOR_SIZE: u64 = 512;

/// A non-empty byte range `[offset, offset + len)` on a disk.
///
/// Invariants (checked by the constructors): `len > 0` and `offset + len` does not overflow.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub struct Extent {
    offset: u64,
    len: u64,
}

impl Extent {
    /// A byte range; `None` if it is empty or runs past `u64::MAX`.
    #[must_use]
    pub fn new(offset: u64, len: u64) -> Option<Self> {
        if len == 0 {
            return None;
        }
        offset.checked_add(len)?;
        Some(Self { offset, len })
    }

    /// The half-open range `[start, end)`; `None` if it is empty or reversed.
    #[must_use]
    pub fn from_bounds(start: u64, end: u64) -> Option<Self> {
        Self::new(start, end.checked_sub(start)?)
    }

    /// The byte range of `count` kernel sectors starting at `sector`.
    #[must_use]
    pub fn from_sectors(sector: u64, count: u64) -> Option<Self> {
        Self::new(
            sector.checked_mul(SECTOR_SIZE)?,
            count.checked_mul(SECTOR_SIZE)?,
        )
    }

    /// First byte.
    #[must_use]
    pub const fn offset(&self) -> u64 {
        self.offset
    }

    /// Length in bytes (never zero).
    #[must_use]
    pub const fn len(&self) -> u64 {
        self.len
    }

    /// Always false: an extent is never empty (kept for clippy's `len_without_is_empty`).
    #[must_use]
    pub const fn is_empty(&self) -> bool {
        false
    }

    /// One past the last byte.
    #[must_use]
    pub const fn end(&self) -> u64 {
        // Cannot overflow: checked by every constructor.
        self.offset + self.len
    }

    /// Whether this extent lies wholly inside a disk of `disk_size` bytes.
    #[must_use]
    pub const fn fits_in(&self, disk_size: u64) -> bool {
        self.end() <= disk_size
    }

    /// Whether both ends are multiples of `block` (which must be non-zero).
    #[must_use]
    pub const fn is_aligned_to(&self, block: u64) -> bool {
        block != 0 && self.offset.is_multiple_of(block) && self.len.is_multiple_of(block)
    }

    /// The part this extent shares with `other`, if any.
    #[must_use]
    pub fn intersect(&self, other: &Extent) -> Option<Extent> {
        Extent::from_bounds(self.offset.max(other.offset), self.end().min(other.end()))
    }
}

impl fmt::Debug for Extent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{:#x}..{:#x})", self.offset, self.end())
    }
}

impl fmt::Display for Extent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}+{}", self.offset, self.len)
    }
}

/// A record's sequence number: strictly increasing by one across the records of a disk's log
/// chain, so a missing record is visible without reading its neighbours' contents.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub struct SeqNo(pub u64);

impl SeqNo {
    /// The sequence number after this one.
    #[must_use]
    pub const fn next(self) -> Self {
        SeqNo(self.0.wrapping_add(1))
    }
}

impl fmt::Display for SeqNo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A log's sequence number within its disk's chain (0 for the first log ever written).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub struct LogSeq(pub u64);

impl fmt::Display for LogSeq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The replication generation: bumped whenever the replica's lineage changes (resync,
/// failover, reverse replication), so logs of an older generation are never applied to a
/// newer replica.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub struct Generation(pub u64);

impl fmt::Display for Generation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

macro_rules! id128 {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
        pub struct $name(pub [u8; 16]);

        impl $name {
            /// The all-zero id, which means "none".
            pub const NIL: Self = Self([0; 16]);

            /// A fresh random id from the operating system's generator.
            ///
            /// # Errors
            /// When the OS random source fails (practically never).
            pub fn random() -> std::io::Result<Self> {
                let mut b = [0u8; 16];
                getrandom::fill(&mut b).map_err(std::io::Error::from)?;
                Ok(Self(b))
            }

            /// Whether this is the nil id.
            #[must_use]
            pub fn is_nil(&self) -> bool {
                self.0 == [0; 16]
            }

            /// Parses the 32-hex-digit form produced by `Display`.
            #[must_use]
            pub fn parse_hex(s: &str) -> Option<Self> {
                let s = s.trim();
                if s.len() != 32 || !s.is_ascii() {
                    return None;
                }
                let mut b = [0u8; 16];
                for (i, byte) in b.iter_mut().enumerate() {
                    *byte = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
                }
                Some(Self(b))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                for b in &self.0 {
                    write!(f, "{b:02x}")?;
                }
                Ok(())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "({})"), self)
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
    };
}

id128!(
    /// Identifies a protected disk for its whole life, on both sites.
    DiskId
);
id128!(
    /// Identifies one log file; the next log in the chain names it as its predecessor.
    LogId
);
id128!(
    /// Identifies a consistency group: disks whose recovery points are taken together.
    GroupId
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extent_rejects_empty_and_overflow() {
        assert!(Extent::new(0, 0).is_none());
        assert!(Extent::new(u64::MAX, 1).is_none());
        assert!(Extent::new(u64::MAX - 1, 1).is_some());
        assert!(Extent::from_bounds(5, 5).is_none());
        assert!(Extent::from_bounds(6, 5).is_none());
        assert!(Extent::from_sectors(u64::MAX / 256, 1).is_none());
    }

    #[test]
    fn extent_geometry() {
        let e = Extent::from_sectors(8, 8).unwrap();
        assert_eq!((e.offset(), e.len(), e.end()), (4096, 4096, 8192));
        assert!(e.is_aligned_to(4096));
        assert!(!e.is_aligned_to(8192));
        assert!(e.fits_in(8192) && !e.fits_in(8191));
        let o = Extent::new(6000, 10_000).unwrap();
        assert_eq!(e.intersect(&o), Extent::from_bounds(6000, 8192));
        assert_eq!(e.intersect(&Extent::new(8192, 1).unwrap()), None);
    }

    #[test]
    fn ids_round_trip_hex() {
        let id = LogId::random().unwrap();
        assert!(!id.is_nil());
        assert_eq!(LogId::parse_hex(&id.to_string()), Some(id));
        assert_eq!(LogId::parse_hex("zz"), None);
        assert_eq!(DiskId::NIL.to_string(), "0".repeat(32));
    }
}
