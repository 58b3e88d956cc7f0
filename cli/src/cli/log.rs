//! `sitrep log …`: the tools an operator reaches for when a change log is suspect.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use hrl::chain::{check_link, list_logs};
use hrl::{
    ChainSpec, DiskId, DiskIdentity, Extent, GapReason, GapScope, Generation, GroupId, LogHeader,
    LogReader, LogWriter, Record, RecordBody, RecordFlags, RecoveryMode, Seal, Tail, WriterConfig,
};
use serde::Serialize;

use crate::Outcome;
use crate::human;

/// `sitrep log` subcommands.
#[derive(Subcommand)]
pub(crate) enum LogCommand {
    /// Print a log's header, chain links, state and records per kind.
    ///
    /// Reads every record and validates its checksum. A torn tail of an unsealed log is
    /// reported, not fatal; corruption exits with status 3.
    Inspect(InspectArgs),
    /// Validate every log of a disk's log directory and the chain linking them.
    ///
    /// Exits with status 3 if any log is corrupt or the chain is broken (a log missing,
    /// reordered, from another disk, or not closed cleanly before its successor).
    Verify(VerifyArgs),
    /// Write a small demonstration chain of logs into DIR (for the README tour).
    Demo(DemoArgs),
}

/// Arguments of `sitrep log inspect`.
#[derive(Args)]
pub(crate) struct InspectArgs {
    /// The log file (`NNNNNNNNNNNNNNNNNNNN.hrl`).
    file: PathBuf,
    /// Also list every record.
    #[arg(long)]
    records: bool,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

/// Arguments of `sitrep log verify`.
#[derive(Args)]
pub(crate) struct VerifyArgs {
    /// A disk's log directory.
    dir: PathBuf,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

/// Arguments of `sitrep log demo`.
#[derive(Args)]
pub(crate) struct DemoArgs {
    /// Directory to create the logs in (created if missing; must hold no logs yet).
    dir: PathBuf,
}

/// Runs a `sitrep log` subcommand.
pub(crate) fn run(cmd: LogCommand) -> anyhow::Result<Outcome> {
    match cmd {
        LogCommand::Inspect(a) => inspect(&a),
        LogCommand::Verify(a) => verify(&a),
        LogCommand::Demo(a) => demo(&a),
    }
}

/// Per-kind totals.
#[derive(Serialize, Default, Clone, Copy)]
struct KindStats {
    count: u64,
    bytes: u64,
}

/// One record, for `--records`.
#[derive(Serialize)]
struct RecordLine {
    seq: u64,
    time: String,
    kind: &'static str,
    flags: Vec<&'static str>,
    /// Disk ranges as "offset+len"; `["whole-disk"]` for a whole-disk gap.
    extents: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<String>,
}

/// Everything `inspect` learns about one log file.
#[derive(Serialize)]
struct LogReport {
    path: PathBuf,
    state: &'static str,
    header: Option<LogHeader>,
    seal: Option<Seal>,
    tail: Option<Tail>,
    records: u64,
    first_seq: Option<u64>,
    last_seq: Option<u64>,
    kinds: BTreeMap<&'static str, KindStats>,
    whole_disk_gaps: u64,
    error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    record_list: Option<Vec<RecordLine>>,
}

impl LogReport {
    fn ok(&self) -> bool {
        self.error.is_none()
    }
}

fn report(path: &Path, list_records: bool) -> LogReport {
    let mut rep = LogReport {
        path: path.to_owned(),
        state: "invalid",
        header: None,
        seal: None,
        tail: None,
        records: 0,
        first_seq: None,
        last_seq: None,
        kinds: BTreeMap::new(),
        whole_disk_gaps: 0,
        error: None,
        record_list: list_records.then(Vec::new),
    };
    let mut r = match LogReader::open(path, RecoveryMode::TruncateTail) {
        Ok(r) => r,
        Err(e) => {
            rep.error = Some(e.to_string());
            return rep;
        }
    };
    rep.header = Some(*r.header());
    rep.seal = r.seal().copied();
    loop {
        match r.next_record() {
            Ok(Some(rec)) => tally(&mut rep, &rec),
            Ok(None) => break,
            Err(e) => {
                rep.error = Some(e.to_string());
                return rep;
            }
        }
    }
    rep.tail = r.tail().cloned();
    rep.state = match (&rep.seal, &rep.tail) {
        (Some(s), _) if s.recovered => "sealed-recovered",
        (Some(_), _) => "sealed",
        (None, Some(Tail::Truncated { .. })) => "unsealed-torn",
        (None, _) => "unsealed",
    };
    rep
}

fn tally(rep: &mut LogReport, rec: &Record) {
    rep.records += 1;
    rep.first_seq.get_or_insert(rec.seq.0);
    rep.last_seq = Some(rec.seq.0);
    let kind = rec.body.kind().name();
    let extents = rec.body.extents();
    let covered: u64 = extents.iter().flatten().map(Extent::len).sum();
    let k = rep.kinds.entry(kind).or_default();
    k.count += 1;
    k.bytes += covered;
    if extents.is_none() {
        rep.whole_disk_gaps += 1;
    }
    if let Some(list) = rep.record_list.as_mut() {
        let mut flags = Vec::new();
        if rec.flags.contains(RecordFlags::FUA) {
            flags.push("fua");
        }
        if rec.flags.contains(RecordFlags::PREFLUSH) {
            flags.push("preflush");
        }
        let detail = match &rec.body {
            RecordBody::ConsistencyTag { group, tag } => Some(format!("group {group} tag {tag}")),
            RecordBody::AppConsistentTag { group, tag, label } => {
                Some(format!("group {group} tag {tag} label {label:?}"))
            }
            RecordBody::TrackingGap { reason, .. } => Some(format!("reason {reason:?}")),
            _ => None,
        };
        list.push(RecordLine {
            seq: rec.seq.0,
            time: human::timestamp(rec.timestamp_ns),
            kind,
            flags,
            extents: extents.map_or_else(
                || vec!["whole-disk".to_owned()],
                |v| v.iter().map(ToString::to_string).collect(),
            ),
            detail,
        });
    }
}

fn inspect(a: &InspectArgs) -> anyhow::Result<Outcome> {
    if !a.file.exists() {
        bail!("{}: no such log file", a.file.display());
    }
    let rep = report(&a.file, a.records);
    if a.json {
        crate::outln!("{}", serde_json::to_string_pretty(&rep)?);
    } else {
        print_report(&rep);
    }
    Ok(if rep.ok() {
        Outcome::Ok
    } else {
        Outcome::Invalid
    })
}

fn print_report(rep: &LogReport) {
    crate::outln!("log       {}", rep.path.display());
    if let Some(h) = &rep.header {
        crate::outln!(
            "format    HRL v{}{}",
            hrl::FORMAT_VERSION,
            if h.journal {
                ", journal (records carry data)"
            } else {
                ""
            }
        );
        crate::outln!(
            "disk      {}  size {} ({} bytes)  logical block {}",
            h.disk.id,
            human::bytes(h.disk.size),
            h.disk.size,
            h.disk.logical_block_size
        );
        let prev = if h.prev_log_id.is_nil() {
            "none".to_owned()
        } else {
            h.prev_log_id.to_string()
        };
        crate::outln!(
            "chain     log #{}  id {}  prev {}",
            h.log_seq,
            h.log_id,
            prev
        );
        crate::outln!(
            "          generation {}  first record {}",
            h.generation,
            h.first_seq
        );
        crate::outln!("created   {}", human::timestamp(h.created_unix_ns));
    }
    let state = match (rep.state, &rep.seal, &rep.tail) {
        ("sealed", Some(s), _) => format!(
            "sealed cleanly at {} (end byte {})",
            human::timestamp(s.sealed_unix_ns),
            s.end_offset
        ),
        ("sealed-recovered", Some(s), _) => format!(
            "sealed by crash recovery at {}: the writer died; changes after its last \
             commit may be missing",
            human::timestamp(s.sealed_unix_ns)
        ),
        ("unsealed-torn", _, Some(Tail::Truncated { offset, cause })) => {
            format!("NOT SEALED, torn tail at byte {offset} ({cause}): the writer died mid-append")
        }
        ("unsealed", ..) => {
            "NOT SEALED: still being written, or the writer died between commits".to_owned()
        }
        _ => "INVALID".to_owned(),
    };
    crate::outln!("state     {state}");
    match (rep.first_seq, rep.last_seq) {
        (Some(f), Some(l)) => crate::outln!("records   {} (seq {f}..={l})", rep.records),
        _ => crate::outln!("records   0"),
    }
    if !rep.kinds.is_empty() {
        crate::outln!("  {:<20} {:>10} {:>16}", "kind", "count", "bytes covered");
        for (k, s) in &rep.kinds {
            crate::outln!("  {k:<20} {:>10} {:>16}", s.count, s.bytes);
        }
    }
    if rep.whole_disk_gaps > 0 {
        crate::outln!(
            "WARNING   {} whole-disk tracking gap(s): the whole disk must be (re)synced",
            rep.whole_disk_gaps
        );
    }
    for line in rep.record_list.iter().flatten() {
        let flags = if line.flags.is_empty() {
            String::new()
        } else {
            format!(" [{}]", line.flags.join(","))
        };
        let detail = line
            .detail
            .as_deref()
            .map(|d| format!(" {d}"))
            .unwrap_or_default();
        crate::outln!(
            "  #{:<8} {} {}{flags} {}{detail}",
            line.seq,
            line.time,
            line.kind,
            line.extents.join(" ")
        );
    }
    if let Some(e) = &rep.error {
        crate::outln!("ERROR     {e}");
    }
}

/// The result of checking one link between consecutive logs.
#[derive(Serialize)]
struct LinkReport {
    from: PathBuf,
    to: PathBuf,
    error: Option<String>,
}

/// The result of `verify`.
#[derive(Serialize)]
struct ChainReport {
    dir: PathBuf,
    ok: bool,
    logs: Vec<LogReport>,
    links: Vec<LinkReport>,
    total_bytes: u64,
}

fn verify(a: &VerifyArgs) -> anyhow::Result<Outcome> {
    let logs = list_logs(&a.dir).with_context(|| format!("listing {}", a.dir.display()))?;
    let mut rep = ChainReport {
        dir: a.dir.clone(),
        ok: true,
        logs: Vec::new(),
        links: Vec::new(),
        total_bytes: 0,
    };
    for (_, path) in &logs {
        rep.total_bytes += std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        let r = report(path, false);
        if let (Some(prev), Some(h)) = (rep.logs.last(), &r.header) {
            let error = match &prev.header {
                Some(ph) => check_link(ph, prev.seal.as_ref(), h)
                    .err()
                    .map(|c| c.to_string()),
                None => Some("previous log is unreadable".to_owned()),
            };
            rep.links.push(LinkReport {
                from: prev.path.clone(),
                to: path.clone(),
                error,
            });
        }
        rep.logs.push(r);
    }
    rep.ok = rep.logs.iter().all(LogReport::ok) && rep.links.iter().all(|l| l.error.is_none());
    if a.json {
        crate::outln!("{}", serde_json::to_string_pretty(&rep)?);
    } else {
        print_chain(&rep);
    }
    Ok(if rep.ok {
        Outcome::Ok
    } else {
        Outcome::Invalid
    })
}

fn print_chain(rep: &ChainReport) {
    crate::outln!(
        "{}: {} log(s), {}",
        rep.dir.display(),
        rep.logs.len(),
        human::bytes(rep.total_bytes)
    );
    for (i, l) in rep.logs.iter().enumerate() {
        let name = l
            .path
            .file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default();
        let seqs = match (l.first_seq, l.last_seq) {
            (Some(f), Some(s)) => format!("seq {f}..={s}"),
            _ => "empty".to_owned(),
        };
        let status = l.error.as_deref().unwrap_or(l.state);
        crate::outln!("  {name}  {:>6} records  {seqs:<24} {status}", l.records);
        if let Some(link) = rep.links.get(i).filter(|k| k.error.is_some()) {
            let to = link
                .to
                .file_name()
                .map(|n| n.to_string_lossy())
                .unwrap_or_default();
            crate::outln!(
                "  BROKEN CHAIN before {to}: {}",
                link.error.as_deref().unwrap_or_default()
            );
        }
    }
    crate::outln!(
        "{}",
        if rep.ok {
            "chain OK"
        } else {
            "chain INVALID: the disk needs a resync (see above)"
        }
    );
}

fn demo(a: &DemoArgs) -> anyhow::Result<Outcome> {
    std::fs::create_dir_all(&a.dir).with_context(|| format!("creating {}", a.dir.display()))?;
    if !list_logs(&a.dir)?.is_empty() {
        bail!(
            "{} already holds logs; choose an empty directory",
            a.dir.display()
        );
    }
    let spec = ChainSpec {
        disk: DiskIdentity {
            id: DiskId::random()?,
            size: 1 << 30,
            logical_block_size: 4096,
        },
        journal: false,
        generation: Generation(1),
    };
    let (mut w, _) = LogWriter::open(&a.dir, spec, WriterConfig::default())?;
    let ext = |off: u64, len: u64| Extent::new(off, len).context("demo extent");
    // A first start has no clean predecessor: the whole disk must be synced once.
    w.append(
        RecordFlags::empty(),
        &RecordBody::TrackingGap {
            reason: GapReason::NoCleanPredecessor,
            scope: GapScope::WholeDisk,
        },
    )?;
    let group = GroupId::random()?;
    for cycle in 0..3u64 {
        for i in 0..100u64 {
            let off = ((cycle * 7919 + i * 104_729) % 262_144) * 4096;
            w.append(
                RecordFlags::empty(),
                &RecordBody::Write(vec![ext(off, 4096)?]),
            )?;
        }
        w.append(
            RecordFlags::empty(),
            &RecordBody::Discard(vec![ext(cycle << 24, 1 << 20)?]),
        )?;
        w.append(RecordFlags::PREFLUSH, &RecordBody::Flush)?;
        w.append(
            RecordFlags::empty(),
            &RecordBody::ConsistencyTag {
                group,
                tag: cycle + 1,
            },
        )?;
        w.commit()?;
        let sealed = if cycle < 2 { w.rotate()? } else { break };
        crate::outln!("sealed {}", sealed.path.display());
    }
    let last = w.close()?;
    crate::outln!("sealed {}", last.path.display());
    Ok(Outcome::Ok)
}
