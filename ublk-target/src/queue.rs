//! One queue thread: a single-threaded executor running one task per tag, each task
//! looping "receive an I/O from the kernel → log it → perform it → complete it".
//!
//! The ordering for every change (write, discard, write-zeroes) is: append the record,
//! await it ([`crate::commit`]: written to the log, or durable per the disk's
//! [`crate::Durability`]), and only then touch the backing store. Logging before
//! *performing* (not merely before completing) is what makes a crash of the server at any
//! instant safe: the backing never holds a change the log does not name. A flush is
//! performed first (fdatasync of the backing) and then logged as a Flush record, which is
//! durable before the flush completes; a FUA write's record is durable before it is
//! written, with `RWF_DSYNC`.

use std::rc::Rc;
use std::sync::Arc;

use io_uring::{opcode, squeue, types};
use libublk::helpers::IoBuf;
use libublk::io::{UblkDev, UblkQueue};
use libublk::sys;
use libublk::uring_async::ublk_submit_sqe_async;
use libublk::{BufDesc, UblkError, UblkUringData};

use crate::backing::{Backing, BackingKind};
use crate::commit::{Change, QueueLog, SharedLog};

/// Index of the backing file in each queue ring's registered files (0 is the ublk char
/// device, registered by libublk).
pub(crate) const BACKING_FIXED_FD: u32 = 1;

/// What every queue thread shares.
#[derive(Debug)]
pub(crate) struct TargetShared {
    pub(crate) backing: Backing,
    pub(crate) log: Arc<SharedLog>,
}

/// Body of one queue thread (passed to `UblkCtrl::run_target`).
pub(crate) fn run_queue(qid: u16, dev: &UblkDev, shared: &Arc<TargetShared>) {
    let q = match UblkQueue::new(qid, dev) {
        Ok(q) => Rc::new(q),
        Err(e) => {
            tracing::error!(queue = qid, error = %e, "creating the ublk queue failed");
            return;
        }
    };
    let qlog = match QueueLog::new(Arc::clone(&shared.log)) {
        Ok(l) => Rc::new(l),
        Err(e) => {
            tracing::error!(queue = qid, error = %e, "creating the queue's log eventfd failed");
            return;
        }
    };
    let exe = Rc::new(smol::LocalExecutor::new());
    // Not in `tasks`: it never finishes, and the queue is done when the I/O tasks are.
    let wakeups = {
        let qlog = Rc::clone(&qlog);
        exe.spawn(async move { log_wakeups(qid, &qlog).await })
    };
    let mut tasks = Vec::new();
    for tag in q.tags() {
        let (q, qlog, shared) = (Rc::clone(&q), Rc::clone(&qlog), Arc::clone(shared));
        tasks.push(exe.spawn(async move {
            match io_task(&q, tag, &qlog, &shared).await {
                Ok(()) | Err(UblkError::QueueIsDown) => {}
                Err(e) => tracing::error!(queue = qid, tag, error = %e, "io task failed"),
            }
        }));
    }
    let exe2 = Rc::clone(&exe);
    smol::block_on(exe.run(async move {
        // After each batch of io_uring completions: run every woken task (they append
        // their records, or perform changes whose records are now logged), then write what
        // was appended (`Flush` durability: inline, and the tasks it woke run at once) or
        // ask the log thread to commit it (`Write`: the queue does not wait for it).
        let run_ops = || loop {
            while exe2.try_tick() {}
            if !qlog.after_tick() {
                break;
            }
        };
        let done = || tasks.iter().all(smol::Task::is_finished);
        if let Err(e) = libublk::wait_and_handle_io_events(&q, Some(20), run_ops, done).await {
            tracing::error!(queue = qid, error = %e, "queue event loop failed");
        }
    }));
    drop(wakeups);
}

/// Waits on this queue's ring for the log thread's wake-ups, and wakes the tasks waiting
/// for durability each time ([`crate::commit`]).
async fn log_wakeups(qid: u16, qlog: &QueueLog) {
    let mut failures = 0u32;
    loop {
        let sqe = opcode::PollAdd::new(types::Fd(qlog.event_fd()), libc::POLLIN as u32).build();
        let res = ublk_submit_sqe_async(sqe, UblkUringData::Target as u64).await;
        qlog.on_notified();
        match res {
            Ok(r) if r >= 0 => failures = 0,
            // The ring is going away with the queue.
            Err(UblkError::QueueIsDown) => return,
            other => {
                failures += 1;
                tracing::error!(queue = qid, result = ?other, "polling the log eventfd failed");
                if failures > 16 {
                    return;
                }
            }
        }
    }
}

async fn io_task(
    q: &UblkQueue<'_>,
    tag: u16,
    qlog: &QueueLog,
    shared: &TargetShared,
) -> Result<(), UblkError> {
    let buf_len = usize::try_from(q.dev.dev_info.max_io_buf_bytes).unwrap_or(usize::MAX);
    let mut buf = IoBuf::<u8>::new(buf_len);
    q.submit_io_prep_cmd(tag, BufDesc::Slice(buf.as_slice()), 0, Some(&buf))
        .await?;
    loop {
        let res = handle_io(q, tag, qlog, shared, buf.as_mut_slice()).await;
        q.submit_io_commit_cmd(tag, BufDesc::Slice(buf.as_slice()), res)
            .await?;
    }
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

/// Performs one I/O; returns the ublk result (bytes transferred, 0, or -errno).
async fn handle_io(
    q: &UblkQueue<'_>,
    tag: u16,
    qlog: &QueueLog,
    shared: &TargetShared,
    buf: &mut [u8],
) -> i32 {
    let io = Io::from_desc(q.get_iod(tag));
    match io.op {
        sys::UBLK_IO_OP_READ => match data_slice(buf, io.len) {
            Some(data) => read(io, data).await,
            None => -libc::EINVAL,
        },
        sys::UBLK_IO_OP_WRITE => match data_slice(buf, io.len) {
            Some(data) => write(io, data, qlog).await,
            None => -libc::EINVAL,
        },
        sys::UBLK_IO_OP_FLUSH => flush(qlog).await,
        sys::UBLK_IO_OP_DISCARD | sys::UBLK_IO_OP_WRITE_ZEROES => {
            trim(io, qlog, &shared.backing).await
        }
        _ => -libc::EOPNOTSUPP,
    }
}

fn data_slice(buf: &mut [u8], len: u64) -> Option<&mut [u8]> {
    buf.get_mut(..usize::try_from(len).ok()?)
}

async fn read(io: Io, data: &mut [u8]) -> i32 {
    let Ok(len) = u32::try_from(data.len()) else {
        return -libc::EINVAL;
    };
    let sqe = opcode::Read::new(types::Fixed(BACKING_FIXED_FD), data.as_mut_ptr(), len)
        .offset(io.offset)
        .build()
        .flags(squeue::Flags::FIXED_FILE);
    submit(sqe).await
}

async fn write(io: Io, data: &[u8], qlog: &QueueLog) -> i32 {
    let change = Change::Write {
        offset: io.offset,
        data,
        fua: io.fua,
    };
    if !logged(qlog, change).await {
        return -libc::EIO;
    }
    let Ok(len) = u32::try_from(data.len()) else {
        return -libc::EINVAL;
    };
    let rw_flags = if io.fua { libc::RWF_DSYNC } else { 0 };
    let sqe = opcode::Write::new(types::Fixed(BACKING_FIXED_FD), data.as_ptr(), len)
        .offset(io.offset)
        .rw_flags(rw_flags)
        .build()
        .flags(squeue::Flags::FIXED_FILE);
    submit(sqe).await
}

async fn flush(qlog: &QueueLog) -> i32 {
    let sqe = opcode::Fsync::new(types::Fixed(BACKING_FIXED_FD))
        .flags(types::FsyncFlags::DATASYNC)
        .build()
        .flags(squeue::Flags::FIXED_FILE);
    let res = submit(sqe).await;
    if res < 0 {
        return res;
    }
    if logged(qlog, Change::Flush).await {
        0
    } else {
        -libc::EIO
    }
}

async fn trim(io: Io, qlog: &QueueLog, backing: &Backing) -> i32 {
    let zero = io.op == sys::UBLK_IO_OP_WRITE_ZEROES;
    let change = if zero {
        Change::WriteZeroes {
            offset: io.offset,
            len: io.len,
        }
    } else {
        Change::Discard {
            offset: io.offset,
            len: io.len,
        }
    };
    if !logged(qlog, change).await {
        return -libc::EIO;
    }
    match (backing.kind(), zero) {
        (BackingKind::File, false) => fallocate(io, PUNCH).await,
        (BackingKind::File, true) => {
            // ZERO_RANGE keeps the blocks allocated; filesystems without it (tmpfs) get a
            // punched hole, which reads back as zeroes just the same.
            let res = fallocate(io, libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE).await;
            if res == -libc::EOPNOTSUPP {
                fallocate(io, PUNCH).await
            } else {
                res
            }
        }
        // Block devices have no io_uring discard on every kernel we support; the ioctl
        // blocks this queue for its duration, which discards tolerate.
        (BackingKind::Device, false) => errno_of(backing.device_discard(io.offset, io.len)),
        (BackingKind::Device, true) => errno_of(backing.device_zeroout(io.offset, io.len)),
    }
}

const PUNCH: i32 = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;

async fn fallocate(io: Io, mode: i32) -> i32 {
    let sqe = opcode::Fallocate::new(types::Fixed(BACKING_FIXED_FD), io.len)
        .offset(io.offset)
        .mode(mode)
        .build()
        .flags(squeue::Flags::FIXED_FILE);
    submit(sqe).await
}

fn errno_of(r: std::io::Result<()>) -> i32 {
    match r {
        Ok(()) => 0,
        Err(e) => -e.raw_os_error().unwrap_or(libc::EIO),
    }
}

/// Appends `change` and waits until its record is written (or durable, for a flush or a
/// FUA write, or under `Write` durability). False if the log failed.
async fn logged(qlog: &QueueLog, change: Change<'_>) -> bool {
    match qlog.append(change) {
        Ok(ticket) => qlog.logged(ticket).await.is_ok(),
        Err(_) => false,
    }
}

/// Submits one target SQE on this queue's ring; retries `EAGAIN` a few times.
async fn submit(sqe: squeue::Entry) -> i32 {
    for _ in 0..4 {
        let res = ublk_submit_sqe_async(sqe.clone(), UblkUringData::Target as u64)
            .await
            .unwrap_or(-libc::EIO);
        if res != -libc::EAGAIN {
            return res;
        }
    }
    -libc::EAGAIN
}
