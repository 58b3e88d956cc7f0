//! The server's store families: `sitrep_store_bytes`, `sitrep_store_quota_bytes` and
//! `sitrep_points_retired_total{disk,reason}` (see [`crate::store_space`]).

use std::fmt::Write as _;

use super::text::{escape, family};
use crate::store_space::StoreSpace;

/// Appends the store's families to `out`.
pub(super) fn render(out: &mut String, s: &StoreSpace) {
    family(
        out,
        "sitrep_store_bytes",
        "gauge",
        "Bytes the store's disk entries take: replicas' allocated blocks, undo data, staged \
         cycles (retired copies not counted).",
    );
    let _ = writeln!(out, "sitrep_store_bytes {}", s.bytes);
    if let Some(q) = s.quota_bytes {
        family(
            out,
            "sitrep_store_quota_bytes",
            "gauge",
            "The store quota (--max-store-bytes): past it the oldest recovery points are \
             retired, never a disk's newest.",
        );
        let _ = writeln!(out, "sitrep_store_quota_bytes {q}");
    }
    caps(out, s);
    family(
        out,
        "sitrep_points_retired_total",
        "counter",
        "Recovery points retired since the server started, by reason: quota (the store \
         quota), disk_cap (the disk's --max-point-storage), retention (the retention \
         policy), operator (sitrep points delete).",
    );
    for d in &s.disks {
        let r = d.points_retired;
        for (reason, n) in [
            ("quota", r.quota),
            ("disk_cap", r.disk_cap),
            ("retention", r.retention),
            ("operator", r.operator),
        ] {
            let _ = writeln!(
                out,
                "sitrep_points_retired_total{{disk=\"{}\",reason=\"{reason}\"}} {n}",
                escape(&d.name)
            );
        }
    }
}

/// Per capped disk: its point storage cap and whether it is over it with nothing more it
/// may retire (no family when no disk has a cap).
fn caps(out: &mut String, s: &StoreSpace) {
    let capped: Vec<_> = s
        .disks
        .iter()
        .filter_map(|d| d.max_point_storage_bytes.map(|c| (d, c)))
        .collect();
    if capped.is_empty() {
        return;
    }
    family(
        out,
        "sitrep_point_storage_cap_bytes",
        "gauge",
        "A disk's point storage cap (its agent's --max-point-storage).",
    );
    for (d, cap) in &capped {
        let _ = writeln!(
            out,
            "sitrep_point_storage_cap_bytes{{disk=\"{}\"}} {cap}",
            escape(&d.name)
        );
    }
    family(
        out,
        "sitrep_point_storage_over_cap",
        "gauge",
        "1 when a disk's points take more than its cap and every point left is younger \
         than the server's --min-retain or the newest (nothing more may be retired).",
    );
    for (d, _) in &capped {
        let _ = writeln!(
            out,
            "sitrep_point_storage_over_cap{{disk=\"{}\"}} {}",
            escape(&d.name),
            u8::from(d.over_point_cap)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store_space::{DiskSpace, RetiredCounts};

    #[test]
    fn the_store_families_have_one_sample_per_disk_and_reason() {
        let s = StoreSpace {
            bytes: 3 << 20,
            quota_bytes: Some(4 << 20),
            disks: vec![DiskSpace {
                name: "d\"1".into(),
                bytes: 3 << 20,
                points_retired: RetiredCounts {
                    quota: 2,
                    retention: 5,
                    operator: 0,
                    ..RetiredCounts::default()
                },
                ..DiskSpace::default()
            }],
        };
        let mut out = String::new();
        render(&mut out, &s);
        assert!(out.contains("# TYPE sitrep_store_bytes gauge\nsitrep_store_bytes 3145728\n"));
        assert!(out.contains("\nsitrep_store_quota_bytes 4194304\n"));
        assert!(out.contains("sitrep_points_retired_total{disk=\"d\\\"1\",reason=\"quota\"} 2\n"));
        assert!(
            out.contains("sitrep_points_retired_total{disk=\"d\\\"1\",reason=\"retention\"} 5\n")
        );
        assert!(
            out.ends_with("sitrep_points_retired_total{disk=\"d\\\"1\",reason=\"operator\"} 0\n")
        );
        let mut none = String::new();
        render(
            &mut none,
            &StoreSpace {
                quota_bytes: None,
                ..s
            },
        );
        assert!(
            !none.contains("sitrep_store_quota_bytes"),
            "no quota, no family"
        );
    }

    #[test]
    fn a_capped_disk_shows_its_cap_and_whether_it_is_over_it() {
        let s = StoreSpace {
            bytes: 3 << 20,
            quota_bytes: None,
            disks: vec![
                DiskSpace {
                    name: "a".into(),
                    max_point_storage_bytes: Some(1 << 20),
                    over_point_cap: true,
                    points_retired: RetiredCounts {
                        disk_cap: 4,
                        ..RetiredCounts::default()
                    },
                    ..DiskSpace::default()
                },
                DiskSpace {
                    name: "b".into(),
                    ..DiskSpace::default()
                },
            ],
        };
        let mut out = String::new();
        render(&mut out, &s);
        assert!(out.contains("\nsitrep_point_storage_cap_bytes{disk=\"a\"} 1048576\n"));
        assert!(out.contains("\nsitrep_point_storage_over_cap{disk=\"a\"} 1\n"));
        assert!(!out.contains("cap_bytes{disk=\"b\"}"), "{out}");
        assert!(out.contains("sitrep_points_retired_total{disk=\"a\",reason=\"disk_cap\"} 4\n"));
    }
}
