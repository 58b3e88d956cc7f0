//! Each kind of damage produces its documented error (docs/hrl-format.md, "Errors").
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failures should panic

mod common;

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use common::{open, write};
use hrl::chain::check_link;
use hrl::{ChainBreak, Corrupt, Error, LogReader, RecoveryMode, Tail};

/// A sealed log with three write records, and an unsealed copy of it.
fn logs(dir: &Path) -> (PathBuf, PathBuf) {
    let (mut w, _) = open(dir);
    for i in 0..3 {
        write(&mut w, i * 4096, 4096);
    }
    let sealed = w.close().unwrap().path;
    let unsealed = dir.join("unsealed.bin");
    std::fs::copy(&sealed, &unsealed).unwrap();
    zero(&unsealed, 512, 48); // remove the seal
    (sealed, unsealed)
}

fn zero(path: &Path, at: u64, n: usize) {
    let f = OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(&vec![0; n], at).unwrap();
}

fn flip(path: &Path, at: u64) {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut b = [0u8];
    f.read_exact_at(&mut b, at).unwrap();
    f.write_all_at(&[b[0] ^ 0x40], at).unwrap();
}

fn truncate(path: &Path, len: u64) {
    OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap()
        .set_len(len)
        .unwrap();
}

fn read(path: &Path, mode: RecoveryMode) -> Result<(usize, Option<Tail>), Error> {
    let mut r = LogReader::open(path, mode)?;
    let n = r.read_all()?.len();
    Ok((n, r.tail().cloned()))
}

const REC: u64 = 4096 + 56; // second record starts here (32 + 24 payload)

#[test]
fn intact_logs_read_fully() {
    let d = tempfile::tempdir().unwrap();
    let (sealed, unsealed) = logs(d.path());
    assert_eq!(
        read(&sealed, RecoveryMode::Strict).unwrap(),
        (3, Some(Tail::Sealed))
    );
    assert_eq!(
        read(&unsealed, RecoveryMode::Strict).unwrap(),
        (3, Some(Tail::UnsealedClean))
    );
}

#[test]
fn wrong_magic_is_not_a_log() {
    let d = tempfile::tempdir().unwrap();
    let (sealed, _) = logs(d.path());
    flip(&sealed, 0);
    let e = read(&sealed, RecoveryMode::TruncateTail).unwrap_err();
    assert!(matches!(e, Error::NotALog { .. }), "{e}");
    assert!(e.to_string().contains("not an HRL log"), "{e}");
}

#[test]
fn truncated_header_is_corruption_at_zero() {
    let d = tempfile::tempdir().unwrap();
    let (sealed, _) = logs(d.path());
    truncate(&sealed, 1000);
    let e = read(&sealed, RecoveryMode::TruncateTail).unwrap_err();
    assert!(
        matches!(
            e,
            Error::Corruption {
                offset: 0,
                cause: Corrupt::TruncatedHeader { len: 1000 },
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn header_bit_flip_fails_the_header_crc() {
    let d = tempfile::tempdir().unwrap();
    let (sealed, _) = logs(d.path());
    flip(&sealed, 40);
    let e = read(&sealed, RecoveryMode::TruncateTail).unwrap_err();
    assert!(
        matches!(
            e,
            Error::Corruption {
                cause: Corrupt::HeaderCrc { .. },
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn unknown_version_is_a_version_mismatch() {
    let d = tempfile::tempdir().unwrap();
    let (sealed, _) = logs(d.path());
    let f = OpenOptions::new().write(true).open(&sealed).unwrap();
    f.write_all_at(&2u16.to_le_bytes(), 8).unwrap();
    let e = read(&sealed, RecoveryMode::TruncateTail).unwrap_err();
    assert!(
        matches!(
            e,
            Error::VersionMismatch {
                found: 2,
                supported: 1,
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn bad_record_crc_in_a_sealed_log_is_corruption_in_any_mode() {
    let d = tempfile::tempdir().unwrap();
    let (sealed, _) = logs(d.path());
    flip(&sealed, REC + 40); // inside the second record's payload
    for mode in [RecoveryMode::Strict, RecoveryMode::TruncateTail] {
        let e = read(&sealed, mode).unwrap_err();
        assert!(
            matches!(
                e,
                Error::Corruption {
                    offset: REC,
                    cause: Corrupt::RecordCrc { .. },
                    ..
                }
            ),
            "{mode:?}: {e}"
        );
        assert!(e.to_string().contains(&format!("byte {REC}")), "{e}");
    }
}

#[test]
fn torn_tail_strict_errors_and_truncate_keeps_valid_records() {
    let d = tempfile::tempdir().unwrap();
    let (_, unsealed) = logs(d.path());
    let len = std::fs::metadata(&unsealed).unwrap().len();
    truncate(&unsealed, len - 10); // the third record is cut short
    let e = read(&unsealed, RecoveryMode::Strict).unwrap_err();
    let third = REC + 56;
    assert!(
        matches!(
            e,
            Error::TornTail {
                offset,
                cause: Corrupt::RecordTruncated { .. },
                ..
            } if offset == third
        ),
        "{e}"
    );
    let (n, tail) = read(&unsealed, RecoveryMode::TruncateTail).unwrap();
    assert_eq!(n, 2);
    assert!(
        matches!(tail, Some(Tail::Truncated { offset, .. }) if offset == third),
        "{tail:?}"
    );
}

#[test]
fn crc_failure_at_the_end_of_an_unsealed_log_is_a_torn_tail() {
    let d = tempfile::tempdir().unwrap();
    let (_, unsealed) = logs(d.path());
    flip(&unsealed, REC + 56 + 40);
    let e = read(&unsealed, RecoveryMode::Strict).unwrap_err();
    assert!(
        matches!(
            e,
            Error::TornTail {
                cause: Corrupt::RecordCrc { .. },
                ..
            }
        ),
        "{e}"
    );
    assert_eq!(read(&unsealed, RecoveryMode::TruncateTail).unwrap().0, 2);
}

#[test]
fn seal_past_end_of_file_is_corruption() {
    let d = tempfile::tempdir().unwrap();
    let (sealed, _) = logs(d.path());
    let len = std::fs::metadata(&sealed).unwrap().len();
    truncate(&sealed, len - 56); // the seal still claims the last record
    let e = read(&sealed, RecoveryMode::TruncateTail).unwrap_err();
    assert!(
        matches!(
            e,
            Error::Corruption {
                cause: Corrupt::SealPastEnd { .. },
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn torn_seal_is_corruption() {
    let d = tempfile::tempdir().unwrap();
    let (sealed, _) = logs(d.path());
    flip(&sealed, 530);
    let e = read(&sealed, RecoveryMode::TruncateTail).unwrap_err();
    assert!(
        matches!(
            e,
            Error::Corruption {
                cause: Corrupt::BadSeal,
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn broken_chain_is_detected_from_headers() {
    let d = tempfile::tempdir().unwrap();
    let (mut w, _) = open(d.path());
    write(&mut w, 0, 512);
    let first = w.rotate().unwrap();
    write(&mut w, 512, 512);
    let second = w.rotate().unwrap();
    let third = w.close().unwrap();
    assert_eq!(
        check_link(&first.header, Some(&first.seal), &second.header),
        Ok(())
    );
    assert_eq!(
        check_link(&second.header, Some(&second.seal), &third.header),
        Ok(())
    );
    // Skipping a log breaks the chain.
    let e = check_link(&first.header, Some(&first.seal), &third.header).unwrap_err();
    assert!(matches!(e, ChainBreak::LogSeq { .. }), "{e}");
    // An unsealed predecessor breaks it too.
    let e = check_link(&first.header, None, &second.header).unwrap_err();
    assert_eq!(e, ChainBreak::UnsealedPredecessor);
    // A log of another chain (different predecessor id).
    let mut foreign = second.header;
    foreign.prev_log_id = hrl::LogId([9; 16]);
    let e = check_link(&first.header, Some(&first.seal), &foreign).unwrap_err();
    assert!(matches!(e, ChainBreak::PrevId { .. }), "{e}");
    let msg = hrl::chain::broken(&second.path, e).to_string();
    assert!(
        msg.contains("broken log chain") && msg.contains("00000000000000000001.hrl"),
        "{msg}"
    );
}

#[test]
fn sequence_gap_with_valid_crc_is_corruption_even_unsealed() {
    // Build a log whose second record has the wrong seq but a valid crc.
    let d = tempfile::tempdir().unwrap();
    let (w, _) = open(d.path());
    let path = w.current_path().unwrap().to_owned();
    let log_id = LogReader::open(&path, RecoveryMode::Strict)
        .unwrap()
        .header()
        .log_id;
    drop(w);
    let mut buf = Vec::new();
    let body = hrl::RecordBody::Flush;
    hrl::format::record::encode_record(
        &log_id,
        hrl::SeqNo(1),
        0,
        Default::default(),
        &body,
        &mut buf,
    );
    hrl::format::record::encode_record(
        &log_id,
        hrl::SeqNo(5),
        0,
        Default::default(),
        &body,
        &mut buf,
    );
    let f = OpenOptions::new().write(true).open(&path).unwrap();
    f.write_all_at(&buf, 4096).unwrap();
    let e = read(&path, RecoveryMode::TruncateTail).unwrap_err();
    assert!(
        matches!(
            e,
            Error::Corruption {
                cause: Corrupt::SeqGap { .. },
                ..
            }
        ),
        "{e}"
    );
}
