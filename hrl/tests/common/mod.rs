//! Helpers shared by the hrl integration tests.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::path::Path;

use hrl::{
    ChainSpec, DiskId, DiskIdentity, Extent, Generation, LogWriter, RecordBody, RecordFlags,
    Resume, SyncPolicy, WriterConfig,
};

pub const DISK_SIZE: u64 = 64 << 20;

pub fn spec() -> ChainSpec {
    ChainSpec {
        disk: DiskIdentity {
            id: DiskId([7; 16]),
            size: DISK_SIZE,
            logical_block_size: 512,
        },
        journal: true,
        generation: Generation(1),
    }
}

pub fn cfg() -> WriterConfig {
    WriterConfig {
        sync: SyncPolicy::Never,
        ..WriterConfig::default()
    }
}

pub fn open(dir: &Path) -> (LogWriter, Resume) {
    LogWriter::open(dir, spec(), cfg()).unwrap()
}

pub fn ext(offset: u64, len: u64) -> Extent {
    Extent::new(offset, len).unwrap()
}

pub fn write(w: &mut LogWriter, offset: u64, len: u64) -> hrl::SeqNo {
    w.append(
        RecordFlags::empty(),
        &RecordBody::Write(vec![ext(offset, len)]),
    )
    .unwrap()
}
