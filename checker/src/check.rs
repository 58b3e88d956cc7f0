//! `check`: one image against a single-device history at a point time, block by block, and
//! the report types both kinds of check share.
//!
//! The history is indexed once (records sorted by device, block, then seq — no per-block
//! table, so memory follows the history's real size, never a header's claim), then the
//! image is streamed through [`crate::rule::judge`] (`scan.rs`).

use std::path::Path;

use serde::Serialize;

use crate::history::{History, HistoryRecord};
pub use crate::outcome::{Counts, Violation};
use crate::scan::{DeviceScan, ScanOptions, scan_device};
use crate::units::UnixNs;
use crate::{Error, Result};

/// Version of the single-image [`Report`] JSON schema (`schema` field). 1: this layout.
/// (Multi-device reports are schema 2: [`crate::group::GroupReport`].)
pub const REPORT_SCHEMA: u32 = 1;

/// What to check.
#[derive(Debug, Clone, Copy)]
pub struct CheckOptions {
    /// The point time T the image claims to be.
    pub point_time: UnixNs,
    /// How many violations to list (all are counted).
    pub max_listed: usize,
}

impl CheckOptions {
    /// At `point_time`, listing up to 100 violations.
    #[must_use]
    pub fn at(point_time: UnixNs) -> Self {
        Self {
            point_time,
            max_listed: 100,
        }
    }
}

/// The history, as the report describes it.
#[derive(Debug, Clone, Serialize)]
pub struct HistorySummary {
    /// Write records read.
    pub records: u64,
    /// Whether the workload stopped cleanly (end record present).
    pub clean: bool,
    /// Bytes of torn tail ignored.
    pub torn_tail_bytes: u64,
    /// When the run started (ns since the epoch).
    pub start_ns: u64,
    /// When it ended, if cleanly.
    pub end_ns: Option<u64>,
}

/// The outcome of a check (the `--json` output; `schema` versions it).
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// [`REPORT_SCHEMA`].
    pub schema: u32,
    /// No violation.
    pub ok: bool,
    /// T, ns since the epoch.
    pub point_time_ns: u64,
    /// T, RFC 3339 UTC.
    pub point_time: String,
    /// The run (hex).
    pub run_id: String,
    /// Bytes per block.
    pub block_size: u32,
    /// Blocks the history covers.
    pub blocks: u64,
    /// Blocks checked.
    pub checked: u64,
    /// The history read.
    pub history: HistorySummary,
    /// Blocks per outcome.
    pub counts: Counts,
    /// All violations, counted.
    pub violations_total: u64,
    /// The first [`CheckOptions::max_listed`] violations, in block order.
    pub violations: Vec<Violation>,
    /// Things the reader should know (T outside the run, an unclean history, image size).
    pub notes: Vec<String>,
}

/// Checks `image` against the single-device `history` at `opts.point_time`.
///
/// # Errors
/// The history has more than one device (check its images together:
/// [`crate::group::check_group`]), is inconsistent with itself (a seq twice, overlapping
/// writes to a block), the image cannot be read or is smaller than the run's blocks.
pub fn check_image(history: &History, image: &Path, opts: CheckOptions) -> Result<Report> {
    let n = history.header.devices.len();
    if n != 1 {
        return Err(Error::Invalid(format!(
            "the history covers {n} devices: check their images together (one --image each)"
        )));
    }
    let sorted = index(history)?;
    let scan_opts = ScanOptions {
        device: 0,
        t: Some(opts.point_time),
        max_listed: opts.max_listed,
    };
    let scan = scan_device(history, &sorted, image, scan_opts, |_, _| {})?;
    let mut report = new_report(history, opts);
    report.notes.extend(size_note(&scan));
    report.checked = scan.checked;
    report.counts = scan.counts;
    report.violations_total = scan.violations_total;
    report.violations = scan.violations;
    report.ok = report.violations_total == 0;
    Ok(report)
}

/// A note when the image is larger than the run's blocks.
pub(crate) fn size_note(scan: &DeviceScan) -> Option<String> {
    (scan.image_size > scan.need).then(|| {
        format!(
            "the image has {} bytes past the run's blocks; they are not checked",
            scan.image_size - scan.need
        )
    })
}

/// Notes about T against the run and about an unclean history.
pub(crate) fn time_notes(history: &History, t: Option<UnixNs>) -> Vec<String> {
    let mut notes = Vec::new();
    if let Some(t) = t {
        if t < history.header.start_ns {
            notes.push("the point time is before the run started: no block was written yet".into());
        }
        if let Some(end) = history.end_ns.filter(|&e| t > e) {
            notes.push(format!(
                "the point time is {} ms after the run ended: every block must hold its last write",
                (t.0 - end.0) / 1_000_000
            ));
        }
    }
    if !history.clean() {
        notes.push(format!(
            "the history was not closed cleanly (the workload was killed; {} torn tail bytes): \
             the completions of its last ~100 ms may be missing, so a block newer than the \
             history is accepted if it was issued before the point time",
            history.torn_tail_bytes
        ));
    }
    notes
}

impl HistorySummary {
    /// The summary of `history`.
    #[must_use]
    pub fn of(history: &History) -> Self {
        Self {
            records: history.records.len() as u64,
            clean: history.clean(),
            torn_tail_bytes: history.torn_tail_bytes,
            start_ns: history.header.start_ns.0,
            end_ns: history.end_ns.map(|e| e.0),
        }
    }
}

fn new_report(history: &History, opts: CheckOptions) -> Report {
    let hdr = &history.header;
    let t = opts.point_time;
    Report {
        schema: REPORT_SCHEMA,
        ok: false,
        point_time_ns: t.0,
        point_time: t.rfc3339(),
        run_id: hdr.run_id.to_string(),
        block_size: hdr.block_size.bytes(),
        blocks: hdr.total_blocks(),
        checked: 0,
        history: HistorySummary::of(history),
        counts: Counts::default(),
        violations_total: 0,
        violations: Vec::new(),
        notes: time_notes(history, Some(t)),
    }
}

/// The records sorted by (device, block, seq), after checking the history agrees with
/// itself: every seq once, and writes to one block never overlapping in time (the rule
/// relies on both).
pub(crate) fn index(history: &History) -> Result<Vec<HistoryRecord>> {
    let mut sorted = history.records.clone();
    sorted.sort_unstable_by_key(|r| (r.device, r.block, r.seq));
    let bad = |cause: String| Error::CorruptHistory {
        path: history.path.clone(),
        offset: 0,
        cause,
    };
    let mut seqs: Vec<u64> = sorted.iter().map(|r| r.seq).collect();
    seqs.sort_unstable();
    if let Some(w) = seqs.windows(2).find(|w| w[0] == w[1]) {
        return Err(bad(format!("seq {} is recorded twice", w[0])));
    }
    for w in sorted.windows(2) {
        if (w[0].device, w[0].block) == (w[1].device, w[1].block)
            && w[1].issue_ns < w[0].complete_ns
        {
            let on = if history.header.devices.len() > 1 {
                format!(" on device {}", w[0].device)
            } else {
                String::new()
            };
            return Err(bad(format!(
                "writes seq {} and {} to block {}{on} overlap in time (was the clock stepped back?)",
                w[0].seq, w[1].seq, w[0].block
            )));
        }
    }
    Ok(sorted)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::{BlockHeader, BlockSize, encode};
    use crate::history::{DeviceGeometry, HistoryHeader, HistoryWriter, read_history};
    use crate::rule::Kind;
    use crate::units::RunId;

    const RUN: RunId = RunId([0x5a; 16]);
    const BLOCKS: u64 = 8;

    /// Block b: init write seq b at [10b, 10b+5]; then seq 100+b at [1000+10b, 1000+10b+5].
    fn history(dir: &Path, clean: bool) -> History {
        let p = dir.join("history");
        let header = HistoryHeader {
            run_id: RUN,
            block_size: BlockSize::new(512).unwrap(),
            devices: vec![DeviceGeometry {
                block_count: BLOCKS,
                device_size: BLOCKS * 512,
            }],
            start_ns: UnixNs(1),
        };
        let mut w = HistoryWriter::create(&p, &header).unwrap();
        for (base, t0) in [(0, 0), (100, 1000)] {
            for b in 0..BLOCKS {
                w.push(&HistoryRecord {
                    seq: base + b,
                    device: 0,
                    block: b,
                    issue_ns: UnixNs(t0 + 10 * b),
                    complete_ns: UnixNs(t0 + 10 * b + 5),
                    depends_on: None,
                });
            }
        }
        w.flush().unwrap();
        if clean {
            w.finish(UnixNs(5000)).unwrap();
        }
        read_history(&p).unwrap()
    }

    /// An image whose block b holds seq `seqs[b]` of `run`.
    fn image(dir: &Path, run: RunId, seqs: &[u64]) -> std::path::PathBuf {
        let mut bytes = vec![0u8; seqs.len() * 512];
        for (b, (&seq, out)) in seqs.iter().zip(bytes.chunks_mut(512)).enumerate() {
            let b = b as u64;
            let issue = if seq >= 100 { 1000 + 10 * b } else { 10 * b };
            encode(
                &BlockHeader {
                    run_id: run,
                    index: b,
                    seq,
                    issue_ns: UnixNs(issue),
                    device: None,
                },
                out,
            );
        }
        let p = dir.join("image");
        std::fs::write(&p, bytes).unwrap();
        p
    }

    #[test]
    fn final_state_is_consistent_after_the_run() {
        let d = tempfile::tempdir().unwrap();
        let h = history(d.path(), true);
        let img = image(d.path(), RUN, &[100, 101, 102, 103, 104, 105, 106, 107]);
        let r = check_image(&h, &img, CheckOptions::at(UnixNs(6000))).unwrap();
        assert!(r.ok, "{r:?}");
        assert_eq!((r.checked, r.counts.current, r.violations_total), (8, 8, 0));
        assert_eq!(r.history.records, 16);
    }

    #[test]
    fn a_mid_run_point_finds_future_versions_and_lists_a_capped_set() {
        let d = tempfile::tempdir().unwrap();
        let h = history(d.path(), true);
        let img = image(d.path(), RUN, &[100, 101, 102, 103, 104, 105, 106, 107]);
        // T = 1032: blocks 0..=2 rewritten and done, block 3 in flight (issued 1030), the
        // rest not yet issued: blocks 4..=7 hold future versions.
        let opts = CheckOptions {
            point_time: UnixNs(1032),
            max_listed: 3,
        };
        let r = check_image(&h, &img, opts).unwrap();
        assert!(!r.ok);
        assert_eq!(
            (r.counts.current, r.counts.in_flight, r.counts.future),
            (3, 1, 4)
        );
        assert_eq!((r.violations_total, r.violations.len()), (4, 3));
        let v = &r.violations[0];
        assert_eq!((v.block, v.kind, v.found_seq), (4, Kind::Future, Some(104)));
        assert_eq!((v.allowed_from_seq, v.allowed_to_seq), (Some(4), Some(4)));
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["violations"][0]["kind"], "future");
        assert_eq!(json["counts"]["future"], 4);
        // The same image at the same T with the old versions of 4..=7 is consistent.
        let img = image(d.path(), RUN, &[100, 101, 102, 3, 4, 5, 6, 7]);
        assert!(check_image(&h, &img, opts).unwrap().ok);
    }

    #[test]
    fn torn_foreign_stale_and_short_images() {
        let d = tempfile::tempdir().unwrap();
        let h = history(d.path(), true);
        let img = image(d.path(), RUN, &[100, 101, 2, 103, 104, 105, 106, 107]);
        let mut bytes = std::fs::read(&img).unwrap();
        bytes[5 * 512 + 300] ^= 0xff;
        let mut other = vec![0u8; 512];
        let foreign = BlockHeader {
            run_id: RunId([1; 16]),
            index: 6,
            seq: 106,
            issue_ns: UnixNs(1060),
            device: None,
        };
        encode(&foreign, &mut other);
        bytes[6 * 512..7 * 512].copy_from_slice(&other);
        std::fs::write(&img, &bytes).unwrap();
        let r = check_image(&h, &img, CheckOptions::at(UnixNs(6000))).unwrap();
        let kinds: Vec<(u64, Kind)> = r.violations.iter().map(|v| (v.block, v.kind)).collect();
        assert_eq!(
            kinds,
            [(2, Kind::Stale), (5, Kind::Torn), (6, Kind::Foreign)]
        );
        assert!(
            r.violations[1].detail.contains("checksum"),
            "{:?}",
            r.violations[1]
        );
        std::fs::write(&img, &bytes[..7 * 512]).unwrap();
        let e = check_image(&h, &img, CheckOptions::at(UnixNs(6000))).unwrap_err();
        assert!(
            e.to_string().contains("smaller than the run's 8 blocks"),
            "{e}"
        );
    }

    #[test]
    fn a_history_that_contradicts_itself_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let mut h = history(d.path(), true);
        let img = image(d.path(), RUN, &[100, 101, 102, 103, 104, 105, 106, 107]);
        let mut dup = h.records[3];
        dup.block = 5;
        dup.issue_ns = UnixNs(4000);
        dup.complete_ns = UnixNs(4001);
        h.records.push(dup);
        let e = check_image(&h, &img, CheckOptions::at(UnixNs(6000))).unwrap_err();
        assert!(e.to_string().contains("seq 3 is recorded twice"), "{e}");
        h.records.pop();
        h.records[10].issue_ns = UnixNs(3);
        let e = check_image(&h, &img, CheckOptions::at(UnixNs(6000))).unwrap_err();
        assert!(e.to_string().contains("overlap in time"), "{e}");
    }

    #[test]
    fn notes_for_unclean_histories() {
        let d = tempfile::tempdir().unwrap();
        let h = history(d.path(), false);
        let img = image(d.path(), RUN, &[100, 101, 102, 103, 104, 105, 106, 107]);
        let r = check_image(&h, &img, CheckOptions::at(UnixNs(6000))).unwrap();
        assert!(r.ok && !r.history.clean);
        assert!(
            r.notes.iter().any(|n| n.contains("not closed cleanly")),
            "{:?}",
            r.notes
        );
    }
}
