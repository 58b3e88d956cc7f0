//! One queue thread: a plain event loop over the queue's io_uring, with a small state
//! machine per tag — "receive an I/O from the kernel → log it → perform it → complete it".
//!
//! The ordering for every change (write, discard, write-zeroes) is: append the record,
//! wait for it ([`crate::commit`]: written to the log, or durable per the disk's
//! [`crate::Durability`]), and only then touch the backing store. Logging before
//! *performing* (not merely before completing) is what makes a crash of the server at any
//! instant safe: the backing never holds a change the log does not name. A flush is
//! performed first (fdatasync of the backing) and then logged as a Flush record, which is
//! durable before the flush completes; a FUA write's record is durable before it is
//! written, with `RWF_DSYNC`.
//!
//! **Why callbacks, not a task per tag.** Every completion is handled directly in
//! [`UblkQueue::flush_and_wake_io_tasks`]'s handler (as rublk's default loop target does),
//! with no executor, wakers or task queue in between; the loop's per-batch boundary is
//! where the records appended by the batch are written (or handed to the log thread), and
//! where the tags whose records are now logged go on to perform their changes — in the same
//! turn, before the loop next waits on the ring.

use std::cell::Cell;
use std::sync::Arc;

use io_uring::{opcode, squeue, types};
use libublk::helpers::IoBuf;
use libublk::io::{UblkDev, UblkIOCtx, UblkQueue};
use libublk::sys;
use libublk::{BufDesc, BufDescList, UblkIORes, UblkUringData};

use crate::backing::{Backing, BackingKind};
use crate::commit::{Change, LogFailed, QueueLog, SharedLog, Ticket};

/// Index of the backing file in each queue ring's registered files (0 is the ublk char
/// device, registered by libublk).
pub(crate) const BACKING_FIXED_FD: u32 = 1;

/// The pseudo-tag of the log eventfd's poll on the queue ring (real tags are < 4096).
const POLL_TAG: u16 = u16::MAX;
/// Target I/O user_data "step" values (libublk's 16-bit `tgt_data`): which SQE of a tag's
/// I/O completed.
const STEP_IO: u32 = 0;
const STEP_PUNCH_FALLBACK: u32 = 1;
/// How often a backing SQE that returned `EAGAIN` is resubmitted before the I/O fails.
const MAX_EAGAIN: u8 = 4;

/// What every queue thread shares.
#[derive(Debug)]
pub(crate) struct TargetShared {
    pub(crate) backing: Backing,
    pub(crate) log: Arc<SharedLog>,
}

/// Body of one queue thread (passed to `UblkCtrl::run_target`).
pub(crate) fn run_queue(qid: u16, dev: &UblkDev, shared: &Arc<TargetShared>) {
    let bufs = dev.alloc_queue_io_bufs();
    let fixed_bufs = match init_ring(dev, &bufs) {
        Ok(f) => f,
        Err(e) => {
            tracing::error!(queue = qid, error = %e, "creating the queue's io_uring failed");
            return;
        }
    };
    let q = match UblkQueue::new(qid, dev)
        .and_then(|q| q.submit_fetch_commands_unified(BufDescList::Slices(Some(&bufs))))
    {
        Ok(q) => q,
        Err(e) => {
            tracing::error!(queue = qid, error = %e, "creating the ublk queue failed");
            return;
        }
    };
    let qlog = match QueueLog::new(Arc::clone(&shared.log)) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(queue = qid, error = %e, "creating the queue's log eventfd failed");
            return;
        }
    };
    let mut st = QueueState {
        qid,
        q: &q,
        bufs: &bufs,
        shared,
        qlog: &qlog,
        retries: vec![0; bufs.len()],
        performing: vec![Cell::new(None); bufs.len()],
        pending: Vec::new(),
        tickets: Vec::new(),
        waits: Vec::new(),
        poll_failures: 0,
        fixed_bufs,
    };
    st.arm_poll();
    loop {
        let res = q.flush_and_wake_io_tasks(|ud, cqe, _last| st.on_cqe(ud, cqe.result()), 1);
        st.after_batch();
        if res.is_err() {
            // The queue is down (the device is being deleted or the server stopped).
            break;
        }
    }
    for tag in q.tags() {
        q.unregister_io_buf(tag);
    }
    // Before `bufs` is freed (the ring itself lives until the thread exits).
    if fixed_bufs
        && let Err(e) = libublk::io::with_task_io_ring(|r| r.submitter().unregister_buffers())
    {
        tracing::warn!(queue = qid, error = %e, "unregistering the queue's buffers failed");
    }
}

/// Most buffer space a queue registers with its ring (see [`init_ring`]): depth × 512 KiB,
/// i.e. depths up to 128 (the default).
pub(crate) const FIXED_BUF_BUDGET: usize = 64 << 20;

/// Creates this thread's queue ring (before `UblkQueue::new`, which would otherwise make a
/// default one): only this thread ever submits to it (`SINGLE_ISSUER`), and the kernel's
/// completion work for it — new I/Os from the ublk driver, backing completions — runs when
/// the thread waits on the ring (`DEFER_TASKRUN`), in one batch, instead of interrupting
/// the thread at each of its syscalls.
///
/// Registers the tags' buffers with the ring when they fit [`FIXED_BUF_BUDGET`]; returns
/// whether it did. A registered buffer is pinned once, here, instead of at every backing
/// I/O (`O_DIRECT` pins the user pages of each request; a buffered copy walks them), at the
/// price of keeping the whole buffer space resident — hence the budget. A refused
/// registration (e.g. `RLIMIT_MEMLOCK` without `CAP_IPC_LOCK`) only loses the speed-up.
fn init_ring(dev: &UblkDev, bufs: &[IoBuf<u8>]) -> Result<bool, libublk::UblkError> {
    let (sq, cq) = (u32::from(dev.tgt.sq_depth), u32::from(dev.tgt.cq_depth));
    libublk::io::ublk_init_task_ring(|cell| {
        if cell.get().is_none() {
            let ring = io_uring::IoUring::builder()
                .setup_cqsize(cq)
                .setup_coop_taskrun()
                .setup_single_issuer()
                .setup_defer_taskrun()
                .build(sq)
                .map_err(libublk::UblkError::IOError)?;
            cell.set(std::cell::RefCell::new(ring))
                .map_err(|_| libublk::UblkError::OtherError(-libc::EEXIST))?;
        }
        Ok(())
    })?;
    let bytes: usize = bufs.iter().map(|b| b.as_slice().len()).sum();
    if bytes > FIXED_BUF_BUDGET || u16::try_from(bufs.len()).is_err() {
        return Ok(false);
    }
    let iovs: Vec<libc::iovec> = bufs
        .iter()
        .map(|b| libc::iovec {
            iov_base: b.as_mut_ptr().cast(),
            iov_len: b.as_slice().len(),
        })
        .collect();
    let registered = libublk::io::with_task_io_ring(|ring| {
        // `run_queue` owns the buffers and unregisters them before it returns and drops
        // them; every fixed SQE names its tag's own buffer (index = tag), length checked.
        // SAFETY: the registered buffers outlive their registration (above).
        unsafe { ring.submitter().register_buffers(&iovs) }
    });
    match registered {
        Ok(()) => Ok(true),
        Err(e) => {
            tracing::warn!(error = %e, bytes, "registering the queue's buffers failed; using unregistered buffers");
            Ok(false)
        }
    }
}

/// A backing write's flags: `RWF_DSYNC` for a FUA write.
fn rw_flags(io: Io) -> i32 {
    if io.fua { libc::RWF_DSYNC } else { 0 }
}

/// One I/O as the kernel described it.
#[derive(Debug, Clone, Copy)]
struct Io {
    op: u32,
    fua: bool,
    offset: u64,
    len: u64,
}

impl Io {
    fn from_desc(iod: &sys::ublksrv_io_desc) -> Self {
        Self {
            op: iod.op_flags & 0xff,
            fua: iod.op_flags & sys::UBLK_IO_F_FUA != 0,
            offset: iod.start_sector << 9,
            len: u64::from(iod.nr_sectors) << 9,
        }
    }
}

/// What a tag does once its record is logged.
#[derive(Debug, Clone, Copy)]
enum Then {
    /// Write the data to the backing.
    Write,
    /// Discard or zero the range on the backing.
    Trim,
    /// Complete the I/O with 0 (a flush, whose backing sync is already done).
    Complete,
}

/// A tag waiting for its record.
#[derive(Debug, Clone, Copy)]
struct Wait {
    tag: u16,
    ticket: Ticket,
    then: Then,
}

struct QueueState<'a> {
    qid: u16,
    q: &'a UblkQueue<'a>,
    bufs: &'a [IoBuf<u8>],
    shared: &'a TargetShared,
    qlog: &'a QueueLog,
    /// EAGAIN resubmissions of each tag's current backing SQE.
    retries: Vec<u8>,
    /// Each tag's logged change not yet completed: the epoch parity it is counted under
    /// (a cut waits for it, `commit/drain.rs`).
    performing: Vec<Cell<Option<u8>>>,
    /// This turn's changes, logged together at its end (one lock of the log writer).
    pending: Vec<(u16, Change<'a>, Then)>,
    tickets: Vec<Result<Ticket, LogFailed>>,
    waits: Vec<Wait>,
    poll_failures: u32,
    /// The tags' buffers are registered with the ring (buffer index = tag): backing reads
    /// and writes use `ReadFixed`/`WriteFixed`.
    fixed_bufs: bool,
}

impl<'a> QueueState<'a> {
    /// One completion: a new I/O from the kernel, a backing SQE of a tag, or the log
    /// eventfd.
    fn on_cqe(&mut self, ud: u64, res: i32) {
        if ud & UblkUringData::Target as u64 == 0 {
            // An io command: a new I/O for the tag, or (any other result) the queue is
            // being aborted, which libublk accounts for.
            if u32::try_from(res) == Ok(sys::UBLK_IO_RES_OK) {
                self.start(tag_of(ud));
            }
            return;
        }
        let tag = tag_of(ud);
        if tag == POLL_TAG {
            self.on_poll(res);
            return;
        }
        let step = u32::try_from((ud >> 24) & 0xffff).unwrap_or(STEP_IO);
        if res == -libc::EAGAIN {
            let tries = self.retries.get_mut(usize::from(tag));
            if let Some(t) = tries
                && *t < MAX_EAGAIN
            {
                *t += 1;
                self.resubmit(tag, step);
                return;
            }
        }
        let io = self.io(tag);
        // Tmpfs has no ZERO_RANGE: a punched hole reads back as zeroes just the same.
        if step == STEP_IO
            && io.op == sys::UBLK_IO_OP_WRITE_ZEROES
            && res == -libc::EOPNOTSUPP
            && self.shared.backing.kind() == BackingKind::File
        {
            self.resubmit(tag, STEP_PUNCH_FALLBACK);
            return;
        }
        if io.op == sys::UBLK_IO_OP_FLUSH && step == STEP_IO {
            // The backing is synced: log the Flush, complete once it is durable.
            if res < 0 {
                self.complete(tag, res);
            } else {
                self.log_then(tag, Change::Flush, Then::Complete);
            }
            return;
        }
        self.complete(tag, res);
    }

    fn io(&self, tag: u16) -> Io {
        Io::from_desc(self.q.get_iod(tag))
    }

    /// A new I/O from the kernel.
    fn start(&mut self, tag: u16) {
        if let Some(t) = self.retries.get_mut(usize::from(tag)) {
            *t = 0;
        }
        let io = self.io(tag);
        match io.op {
            sys::UBLK_IO_OP_READ | sys::UBLK_IO_OP_FLUSH => self.resubmit(tag, STEP_IO),
            sys::UBLK_IO_OP_WRITE => match data_of(self.bufs, tag, io.len) {
                Some(data) => {
                    let change = Change::Write {
                        offset: io.offset,
                        data,
                        fua: io.fua,
                    };
                    self.log_then(tag, change, Then::Write);
                }
                None => self.complete(tag, -libc::EINVAL),
            },
            sys::UBLK_IO_OP_DISCARD => self.log_then(
                tag,
                Change::Discard {
                    offset: io.offset,
                    len: io.len,
                },
                Then::Trim,
            ),
            sys::UBLK_IO_OP_WRITE_ZEROES => self.log_then(
                tag,
                Change::WriteZeroes {
                    offset: io.offset,
                    len: io.len,
                },
                Then::Trim,
            ),
            _ => self.complete(tag, -libc::EOPNOTSUPP),
        }
    }

    /// Queues `change` for logging at the end of the turn and parks the tag until its record
    /// is logged (`after_batch`).
    fn log_then(&mut self, tag: u16, change: Change<'a>, then: Then) {
        self.pending.push((tag, change, then));
    }

    /// End of a batch of completions: append (and, under `flush` durability, write) the
    /// records of the turn's changes, then move every tag whose record is now logged on to
    /// its change.
    fn after_batch(&mut self) {
        if !self.pending.is_empty() {
            let mut tickets = std::mem::take(&mut self.tickets);
            tickets.clear();
            self.qlog
                .append_all(self.pending.iter().map(|p| p.1), &mut tickets, true);
            let pending = std::mem::take(&mut self.pending);
            for (&(tag, _, then), t) in pending.iter().zip(tickets.drain(..)) {
                match t {
                    Ok(ticket) => {
                        if let Some(c) = self.performing.get(usize::from(tag)) {
                            c.set(ticket.parity());
                        }
                        self.waits.push(Wait { tag, ticket, then });
                    }
                    Err(_) => self.complete(tag, -libc::EIO),
                }
            }
            self.pending = pending;
            self.pending.clear();
            self.tickets = tickets;
        }
        if self.waits.is_empty() {
            return;
        }
        self.qlog.after_tick();
        // Arm before looking: the log thread publishes before it checks the arm, so a sync
        // that ends after the look below signals the eventfd.
        self.qlog.arm();
        let mut waits = std::mem::take(&mut self.waits);
        waits.retain(|w| match self.qlog.state(w.ticket) {
            None => true,
            Some(false) => {
                self.complete(w.tag, -libc::EIO);
                false
            }
            Some(true) => {
                match w.then {
                    Then::Write | Then::Trim => self.perform(w.tag),
                    Then::Complete => self.complete(w.tag, 0),
                }
                false
            }
        });
        self.waits = waits;
    }

    /// Performs a logged change on the backing.
    fn perform(&mut self, tag: u16) {
        let io = self.io(tag);
        match (io.op, self.shared.backing.kind()) {
            // Block devices have no io_uring discard on every kernel we support; the ioctl
            // blocks this queue for its duration, which discards tolerate.
            (sys::UBLK_IO_OP_DISCARD, BackingKind::Device) => {
                let r = self.shared.backing.device_discard(io.offset, io.len);
                self.complete(tag, errno_of(r));
            }
            (sys::UBLK_IO_OP_WRITE_ZEROES, BackingKind::Device) => {
                let r = self.shared.backing.device_zeroout(io.offset, io.len);
                self.complete(tag, errno_of(r));
            }
            _ => self.resubmit(tag, STEP_IO),
        }
    }

    /// Submits the backing SQE of the tag's I/O (`step` picks the write-zeroes fallback).
    fn resubmit(&mut self, tag: u16, step: u32) {
        let io = self.io(tag);
        let Some(buf) = self.bufs.get(usize::from(tag)) else {
            self.complete(tag, -libc::EINVAL);
            return;
        };
        let Ok(len) = u32::try_from(io.len) else {
            self.complete(tag, -libc::EINVAL);
            return;
        };
        // Discards and write-zeroes carry no data and may be longer than the buffer.
        let has_data = io.op == sys::UBLK_IO_OP_READ || io.op == sys::UBLK_IO_OP_WRITE;
        if has_data && len as usize > buf.as_slice().len() {
            self.complete(tag, -libc::EINVAL);
            return;
        }
        let fixed = types::Fixed(BACKING_FIXED_FD);
        let sqe = match io.op {
            sys::UBLK_IO_OP_READ if self.fixed_bufs => {
                opcode::ReadFixed::new(fixed, buf.as_mut_ptr(), len, tag)
                    .offset(io.offset)
                    .build()
            }
            sys::UBLK_IO_OP_READ => opcode::Read::new(fixed, buf.as_mut_ptr(), len)
                .offset(io.offset)
                .build(),
            sys::UBLK_IO_OP_WRITE if self.fixed_bufs => {
                opcode::WriteFixed::new(fixed, buf.as_ptr(), len, tag)
                    .offset(io.offset)
                    .rw_flags(rw_flags(io))
                    .build()
            }
            sys::UBLK_IO_OP_WRITE => opcode::Write::new(fixed, buf.as_ptr(), len)
                .offset(io.offset)
                .rw_flags(rw_flags(io))
                .build(),
            sys::UBLK_IO_OP_FLUSH => opcode::Fsync::new(fixed)
                .flags(types::FsyncFlags::DATASYNC)
                .build(),
            sys::UBLK_IO_OP_DISCARD => fallocate(fixed, io, PUNCH),
            sys::UBLK_IO_OP_WRITE_ZEROES if step == STEP_PUNCH_FALLBACK => {
                fallocate(fixed, io, PUNCH)
            }
            // ZERO_RANGE keeps the blocks allocated.
            sys::UBLK_IO_OP_WRITE_ZEROES => fallocate(
                fixed,
                io,
                libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE,
            ),
            _ => {
                self.complete(tag, -libc::EOPNOTSUPP);
                return;
            }
        };
        let ud = UblkIOCtx::build_user_data(tag, io.op, step, true);
        self.push(sqe.flags(squeue::Flags::FIXED_FILE).user_data(ud), tag);
    }

    fn push(&self, sqe: squeue::Entry, tag: u16) {
        if let Err(e) = self.q.ublk_submit_sqe_sync(sqe) {
            tracing::error!(queue = self.qid, tag, error = %e, "submitting to the queue ring failed");
            self.complete(tag, -libc::EIO);
        }
    }

    /// Completes the tag's I/O to the kernel (which also fetches its next one).
    fn complete(&self, tag: u16, res: i32) {
        if let Some(p) = self.performing.get(usize::from(tag)).and_then(Cell::take) {
            // Performed (or failed): no longer in flight for a cut's wait.
            self.qlog.performed(p);
        }
        let Some(buf) = self.bufs.get(usize::from(tag)) else {
            return;
        };
        if let Err(e) = self.q.complete_io_cmd_unified(
            tag,
            BufDesc::Slice(buf.as_slice()),
            Ok(UblkIORes::Result(res)),
        ) {
            tracing::error!(queue = self.qid, tag, error = %e, "completing an I/O failed");
        }
    }

    /// (Re)arms the poll of the log eventfd on the queue ring.
    fn arm_poll(&self) {
        let sqe = opcode::PollAdd::new(types::Fd(self.qlog.event_fd()), libc::POLLIN as u32)
            .build()
            .user_data(UblkIOCtx::build_user_data(POLL_TAG, 0, 0, true));
        if let Err(e) = self.q.ublk_submit_sqe_sync(sqe) {
            tracing::error!(queue = self.qid, error = %e, "polling the log eventfd failed");
        }
    }

    /// The log thread signalled (a sync or a failure was published): `after_batch` looks at
    /// the waiting tags; re-arm the poll.
    fn on_poll(&mut self, res: i32) {
        self.qlog.clear_event();
        if res >= 0 {
            self.poll_failures = 0;
        } else {
            self.poll_failures += 1;
            tracing::error!(
                queue = self.qid,
                result = res,
                "polling the log eventfd failed"
            );
            if self.poll_failures > 16 {
                return;
            }
        }
        self.arm_poll();
    }
}

/// The tag's I/O buffer, `len` bytes of it.
fn data_of(bufs: &[IoBuf<u8>], tag: u16, len: u64) -> Option<&[u8]> {
    let buf = bufs.get(usize::from(tag))?;
    buf.as_slice().get(..usize::try_from(len).ok()?)
}

fn tag_of(ud: u64) -> u16 {
    u16::try_from(UblkIOCtx::user_data_to_tag(ud)).unwrap_or(POLL_TAG)
}

const PUNCH: i32 = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;

fn fallocate(fixed: types::Fixed, io: Io, mode: i32) -> squeue::Entry {
    opcode::Fallocate::new(fixed, io.len)
        .offset(io.offset)
        .mode(mode)
        .build()
}

fn errno_of(r: std::io::Result<()>) -> i32 {
    match r {
        Ok(()) => 0,
        Err(e) => -e.raw_os_error().unwrap_or(libc::EIO),
    }
}
