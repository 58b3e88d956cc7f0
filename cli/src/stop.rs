//! SIGINT / SIGTERM for the foreground commands that run until stopped (`track`,
//! `workload`): the handler only raises a flag, which the command's loop polls.

use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;

/// Raised by SIGINT or SIGTERM once [`install`] ran.
pub(crate) static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// Routes SIGINT and SIGTERM to [`STOP`].
pub(crate) fn install() -> anyhow::Result<()> {
    use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};
    let act = SigAction::new(
        SigHandler::Handler(on_signal),
        SaFlags::empty(),
        SigSet::empty(),
    );
    for sig in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { sigaction(sig, &act) }.context("installing signal handlers")?;
    }
    Ok(())
}
