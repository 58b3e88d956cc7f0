//! `check` for a multi-device run: a set of images, one per device, against one history.
//!
//! Two rules, and the report (JSON schema 2, [`GROUP_REPORT_SCHEMA`]):
//!
//! - with a point time T, every image is checked at T by the per-block rule
//!   ([`crate::rule::judge`]) — that alone already means all of them are the state at one
//!   instant; without T, only intactness ([`crate::rule::judge_intact`]);
//! - always, the dependency rule ([`crate::depend`]): a write found in any image whose
//!   dependency on another device is not there (nor a newer version of its block) proves the
//!   images are from different instants.
//!
//! Images are scanned one after the other, in device order, each streamed like a single
//! image (`scan.rs`); the dependency rule takes note of every block as it goes by and
//! is judged at the end, when every image's content is known.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::check::{Counts, HistorySummary, Violation, index, size_note, time_notes};
use crate::depend::{Dependencies, DependencyViolation};
use crate::history::History;
use crate::scan::{ScanOptions, scan_device};
use crate::units::UnixNs;
use crate::{Error, Result};

/// Version of the multi-device [`GroupReport`] JSON schema (`schema` field). 2: this layout.
/// (Single-device reports stay schema 1: [`crate::check::Report`].)
pub const GROUP_REPORT_SCHEMA: u32 = 2;

/// What to check.
#[derive(Debug, Clone, Copy)]
pub struct GroupOptions {
    /// The point time T the images claim to be, if any.
    pub point_time: Option<UnixNs>,
    /// How many violations to list per device, and how many dependency violations (all are
    /// counted).
    pub max_listed: usize,
}

/// One device's image, as the report describes it.
#[derive(Debug, Clone, Serialize)]
pub struct DeviceReport {
    /// The device index in the run.
    pub device: u16,
    /// The image checked as that device.
    pub image: String,
    /// The device's blocks in the run.
    pub blocks: u64,
    /// Blocks checked.
    pub checked: u64,
    /// Blocks per outcome.
    pub counts: Counts,
    /// The per-block violations on this device, counted.
    pub violations_total: u64,
    /// The first [`GroupOptions::max_listed`] of them, in block order.
    pub violations: Vec<Violation>,
}

/// The dependency rule's summary.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct DependencySummary {
    /// Writes found in the images that depend on a write on another device.
    pub checked: u64,
    /// How many of those dependencies are not there.
    pub violations: u64,
}

/// The outcome of a multi-device check (the `--json` output, schema 2).
#[derive(Debug, Clone, Serialize)]
pub struct GroupReport {
    /// [`GROUP_REPORT_SCHEMA`].
    pub schema: u32,
    /// No violation of either rule.
    pub ok: bool,
    /// T, ns since the epoch; `null` when checked without a point time.
    pub point_time_ns: Option<u64>,
    /// T, RFC 3339 UTC; `null` without.
    pub point_time: Option<String>,
    /// The run (hex).
    pub run_id: String,
    /// Bytes per block.
    pub block_size: u32,
    /// Blocks the history covers, over all devices.
    pub blocks: u64,
    /// Blocks checked, over all devices.
    pub checked: u64,
    /// The history read.
    pub history: HistorySummary,
    /// Per device, in device order.
    pub devices: Vec<DeviceReport>,
    /// Blocks per outcome, summed over the devices.
    pub counts: Counts,
    /// The dependency rule.
    pub dependencies: DependencySummary,
    /// All violations: per-block ones on every device plus dependency ones.
    pub violations_total: u64,
    /// The first [`GroupOptions::max_listed`] dependency violations.
    pub dependency_violations: Vec<DependencyViolation>,
    /// Things the reader should know.
    pub notes: Vec<String>,
}

/// Checks `images` (one per device, in the history's device order) against `history`.
///
/// # Errors
/// Not one image per device; the history is inconsistent with itself (a seq twice,
/// overlapping writes to a block, a dependency that is not a completed write on another
/// device); an image cannot be read or is smaller than its device's blocks.
pub fn check_group(
    history: &History,
    images: &[PathBuf],
    opts: GroupOptions,
) -> Result<GroupReport> {
    let hdr = &history.header;
    if images.len() != hdr.devices.len() {
        return Err(Error::Invalid(format!(
            "{} images given for a history of {} devices: give one --image per device, in \
             the history's device order",
            images.len(),
            hdr.devices.len()
        )));
    }
    let sorted = index(history)?;
    let mut deps = Dependencies::new(history, &sorted)?;
    let mut report = new_report(history, opts);
    let mut start = 0;
    for (device, image) in (0u16..).zip(images) {
        let end = start + sorted[start..].partition_point(|r| r.device == device);
        let scan_opts = ScanOptions {
            device,
            t: opts.point_time,
            max_listed: opts.max_listed,
        };
        let scan = scan_device(
            history,
            &sorted[start..end],
            image,
            scan_opts,
            |case, found| {
                deps.observe(case, found);
            },
        )?;
        start = end;
        if let Some(n) = size_note(&scan) {
            report.notes.push(format!("device {device}: {n}"));
        }
        report.checked += scan.checked;
        report.counts.merge(&scan.counts);
        report.violations_total += scan.violations_total;
        report.devices.push(DeviceReport {
            device,
            image: display(image),
            blocks: hdr.devices[usize::from(device)].block_count,
            checked: scan.checked,
            counts: scan.counts,
            violations_total: scan.violations_total,
            violations: scan.violations,
        });
    }
    let (checked, violated, listed) = deps.violations(opts.max_listed);
    report.dependencies = DependencySummary {
        checked,
        violations: violated,
    };
    report.violations_total += violated;
    report.dependency_violations = listed;
    report.ok = report.violations_total == 0;
    Ok(report)
}

fn display(p: &Path) -> String {
    p.display().to_string()
}

fn new_report(history: &History, opts: GroupOptions) -> GroupReport {
    let hdr = &history.header;
    let mut notes = time_notes(history, opts.point_time);
    if opts.point_time.is_none() {
        notes.push(
            "no point time: blocks are judged for intactness only (torn, foreign, unknown, \
             misplaced), and the images against each other by the dependency rule"
                .into(),
        );
    }
    GroupReport {
        schema: GROUP_REPORT_SCHEMA,
        ok: false,
        point_time_ns: opts.point_time.map(|t| t.0),
        point_time: opts.point_time.map(UnixNs::rfc3339),
        run_id: hdr.run_id.to_string(),
        block_size: hdr.block_size.bytes(),
        blocks: hdr.total_blocks(),
        checked: 0,
        history: HistorySummary::of(history),
        devices: Vec::with_capacity(hdr.devices.len()),
        counts: Counts::default(),
        dependencies: DependencySummary {
            checked: 0,
            violations: 0,
        },
        violations_total: 0,
        dependency_violations: Vec::new(),
        notes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::{BlockHeader, BlockSize, encode};
    use crate::history::read_history;
    use crate::history::{DeviceGeometry, HistoryHeader, HistoryRecord, HistoryWriter};
    use crate::rule::Kind;
    use crate::units::RunId;

    const RUN: RunId = RunId([0x33; 16]);
    const BS: usize = 512;

    /// (seq, device, block, depends_on) of a two-device run, 4 blocks each, written like the
    /// workload at queue depth 1: device 0's initialization, device 1's, then a chain
    /// alternating between the devices. Write s is issued at 10s+1 and completes at 10s+5.
    const WRITES: [(u64, u16, u64, Option<u64>); 12] = [
        (0, 0, 0, None),
        (1, 0, 1, None),
        (2, 0, 2, None),
        (3, 0, 3, None),
        (4, 1, 0, Some(3)),
        (5, 1, 1, Some(3)),
        (6, 1, 2, Some(3)),
        (7, 1, 3, Some(3)),
        (8, 0, 1, Some(7)),
        (9, 1, 2, Some(8)),
        (10, 0, 1, Some(9)),
        (11, 1, 3, Some(10)),
    ];

    fn record(w: (u64, u16, u64, Option<u64>)) -> HistoryRecord {
        HistoryRecord {
            seq: w.0,
            device: w.1,
            block: w.2,
            issue_ns: UnixNs(10 * w.0 + 1),
            complete_ns: UnixNs(10 * w.0 + 5),
            depends_on: w.3,
        }
    }

    fn history(dir: &Path, writes: &[(u64, u16, u64, Option<u64>)]) -> History {
        let p = dir.join("history");
        let _ = std::fs::remove_file(&p);
        let geometry = DeviceGeometry {
            block_count: 4,
            device_size: 4 * BS as u64,
        };
        let header = HistoryHeader {
            run_id: RUN,
            block_size: BlockSize::new(BS as u64).unwrap(),
            devices: vec![geometry; 2],
            start_ns: UnixNs(0),
        };
        let mut w = HistoryWriter::create(&p, &header).unwrap();
        for &r in writes {
            w.push(&record(r));
        }
        w.finish(UnixNs(1000)).unwrap();
        read_history(&p).unwrap()
    }

    /// Device `device`'s image whose block b holds seq `seqs[b]` (as the workload wrote it:
    /// the block names the device it was written for, `written_for`).
    fn image(dir: &Path, device: u16, seqs: [u64; 4], written_for: u16) -> PathBuf {
        let mut bytes = vec![0u8; 4 * BS];
        for (b, (&seq, out)) in seqs.iter().zip(bytes.chunks_mut(BS)).enumerate() {
            let h = BlockHeader {
                run_id: RUN,
                index: b as u64,
                seq,
                issue_ns: UnixNs(10 * seq + 1),
                device: Some(written_for),
            };
            encode(&h, out);
        }
        let p = dir.join(format!("image{device}"));
        std::fs::write(&p, bytes).unwrap();
        p
    }

    fn check(h: &History, images: &[PathBuf], t: Option<u64>) -> GroupReport {
        let opts = GroupOptions {
            point_time: t.map(UnixNs),
            max_listed: 100,
        };
        check_group(h, images, opts).unwrap()
    }

    #[test]
    fn the_final_state_of_both_devices_is_consistent() {
        let d = tempfile::tempdir().unwrap();
        let h = history(d.path(), &WRITES);
        let imgs = [
            image(d.path(), 0, [0, 10, 2, 3], 0),
            image(d.path(), 1, [4, 5, 9, 11], 1),
        ];
        for t in [None, Some(2000)] {
            let r = check(&h, &imgs, t);
            assert!(r.ok, "{r:?}");
            assert_eq!((r.checked, r.violations_total), (8, 0));
            // Writes with a dependency: device 0's seq 10 and all of device 1's.
            assert_eq!(r.dependencies.checked, 5);
        }
        let r = check(&h, &imgs, None);
        assert_eq!((r.counts.recorded, r.counts.current), (8, 0));
        assert_eq!(r.point_time_ns, None);
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(
            (json["schema"].as_u64(), json["counts"]["recorded"].as_u64()),
            (Some(2), Some(8))
        );
        assert_eq!(json["devices"][1]["counts"]["recorded"], 4);
    }

    /// Device 0 copied before write 8, device 1 at the end: device 1 holds 9 (depends on 8)
    /// and 11 (depends on 10), both on device 0's block 1, which holds 1.
    #[test]
    fn a_dependent_write_without_its_dependency_is_a_violation() {
        let d = tempfile::tempdir().unwrap();
        let h = history(d.path(), &WRITES);
        let imgs = [
            image(d.path(), 0, [0, 1, 2, 3], 0),
            image(d.path(), 1, [4, 5, 9, 11], 1),
        ];
        let r = check(&h, &imgs, None);
        assert!(!r.ok);
        // Each image alone is intact: only the pair is wrong.
        assert_eq!(
            (r.devices[0].violations_total, r.devices[1].violations_total),
            (0, 0)
        );
        assert_eq!((r.dependencies.violations, r.violations_total), (2, 2));
        let got: Vec<_> = r
            .dependency_violations
            .iter()
            .map(|v| {
                (
                    v.device,
                    v.block,
                    v.seq,
                    v.depends_on_device,
                    v.depends_on_block,
                )
            })
            .collect();
        assert_eq!(got, [(1, 2, 9, 0, 1), (1, 3, 11, 0, 1)]);
        assert_eq!(
            (
                r.dependency_violations[0].depends_on_seq,
                r.dependency_violations[0].found_seq
            ),
            (8, Some(1))
        );
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["dependency_violations"][0]["kind"], "dependency");
        // With a point time the per-block rule finds it too, and the dependency rule still.
        let r = check(&h, &imgs, Some(2000));
        assert_eq!(
            (r.devices[0].counts.stale, r.dependencies.violations),
            (1, 2)
        );
        // The listing is capped, the count is not.
        let opts = GroupOptions {
            point_time: None,
            max_listed: 1,
        };
        let r = check_group(&h, &imgs, opts).unwrap();
        assert_eq!(
            (r.dependencies.violations, r.dependency_violations.len()),
            (2, 1)
        );
    }

    /// Write 9 depends on 8 (device 0 block 1); that block since holds 10: newer, fine.
    /// The pair is the state between writes 10 and 11.
    #[test]
    fn a_dependency_superseded_by_a_newer_version_is_satisfied() {
        let d = tempfile::tempdir().unwrap();
        let h = history(d.path(), &WRITES);
        let imgs = [
            image(d.path(), 0, [0, 10, 2, 3], 0),
            image(d.path(), 1, [4, 5, 9, 7], 1),
        ];
        for t in [None, Some(108)] {
            let r = check(&h, &imgs, t);
            assert!(r.ok, "{t:?}: {r:?}");
            assert_eq!(r.dependencies.checked, 5);
        }
        // And a pair from before the chain: nothing to violate.
        let imgs = [
            image(d.path(), 0, [0, 1, 2, 3], 0),
            image(d.path(), 1, [4, 5, 6, 7], 1),
        ];
        assert!(check(&h, &imgs, None).ok);
    }

    /// A dependency whose block is torn, or holds device 1's block, is not there.
    #[test]
    fn a_torn_or_misplaced_dependency_block_is_missing() {
        let d = tempfile::tempdir().unwrap();
        let h = history(d.path(), &WRITES);
        let img0 = image(d.path(), 0, [0, 10, 2, 3], 0);
        let img1 = image(d.path(), 1, [4, 5, 9, 7], 1);
        let mut b = std::fs::read(&img0).unwrap();
        b[BS + 100] ^= 1;
        std::fs::write(&img0, &b).unwrap();
        let r = check(&h, &[img0.clone(), img1.clone()], None);
        assert_eq!(
            (r.devices[0].counts.torn, r.dependencies.violations),
            (1, 1)
        );
        assert_eq!(r.dependency_violations[0].found_seq, None);
        // Device 1's images swapped in as device 0 (same size): every block misplaced.
        let r = check(&h, &[img1.clone(), img1], None);
        assert_eq!(r.devices[0].counts.misplaced, 4);
        assert_eq!(r.devices[0].violations[0].kind, Kind::Misplaced);
        assert!(
            r.devices[0].violations[0]
                .detail
                .contains("written for device 1"),
            "{:?}",
            r.devices[0].violations[0]
        );
    }

    #[test]
    fn one_image_per_device_and_a_history_that_agrees_with_itself() {
        let d = tempfile::tempdir().unwrap();
        let h = history(d.path(), &WRITES);
        let img0 = image(d.path(), 0, [0, 10, 2, 3], 0);
        let opts = GroupOptions {
            point_time: None,
            max_listed: 10,
        };
        let e = check_group(&h, std::slice::from_ref(&img0), opts)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("1 images given for a history of 2 devices"),
            "{e}"
        );
        let img1 = image(d.path(), 1, [4, 5, 9, 11], 1);
        let imgs = [img0, img1];
        // A dependency on the same device, one the history does not have, and one that
        // completed after its dependent was issued: the history is refused.
        for (bad, want) in [
            (
                (9, 1, 2, Some(7)),
                "not a completed write on another device",
            ),
            ((9, 1, 2, Some(8)), "does not record"),
        ] {
            let mut ws: Vec<_> = WRITES.to_vec();
            ws[9] = bad;
            if want == "does not record" {
                ws.remove(8);
            }
            let h = history(d.path(), &ws);
            let e = check_group(&h, &imgs, opts).unwrap_err().to_string();
            assert!(e.contains(want), "{e}");
        }
        let mut h = history(d.path(), &WRITES);
        h.records[9].issue_ns = UnixNs(82);
        h.records[9].complete_ns = UnixNs(95);
        let e = check_group(&h, &imgs, opts).unwrap_err().to_string();
        assert!(e.contains("was the clock stepped back"), "{e}");
        // A single-device check refuses a multi-device history.
        let e = crate::check::check_image(&h, &imgs[0], crate::CheckOptions::at(UnixNs(5)))
            .unwrap_err()
            .to_string();
        assert!(e.contains("covers 2 devices"), "{e}");
    }
}
