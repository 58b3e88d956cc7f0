//! The HRL change-log format.

pub mod units;

pub use units::{DiskId, Extent, Generation, GroupId, LogId, LogSeq, SECTOR_SIZE, SeqNo};
