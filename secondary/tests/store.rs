//! The secondary's store without a network: staging, crash-safe apply, chain order, refusals.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::cast_possible_truncation
)]

use std::path::Path;

use proto::{Frame, Msg};
use secondary::store::{Admit, AttachRequest, Disk, STAGE_MAGIC, StoreError};

const SIZE: u64 = 1 << 20;

fn req<'a>(client: &'a str) -> AttachRequest<'a> {
    AttachRequest {
        name: "d",
        disk_id: "00112233445566778899aabbccddeeff".into(),
        size: SIZE,
        block_size: 512,
        client,
    }
}

fn begin(seq: u64) -> Msg {
    Msg::CycleBegin {
        seq,
        log_id: [7; 16],
        cut_time_ns: 1000 + seq,
        extents: 1,
        data_bytes: 4096,
    }
}

fn end(seq: u64, frames: u64, data_bytes: u64) -> Msg {
    Msg::CycleEnd {
        seq,
        frames,
        data_bytes,
    }
}

/// Stages cycle `seq` writing `byte` at `offset` (4 KiB) and zeroing 4 KiB after it.
fn stage(d: &mut Disk, seq: u64, offset: u64, byte: u8) -> std::path::PathBuf {
    assert_eq!(d.cycle_admit(seq).unwrap(), Admit::Stage);
    let mut s = d.stage_begin(seq, 1, &begin(seq)).unwrap();
    s.push(
        "d",
        SIZE,
        &Frame::Data {
            offset,
            data: vec![byte; 4096],
        },
    )
    .unwrap();
    s.push(
        "d",
        SIZE,
        &Frame::Zero {
            offset: offset + 4096,
            len: 4096,
        },
    )
    .unwrap();
    d.stage_commit(s, &end(seq, 2, 4096)).unwrap()
}

fn copied(store: &Path) -> Disk {
    let mut d = Disk::attach(store, &req("sitea")).unwrap();
    d.copy_begin(10, false).unwrap();
    d.write_data(0, &vec![0xAA; 1 << 20]).unwrap();
    d.copy_checkpoint(SIZE / 2).unwrap();
    d.copy_done(10).unwrap();
    d
}

#[test]
fn staged_cycles_apply_in_order_and_survive_a_crash_before_apply() {
    let dir = tempfile::tempdir().unwrap();
    let mut d = copied(dir.path());
    assert_eq!(d.expected_seq().unwrap(), Some(10));
    let p10 = stage(&mut d, 10, 0, 1);
    let a = d.apply_staged(10, &p10).unwrap();
    assert_eq!(a.seq, 10);
    assert!(!p10.exists(), "applied staging file removed");
    // Cycle 11 staged, then "crash" before apply: reopening applies it.
    let p11 = stage(&mut d, 11, 8192, 2);
    assert!(p11.exists());
    drop(d);
    let d = Disk::open(dir.path(), "d").unwrap();
    assert_eq!(d.state().applied.unwrap().seq, 11);
    assert_eq!(d.state().applied.unwrap().cut_time_ns, 1011);
    let img = std::fs::read(d.replica_path()).unwrap();
    assert_eq!(&img[0..4096], &[1; 4096][..]);
    assert_eq!(&img[4096..8192], &[0; 4096][..]);
    assert_eq!(&img[8192..12288], &[2; 4096][..]);
    assert_eq!(&img[12288..16384], &[0; 4096][..]);
    assert_eq!(&img[16384..20480], &[0xAA; 4096][..]);
    assert_eq!(d.expected_seq().unwrap(), Some(12));
}

#[test]
fn applying_a_cycle_twice_or_after_a_partial_apply_gives_the_same_replica() {
    let dir = tempfile::tempdir().unwrap();
    let mut d = copied(dir.path());
    let p = stage(&mut d, 10, 4096, 9);
    let keep = std::fs::read(&p).unwrap();
    d.apply_staged(10, &p).unwrap();
    let once = std::fs::read(d.replica_path()).unwrap();
    // A crash after the replica was written but before state.json recorded it: the staged
    // file is still there and `applied` is behind. Simulate by restoring the file and
    // rolling the state back, then reopen.
    std::fs::write(&p, &keep).unwrap();
    let state_path = dir.path().join("disks/d/state.json");
    let mut st: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&state_path).unwrap()).unwrap();
    st["applied"] = serde_json::Value::Null;
    std::fs::write(&state_path, serde_json::to_vec(&st).unwrap()).unwrap();
    drop(d);
    let d = Disk::open(dir.path(), "d").unwrap();
    assert_eq!(d.state().applied.unwrap().seq, 10);
    assert_eq!(std::fs::read(d.replica_path()).unwrap(), once);
}

#[test]
fn duplicates_are_acknowledged_and_gaps_break_the_chain() {
    let dir = tempfile::tempdir().unwrap();
    let mut d = copied(dir.path());
    let p = stage(&mut d, 10, 0, 1);
    d.apply_staged(10, &p).unwrap();
    assert_eq!(d.cycle_admit(10).unwrap(), Admit::Duplicate);
    assert_eq!(d.cycle_admit(3).unwrap(), Admit::Duplicate);
    let e = d.cycle_admit(12).unwrap_err();
    assert!(matches!(e, StoreError::BrokenChain { .. }), "{e}");
    assert!(e.to_string().contains("expected cycle 11"), "{e}");
    // Broken stays broken (persisted) until a new copy starts.
    drop(d);
    let mut d = Disk::open(dir.path(), "d").unwrap();
    assert!(d.cycle_admit(11).is_err());
    d.copy_begin(20, true).unwrap();
    assert!(d.state().broken.is_none());
    assert_eq!(
        d.expected_seq().unwrap(),
        None,
        "no cycle before the new copy completes"
    );
}

#[test]
fn refuses_other_clients_other_disks_and_bad_ranges() {
    let dir = tempfile::tempdir().unwrap();
    let mut d = copied(dir.path());
    drop(d);
    let e = Disk::attach(dir.path(), &req("rogue")).unwrap_err();
    assert!(matches!(e, StoreError::Unauthorized { .. }), "{e}");
    assert!(e.to_string().contains("may not write"), "{e}");
    let mut other = req("sitea");
    other.disk_id = "ffffffffffffffffffffffffffffffff".into();
    assert!(matches!(
        Disk::attach(dir.path(), &other).unwrap_err(),
        StoreError::Mismatch { .. }
    ));
    let mut bigger = req("sitea");
    bigger.size = SIZE * 2;
    assert!(matches!(
        Disk::attach(dir.path(), &bigger).unwrap_err(),
        StoreError::Mismatch { .. }
    ));
    d = Disk::attach(dir.path(), &req("sitea")).unwrap();
    assert!(d.write_data(SIZE - 10, &[0; 20]).is_err());
    assert!(d.write_zero(u64::MAX - 1, 4).is_err());
    let mut s = d.stage_begin(10, 1, &begin(10)).unwrap();
    assert!(
        s.push(
            "d",
            SIZE,
            &Frame::Data {
                offset: SIZE,
                data: vec![1]
            }
        )
        .is_err()
    );
    // Counts that do not match what was received are refused and nothing is staged.
    assert!(d.stage_commit(s, &end(10, 5, 0)).is_err());
    assert!(d.staged().unwrap().is_empty());
}

#[test]
fn a_corrupt_staged_cycle_is_refused_not_half_applied() {
    let dir = tempfile::tempdir().unwrap();
    let mut d = copied(dir.path());
    let p = stage(&mut d, 10, 0, 5);
    let mut bytes = std::fs::read(&p).unwrap();
    assert_eq!(&bytes[..8], STAGE_MAGIC);
    let last = bytes.len() - 3;
    bytes[last] ^= 0xFF; // inside the CycleEnd frame
    std::fs::write(&p, &bytes).unwrap();
    let before = std::fs::read(d.replica_path()).unwrap();
    let e = d.apply_staged(10, &p).unwrap_err();
    assert!(matches!(e, StoreError::Corrupt { .. }), "{e}");
    assert!(p.exists(), "the evidence stays");
    assert!(d.state().applied.is_none());
    assert_eq!(
        std::fs::read(d.replica_path()).unwrap(),
        before,
        "nothing of a corrupt cycle reaches the replica"
    );
}

/// The history budget (issue 19, item 4): a primary that writes without ever making a new
/// point cannot grow a disk's undo data past its budget — the cycle is refused before it is
/// acknowledged, as `NoSpace` (retried), and no point or undo file is deleted.
#[test]
fn a_disk_at_its_history_budget_refuses_cycles_before_the_ack_and_keeps_its_points() {
    let dir = tempfile::tempdir().unwrap();
    let mut d = copied(dir.path());
    let p = stage(&mut d, 10, 0, 1);
    d.apply_staged(10, &p).unwrap();
    let point = d.verdict(10, true, None, 1).unwrap().expect("a point");
    // Room for a few 4 KiB pre-images (the copy made the first MiB allocated).
    d.set_history_budget(secondary::store::HistoryBudget::Bytes(20 << 10));
    let mut seq = 11;
    let refused = loop {
        assert!(seq < 40, "never refused");
        assert_eq!(d.cycle_admit(seq).unwrap(), Admit::Stage);
        let mut s = d.stage_begin(seq, 1, &begin(seq)).unwrap();
        s.push(
            "d",
            SIZE,
            &Frame::Data {
                offset: 4096 * seq,
                data: vec![seq as u8; 4096],
            },
        )
        .unwrap();
        match d.stage_commit(s, &end(seq, 1, 4096)) {
            Ok(p) => {
                d.apply_staged(seq, &p).unwrap();
                seq += 1;
            }
            Err(e) => break e,
        }
    };
    assert!(
        matches!(refused, StoreError::HistoryFull { .. }),
        "{refused}"
    );
    assert!(
        refused.to_string().contains("--history-budget"),
        "{refused}"
    );
    assert!(d.points_bytes() <= 20 << 10, "{}", d.points_bytes());
    assert_eq!(d.points().len(), 1);
    assert_eq!(d.points()[0].id, point.id);
    assert_eq!(
        d.state().applied.unwrap().seq,
        seq - 1,
        "nothing after the refusal"
    );
    assert!(
        d.staged().unwrap().is_empty(),
        "nothing of the refused cycle is staged"
    );
    // The point is still whole: its bytes are the replica after cycle 10.
    let mut buf = vec![0u8; 4096];
    d.export_chunk(point.id, 4096 * 11, &mut buf).unwrap();
    assert_eq!(buf, vec![0xAA; 4096]);
    // A larger budget lets the same cycle through.
    d.set_history_budget(secondary::store::HistoryBudget::default());
    let p = stage(&mut d, seq, 4096 * seq, 7);
    d.apply_staged(seq, &p).unwrap();
}
