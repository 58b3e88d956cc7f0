//! SIGINT/SIGTERM stop the disk cleanly: the handler only writes a byte to a pipe
//! (async-signal-safe); a watcher thread reads it and stops the ublk device, which ends the
//! queue threads, after which `serve` seals the log. A process-wide handler (rather than
//! `sigwait` on a masked signal) works whichever thread the signal is delivered to,
//! including when `serve` does not run on the main thread.

use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicI32, Ordering};

use libublk::ctrl::UblkCtrl;

static WAKE_FD: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_signal(_: libc::c_int) {
    let fd = WAKE_FD.load(Ordering::SeqCst);
    if fd >= 0 {
        let b = 1u8;
        // SAFETY: write(2) is async-signal-safe; the pointer is to a live local byte and
        // the fd is the pipe's write end, kept open for the life of the process.
        let _ = unsafe { libc::write(fd, (&raw const b).cast(), 1) };
    }
}

/// Installs the handlers and starts the watcher thread for ublk device `dev_id`.
pub(crate) fn stop_device_on_signal(dev_id: u32) {
    let (rd, wr) = match nix::unistd::pipe() {
        Ok(p) => p,
        Err(e) => {
            tracing::error!(error = %e, "no signal pipe; SIGTERM will not stop cleanly");
            return;
        }
    };
    // The write end must outlive every signal: hand it to the handler for good.
    let wr_fd = std::os::fd::IntoRawFd::into_raw_fd(wr);
    WAKE_FD.store(wr_fd, Ordering::SeqCst);
    use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};
    let act = SigAction::new(
        SigHandler::Handler(on_signal),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for sig in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: the handler only loads an atomic and calls write(2), both
        // async-signal-safe.
        if let Err(e) = unsafe { sigaction(sig, &act) } {
            tracing::error!(error = %e, ?sig, "installing the signal handler");
        }
    }
    std::thread::spawn(move || watch(&rd, dev_id));
}

fn watch(rd: &OwnedFd, dev_id: u32) {
    let mut b = [0u8; 1];
    loop {
        match nix::unistd::read(rd, &mut b) {
            Ok(1) => break,
            Err(nix::errno::Errno::EINTR) => {}
            _ => return,
        }
    }
    tracing::info!(dev_id, "stop requested by signal");
    let Ok(id) = i32::try_from(dev_id) else {
        return;
    };
    match UblkCtrl::new_simple(id) {
        Ok(ctrl) => {
            if let Err(e) = ctrl.kill_dev() {
                tracing::error!(error = %e, "stopping the device");
            }
        }
        Err(e) => tracing::error!(error = %e, "opening the device to stop it"),
    }
}
