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
    family(
        out,
        "sitrep_points_retired_total",
        "counter",
        "Recovery points retired since the server started, by reason: quota (the store \
         quota), retention (the retention policy), operator (sitrep points delete).",
    );
    for d in &s.disks {
        let r = d.points_retired;
        for (reason, n) in [
            ("quota", r.quota),
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
                },
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
}
