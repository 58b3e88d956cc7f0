//! The undo format's golden bytes, round trips, ordering and refusals.
#![allow(clippy::unwrap_used)]

use std::fs::{self, File};
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::format::le32;
use super::index::parse_name;
use super::writer::write_index;
use super::*;

fn zero_entry() -> Entry {
    Entry {
        offset: 4096,
        len: 512,
        data_pos: None,
        crc: 0,
    }
}

/// A header (seq 7, one entry, cut time 9) and that entry, from the documented offsets;
/// bytes 8..12 and 44..48 are `version` and `part_field`, and the CRC is patched in.
fn documented_bytes(version: u32, part_field: u32) -> Vec<u8> {
    let mut want = Vec::new();
    want.extend_from_slice(b"SRUNDO01"); // 0: magic
    want.extend_from_slice(&version.to_le_bytes()); // 8: version
    want.extend_from_slice(&[0; 4]); // 12: flags
    want.extend_from_slice(&[7, 0, 0, 0, 0, 0, 0, 0]); // 16: sequence
    want.extend_from_slice(&[1, 0, 0, 0, 0, 0, 0, 0]); // 24: entry count
    want.extend_from_slice(&[0; 4]); // 32: CRC, patched below
    want.extend_from_slice(&[9, 0, 0, 0, 0, 0, 0, 0]); // 36: cut time
    want.extend_from_slice(&part_field.to_le_bytes()); // 44: part (v2, v3) / zero (v1)
    want.extend_from_slice(&[0; 16]); // 48: zero
    assert_eq!(want.len(), 64);
    want.extend_from_slice(&[0, 0x10, 0, 0, 0, 0, 0, 0]); // offset 4096
    want.extend_from_slice(&[0, 2, 0, 0, 0, 0, 0, 0]); // len 512
    want.extend_from_slice(&[0xff; 8]); // data_pos: zero range
    want.extend_from_slice(&[0; 8]); // crc, padding
    fix_crc(&mut want);
    want
}

fn fix_crc(b: &mut [u8]) {
    let mut h = crc32fast::Hasher::new();
    h.update(&b[..32]);
    h.update(&b[36..]);
    let crc = h.finalize();
    b[32..36].copy_from_slice(&crc.to_le_bytes());
}

#[test]
fn golden_v1_still_reads() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join(file_name(7, None));
    fs::write(&p, documented_bytes(1, 0)).unwrap();
    let u = read_index(&p).unwrap();
    assert_eq!((u.seq, u.part, u.cut_time_ns), (7, None, 9));
    assert_eq!(u.entries, [zero_entry()]);
    assert_eq!(u.order(), (7, u64::MAX));
    let all = load_all(dir.path()).unwrap();
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].part, None);
}

#[test]
fn golden_v2_still_reads() {
    let dir = tempfile::tempdir().unwrap();
    for (part_field, want) in [(3, Some(3)), (u32::MAX, None)] {
        let p = dir.path().join(file_name(7, want));
        fs::write(&p, documented_bytes(2, part_field)).unwrap();
        let u = read_index(&p).unwrap();
        assert_eq!((u.seq, u.part, u.cut_time_ns), (7, want, 9));
        assert_eq!(u.entries, [zero_entry()]);
    }
    // Version 2 never held an entry longer than MAX_ENTRY_LEN, zero or not.
    let p = dir.path().join(file_name(7, None));
    fs::write(&p, with_long_zero_entry(2)).unwrap();
    let e = read_index(&p).unwrap_err().to_string();
    assert!(e.contains("bad entry"), "{e}");
}

/// `documented_bytes(version, u32::MAX)` whose one zero entry is 64 TiB long.
fn with_long_zero_entry(version: u32) -> Vec<u8> {
    let mut b = documented_bytes(version, u32::MAX);
    b[72..80].copy_from_slice(&(64u64 << 40).to_le_bytes());
    fix_crc(&mut b);
    b
}

#[test]
fn golden_v3() {
    let part = encode_index(7, Some(3), 9, &[zero_entry()]);
    assert_eq!(part, documented_bytes(3, 3));
    assert_eq!(&part[44..48], &[3, 0, 0, 0]);
    let cycle = encode_index(7, None, 9, &[zero_entry()]);
    assert_eq!(cycle, documented_bytes(3, u32::MAX));
    assert_eq!(&cycle[8..12], &[3, 0, 0, 0]);
    assert_eq!(&cycle[44..48], &[0xff; 4]);
    // The CRC covers the part field.
    let (a, b) = (le32(&part, 32), le32(&cycle, 32));
    assert_ne!(a, b);
    let mut h = crc32fast::Hasher::new();
    h.update(&part[..32]);
    h.update(&part[36..]);
    assert_eq!(h.finalize(), a);
    // And the reader agrees.
    let dir = tempfile::tempdir().unwrap();
    for (bytes, want) in [(part, Some(3)), (cycle, None)] {
        let p = dir.path().join(file_name(7, want));
        fs::write(&p, &bytes).unwrap();
        let u = read_index(&p).unwrap();
        assert_eq!((u.seq, u.part, u.cut_time_ns), (7, want, 9));
        assert_eq!(u.entries, [zero_entry()]);
    }
    // A zero entry of any length (a 64 TiB hole: bytes 72..80 are its length).
    let long = with_long_zero_entry(3);
    let mut e = zero_entry();
    e.len = 64 << 40;
    assert_eq!(long, encode_index(7, None, 9, &[e]));
    assert_eq!(&long[72..80], &[0, 0, 0, 0, 0, 0x40, 0, 0]);
    let p = dir.path().join(file_name(7, None));
    fs::write(&p, &long).unwrap();
    assert_eq!(read_index(&p).unwrap().entries, [e]);
    // A data entry stays at most MAX_ENTRY_LEN (its CRC covers it whole).
    let mut b = long.clone();
    b[80..88].copy_from_slice(&64u64.to_le_bytes());
    fix_crc(&mut b);
    b.resize(b.len() + 64, 0);
    fs::write(&p, &b).unwrap();
    let err = read_index(&p).unwrap_err().to_string();
    assert!(err.contains("bad entry"), "{err}");
    // The streaming writer writes exactly what encode_index encodes.
    let f = File::create(&p).unwrap();
    write_index(&f, 7, None, 9, &[e]).unwrap();
    assert_eq!(fs::read(&p).unwrap(), long);
}

#[test]
fn names() {
    assert_eq!(file_name(5, None), "00000000000000000005.undo");
    assert_eq!(
        file_name(5, Some(12)),
        "00000000000000000005.r00000012.undo"
    );
    assert_eq!(
        file_name(5, Some(123_456_789)),
        "00000000000000000005.r123456789.undo"
    );
    for (s, p) in [(5, None), (5, Some(0)), (u64::MAX, Some(u32::MAX - 1))] {
        assert_eq!(parse_name(&file_name(s, p)), Some((s, p)));
    }
    for n in [
        "00000000000000000005.undo.tmp",
        "00000000000000000005.r00000012.undo.tmp",
        "5.undo",
        "00000000000000000005.r0000012.undo",
        "00000000000000000005.r000000012.undo",
        "00000000000000000005.r4294967295.undo",
        "00000000000000000005.r99999999999.undo",
        "00000000000000000005.r+0000012.undo",
        "00000000000000000005.rx.undo",
        "points.json",
    ] {
        assert_eq!(parse_name(n), None, "{n}");
    }
}

#[test]
fn round_trip_and_corruption() {
    let dir = tempfile::tempdir().unwrap();
    let disk: Vec<u8> = (0..(3u32 << 20)).map(|i| (i % 251) as u8).collect();
    let mut zeroed = disk.clone();
    zeroed[(1 << 20)..(2 << 20)].fill(0);
    let idx = write(
        dir.path(),
        3,
        0,
        &[(0, 4096), (1 << 20, (1 << 20) + 4096)],
        from_fn(|o, b| {
            let o = usize::try_from(o).unwrap();
            b.copy_from_slice(&zeroed[o..o + b.len()]);
            Ok(())
        }),
    )
    .unwrap();
    assert_eq!(idx.part, None);
    assert_eq!(idx.entries.len(), 3, "the long range is split at 1 MiB");
    assert_eq!(
        idx.entries[1].data_pos, None,
        "an all-zero range stores no data"
    );
    let back = read_index(&idx.path).unwrap();
    assert_eq!(back.entries, idx.entries);
    assert_eq!(back.part, None);
    assert_eq!(
        le32(&fs::read(&idx.path).unwrap(), 8),
        3,
        "writes version 3"
    );
    let f = File::open(&idx.path).unwrap();
    let mut out = vec![0u8; 4096];
    read_entry(&f, &back.entries[0], 0, &mut out).unwrap();
    assert_eq!(out, disk[..4096]);
    // A flipped index byte is caught; a flipped data byte fails the entry CRC.
    let mut bytes = fs::read(&idx.path).unwrap();
    bytes[70] ^= 1;
    fs::write(&idx.path, &bytes).unwrap();
    assert!(read_index(&idx.path).is_err());
    bytes[70] ^= 1;
    bytes[45] ^= 1; // the part field is covered too
    fs::write(&idx.path, &bytes).unwrap();
    let e = read_index(&idx.path).unwrap_err().to_string();
    assert!(e.contains("CRC"), "{e}");
    bytes[45] ^= 1;
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    fs::write(&idx.path, &bytes).unwrap();
    let back = read_index(&idx.path).unwrap();
    let f = File::open(&idx.path).unwrap();
    let e = back.entries[2];
    let mut out = vec![0u8; usize::try_from(e.len).unwrap()];
    assert!(read_entry(&f, &e, e.offset, &mut out).is_err());
}

#[test]
fn holes_cost_one_entry_whatever_their_length() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("replica");
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&img)
        .unwrap();
    let size = 64u64 << 30;
    f.set_len(size).unwrap();
    f.write_all_at(&[7u8; 8192], 1 << 30).unwrap();
    // Allocated but all zero: merges with the holes around it.
    f.write_all_at(&[0u8; 8192], 2 << 30).unwrap();
    f.write_all_at(&vec![9u8; 3 << 20], 3 << 30).unwrap();
    let ranges = [(0, size)];
    let bound = estimate_entries(&mut &f, &ranges, MAX_ENTRIES).unwrap();
    assert!(bound <= 12, "{bound}");
    let d = dir.path().join("undo");
    fs::create_dir(&d).unwrap();
    let idx = write(&d, 5, 0, &ranges, &f).unwrap();
    let kinds: Vec<(u64, u64, bool)> = idx
        .entries
        .iter()
        .map(|e| (e.offset, e.len, e.data_pos.is_some()))
        .collect();
    // A file system may allocate around a write (ext4 and tmpfs do not); what the
    // entries say must hold whatever it did.
    assert!(kinds.len() as u64 <= bound, "{kinds:?}");
    assert_eq!(kinds.iter().map(|k| k.1).sum::<u64>(), size);
    let data: u64 = kinds.iter().filter(|k| k.2).map(|k| k.1).sum();
    assert!(data >= 8192 + (3 << 20), "{kinds:?}");
    assert!(data < 16 << 20, "holes are not saved as data: {kinds:?}");
    assert!(fs::metadata(&idx.path).unwrap().len() < 64 << 20);
    for w in kinds.windows(2) {
        assert!(w[0].2 || w[1].2, "adjacent zero entries merge: {kinds:?}");
    }
    // Read back through the index: the bytes and the zeros.
    let back = read_index(&idx.path).unwrap();
    assert_eq!(back.entries, idx.entries);
    let u = File::open(&idx.path).unwrap();
    let at = |o: u64| {
        back.entries
            .iter()
            .find(|e| e.offset <= o && o < e.end())
            .unwrap()
    };
    for (o, want) in [(1u64 << 30, 7u8), (3 << 30, 9), (2 << 30, 0), (5 << 30, 0)] {
        let mut b = [1u8; 4096];
        read_entry(&u, at(o), o, &mut b).unwrap();
        assert!(b.iter().all(|&x| x == want), "{o}");
    }
}

#[test]
fn an_undo_past_the_entry_cap_is_refused_before_reading() {
    let dir = tempfile::tempdir().unwrap();
    let mut reads = 0;
    // A source that cannot tell holes: 4 TiB + 1 MiB of data needs one entry too many.
    let e = write(
        dir.path(),
        1,
        0,
        &[(0, MAX_ENTRIES * MAX_ENTRY_LEN + 1)],
        from_fn(|_, _| {
            reads += 1;
            Ok(())
        }),
    )
    .unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::FileTooLarge, "{e}");
    assert_eq!(reads, 0);
    let mut all_data = from_fn(|_, _| Ok(()));
    let n = estimate_entries(
        &mut all_data,
        &[(0, MAX_ENTRIES * MAX_ENTRY_LEN)],
        MAX_ENTRIES,
    )
    .unwrap();
    assert_eq!(n, MAX_ENTRIES);
    assert!(
        !dir.path()
            .join(format!("{}.tmp", file_name(1, None)))
            .exists()
    );
}

#[test]
fn part_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let disk: Vec<u8> = (0..(64u32 << 10)).map(|i| (i % 13) as u8 + 1).collect();
    let idx = write_part(
        dir.path(),
        4,
        2,
        11,
        &[(4096, 8192)],
        from_fn(|o, b| {
            let o = usize::try_from(o).unwrap();
            b.copy_from_slice(&disk[o..o + b.len()]);
            Ok(())
        }),
    )
    .unwrap();
    assert_eq!(
        idx.path,
        dir.path().join("00000000000000000004.r00000002.undo")
    );
    assert_eq!((idx.seq, idx.part, idx.cut_time_ns), (4, Some(2), 11));
    assert_eq!(idx.order(), (4, 2));
    let back = read_index(&idx.path).unwrap();
    assert_eq!((back.seq, back.part, back.cut_time_ns), (4, Some(2), 11));
    assert_eq!(back.entries, idx.entries);
    let f = File::open(&back.path).unwrap();
    let mut out = vec![0u8; 8192];
    read_entry(&f, &back.entries[0], 4096, &mut out).unwrap();
    assert_eq!(out, disk[4096..12288]);
    assert!(
        !dir.path()
            .join("00000000000000000004.r00000002.undo.tmp")
            .exists()
    );
}

fn empty_part(dir: &Path, seq: u64, part: u32) -> std::io::Result<UndoIndex> {
    write_part(dir, seq, part, 0, &[], from_fn(|_, _| Ok(())))
}

#[test]
fn ordering() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let none = || from_fn(|_, _| Ok(()));
    write(d, 6, 0, &[], none()).unwrap();
    write(d, 5, 0, &[], none()).unwrap();
    // Part numbers whose names sort the other way round (9 digits before 8).
    for p in [100_000_000, 10, 0, 99_999_999, 9, 1] {
        empty_part(d, 6, p).unwrap();
    }
    empty_part(d, 7, 0).unwrap();
    fs::write(d.join("unrelated.txt"), b"x").unwrap();
    fs::write(d.join("00000000000000000006.r00000003.undo.tmp"), b"x").unwrap();
    let got: Vec<(u64, Option<u32>)> = load_all(d)
        .unwrap()
        .iter()
        .map(|u| (u.seq, u.part))
        .collect();
    assert_eq!(
        got,
        [
            (5, None),
            (6, Some(0)),
            (6, Some(1)),
            (6, Some(9)),
            (6, Some(10)),
            (6, Some(99_999_999)),
            (6, Some(100_000_000)),
            (6, None),
            (7, Some(0)),
        ]
    );
    let mut names = [
        file_name(6, Some(99_999_999)),
        file_name(6, Some(100_000_000)),
    ];
    names.sort();
    assert_eq!(
        names[0],
        file_name(6, Some(100_000_000)),
        "names alone would misorder these"
    );
    clean_tmp(d);
    assert!(!d.join("00000000000000000006.r00000003.undo.tmp").exists());
}

#[test]
fn write_part_refuses_to_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let first = write_part(
        d,
        3,
        0,
        0,
        &[(0, 512)],
        from_fn(|_, b| {
            b.fill(1);
            Ok(())
        }),
    )
    .unwrap();
    let before = fs::read(&first.path).unwrap();
    let mut reads = 0;
    let e = write_part(
        d,
        3,
        0,
        0,
        &[(0, 512)],
        from_fn(|_, b| {
            reads += 1;
            b.fill(2);
            Ok(())
        }),
    )
    .unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::AlreadyExists, "{e}");
    assert_eq!(reads, 0, "refused before reading the replica");
    assert_eq!(fs::read(&first.path).unwrap(), before);
    // Also when the file appears while the part is being written.
    let e = write_part(
        d,
        3,
        1,
        0,
        &[(0, 512)],
        from_fn(|_, b| {
            fs::write(d.join(file_name(3, Some(1))), b"racer")?;
            b.fill(3);
            Ok(())
        }),
    )
    .unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::AlreadyExists, "{e}");
    assert_eq!(fs::read(d.join(file_name(3, Some(1)))).unwrap(), b"racer");
    assert!(!d.join(format!("{}.tmp", file_name(3, Some(1)))).exists());
    // The reserved number is refused.
    let e = empty_part(d, 3, u32::MAX).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput, "{e}");
}

#[test]
fn next_part_counts_up() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    assert_eq!(next_part(&d.join("missing"), 4).unwrap(), 0);
    assert_eq!(next_part(d, 4).unwrap(), 0);
    write(d, 4, 0, &[], from_fn(|_, _| Ok(()))).unwrap();
    empty_part(d, 3, 7).unwrap();
    empty_part(d, 5, 7).unwrap();
    assert_eq!(next_part(d, 4).unwrap(), 0, "other sequences do not count");
    for want in 0..3 {
        let p = next_part(d, 4).unwrap();
        assert_eq!(p, want);
        empty_part(d, 4, p).unwrap();
    }
    empty_part(d, 4, 99_999_999).unwrap();
    assert_eq!(next_part(d, 4).unwrap(), 100_000_000);
    fs::write(
        d.join(format!("{}.tmp", file_name(4, Some(200_000_000)))),
        b"",
    )
    .unwrap();
    assert_eq!(
        next_part(d, 4).unwrap(),
        100_000_000,
        ".tmp files do not count"
    );
    empty_part(d, 9, u32::MAX - 1).unwrap();
    assert!(next_part(d, 9).is_err(), "numbers ran out");
}

#[test]
fn corrupt_and_unknown_versions() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join(file_name(7, Some(3)));
    for v in [0u32, 4, u32::MAX] {
        let mut b = documented_bytes(2, 3);
        b[8..12].copy_from_slice(&v.to_le_bytes());
        fix_crc(&mut b);
        fs::write(&p, &b).unwrap();
        let e = read_index(&p).unwrap_err().to_string();
        assert!(e.contains(&p.display().to_string()), "{e}");
        assert!(e.contains(&format!("version {v}")), "{e}");
    }
    // Version 2 refuses nonzero flags or reserved bytes even with a good CRC.
    for at in [12, 48, 63] {
        let mut b = documented_bytes(2, 3);
        b[at] = 1;
        fix_crc(&mut b);
        fs::write(&p, &b).unwrap();
        let e = read_index(&p).unwrap_err().to_string();
        assert!(e.contains("reserved"), "{at}: {e}");
    }
    // A bad CRC, a bad magic, a short header.
    let mut b = documented_bytes(2, 3);
    b[33] ^= 1;
    fs::write(&p, &b).unwrap();
    assert!(read_index(&p).unwrap_err().to_string().contains("CRC"));
    let mut b = documented_bytes(2, 3);
    b[0] = b'X';
    fs::write(&p, &b).unwrap();
    assert!(
        read_index(&p)
            .unwrap_err()
            .to_string()
            .contains("not an undo")
    );
    fs::write(&p, &documented_bytes(2, 3)[..40]).unwrap();
    assert!(read_index(&p).unwrap_err().to_string().contains("header"));
    // load_all reports a broken file, and a header that disagrees with its name.
    fs::write(&p, &b).unwrap();
    assert!(load_all(dir.path()).is_err());
    fs::write(&p, documented_bytes(2, 4)).unwrap();
    let e = load_all(dir.path()).unwrap_err().to_string();
    assert!(e.contains("header says"), "{e}");
    fs::write(&p, documented_bytes(1, 0)).unwrap();
    let e = load_all(dir.path()).unwrap_err().to_string();
    assert!(e.contains("header says"), "a v1 file is never a part: {e}");
    fs::write(&p, documented_bytes(2, 3)).unwrap();
    assert_eq!(load_all(dir.path()).unwrap()[0].part, Some(3));
}

#[test]
fn refuses_oversized_counts_before_allocating() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("x.undo");
    for (version, part) in [(1, 0), (2, 5), (2, u32::MAX)] {
        let mut b = documented_bytes(version, part);
        b.truncate(64);
        b[24..32].copy_from_slice(&u64::MAX.to_le_bytes());
        fs::write(&p, &b).unwrap();
        let e = read_index(&p).unwrap_err().to_string();
        assert!(e.contains("do not fit"), "v{version}: {e}");
        // A count just past the file's end.
        b[24..32].copy_from_slice(&1u64.to_le_bytes());
        fs::write(&p, &b).unwrap();
        let e = read_index(&p).unwrap_err().to_string();
        assert!(e.contains("do not fit"), "v{version}: {e}");
    }
    let mut b = encode_index(1, Some(0), 0, &[]);
    b[24..32].copy_from_slice(&(MAX_ENTRIES + 1).to_le_bytes());
    b.resize(usize::try_from(HEADER_LEN + 2 * ENTRY_LEN).unwrap(), 0);
    fs::write(&p, &b).unwrap();
    let e = read_index(&p).unwrap_err().to_string();
    assert!(e.contains("do not fit"), "{e}");
}
