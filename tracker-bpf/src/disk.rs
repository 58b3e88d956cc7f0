//! One tracked disk's log thread: it alone owns the disk's `LogWriter`.
//!
//! Messages arrive from the poller (events, bitmap fallbacks, gaps) and from the tracker
//! API (rotate, stop). Events are coalesced for `delay`, then appended and committed as one
//! group. Nothing here can block the application: if the log is over its space cap the
//! window is logged as a tracking gap (always accepted) instead; if the log cannot be
//! written at all the window is kept and retried on the next tick.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use hrl::{Extent, GapReason, GapScope, LogWriter, RecordBody, RecordFlags, SealedLog};

use crate::coalesce::{Coalescer, MAX_EXTENTS_PER_RECORD};
use crate::completions::RecentRanges;
use crate::continuity::{self, CleanStop};
use crate::error::{Error, Result};
use crate::event::{Event, Op};

/// Messages to a disk thread.
pub(crate) enum DiskMsg {
    /// Change events from the ring buffer.
    Events(Vec<Event>),
    /// Ranges recovered from the in-kernel fallback bitmap, or the whole disk.
    Fallback { extents: Vec<Extent>, whole: bool },
    /// Ranges written, from the fine write bitmap (`granules` bits were set).
    Written { extents: Vec<Extent>, granules: u64 },
    /// Record a tracking gap over the whole disk.
    Gap { reason: GapReason, why: String },
    /// The kernel completed `sectors` of changes the program never saw complete (see
    /// [`crate::completions`]): record a gap over the recent logs' ranges (`carry`: every
    /// change was also recorded when queued), or over the whole disk.
    Missed { sectors: u64, carry: bool },
    /// Seal the current log and start the next.
    Rotate(Sender<Result<SealedLog>>),
    /// Append a consistency tag (after everything queued before it) and commit.
    Tag(u64, Sender<Result<()>>),
    /// Write everything queued before it into the log (the crash sentinel's barrier).
    Commit(Sender<Result<()>>),
    /// Record a tracking gap over these ranges only (after a crash, from the sentinel).
    GapExtents {
        reason: GapReason,
        why: String,
        extents: Vec<Extent>,
    },
    /// Flush, seal, and (if given) write the clean-stop record.
    Stop(Option<CleanStop>, Sender<Result<StopReport>>),
}

/// Counters of one disk.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct DiskStats {
    /// Change events received (ring events, plus granules from the fine write bitmap).
    pub events: u64,
    /// Granules (bits) taken from the fine write bitmap.
    pub bitmap_granules: u64,
    /// Bytes those events covered.
    pub event_bytes: u64,
    /// Extents logged after coalescing (events / extents is the coalescing ratio).
    pub extents: u64,
    /// Records appended.
    pub records: u64,
    /// Group commits.
    pub commits: u64,
    /// Extents recovered from the fallback bitmap.
    pub fallback_extents: u64,
    /// Tracking-gap records written.
    pub gaps: u64,
    /// Consistency tags written ([`crate::Tracker::mark`]; not counted in `records`).
    pub tags: u64,
    /// Bytes of all logs in the directory.
    pub log_bytes: u64,
    /// Log write failures (retried).
    pub log_errors: u64,
    /// The last log failure, if any.
    pub last_error: Option<String>,
    /// Whether completed changes are checked against the kernel's own counts (blk-mq
    /// devices with iostats on; see docs/tracking.md, *Missed completions*).
    pub completion_check: bool,
    /// Sectors the kernel completed that the program never saw complete.
    pub missed_sectors: u64,
    /// Gaps recorded for them.
    pub missed_gaps: u64,
}

/// What a clean stop produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StopReport {
    /// The device.
    pub device: PathBuf,
    /// The sealed last log.
    pub sealed: SealedLog,
    /// Whether a clean-stop record was written (a restart may then continue without resync).
    pub clean: bool,
    /// Final counters.
    pub stats: DiskStats,
}

pub(crate) struct DiskThread {
    pub(crate) device: PathBuf,
    pub(crate) writer: LogWriter,
    pub(crate) rx: Receiver<DiskMsg>,
    pub(crate) stats: Arc<Mutex<DiskStats>>,
    pub(crate) delay: Duration,
    pub(crate) disk_size: u64,
    pub(crate) recent: RecentRanges,
}

/// Pending events above which a window is flushed early.
const MAX_WINDOW_EVENTS: u64 = 1 << 16;

impl DiskThread {
    pub(crate) fn run(mut self) {
        let mut window = Coalescer::default();
        let mut since: Option<Instant> = None;
        let mut spare_warned = false;
        self.spare(&mut spare_warned);
        loop {
            let timeout = since.map_or(Duration::from_millis(100), |t| {
                self.delay.saturating_sub(t.elapsed())
            });
            match self.rx.recv_timeout(timeout) {
                Ok(DiskMsg::Events(evs)) => {
                    for e in &evs {
                        self.bump(|s| {
                            s.events += 1;
                            s.event_bytes += u64::from(e.bytes);
                        });
                        if e.op == Op::Flush {
                            self.flush(&mut window);
                            self.append(RecordFlags::PREFLUSH, &RecordBody::Flush);
                        } else {
                            window.push(e);
                        }
                    }
                    if !window.is_empty() {
                        since.get_or_insert_with(Instant::now);
                    }
                    if window.len() >= MAX_WINDOW_EVENTS {
                        self.flush(&mut window);
                        since = None;
                    }
                }
                Ok(DiskMsg::Fallback { extents, whole }) => self.fallback(&extents, whole),
                Ok(DiskMsg::Written { extents, granules }) => self.written(&extents, granules),
                Ok(DiskMsg::Gap { reason, why }) => {
                    tracing::warn!(device = %self.device.display(), %why, "tracking gap");
                    self.gap(reason, GapScope::WholeDisk);
                }
                Ok(DiskMsg::Missed { sectors, carry }) => {
                    self.flush(&mut window);
                    since = None;
                    self.missed(sectors, carry);
                }
                Ok(DiskMsg::Commit(reply)) => {
                    self.flush(&mut window);
                    since = None;
                    let r = self.writer.commit().map(|_| ());
                    let _ = reply.send(r.map_err(|e| self.log_err(e)));
                }
                Ok(DiskMsg::GapExtents {
                    reason,
                    why,
                    extents,
                }) => self.gap_extents(reason, &why, &extents),
                Ok(DiskMsg::Tag(tag, reply)) => {
                    self.flush(&mut window);
                    since = None;
                    let _ = reply.send(self.tag(tag));
                }
                Ok(DiskMsg::Rotate(reply)) => {
                    self.flush(&mut window);
                    since = None;
                    let r = self.writer.rotate().map_err(|e| self.log_err(e));
                    if r.is_ok() {
                        self.recent.sealed(Instant::now());
                    }
                    let _ = reply.send(r);
                    // After the answer: the cut's caller is not kept waiting for it.
                    self.spare(&mut spare_warned);
                }
                Ok(DiskMsg::Stop(clean, reply)) => {
                    self.flush(&mut window);
                    let _ = reply.send(self.stop(clean));
                    return;
                }
                Err(RecvTimeoutError::Timeout) => {
                    self.flush(&mut window);
                    since = None;
                    // A log that filled up rotated inside a commit and used the spare.
                    self.spare(&mut spare_warned);
                }
                // The tracker was dropped without a stop: leave the log unsealed (the next
                // start recovers it and records a gap), like a crash would.
                Err(RecvTimeoutError::Disconnected) => {
                    self.flush(&mut window);
                    return;
                }
            }
        }
    }

    /// Makes the next log's file ahead if there is none (`LogWriter::prepare_spare`): a cut
    /// then writes only a header, ~4 ms instead of ~15 ms (16 MiB of zeros and their sync),
    /// and a cut's time is inside its cycle's race window. A failure is not a tracking
    /// problem (the next rotation makes its file itself): warned about once until it works.
    fn spare(&mut self, warned: &mut bool) {
        if self.writer.has_spare() {
            return;
        }
        match self.writer.prepare_spare() {
            Ok(()) => *warned = false,
            Err(e) if !*warned => {
                *warned = true;
                tracing::warn!(device = %self.device.display(), "preparing the next log: {e}");
            }
            Err(_) => {}
        }
    }

    fn bump(&self, f: impl FnOnce(&mut DiskStats)) {
        if let Ok(mut s) = self.stats.lock() {
            f(&mut s);
        }
    }

    fn log_err(&self, e: hrl::Error) -> Error {
        Error::Log {
            device: self.device.clone(),
            source: e,
        }
    }

    /// Appends one record; over the space cap, logs its ranges as a gap instead.
    fn append(&mut self, flags: RecordFlags, body: &RecordBody) {
        match self.writer.append(flags, body) {
            Ok(_) => {
                self.note(body);
                self.bump(|s| s.records += 1);
            }
            Err(hrl::Error::Full { .. }) => {
                let scope = body
                    .extents()
                    .map_or(GapScope::WholeDisk, GapScope::Extents);
                self.gap(GapReason::LogSpaceExhausted, scope);
            }
            Err(e) => self.failed(&e),
        }
    }

    fn gap(&mut self, reason: GapReason, scope: GapScope) {
        let scope = match scope {
            GapScope::Extents(v) if v.is_empty() => return,
            s => s,
        };
        let body = RecordBody::TrackingGap { reason, scope };
        match self.writer.append(RecordFlags::empty(), &body) {
            Ok(_) => {
                self.note(&body);
                self.bump(|s| {
                    s.records += 1;
                    s.gaps += 1;
                });
            }
            Err(e) => self.failed(&e),
        }
        self.commit();
    }

    /// Notes a logged record's ranges in the current log's [`RecentRanges`].
    fn note(&mut self, body: &RecordBody) {
        if let RecordBody::Write(v)
        | RecordBody::Discard(v)
        | RecordBody::SecureErase(v)
        | RecordBody::WriteZeroes(v)
        | RecordBody::TrackingGap {
            scope: GapScope::Extents(v),
            ..
        } = body
        {
            for e in v {
                self.recent.mark(e);
            }
        }
    }

    /// Missed completions (see [`crate::completions`]): the gap goes into the current log,
    /// which is sealed after the missed changes completed.
    fn missed(&mut self, sectors: u64, carry: bool) {
        let scope = if carry {
            GapScope::Extents(self.recent.suspects(Instant::now()))
        } else {
            GapScope::WholeDisk
        };
        tracing::warn!(
            device = %self.device.display(),
            sectors,
            whole_disk = !carry,
            "the kernel completed changes the tracker did not see complete; recording a gap \
             over every range they can be in"
        );
        // No suspects: the missed changes were queued while the current log was open, and
        // their queue-time records are in it (`gap` writes nothing for an empty scope).
        let recorded = !matches!(&scope, GapScope::Extents(v) if v.is_empty());
        self.bump(|s| {
            s.missed_sectors = s.missed_sectors.saturating_add(sectors);
            s.missed_gaps += u64::from(recorded);
        });
        self.gap(GapReason::CompletionsMissed, scope);
    }

    fn failed(&self, e: &hrl::Error) {
        tracing::error!(device = %self.device.display(), error = %e, "change log append failed");
        self.bump(|s| {
            s.log_errors += 1;
            s.last_error = Some(e.to_string());
        });
    }

    fn flush(&mut self, window: &mut Coalescer) {
        if !window.is_empty() {
            let d = window.drain(self.disk_size);
            for (flags, body) in &d.records {
                self.append(*flags, body);
            }
            self.bump(|s| s.extents += d.extents);
            if d.out_of_range > 0 {
                // The device is not what we think it is: never trust a partial picture.
                self.gap(GapReason::EventsLost, GapScope::WholeDisk);
            }
        }
        self.commit();
    }

    fn commit(&mut self) {
        match self.writer.commit() {
            Ok(_) => {}
            Err(e) => self.failed(&e),
        }
        let (commits, bytes) = (self.writer.stats().commits, self.writer.total_bytes());
        self.bump(|s| {
            s.commits = commits;
            s.log_bytes = bytes;
        });
    }

    /// Ranges from the fine write bitmap, appended and committed.
    fn written(&mut self, extents: &[Extent], granules: u64) {
        self.bump(|s| {
            s.events += granules;
            s.bitmap_granules += granules;
            s.extents += extents.len() as u64;
        });
        for chunk in extents.chunks(MAX_EXTENTS_PER_RECORD) {
            self.append(RecordFlags::empty(), &RecordBody::Write(chunk.to_vec()));
        }
        self.commit();
    }

    /// Appends consistency tag `tag` and commits it.
    fn tag(&mut self, tag: u64) -> Result<()> {
        let body = RecordBody::ConsistencyTag {
            group: hrl::GroupId::NIL,
            tag,
        };
        let r = self
            .writer
            .append(RecordFlags::empty(), &body)
            .map(|_| ())
            .and_then(|()| self.writer.commit().map(|_| ()));
        if r.is_ok() {
            self.bump(|s| s.tags += 1);
        }
        r.map_err(|e| self.log_err(e))
    }

    /// A tracking gap over `extents` only (after a crash, from the crash sentinel), committed.
    fn gap_extents(&mut self, reason: GapReason, why: &str, extents: &[Extent]) {
        tracing::warn!(device = %self.device.display(), %why, "tracking gap");
        for chunk in extents.chunks(MAX_EXTENTS_PER_RECORD) {
            self.gap(reason, GapScope::Extents(chunk.to_vec()));
        }
        self.commit();
    }

    fn fallback(&mut self, extents: &[Extent], whole: bool) {
        if whole {
            self.gap(GapReason::EventsLost, GapScope::WholeDisk);
        }
        for chunk in extents.chunks(MAX_EXTENTS_PER_RECORD) {
            self.append(RecordFlags::empty(), &RecordBody::Write(chunk.to_vec()));
        }
        self.bump(|s| s.fallback_extents += extents.len() as u64);
        self.commit();
    }

    fn stop(self, clean: Option<CleanStop>) -> Result<StopReport> {
        let device = self.device.clone();
        let stats = self.stats.clone();
        let dir = self.writer.dir().to_owned();
        let sealed = self.writer.close().map_err(|e| Error::Log {
            device: device.clone(),
            source: e,
        })?;
        let mut clean_written = false;
        if let Some(mut c) = clean {
            c.sealed_log_id = sealed.header.log_id.to_string();
            continuity::save(&dir, &c).map_err(|e| Error::Log {
                device: device.clone(),
                source: hrl::Error::Io {
                    path: dir.join(continuity::STATE_FILE),
                    op: "write",
                    source: e,
                },
            })?;
            clean_written = true;
        }
        let stats = stats.lock().map(|s| s.clone()).unwrap_or_default();
        Ok(StopReport {
            device,
            sealed,
            clean: clean_written,
            stats,
        })
    }
}
