//! Crash test with real processes: a child appends and commits (fdatasync) records and
//! reports each durable sequence number on stdout; the parent SIGKILLs it at a random point.
//! Reopening must recover every record the child reported durable, with a valid chain.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failures should panic

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use hrl::chain::{check_link, list_logs};
use hrl::{LogReader, LogWriter, RecordBody, RecordFlags, RecoveryMode, Resume, WriterConfig};

const CHILD_ENV: &str = "HRL_CRASH_CHILD_DIR";
/// Set: the child appends through a memory mapping (`WriterConfig::map`, explicit syncs) and
/// reports what `write_pending` put in the page cache — which a process kill must not lose.
const MAPPED_ENV: &str = "HRL_CRASH_CHILD_MAPPED";

/// The child's body: only does anything when the parent runs it.
#[test]
fn crash_child() {
    let Some(dir) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    let mapped = std::env::var_os(MAPPED_ENV).is_some();
    let cfg = WriterConfig {
        max_log_bytes: 64 << 10, // rotate often so kills land in every phase
        sync: if mapped {
            hrl::SyncPolicy::Explicit
        } else {
            hrl::SyncPolicy::Data
        },
        map: mapped,
        ..WriterConfig::default()
    };
    let (mut w, _) = LogWriter::open(std::path::Path::new(&dir), common::spec(), cfg).unwrap();
    let mut i = 0u64;
    loop {
        for _ in 0..1 + i % 7 {
            let off = (i * 4096) % (common::DISK_SIZE - 4096);
            let body = RecordBody::Write(vec![common::ext(off, 4096)]);
            w.append(RecordFlags::empty(), &body).unwrap();
            i += 1;
        }
        let durable = if mapped {
            let written = w.write_pending().unwrap().unwrap();
            if w.rotation_due() {
                w.rotate().unwrap();
            }
            written
        } else {
            w.commit().unwrap().unwrap()
        };
        println!("{}", durable.0);
    }
}

#[test]
fn sigkill_at_random_points_loses_no_committed_record() {
    sigkill_rounds(false);
}

/// Mapped appends (`WriterConfig::map`): a record copied into the mapping is in the page
/// cache, so killing the writer's process loses none that `write_pending` reported.
#[test]
fn sigkill_with_mapped_appends_loses_no_written_record() {
    sigkill_rounds(true);
}

fn sigkill_rounds(mapped: bool) {
    let exe = std::env::current_exe().unwrap();
    let d = tempfile::tempdir().unwrap();
    let mut last_reported = 0u64;
    for round in 0..6u64 {
        let mut cmd = Command::new(&exe);
        if mapped {
            cmd.env(MAPPED_ENV, "1");
        }
        let mut child = cmd
            .args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, d.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let out = BufReader::new(child.stdout.take().unwrap());
        // Kill after a pseudo-random number of commits (10..400) or 5 s, whichever first.
        let kill_after = 10 + (round * 7919 + 13) % 390;
        let start = Instant::now();
        let mut seen = 0;
        for line in out.lines() {
            let Ok(line) = line else { break };
            if let Ok(n) = line.trim().parse::<u64>() {
                assert!(
                    n > last_reported,
                    "sequence numbers keep growing across restarts"
                );
                last_reported = n;
                seen += 1;
            }
            if seen >= kill_after || start.elapsed() > Duration::from_secs(5) {
                break;
            }
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        assert!(seen > 0, "child made no progress in round {round}");
        let (_, newest) = list_logs(d.path()).unwrap().pop().unwrap();
        // Killed between a rotation's seal and the publication of the next log, the newest
        // log is a sealed one (its successor is still a `.tmp`, dropped at recovery).
        let sealed = LogReader::open(&newest, RecoveryMode::TruncateTail)
            .unwrap()
            .seal()
            .is_some();
        if mapped && !sealed {
            // The open log was allocated whole for its mapping: the copies really went there.
            let open = newest;
            let len = std::fs::metadata(&open).unwrap().len();
            assert_eq!(
                len,
                (64 << 10) + (1 << 20),
                "round {round}: {}",
                open.display()
            );
        }

        // Recovery: every reported-durable record is there, the chain links.
        let (w, resume) = LogWriter::open(d.path(), common::spec(), common::cfg()).unwrap();
        assert!(
            matches!(resume, Resume::Recovered { .. }),
            "round {round}: {resume:?}"
        );
        let next = w.next_seq().0;
        assert!(
            next > last_reported,
            "round {round}: recovered up to {next}, child reported {last_reported} durable"
        );
        last_reported = next - 1;
        w.close().unwrap();
    }
    let mut prev: Option<(hrl::LogHeader, Option<hrl::Seal>)> = None;
    let mut count = 0;
    for (_, path) in list_logs(d.path()).unwrap() {
        let mut r = LogReader::open(&path, RecoveryMode::Strict).unwrap();
        if let Some((h, s)) = &prev {
            check_link(h, s.as_ref(), r.header()).unwrap();
        }
        count += r.read_all().unwrap().len() as u64;
        prev = Some((*r.header(), r.seal().copied()));
    }
    assert_eq!(
        count, last_reported,
        "records are numbered 1..=n without holes"
    );
}
