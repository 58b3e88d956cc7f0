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
use super::resync::{COMMIT_DATA, COMMIT_EVERY, WINDOWS_IN_FLIGHT};
use super::worker::{Session, send_frame};
use super::{Agent, DiskRt, lock};
use crate::digest::{self, Digest, Key};
use crate::net::ReplError;
use crate::ranges::{self, Range};
use crate::status::ResyncPhase;

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
            let mut store = vec![0u8; total + crate::devread::ALIGN];
            let base = store
                .as_ptr()
                .align_offset(crate::devread::ALIGN)
                .min(crate::devread::ALIGN);
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
    let mut rx = spawn_source(device, key.clone(), windows);
    let mut q: VecDeque<InFlight> = VecDeque::new();
    let mut next_req = 0u64;
    let mut src_done = false;
    let mut commits_out = 0usize;
    // Repair data sent since the last commit (held in the server's memory until then).
    let mut dirty = 0u64;
    let mut since_commit = 0u64;
    let mut cursor = None;
    let mut found = Vec::new();
    let mut enc = proto::Encoder::new(agent.encode_opts());
    let mut frame = Vec::new();
    let peer = s.peer.clone();
    let proto_err = |what: String| ReplError::Protocol(format!("{peer}: {what}"));
    loop {
        while !src_done && q.len() < WINDOWS_IN_FLIGHT {
            let w = tokio::select! {
                w = rx.recv() => w,
                () = own.stopped() => return Err(ReplError::Local("stopping".into())),
            };
            match w {
                None => src_done = true,
                Some(Err(e)) => return Err(ReplError::Local(e)),
                Some(Ok(w)) => {
                    next_req += 1;
                    s.msg(Msg::DigestReq {
                        req: next_req,
                        coarse: true,
                        ranges: w.ranges.clone(),
                    })
                    .await?;
                    q.push_back(InFlight {
                        w,
                        req: next_req,
                        state: WState::Coarse,
                    });
                }
            }
        }
        while q.front().is_some_and(|f| matches!(f.state, WState::Done)) {
            let Some(f) = q.pop_front() else { break };
            let n = ranges::total(&f.w.ranges);
            since_commit += n;
            cursor = Some(f.w.end);
            rt.set(|st| {
                if let Some(r) = &mut st.resync {
                    r.pass_done += n;
                    r.compared += n;
                }
            });
            if let Pass::Repair { fixed_cursor } = pass
                && (dirty >= COMMIT_DATA || since_commit >= COMMIT_EVERY)
            {
                s.msg(Msg::ResyncCommit {
                    cursor: fixed_cursor.unwrap_or(f.w.end),
                })
                .await?;
                commits_out += 1;
                dirty = 0;
                since_commit = 0;
            }
        }
        if q.is_empty() && src_done {
            break;
        }
        if q.is_empty() {
            continue;
        }
        let (done, total, phase) = {
            let st = rt.snapshot();
            st.resync
                .as_ref()
                .map_or((0, 0, ResyncPhase::CompareAndRepair), |r| {
                    (r.pass_done, r.pass_total, r.phase)
                })
        };
        agent.job_step(rt, JobStep::from(phase), done, total);
        let wire = s.w.wire_bytes;
        rt.set(|st| {
            if let Some(r) = &mut st.resync {
                r.wire_now = wire;
            }
        });
        match s.answer(rt).await? {
            Msg::Digests { req, digests } => {
                let Some(f) = q.iter_mut().find(|f| f.req == req) else {
                    return Err(proto_err(format!("Digests for unknown request {req}")));
                };
                match std::mem::replace(&mut f.state, WState::Done) {
                    WState::Coarse => {
                        if digests.len() != f.w.pieces.len() {
                            return Err(proto_err(format!(
                                "{} coarse digests for {} pieces",
                                digests.len(),
                                f.w.pieces.len()
                            )));
                        }
                        let differ: Vec<usize> = (0..f.w.pieces.len())
                            .filter(|&i| digests[i] != f.w.coarse[i])
                            .collect();
                        if !differ.is_empty() {
                            next_req += 1;
                            f.req = next_req;
                            let ranges = differ
                                .iter()
                                .map(|&i| (f.w.pieces[i].offset, f.w.pieces[i].len))
                                .collect();
                            f.state = WState::Fine(differ);
                            s.msg(Msg::DigestReq {
                                req: next_req,
                                coarse: false,
                                ranges,
                            })
                            .await?;
                        }
                    }
                    WState::Fine(idx) => {
                        let want: usize = idx.iter().map(|&i| fine_count(f.w.pieces[i].len)).sum();
                        if digests.len() != want {
                            return Err(proto_err(format!(
                                "{} fine digests where {want} were asked",
                                digests.len()
                            )));
                        }
                        let mut k = 0;
                        for &i in &idx {
                            let p = f.w.pieces[i];
                            let nf = fine_count(p.len);
                            let mut b = 0;
                            while b < nf {
                                if digests[k + b] == f.w.fines[p.fine_at + b] {
                                    b += 1;
                                    continue;
                                }
                                // A run of differing blocks of one kind (zero or not).
                                let block = |j: usize| {
                                    let at = p.offset + (j * digest::FINE) as u64;
                                    let len = (p.offset + p.len - at).min(digest::FINE as u64);
                                    (at, len)
                                };
                                let (at0, len0) = block(b);
                                let zero = crate::devread::is_zero(f.w.data(&p, at0, len0));
                                let mut e = b + 1;
                                while e < nf && digests[k + e] != f.w.fines[p.fine_at + e] {
                                    let (at, len) = block(e);
                                    if crate::devread::is_zero(f.w.data(&p, at, len)) != zero {
                                        break;
                                    }
                                    e += 1;
                                }
                                let (last_at, last_len) = block(e - 1);
                                let run = (at0, last_at + last_len - at0);
                                found.push(run);
                                rt.set(|st| {
                                    if let Some(r) = &mut st.resync {
                                        r.differing += run.1;
                                    }
                                });
                                if matches!(pass, Pass::Repair { .. }) {
                                    let fr = if zero {
                                        Frame::Zero {
                                            offset: run.0,
                                            len: run.1,
                                        }
                                    } else {
                                        Frame::Data {
                                            offset: run.0,
                                            data: f.w.data(&p, run.0, run.1).to_vec(),
                                        }
                                    };
                                    frame.clear();
                                    enc.encode(&fr, &mut frame)
                                        .map_err(|e| ReplError::Local(e.to_string()))?;
                                    let (data, zb) = if zero { (0, run.1) } else { (run.1, 0) };
                                    send_frame(s, rt, &frame, data, zb).await?;
                                    rt.set(|st| {
                                        if let Some(r) = &mut st.resync {
                                            r.data_sent += data;
                                        }
                                    });
                                    dirty += run.1;
                                }
                                b = e;
                            }
                            k += nf;
                        }
                    }
                    WState::Done => {
                        return Err(proto_err(format!("a second answer to request {req}")));
                    }
                }
            }
            Msg::ResyncAck { .. } if commits_out > 0 => commits_out -= 1,
            m => return Err(proto_err(format!("{} during a resync scan", m.name()))),
        }
    }
    if let Pass::Repair { fixed_cursor } = pass {
        if (dirty > 0 || since_commit > 0)
            && let Some(c) = fixed_cursor.or(cursor)
        {
            s.msg(Msg::ResyncCommit { cursor: c }).await?;
            commits_out += 1;
        }
        while commits_out > 0 {
            match s.answer(rt).await? {
                Msg::ResyncAck { .. } => commits_out -= 1,
                m => {
                    return Err(proto_err(format!(
                        "{} where ResyncAck was expected",
                        m.name()
                    )));
                }
            }
        }
    }
    Ok(found)
}
