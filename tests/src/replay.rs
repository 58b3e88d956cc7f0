//! The coverage oracle of the change-tracker tests: read a disk's log chain, turn its
//! records into the byte ranges they say changed, and replay them onto a copy of the disk.
//!
//! The oracle is what a replica does: start from the disk as it was when tracking began
//! (`before`), copy from the disk as it is now (`after`) every range the logs name, and the
//! result must be `after`, byte for byte. A write the tracker missed shows up as the first
//! offset where the replica still holds old data. Tests fill the disk with a known non-zero
//! pattern first, so discards and write-zeroes are visible changes too.
//!
//! Also here: whole-device O_DIRECT reads and fills, and the child processes (fio, dd,
//! blkdiscard) that generate the I/O — from another process, because the tracker by default
//! ignores the bios its own process issues.

use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;

use anyhow::{Context, bail};
use hrl::chain::{check_link, list_logs};
use hrl::{GapReason, GapScope, LogHeader, LogReader, Record, RecordBody, RecoveryMode, Seal};

use crate::cmd::{check_output, command_line, run, try_run};
use crate::io::{AlignedBuf, MIB, open_direct};

/// Half-open byte ranges `[start, end)`, kept sorted and merged.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ranges(Vec<(u64, u64)>);

impl Ranges {
    /// No ranges.
    pub fn new() -> Self {
        Self::default()
    }

    /// One range.
    pub fn one(start: u64, end: u64) -> Self {
        let mut r = Self::new();
        r.add(start, end);
        r
    }

    /// Adds `[start, end)` (nothing if empty).
    pub fn add(&mut self, start: u64, end: u64) {
        if start >= end {
            return;
        }
        let i = self.0.partition_point(|&(_, e)| e < start);
        let mut j = i;
        let (mut s, mut e) = (start, end);
        while j < self.0.len() && self.0[j].0 <= e {
            s = s.min(self.0[j].0);
            e = e.max(self.0[j].1);
            j += 1;
        }
        self.0.splice(i..j, [(s, e)]);
    }

    /// Adds every range of `other`.
    pub fn add_all(&mut self, other: &Ranges) {
        for &(s, e) in &other.0 {
            self.add(s, e);
        }
    }

    /// Removes `[start, end)`.
    pub fn subtract(&mut self, start: u64, end: u64) {
        let mut out = Vec::with_capacity(self.0.len() + 1);
        for &(s, e) in &self.0 {
            if e <= start || s >= end {
                out.push((s, e));
                continue;
            }
            if s < start {
                out.push((s, start));
            }
            if e > end {
                out.push((end, e));
            }
        }
        self.0 = out;
    }

    /// The ranges, sorted and disjoint.
    pub fn ranges(&self) -> &[(u64, u64)] {
        &self.0
    }

    /// Bytes covered.
    pub fn total(&self) -> u64 {
        self.0.iter().map(|(s, e)| e - s).sum()
    }

    /// Whether nothing is covered.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The first range overlapping `[start, end)`, clipped to it.
    pub fn overlap(&self, start: u64, end: u64) -> Option<(u64, u64)> {
        let i = self.0.partition_point(|&(_, e)| e <= start);
        self.0
            .get(i)
            .filter(|&&(s, _)| s < end)
            .map(|&(s, e)| (s.max(start), e.min(end)))
    }

    /// The first part of `self` outside `allowed`, if any.
    pub fn first_outside(&self, allowed: &Ranges) -> Option<(u64, u64)> {
        let mut rest = self.clone();
        for &(s, e) in &allowed.0 {
            rest.subtract(s, e);
        }
        rest.0.first().copied()
    }
}

/// One log file of a chain, fully read and validated.
#[derive(Debug)]
pub struct LogFile {
    /// Where it is.
    pub path: PathBuf,
    /// Its header.
    pub header: LogHeader,
    /// Its seal (`None` if it was left open).
    pub seal: Option<Seal>,
    /// Every record.
    pub records: Vec<Record>,
}

/// Reads every log in `dir` in chain order with [`RecoveryMode::Strict`] and checks that
/// consecutive logs link (same disk, log sequence +1, predecessor id, record sequence).
pub fn read_chain(dir: &Path) -> anyhow::Result<Vec<LogFile>> {
    let mut out: Vec<LogFile> = Vec::new();
    for (_, path) in list_logs(dir)? {
        let mut r = LogReader::open(&path, RecoveryMode::Strict)
            .with_context(|| format!("open {} (strict)", path.display()))?;
        let records = r
            .read_all()
            .with_context(|| format!("read {} (strict)", path.display()))?;
        let log = LogFile {
            header: *r.header(),
            seal: r.seal().cloned(),
            records,
            path,
        };
        if let Some(prev) = out.last() {
            check_link(&prev.header, prev.seal.as_ref(), &log.header).map_err(|e| {
                anyhow::anyhow!(
                    "{} does not follow {}: {e}",
                    log.path.display(),
                    prev.path.display()
                )
            })?;
        }
        out.push(log);
    }
    Ok(out)
}

/// Every record of a chain, in order.
pub fn all_records(chain: &[LogFile]) -> Vec<&Record> {
    chain.iter().flat_map(|l| &l.records).collect()
}

/// Whether `r` is a whole-disk tracking gap; `Some(reason)` if so.
pub fn whole_disk_gap(r: &Record) -> Option<GapReason> {
    match &r.body {
        RecordBody::TrackingGap {
            reason,
            scope: GapScope::WholeDisk,
        } => Some(*reason),
        _ => None,
    }
}

/// The byte ranges `records` say may have changed on a disk of `disk_size` bytes: every
/// extent of every kind, and the whole disk for a whole-disk gap.
pub fn coverage<'a>(records: impl IntoIterator<Item = &'a Record>, disk_size: u64) -> Ranges {
    let mut cov = Ranges::new();
    for r in records {
        match r.body.extents() {
            Some(v) => {
                for x in v {
                    cov.add(x.offset(), x.offset() + x.len());
                }
            }
            None => cov.add(0, disk_size),
        }
    }
    cov
}

/// The replica a receiver would build: `before`, with every covered range copied from
/// `after`.
pub fn replay(before: &[u8], after: &[u8], cov: &Ranges) -> Vec<u8> {
    assert_eq!(
        before.len(),
        after.len(),
        "before/after images differ in size"
    );
    let mut replica = before.to_vec();
    let n = after.len() as u64;
    for &(s, e) in cov.ranges() {
        let (s, e) = (
            usize::try_from(s.min(n)).unwrap(),
            usize::try_from(e.min(n)).unwrap(),
        );
        replica[s..e].copy_from_slice(&after[s..e]);
    }
    replica
}

/// The oracle: `None` if replaying `cov` onto `before` gives `after`; otherwise the first
/// byte range `[start, end)` (within one 4 KiB block run) where the replica differs.
pub fn oracle(before: &[u8], after: &[u8], cov: &Ranges) -> Option<(u64, u64)> {
    let replica = replay(before, after, cov);
    let first = first_difference(&replica, after)?;
    // Extend to the end of the differing run of 4 KiB blocks, for a readable message.
    let block = 4096;
    let len = after.len();
    let mut end = ((first / block + 1) * block).min(len);
    while end < len {
        let next = (end + block).min(len);
        if replica[end..next] == after[end..next] {
            break;
        }
        end = next;
    }
    Some((first as u64, end as u64))
}

/// The first differing byte of two equally long images (block-wise `==` first: memcmp
/// speed even in a debug build).
fn first_difference(a: &[u8], b: &[u8]) -> Option<usize> {
    const CHUNK: usize = 64 * 1024;
    let (i, (x, y)) = a
        .chunks(CHUNK)
        .zip(b.chunks(CHUNK))
        .enumerate()
        .find(|(_, (x, y))| x != y)?;
    crate::io::first_mismatch(x, y).map(|j| i * CHUNK + j)
}

/// Panics with a useful message if the oracle finds a byte the logs did not cover.
pub fn assert_oracle(what: &str, before: &[u8], after: &[u8], cov: &Ranges) {
    if let Some((s, e)) = oracle(before, after, cov) {
        let nearest = cov
            .ranges()
            .iter()
            .min_by_key(|(cs, ce)| cs.abs_diff(s).min(ce.abs_diff(s)))
            .copied();
        panic!(
            "{what}: the logs missed a change: replica differs from the device at byte {s} \
             (run to {e}, {} bytes); {} ranges / {} bytes covered, nearest covered range \
             {nearest:?}",
            e - s,
            cov.ranges().len(),
            cov.total()
        );
    }
}

/// The size of a block device (or file), by seeking to its end.
pub fn device_size(path: &Path) -> u64 {
    let mut f = File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    f.seek(SeekFrom::End(0))
        .unwrap_or_else(|e| panic!("seek {}: {e}", path.display()))
}

/// The whole device, read with O_DIRECT (after `blockdev --flushbufs`, so nothing the page
/// cache still holds is missed).
pub fn read_device(path: &Path) -> Vec<u8> {
    let p = path.to_str().expect("UTF-8 device path");
    run("blockdev", &["--flushbufs", p]);
    let size = device_size(path);
    let f = open_direct(path).unwrap_or_else(|e| panic!("open {p} O_DIRECT: {e}"));
    let mut out = Vec::with_capacity(usize::try_from(size).unwrap());
    let mut buf = AlignedBuf::new(crate::io::mib(1));
    let mut off = 0;
    while off < size {
        let n = usize::try_from((size - off).min(MIB)).unwrap();
        f.read_exact_at(&mut buf[..n], off)
            .unwrap_or_else(|e| panic!("O_DIRECT read of {p} at {off}: {e}"));
        out.extend_from_slice(&buf[..n]);
        off += n as u64;
    }
    out
}

/// Fills `buf` with a non-zero, position-dependent pattern for absolute `offset` (one
/// splitmix64 value per 8-byte word: cheap enough for whole disks in a debug build).
pub fn fill_fast_pattern(buf: &mut [u8], seed: u64, offset: u64) {
    assert!(offset.is_multiple_of(8) && buf.len().is_multiple_of(8));
    for (i, w) in buf.chunks_exact_mut(8).enumerate() {
        let word = offset / 8 + i as u64;
        let mut z = (seed ^ word.wrapping_mul(0x9E37_79B9_7F4A_7C15)).wrapping_add(1);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        w.copy_from_slice(&(z | 1).to_le_bytes());
    }
}

/// Writes [`fill_fast_pattern`] over the whole device with O_DIRECT, then fsyncs. Done by
/// the calling process: call it before the tracker starts (or with `exclude_self`).
pub fn fill_device(path: &Path, seed: u64) {
    let size = device_size(path);
    let f = open_direct(path).unwrap_or_else(|e| panic!("open {} O_DIRECT: {e}", path.display()));
    let mut buf = AlignedBuf::new(crate::io::mib(1));
    let mut off = 0;
    while off < size {
        let n = usize::try_from((size - off).min(MIB)).unwrap();
        fill_fast_pattern(&mut buf[..n], seed, off);
        f.write_all_at(&buf[..n], off)
            .unwrap_or_else(|e| panic!("O_DIRECT write of {} at {off}: {e}", path.display()));
        off += n as u64;
    }
    f.sync_all().unwrap();
}

fn dev_str(dev: &Path) -> &str {
    dev.to_str().expect("UTF-8 device path")
}

/// The fio engine for asynchronous O_DIRECT I/O here: io_uring, else libaio, else psync.
pub fn fio_engine() -> &'static str {
    static ENGINE: OnceLock<&'static str> = OnceLock::new();
    ENGINE.get_or_init(|| {
        for engine in ["io_uring", "libaio"] {
            let ok = try_run(
                "fio",
                &[
                    "--name=probe",
                    "--filename=/dev/null",
                    "--rw=read",
                    "--size=4k",
                    "--bs=4k",
                    &format!("--ioengine={engine}"),
                    "--output-format=terse",
                ],
            );
            if ok.is_ok() {
                return engine;
            }
        }
        "psync"
    })
}

/// The fio command line for one job on `dev` (`--name`, `--filename` and a quiet output
/// are added to `args`).
fn fio_args(dev: &Path, args: &[&str]) -> Vec<String> {
    let mut v = vec![
        "--name=sitrep".to_owned(),
        format!("--filename={}", dev_str(dev)),
        "--output-format=terse".to_owned(),
        "--randrepeat=0".to_owned(),
    ];
    v.extend(args.iter().map(|s| (*s).to_owned()));
    v
}

/// Runs fio on `dev` to completion as a child process; panics with its stderr on failure.
pub fn fio(dev: &Path, args: &[&str]) {
    let a = fio_args(dev, args);
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    run("fio", &a);
}

/// A child process running in the background (fio started by [`fio_spawn`]).
pub struct Background {
    line: String,
    child: Option<Child>,
}

impl Background {
    /// Waits for the child; panics with its stderr if it failed.
    pub fn wait(mut self) {
        let child = self.child.take().expect("waited once");
        let out = child
            .wait_with_output()
            .unwrap_or_else(|e| panic!("wait for `{}`: {e}", self.line));
        if let Err(e) = check_output(&self.line, &out) {
            panic!("{e:#}");
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        // On a panic in the test: do not leave fio writing to a device being detached.
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Starts fio on `dev` in the background.
pub fn fio_spawn(dev: &Path, args: &[&str]) -> Background {
    let a = fio_args(dev, args);
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    let line = command_line("fio", &a);
    let child = Command::new("fio")
        .args(&a)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("start `{line}`: {e}"));
    Background {
        line,
        child: Some(child),
    }
}

/// `dd` of `len` random bytes at `offset` of `dev` with `oflag=direct` (4 KiB aligned), from
/// a child process.
pub fn dd_random(dev: &Path, offset: u64, len: u64) {
    const BS: u64 = 4096;
    assert!(offset.is_multiple_of(BS) && len.is_multiple_of(BS) && len > 0);
    run(
        "dd",
        &[
            "if=/dev/urandom",
            &format!("of={}", dev_str(dev)),
            &format!("bs={BS}"),
            &format!("seek={}", offset / BS),
            &format!("count={}", len / BS),
            "oflag=direct",
            "conv=notrunc",
            "status=none",
        ],
    );
}

/// `blkdiscard` of `[offset, offset + len)` from a child process; `zero` uses
/// `BLKZEROOUT` (write-zeroes) instead of a discard.
pub fn blkdiscard(dev: &Path, offset: u64, len: u64, zero: bool) {
    let (o, l) = (offset.to_string(), len.to_string());
    let mut args = vec!["-f", "-o", &o, "-l", &l];
    if zero {
        args.push("-z");
    }
    args.push(dev_str(dev));
    run("blkdiscard", &args);
}

/// Fails unless every range of `cov` lies inside `allowed`, naming the first that does not.
pub fn check_within(what: &str, cov: &Ranges, allowed: &Ranges) -> anyhow::Result<()> {
    if let Some((s, e)) = cov.first_outside(allowed) {
        bail!("{what}: logged range [{s}, {e}) lies outside every region that was written");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_merge_subtract_and_overlap() {
        let mut r = Ranges::new();
        r.add(10, 20);
        r.add(30, 40);
        r.add(20, 25); // adjacent: merges
        r.add(5, 5); // empty: ignored
        assert_eq!(r.ranges(), &[(10, 25), (30, 40)]);
        r.add(0, 35);
        assert_eq!(r.ranges(), &[(0, 40)]);
        r.subtract(10, 20);
        assert_eq!(r.ranges(), &[(0, 10), (20, 40)]);
        assert_eq!(r.total(), 30);
        assert_eq!(r.overlap(5, 25), Some((5, 10)));
        assert_eq!(r.overlap(10, 20), None);
        assert_eq!(r.overlap(15, 100), Some((20, 40)));
        assert_eq!(r.first_outside(&Ranges::one(0, 30)), Some((30, 40)));
        assert_eq!(r.first_outside(&Ranges::one(0, 40)), None);
    }

    #[test]
    fn oracle_replays_covered_ranges_only() {
        let before = vec![1u8; 8192 * 2];
        let mut after = before.clone();
        after[100..200].fill(7);
        after[9000] = 9;
        let mut cov = Ranges::one(0, 4096);
        assert_eq!(oracle(&before, &after, &cov), Some((9000, 12288)));
        cov.add(8192, 12288);
        assert_eq!(oracle(&before, &after, &cov), None);
        cov.subtract(150, 160);
        assert_eq!(oracle(&before, &after, &cov), Some((150, 4096)));
        // A mismatch in the last, aligned block.
        let mut end = before.clone();
        end[12288] = 3;
        assert_eq!(oracle(&before, &end, &Ranges::new()), Some((12288, 16384)));
    }

    #[test]
    fn fast_pattern_is_nonzero_and_positional() {
        let mut a = vec![0u8; 4096];
        let mut b = vec![0u8; 4096];
        fill_fast_pattern(&mut a, 1, 0);
        fill_fast_pattern(&mut b, 1, 512);
        assert_ne!(a, b);
        assert!(a.chunks(8).all(|w| w.iter().any(|&x| x != 0)));
        let mut tail = vec![0u8; 64];
        fill_fast_pattern(&mut tail, 1, 1024);
        assert_eq!(&a[1024..1088], &tail[..]);
    }
}
