//! Fuzzes the log reader: whatever the bytes, it must return records or a typed error,
//! never panic, hang, or allocate past its caps.
//!
//! Input byte 0 picks the shape: even → the rest is a whole log file; odd → a valid
//! header (sealed or not, per bit 1) followed by the rest as the record area, which
//! reaches the record decoder on almost every run.
#![no_main]

use std::io::Write;

use hrl::format::header::encode_header;
use hrl::{DiskId, DiskIdentity, Generation, LogHeader, LogId, LogReader, LogSeq, RecoveryMode, SeqNo};
use libfuzzer_sys::fuzz_target;

fn header() -> [u8; 4096] {
    encode_header(&LogHeader {
        disk: DiskIdentity { id: DiskId([1; 16]), size: 1 << 30, logical_block_size: 512 },
        journal: true,
        generation: Generation(1),
        log_seq: LogSeq(0),
        log_id: LogId([2; 16]),
        prev_log_id: LogId::NIL,
        created_unix_ns: 0,
        first_seq: SeqNo(1),
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&shape, rest)) = data.split_first() else { return };
    let mut file = tempfile();
    if shape & 1 == 0 {
        file.write_all(rest).unwrap();
    } else {
        let mut h = header();
        if shape & 2 != 0 {
            // A seal claiming the rest is all records.
            let seal = hrl::format::header::encode_seal(&hrl::Seal {
                end_offset: (4096 + rest.len() as u64) & !7,
                record_count: u64::from(shape >> 2),
                next_seq: SeqNo(1 + u64::from(shape >> 2)),
                sealed_unix_ns: 0,
                recovered: false,
            });
            h[512..512 + seal.len()].copy_from_slice(&seal);
        }
        file.write_all(&h).unwrap();
        file.write_all(rest).unwrap();
    }
    let path = file_path();
    for mode in [RecoveryMode::Strict, RecoveryMode::TruncateTail] {
        if let Ok(mut r) = LogReader::open(&path, mode) {
            while let Ok(Some(rec)) = r.next_record() {
                let _ = rec.body.extents();
            }
        }
    }
});

fn file_path() -> std::path::PathBuf {
    std::env::temp_dir().join(format!("hrl-fuzz-{}.hrl", std::process::id()))
}

fn tempfile() -> std::fs::File {
    std::fs::File::create(file_path()).unwrap()
}
