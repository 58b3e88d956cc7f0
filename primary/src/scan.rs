//! The compare engine of the resync and of verify: windows of the source read and hashed
//! on a thread, coarse then fine digest requests pipelined to the server, differing 4 KiB
//! blocks sent as repairs (docs/architecture.md, *Resync*).

use std::collections::VecDeque;
use std::fs::OpenOptions;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::PathBuf;

use proto::{Frame, Msg};
use tokio::sync::mpsc;

use super::jobs::JobStep;
use super::owner::Owner;
use super::session::{Session, send_frame};
use super::{Agent, DiskRt, lock};
use base::digest::{self, Digest, Key};
use base::net::ReplError;
use base::ranges::{self, Range};

/// Bytes of one compare window.
pub const WINDOW_BYTES: u64 = 8 << 20;
/// Ranges in one window (and so in one digest request).
pub const WINDOW_RANGES: usize = 1024;
/// Windows whose digests are requested and not yet settled.
pub const WINDOWS_IN_FLIGHT: usize = 6;
/// Commit the repairs and the cursor after this many compared bytes...
pub const COMMIT_EVERY: u64 = 64 << 20;
/// ... or as soon as this much repair data (data and zero ranges) waits for its commit. Each
/// commit costs the server an fdatasync (and an undo part): committing every window made a
/// 4 GiB resync with 1 % scattered changes wait on ~500 of them on a slow disk.
pub const COMMIT_DATA: u64 = 16 << 20;

/// What a scan does with differences.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Pass {
    /// Report them only.
    Compare,
    /// Send the differing blocks and commit them; the committed cursor is each settled
    /// window's end, or `fixed_cursor` (repairs outside the scope order).
    Repair {
        /// Cursor to commit instead of window ends.
        fixed_cursor: Option<u64>,
    },
}

/// One 1 MiB (or shorter) piece of a window.
#[derive(Debug, Clone, Copy)]
struct Piece {
    offset: u64,
    len: u64,
    data_at: usize,
    fine_at: usize,
}

/// A window of the source, read and hashed.
struct SrcWindow {
    ranges: Vec<Range>,
    end: u64,
    store: Vec<u8>,
    base: usize,
    pieces: Vec<Piece>,
    fines: Vec<Digest>,
    coarse: Vec<Digest>,
}

impl SrcWindow {
    fn data(&self, piece: &Piece, at: u64, len: u64) -> &[u8] {
        let s = self.base + piece.data_at + usize::try_from(at - piece.offset).unwrap_or(0);
        let e = s + usize::try_from(len).unwrap_or(0);
        &self.store[s..e]
    }
}

/// Reads and hashes `windows` of `device` on a thread, a few windows ahead.
fn spawn_source(
    device: PathBuf,
    key: Key,
    windows: Vec<Vec<Range>>,
) -> mpsc::Receiver<Result<SrcWindow, String>> {
    let (tx, rx) = mpsc::channel(2);
    std::thread::spawn(move || {
        let file = match OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECT)
            .open(&device)
        {
            Ok(f) => f,
            Err(e) => {
                let _ = tx.blocking_send(Err(format!("{}: {e}", device.display())));
                return;
            }
        };
        for ranges in windows {
            let total = usize::try_from(ranges::total(&ranges)).unwrap_or(0);
            let mut store = vec![0u8; total + base::devread::ALIGN];
            let base = store
                .as_ptr()
                .align_offset(base::devread::ALIGN)
                .min(base::devread::ALIGN);
            let mut pieces = Vec::new();
            let mut fines = Vec::new();
            let mut coarse = Vec::new();
            let mut pos = 0usize;
            let mut failed = None;
            for &(o, l) in &ranges {
                let n = usize::try_from(l).unwrap_or(0);
                let buf = &mut store[base + pos..base + pos + n];
                if let Err(e) = file.read_exact_at(buf, o) {
                    failed = Some(format!("{}: reading {o}+{l}: {e}", device.display()));
                    break;
                }
                let mut at = 0u64;
                while at < l {
                    let plen = (l - at).min(digest::COARSE as u64);
                    let ds = base + pos + usize::try_from(at).unwrap_or(0);
                    let piece = Piece {
                        offset: o + at,
                        len: plen,
                        data_at: pos + usize::try_from(at).unwrap_or(0),
                        fine_at: fines.len(),
                    };
                    key.digest(
                        &store[ds..ds + usize::try_from(plen).unwrap_or(0)],
                        &mut fines,
                        &mut coarse,
                    );
                    pieces.push(piece);
                    at += plen;
                }
                pos += n;
            }
            let end = ranges.last().map_or(0, |r| r.0 + r.1);
            let item = match failed {
                Some(e) => Err(e),
                None => Ok(SrcWindow {
                    ranges,
                    end,
                    store,
                    base,
                    pieces,
                    fines,
                    coarse,
                }),
            };
            let stop = item.is_err();
            if tx.blocking_send(item).is_err() || stop {
                return;
            }
        }
    });
    rx
}

enum WState {
    Coarse,
    Fine(Vec<usize>),
    Done,
}

struct InFlight {
    w: SrcWindow,
    req: u64,
    state: WState,
}

fn fine_count(len: u64) -> usize {
    usize::try_from(len.div_ceil(digest::FINE as u64)).unwrap_or(0)
}

/// Compares `windows` of the source with the replica; repairs differences when asked.
/// Returns the differing ranges.
pub(crate) async fn scan(
    agent: &Agent,
    rt: &DiskRt,
    s: &mut Session,
    key: &Key,
    windows: Vec<Vec<Range>>,
    pass: Pass,
    own: &mut Owner,
) -> Result<Vec<Range>, ReplError> {
    let device = lock(&rt.prot).device.clone();
    let mut sc = Scan {
        rt,
        pass,
        src: spawn_source(device, key.clone(), windows),
        q: VecDeque::new(),
        next_req: 0,
        src_done: false,
        commits_out: 0,
        dirty: 0,
        since_commit: 0,
        cursor: None,
        found: Vec::new(),
        enc: proto::Encoder::new(agent.encode_opts()),
        frame: Vec::new(),
        peer: s.peer.clone(),
    };
    loop {
        sc.request(s, own).await?;
        sc.settle(s).await?;
        if sc.q.is_empty() && sc.src_done {
            break;
        }
        if sc.q.is_empty() {
            continue;
        }
        sc.progress(agent, s);
        match s.answer(rt).await? {
            Msg::Digests { req, digests } => sc.digests(s, req, &digests).await?,
            Msg::ResyncAck { .. } if sc.commits_out > 0 => sc.commits_out -= 1,
            m => return Err(sc.proto_err(format!("{} during a resync scan", m.name()))),
        }
    }
    sc.finish(s).await?;
    Ok(sc.found)
}

/// A scan in progress: the windows in flight, oldest first, and the commits owed.
struct Scan<'a> {
    rt: &'a DiskRt,
    pass: Pass,
    src: mpsc::Receiver<Result<SrcWindow, String>>,
    q: VecDeque<InFlight>,
    next_req: u64,
    src_done: bool,
    commits_out: usize,
    /// Repair data sent since the last commit (held in the server's memory until then).
    dirty: u64,
    since_commit: u64,
    cursor: Option<u64>,
    found: Vec<Range>,
    enc: proto::Encoder,
    frame: Vec<u8>,
    peer: String,
}

impl Scan<'_> {
    fn proto_err(&self, what: String) -> ReplError {
        ReplError::Protocol(format!("{}: {what}", self.peer))
    }

    /// Requests coarse digests for source windows until enough are in flight.
    async fn request(&mut self, s: &mut Session, own: &mut Owner) -> Result<(), ReplError> {
        while !self.src_done && self.q.len() < WINDOWS_IN_FLIGHT {
            let w = tokio::select! {
                w = self.src.recv() => w,
                () = own.stopped() => return Err(ReplError::Local("stopping".into())),
            };
            match w {
                None => self.src_done = true,
                Some(Err(e)) => return Err(ReplError::Local(e)),
                Some(Ok(w)) => {
                    self.next_req += 1;
                    s.msg(Msg::DigestReq {
                        req: self.next_req,
                        coarse: true,
                        ranges: w.ranges.clone(),
                    })
                    .await?;
                    self.q.push_back(InFlight {
                        w,
                        req: self.next_req,
                        state: WState::Coarse,
                    });
                }
            }
        }
        Ok(())
    }

    /// Retires the settled windows at the front; commits the repairs when enough wait.
    async fn settle(&mut self, s: &mut Session) -> Result<(), ReplError> {
        while self
            .q
            .front()
            .is_some_and(|f| matches!(f.state, WState::Done))
        {
            let Some(f) = self.q.pop_front() else { break };
            let n = ranges::total(&f.w.ranges);
            self.since_commit += n;
            self.cursor = Some(f.w.end);
            self.rt.set(|st| {
                if let Some(r) = &mut st.resync {
                    r.pass_done += n;
                    r.compared += n;
                }
            });
            if let Pass::Repair { fixed_cursor } = self.pass
                && (self.dirty >= COMMIT_DATA || self.since_commit >= COMMIT_EVERY)
            {
                s.msg(Msg::ResyncCommit {
                    cursor: fixed_cursor.unwrap_or(f.w.end),
                })
                .await?;
                self.commits_out += 1;
                self.dirty = 0;
                self.since_commit = 0;
            }
        }
        Ok(())
    }

    /// Publishes the pass's progress (status and job).
    fn progress(&self, agent: &Agent, s: &Session) {
        let resync = {
            let st = self.rt.snapshot();
            st.resync
                .as_ref()
                .map(|r| (r.pass_done, r.pass_total, r.phase))
        };
        // Without a resync run this is a planned failover's compare: its job stays at the
        // `compare` step it set.
        if let Some((done, total, phase)) = resync {
            agent.job_step(self.rt, JobStep::from(phase), done, total);
        }
        let wire = s.w.wire_bytes;
        self.rt.set(|st| {
            if let Some(r) = &mut st.resync {
                r.wire_now = wire;
            }
        });
    }

    /// Takes the server's digests for request `req`: coarse ones lead to a fine request
    /// for the pieces that differ, fine ones to the differing runs (repaired if asked).
    async fn digests(
        &mut self,
        s: &mut Session,
        req: u64,
        digests: &[Digest],
    ) -> Result<(), ReplError> {
        let Some(at) = self.q.iter().position(|f| f.req == req) else {
            return Err(self.proto_err(format!("Digests for unknown request {req}")));
        };
        match std::mem::replace(&mut self.q[at].state, WState::Done) {
            WState::Coarse => self.coarse(s, at, digests).await,
            WState::Fine(idx) => self.fine(s, at, &idx, digests).await,
            WState::Done => Err(self.proto_err(format!("a second answer to request {req}"))),
        }
    }

    /// Coarse digests of window `at`: asks fine digests of the pieces that differ.
    async fn coarse(
        &mut self,
        s: &mut Session,
        at: usize,
        digests: &[Digest],
    ) -> Result<(), ReplError> {
        let f = &self.q[at];
        if digests.len() != f.w.pieces.len() {
            return Err(self.proto_err(format!(
                "{} coarse digests for {} pieces",
                digests.len(),
                f.w.pieces.len()
            )));
        }
        let differ: Vec<usize> = (0..f.w.pieces.len())
            .filter(|&i| digests[i] != f.w.coarse[i])
            .collect();
        if differ.is_empty() {
            return Ok(());
        }
        self.next_req += 1;
        let ranges = differ
            .iter()
            .map(|&i| (f.w.pieces[i].offset, f.w.pieces[i].len))
            .collect();
        let f = &mut self.q[at];
        f.req = self.next_req;
        f.state = WState::Fine(differ);
        s.msg(Msg::DigestReq {
            req: self.next_req,
            coarse: false,
            ranges,
        })
        .await
    }

    /// Fine digests of pieces `idx` of window `at`: records (and repairs) the differing
    /// runs.
    async fn fine(
        &mut self,
        s: &mut Session,
        at: usize,
        idx: &[usize],
        digests: &[Digest],
    ) -> Result<(), ReplError> {
        let want: usize = idx
            .iter()
            .map(|&i| fine_count(self.q[at].w.pieces[i].len))
            .sum();
        if digests.len() != want {
            return Err(self.proto_err(format!(
                "{} fine digests where {want} were asked",
                digests.len()
            )));
        }
        let mut k = 0;
        for &i in idx {
            let p = self.q[at].w.pieces[i];
            let nf = fine_count(p.len);
            for (run, zero) in differing_runs(&self.q[at].w, &p, &digests[k..k + nf]) {
                self.found.push(run);
                self.rt.set(|st| {
                    if let Some(r) = &mut st.resync {
                        r.differing += run.1;
                    }
                });
                if matches!(self.pass, Pass::Repair { .. }) {
                    self.repair(s, at, &p, run, zero).await?;
                }
            }
            k += nf;
        }
        Ok(())
    }

    /// Sends one differing run of window `at` (as a zero range if it is all zeros).
    async fn repair(
        &mut self,
        s: &mut Session,
        at: usize,
        p: &Piece,
        run: Range,
        zero: bool,
    ) -> Result<(), ReplError> {
        let fr = if zero {
            Frame::Zero {
                offset: run.0,
                len: run.1,
            }
        } else {
            Frame::Data {
                offset: run.0,
                data: self.q[at].w.data(p, run.0, run.1).to_vec(),
            }
        };
        self.frame.clear();
        self.enc
            .encode(&fr, &mut self.frame)
            .map_err(|e| ReplError::Local(e.to_string()))?;
        let (data, zb) = if zero { (0, run.1) } else { (run.1, 0) };
        send_frame(s, self.rt, &self.frame, data, zb).await?;
        self.rt.set(|st| {
            if let Some(r) = &mut st.resync {
                r.data_sent += data;
            }
        });
        self.dirty += run.1;
        Ok(())
    }

    /// Commits what the last windows repaired and waits for every commit's answer.
    async fn finish(&mut self, s: &mut Session) -> Result<(), ReplError> {
        let Pass::Repair { fixed_cursor } = self.pass else {
            return Ok(());
        };
        if (self.dirty > 0 || self.since_commit > 0)
            && let Some(c) = fixed_cursor.or(self.cursor)
        {
            s.msg(Msg::ResyncCommit { cursor: c }).await?;
            self.commits_out += 1;
        }
        while self.commits_out > 0 {
            match s.answer(self.rt).await? {
                Msg::ResyncAck { .. } => self.commits_out -= 1,
                m => {
                    return Err(
                        self.proto_err(format!("{} where ResyncAck was expected", m.name()))
                    );
                }
            }
        }
        Ok(())
    }
}

/// The runs of differing fine blocks of piece `p`, each of one kind (all zeros or not):
/// `((offset, len), zero)`. `theirs` are the replica's fine digests of the piece.
fn differing_runs(w: &SrcWindow, p: &Piece, theirs: &[Digest]) -> Vec<(Range, bool)> {
    let nf = theirs.len();
    let ours = &w.fines[p.fine_at..p.fine_at + nf];
    let block = |j: usize| {
        let at = p.offset + (j * digest::FINE) as u64;
        let len = (p.offset + p.len - at).min(digest::FINE as u64);
        (at, len)
    };
    let mut out = Vec::new();
    let mut b = 0;
    while b < nf {
        if theirs[b] == ours[b] {
            b += 1;
            continue;
        }
        let (at0, len0) = block(b);
        let zero = base::devread::is_zero(w.data(p, at0, len0));
        let mut e = b + 1;
        while e < nf && theirs[e] != ours[e] {
            let (at, len) = block(e);
            if base::devread::is_zero(w.data(p, at, len)) != zero {
                break;
            }
            e += 1;
        }
        let (last_at, last_len) = block(e - 1);
        out.push(((at0, last_at + last_len - at0), zero));
        b = e;
    }
    out
}
