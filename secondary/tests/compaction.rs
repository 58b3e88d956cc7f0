//! Undo compaction against a model: random cycles over a small hot disk, random verdicts,
//! random retirements and reopenings; after every step every retained point exports exactly
//! the image the model kept for it, the files of one retained interval never overlap, and
//! the undo data stays within Σ over retained intervals of min(bytes changed, disk size).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::cast_possible_truncation
)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use proto::{Frame, Msg};
use secondary::store::{Admit, AttachRequest, Disk};
use secondary::undo;

const SIZE: u64 = 256 << 10;
const BLOCK: u64 = 4096;

/// xorshift64*: deterministic, seeded per case.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn copied(store: &Path) -> Disk {
    let req = AttachRequest {
        name: "d",
        disk_id: "00112233445566778899aabbccddeeff".into(),
        size: SIZE,
        block_size: 512,
        client: "sitea",
    };
    let mut d = Disk::attach(store, &req).unwrap();
    d.copy_begin(10, false).unwrap();
    d.write_data(0, &vec![0x11; SIZE as usize]).unwrap();
    d.copy_done(10).unwrap();
    d
}

/// One cycle: a few writes (data or zero) in a hot set of the disk's first `hot` blocks;
/// some rewrite what the disk holds (`img`), as a re-shipped range does.
fn cycle(rng: &mut Rng, hot: u64, img: &[u8]) -> Vec<Frame> {
    let n = 1 + rng.below(6);
    (0..n)
        .map(|_| {
            let blocks = 1 + rng.below(3);
            let offset = rng.below(hot.saturating_sub(blocks) + 1) * BLOCK;
            let len = blocks * BLOCK;
            if rng.below(5) == 0 {
                Frame::Zero { offset, len }
            } else if rng.below(4) == 0 {
                Frame::Data {
                    offset,
                    data: img[offset as usize..(offset + len) as usize].to_vec(),
                }
            } else {
                let b = (rng.next() & 0xff) as u8;
                Frame::Data {
                    offset,
                    data: vec![b; len as usize],
                }
            }
        })
        .collect()
}

fn apply(d: &mut Disk, seq: u64, frames: &[Frame]) {
    assert_eq!(d.cycle_admit(seq).unwrap(), Admit::Stage);
    let data: u64 = frames
        .iter()
        .map(|f| match f {
            Frame::Data { data, .. } => data.len() as u64,
            _ => 0,
        })
        .sum();
    let begin = Msg::CycleBegin {
        seq,
        log_id: [7; 16],
        cut_time_ns: 1_000_000 + seq,
        extents: frames.len() as u64,
        data_bytes: data,
    };
    let mut s = d.stage_begin(seq, 1, &begin).unwrap();
    for f in frames {
        s.push("d", SIZE, f).unwrap();
    }
    let end = Msg::CycleEnd {
        seq,
        frames: frames.len() as u64,
        data_bytes: data,
    };
    let p = d.stage_commit(s, &end).unwrap();
    d.apply_staged(seq, &p).unwrap();
}

fn write_model(img: &mut [u8], frames: &[Frame]) -> Vec<(u64, u64)> {
    let mut touched = Vec::new();
    for f in frames {
        match f {
            Frame::Data { offset, data } => {
                img[*offset as usize..*offset as usize + data.len()].copy_from_slice(data);
                touched.push((*offset, data.len() as u64));
            }
            Frame::Zero { offset, len } => {
                img[*offset as usize..(*offset + *len) as usize].fill(0);
                touched.push((*offset, *len));
            }
            _ => unreachable!(),
        }
    }
    touched
}

fn undo_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir.join("undo"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "undo"))
        .collect();
    v.sort();
    v
}

/// Every retained point exports its model image; files of one interval are disjoint; data
/// kept ≤ Σ per interval of the bytes changed in it.
fn check(d: &Disk, images: &BTreeMap<u64, Vec<u8>>, touched: &BTreeMap<u64, Vec<(u64, u64)>>) {
    let ids: Vec<u64> = d.points().iter().map(|p| p.id).collect();
    for &id in &ids {
        let mut buf = vec![0u8; SIZE as usize];
        d.export_chunk(id, 0, &mut buf).unwrap();
        assert!(
            buf == images[&id],
            "point {id} exports other bytes than it had"
        );
    }
    let mut per: BTreeMap<u64, Vec<(u64, u64)>> = BTreeMap::new();
    let mut data_bytes: BTreeMap<u64, u64> = BTreeMap::new();
    for f in undo_files(d.dir()) {
        let u = undo::read_index(&f).unwrap();
        let key = ids.iter().rev().find(|&&p| p < u.seq).copied();
        let key = key.unwrap_or_else(|| panic!("{} serves no retained point", f.display()));
        let mine = undo::covered(&u);
        let seen = per.entry(key).or_default();
        assert!(
            base::ranges::intersect(seen, &mine).is_empty(),
            "{} overlaps an earlier file of the interval after point {key}",
            f.display()
        );
        *seen = base::ranges::union(seen, &mine);
        *data_bytes.entry(key).or_default() += u
            .entries
            .iter()
            .filter(|e| e.data_pos.is_some())
            .map(|e| e.len)
            .sum::<u64>();
    }
    for (i, &p) in ids.iter().enumerate() {
        let hi = ids.get(i + 1).copied().unwrap_or(u64::MAX);
        let changed: Vec<(u64, u64)> = touched
            .range(p + 1..=hi)
            .flat_map(|(_, r)| r.iter().copied())
            .collect();
        let bound = base::ranges::total(&base::ranges::normalize(changed)).min(SIZE);
        let kept = data_bytes.get(&p).copied().unwrap_or(0);
        assert!(
            kept <= bound,
            "interval after {p}: {kept} bytes kept, {bound} changed"
        );
    }
}

fn run_case(seed: u64) {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let mut d = copied(dir.path());
    let hot = 8 + rng.below(48);
    let mut img = vec![0x11u8; SIZE as usize];
    let mut images: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
    let mut touched: BTreeMap<u64, Vec<(u64, u64)>> = BTreeMap::new();
    for seq in 10..90u64 {
        let frames = cycle(&mut rng, hot, &img);
        apply(&mut d, seq, &frames);
        touched.insert(seq, write_model(&mut img, &frames));
        match rng.below(10) {
            0 => {} // the verdict was lost
            1..=3 => {
                assert!(d.verdict(seq, false, None, seq).unwrap().is_none());
            }
            _ => {
                if d.verdict(seq, true, None, seq).unwrap().is_some() {
                    images.insert(seq, img.clone());
                }
            }
        }
        if rng.below(4) == 0 && !d.points().is_empty() {
            // Retire a random subset (sometimes the newest, sometimes all).
            let all: Vec<u64> = d.points().iter().map(|p| p.id).collect();
            let ids: BTreeSet<u64> = all.iter().copied().filter(|_| rng.below(3) == 0).collect();
            d.retire_points(&ids).unwrap();
        }
        if rng.below(15) == 0 {
            drop(d);
            d = Disk::open(dir.path(), "d").unwrap();
        }
        images.retain(|id, _| d.points().iter().any(|p| p.id == *id));
        check(&d, &images, &touched);
    }
    // A late verdict on an older cycle never makes a point (its interval was merged).
    let n = d.points().len();
    assert!(d.verdict(100, true, None, 0).unwrap().is_none());
    assert!(d.points().len() <= n);
}

#[test]
fn compacted_undo_rebuilds_every_retained_point_within_the_bound() {
    for seed in 1..=8 {
        run_case(seed);
    }
}

#[test]
fn no_undo_is_written_while_no_point_exists() {
    let dir = tempfile::tempdir().unwrap();
    let mut d = copied(dir.path());
    let mut rng = Rng(7);
    for seq in 10..20 {
        apply(&mut d, seq, &cycle(&mut rng, 16, &[0x11; SIZE as usize]));
        d.verdict(seq, false, None, seq).unwrap();
    }
    assert!(undo_files(d.dir()).is_empty());
    assert_eq!(d.points_bytes(), 0);
}

#[test]
fn a_hot_block_is_saved_once_per_interval() {
    let dir = tempfile::tempdir().unwrap();
    let mut d = copied(dir.path());
    apply(
        &mut d,
        10,
        &[Frame::Zero {
            offset: 0,
            len: BLOCK,
        }],
    );
    assert!(d.verdict(10, true, None, 10).unwrap().is_some());
    // 50 cycles rewrite the same block, none a point: one pre-image kept.
    for seq in 11..61u64 {
        let f = Frame::Data {
            offset: 0,
            data: vec![seq as u8; BLOCK as usize],
        };
        apply(&mut d, seq, &[f]);
        d.verdict(seq, false, None, seq).unwrap();
    }
    let files = undo_files(d.dir());
    assert_eq!(files.len(), 1, "{files:?}");
    let mut buf = vec![0u8; SIZE as usize];
    d.export_chunk(10, 0, &mut buf).unwrap();
    assert!(buf[..BLOCK as usize].iter().all(|&b| b == 0));
    assert!(buf[BLOCK as usize..].iter().all(|&b| b == 0x11));
}

#[test]
fn bytes_rewritten_with_what_they_hold_save_no_undo() {
    let dir = tempfile::tempdir().unwrap();
    let mut d = copied(dir.path());
    apply(
        &mut d,
        10,
        &[Frame::Zero {
            offset: SIZE - BLOCK,
            len: BLOCK,
        }],
    );
    assert!(d.verdict(10, true, None, 10).unwrap().is_some());
    // A re-shipped range: every byte as the replica holds it, and zeros over zeros.
    let same = Frame::Data {
        offset: 0,
        data: vec![0x11; 8 * BLOCK as usize],
    };
    apply(
        &mut d,
        11,
        &[
            same,
            Frame::Zero {
                offset: SIZE - BLOCK,
                len: BLOCK,
            },
        ],
    );
    assert!(undo_files(d.dir()).is_empty(), "{:?}", undo_files(d.dir()));
    // One grain of eight differs: only it is saved.
    let mut data = vec![0x11; 8 * BLOCK as usize];
    data[3 * BLOCK as usize + 7] = 0x22;
    apply(&mut d, 12, &[Frame::Data { offset: 0, data }]);
    let files = undo_files(d.dir());
    assert_eq!(files.len(), 1);
    let u = undo::read_index(&files[0]).unwrap();
    assert_eq!(undo::covered(&u), vec![(3 * BLOCK, BLOCK)]);
    let mut buf = vec![0u8; SIZE as usize];
    d.export_chunk(10, 0, &mut buf).unwrap();
    assert!(buf[..(SIZE - BLOCK) as usize].iter().all(|&b| b == 0x11));
    assert!(buf[(SIZE - BLOCK) as usize..].iter().all(|&b| b == 0));
}

#[test]
fn a_held_point_outlives_retention_until_released() {
    let dir = tempfile::tempdir().unwrap();
    let mut d = copied(dir.path());
    let block = |seq: u64| Frame::Data {
        offset: 0,
        data: vec![seq as u8; BLOCK as usize],
    };
    let ids = |d: &Disk| d.points().iter().map(|p| p.id).collect::<Vec<_>>();
    for seq in 10..12u64 {
        apply(&mut d, seq, &[block(seq)]);
        assert!(d.verdict(seq, true, None, seq).unwrap().is_some());
    }
    // An export reads point 11 while cycles keep coming: every one a point, all in one slot,
    // so retention would keep only the slot's first point and the newest three.
    assert!(d.hold(11));
    assert!(!d.hold(99), "no such point to hold");
    for seq in 12..20u64 {
        apply(&mut d, seq, &[block(seq)]);
        d.verdict(seq, true, None, seq).unwrap();
    }
    assert_eq!(ids(&d), [10, 11, 17, 18, 19]);
    let mut buf = vec![0u8; SIZE as usize];
    d.export_chunk(11, 0, &mut buf).unwrap();
    assert!(buf[..BLOCK as usize].iter().all(|&b| b == 11));
    assert!(buf[BLOCK as usize..].iter().all(|&b| b == 0x11));
    // Released: the next verdict retires it, and what it kept merged into point 10's interval.
    d.release(11);
    apply(&mut d, 20, &[block(20)]);
    d.verdict(20, true, None, 20).unwrap();
    assert_eq!(ids(&d), [10, 18, 19, 20]);
    d.export_chunk(10, 0, &mut buf).unwrap();
    assert!(buf[..BLOCK as usize].iter().all(|&b| b == 10));
}
