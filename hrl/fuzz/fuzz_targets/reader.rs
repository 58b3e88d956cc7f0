//! Fuzzes the log reader: whatever the bytes, it must return records or a typed error,
//! never panic, hang, or allocate past its caps.
//!
//! Input byte 0 picks the shape: even → the rest is a whole log file; odd → a valid
//! header (sealed or not, per bit 1) followed by a record area. With bit 2 clear the rest
//! is the record area as is; with bit 2 set it is re-framed into records with correct
//! sequence numbers and crcs (`len u16, kind u16, flags u16, payload`), so the payload
//! decoders are reached on almost every run instead of stopping at the crc.
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
        if shape & 4 == 0 {
            file.write_all(rest).unwrap();
        } else {
            file.write_all(&reframe(rest)).unwrap();
        }
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

/// Frames arbitrary chunks as records with valid headers and crcs.
fn reframe(mut rest: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut seq = 1u64;
    while rest.len() >= 6 {
        let len = usize::from(u16::from_le_bytes([rest[0], rest[1]])) % 600;
        let kind = u16::from_le_bytes([rest[2], rest[3]]) % 11;
        let flags = u16::from_le_bytes([rest[4], rest[5]]) % 5;
        rest = &rest[6..];
        let payload = &rest[..len.min(rest.len())];
        rest = &rest[payload.len()..];
        let start = out.len();
        out.extend_from_slice(&((32 + payload.len()) as u32).to_le_bytes());
        out.extend_from_slice(&kind.to_le_bytes());
        out.extend_from_slice(&flags.to_le_bytes());
        out.extend_from_slice(&seq.to_le_bytes());
        out.extend_from_slice(&0u64.to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        let mut h = crc32fast::Hasher::new();
        h.update(&[2; 16]);
        h.update(&out[start..start + 28]);
        h.update(payload);
        out.extend_from_slice(&h.finalize().to_le_bytes());
        out.extend_from_slice(payload);
        out.resize(out.len().next_multiple_of(8), 0);
        seq += 1;
    }
    out
}

fn file_path() -> std::path::PathBuf {
    std::env::temp_dir().join(format!("hrl-fuzz-{}.hrl", std::process::id()))
}

fn tempfile() -> std::fs::File {
    std::fs::File::create(file_path()).unwrap()
}
