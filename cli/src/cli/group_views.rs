//! The secondary's views of a consistency group: `sitrep points --group`, `points export
//! --group`, `failover --group` (the server's socket). docs/architecture.md, *Consistency
//! groups*.

use std::path::Path;
use std::time::Duration;

use base::control::Request;
use base::points::PointSel;

use crate::{Outcome, human};

/// `sitrep points --group G` (server).
pub(crate) fn points(socket: &Path, group: &str, json: bool) -> anyhow::Result<Outcome> {
    let r: serde_json::Value = base::control::ask(
        socket,
        &Request::GroupPoints {
            group: group.to_string(),
        },
        Duration::from_secs(30),
    )?;
    if json {
        crate::outln!("{}", serde_json::to_string_pretty(&r)?);
        return Ok(Outcome::Ok);
    }
    let pts = r["points"].as_array().cloned().unwrap_or_default();
    crate::outln!(
        "group {} (client {}): {} group point(s) over {}",
        group,
        r["owner"].as_str().unwrap_or("?"),
        pts.len(),
        r["members"]
            .as_array()
            .map(|m| m
                .iter()
                .filter_map(|v| v.as_str())
                .collect::<Vec<_>>()
                .join(", "))
            .unwrap_or_default()
    );
    let now = base::now_ns();
    for p in pts.iter().rev() {
        let cut = p["cut_time_ns"].as_u64().unwrap_or(0);
        let members: Vec<String> = p["members"]
            .as_object()
            .map(|m| m.iter().map(|(d, id)| format!("{d}@{id}")).collect())
            .unwrap_or_default();
        crate::outln!(
            "{:>8}  cut {} ({:>7} ago)  {}",
            p["id"].as_u64().unwrap_or(0),
            human::timestamp(cut),
            human::duration(now.saturating_sub(cut)),
            members.join("  ")
        );
    }
    Ok(Outcome::Ok)
}

/// `sitrep points export --group G POINT --out-dir DIR` (server).
pub(crate) fn export(
    socket: &Path,
    group: &str,
    point: PointSel,
    dir: &Path,
    force: bool,
    json: bool,
) -> anyhow::Result<Outcome> {
    let dir = std::path::absolute(dir)?;
    let r: serde_json::Value = base::control::ask(
        socket,
        &Request::GroupExport {
            group: group.to_string(),
            point,
            out_dir: dir.display().to_string(),
            force,
        },
        Duration::from_secs(24 * 3600),
    )?;
    if json {
        crate::outln!("{}", serde_json::to_string_pretty(&r)?);
        return Ok(Outcome::Ok);
    }
    crate::outln!(
        "exported group point {} of group {group} (cut {}):",
        r["point"]["id"].as_u64().unwrap_or(0),
        human::timestamp(r["point"]["cut_time_ns"].as_u64().unwrap_or(0))
    );
    for i in r["images"].as_array().cloned().unwrap_or_default() {
        crate::outln!(
            "  disk {} point {} → {}",
            i["disk"].as_str().unwrap_or("?"),
            i["point"].as_u64().unwrap_or(0),
            i["export"]["out"].as_str().unwrap_or("?")
        );
    }
    Ok(Outcome::Ok)
}

/// `sitrep failover --group G` (server).
pub(crate) fn failover(
    socket: &Path,
    group: &str,
    point: PointSel,
    test: bool,
    cleanup: bool,
    json: bool,
) -> anyhow::Result<Outcome> {
    if !test && !json {
        eprintln!(
            "unplanned failover of group {group}: replication of its disks stops now; their agents' sessions will be refused"
        );
    }
    let r: serde_json::Value = base::control::ask(
        socket,
        &Request::GroupFailover {
            group: group.to_string(),
            point,
            test,
            cleanup,
        },
        Duration::from_secs(24 * 3600),
    )?;
    if json {
        crate::outln!("{}", serde_json::to_string_pretty(&r)?);
        return Ok(Outcome::Ok);
    }
    if cleanup {
        crate::outln!("test failover of group {group} removed");
        return Ok(Outcome::Ok);
    }
    crate::outln!(
        "{} failover of group {group} at group point {} (cut {}):",
        if test { "test" } else { "unplanned" },
        r["point"]["id"].as_u64().unwrap_or(0),
        human::timestamp(r["point"]["cut_time_ns"].as_u64().unwrap_or(0))
    );
    for m in r["members"].as_array().cloned().unwrap_or_default() {
        crate::outln!(
            "  disk {} point {} → device {}",
            m["disk"].as_str().unwrap_or("?"),
            m["point"]["id"].as_u64().unwrap_or(0),
            m["device"].as_str().unwrap_or("?")
        );
    }
    Ok(Outcome::Ok)
}
