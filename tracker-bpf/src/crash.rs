//! The tracker's side of the crash sentinel ([`crate::sentinel`]): the round that keeps the
//! sentinel's bitmaps to "what may not be logged yet", and the scoped gap a restart after a
//! crash records instead of a whole-disk one.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Sender, bounded};
use hrl::Extent;

use crate::ctrl::Ctrl;
use crate::device::DeviceInfo;
use crate::disk::DiskMsg;
use crate::error::Result;
use crate::sentinel::{Sentinel, Watch, grace_period};

/// How often the round runs: the sentinel's bitmaps hold about this much history.
const ROUND: Duration = Duration::from_secs(1);
/// How long the round waits for the poller and a log thread.
const BARRIER_TIMEOUT: Duration = Duration::from_secs(10);

struct Watched {
    watch: Watch,
    tx: Sender<DiskMsg>,
}

/// The sentinel of a running tracker and its round thread.
pub(crate) struct Guard {
    sentinel: Arc<Sentinel>,
    watched: Arc<Mutex<BTreeMap<u16, Watched>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Guard {
    /// Opens (adopts or loads) the sentinel pinned in `dir` and starts the round. `None`,
    /// logged, if it cannot: an agent crash then costs a whole-disk resync, as without it.
    pub(crate) fn start(dir: &Path, ctrl: Sender<Ctrl>) -> Option<Self> {
        let sentinel = match Sentinel::open(dir) {
            Ok(s) => Arc::new(s),
            Err(e) => {
                tracing::warn!(
                    "crash sentinel unavailable ({e}); an agent crash will cost a whole-disk resync"
                );
                return None;
            }
        };
        tracing::info!(
            dir = %dir.display(),
            adopted = sentinel.adopted(),
            "crash sentinel"
        );
        let watched = Arc::new(Mutex::new(BTreeMap::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, w, st) = (sentinel.clone(), watched.clone(), stop.clone());
        let thread = std::thread::Builder::new()
            .name("sitrep-sentinel".into())
            .spawn(move || {
                while !st.load(Ordering::SeqCst) {
                    std::thread::sleep(ROUND);
                    round(&s, &w, &ctrl);
                }
            })
            .map_err(|e| tracing::warn!("crash sentinel: no round thread ({e})"))
            .ok()?;
        Some(Self {
            sentinel,
            watched,
            stop,
            thread: Some(thread),
        })
    }

    /// Watches `info` for the log chain `chain` (before its tracking goes live).
    pub(crate) fn watch(&self, info: &DeviceInfo, chain: [u8; 16]) -> Option<Watch> {
        self.sentinel
            .watch(info, chain)
            .map_err(|e| tracing::warn!(device = %info.path.display(), "crash sentinel: {e}"))
            .ok()
    }

    /// Includes the device in slot `slot` (its log thread `tx`) in the rounds.
    pub(crate) fn track(&self, slot: u16, watch: Watch, tx: Sender<DiskMsg>) {
        lock(&self.watched).insert(slot, Watched { watch, tx });
    }

    /// What the device may have changed without being logged (after a crash, or while no
    /// agent ran after a stop), if the sentinel knows — it was running before this tracker
    /// (adopted) and watching this device for this chain (`inherited`). A bio-based device's
    /// changes still in flight count too (their completions may show only a tail; see
    /// docs/tracking.md). `Some(None)`: the whole device.
    pub(crate) fn suspect(&self, w: &Watch, info: &DeviceInfo) -> Option<Option<Vec<Extent>>> {
        (self.sentinel.adopted() && w.inherited).then(|| self.sentinel.suspect(w, info))
    }

    /// Stops watching the device in slot `slot` (its protection ends).
    pub(crate) fn unwatch(&self, slot: u16, info: &DeviceInfo) {
        self.untrack(slot);
        self.sentinel.unwatch(info);
    }

    /// Leaves the device in slot `slot` out of the rounds (its log thread is stopping) but
    /// watched: the sentinel keeps marking its changes for the next start.
    pub(crate) fn untrack(&self, slot: u16) {
        lock(&self.watched).remove(&slot);
    }

    /// Ends the round; with nothing left watched (every protection ended), unpins the
    /// sentinel. Otherwise it stays pinned and watching, for the next agent.
    pub(crate) fn finish(mut self) {
        self.end_round();
        if self.sentinel.watched() == 0 {
            self.sentinel.unpin();
        }
    }

    fn end_round(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Guard {
    /// Without `finish` (the tracker dropped unstopped, as in a crash): the round ends, the
    /// sentinel stays pinned and watching.
    fn drop(&mut self) {
        self.end_round();
    }
}

/// One round: flip, grace period, barrier (everything the tracker saw is in its logs),
/// clear the old generation. Any failure leaves the bits: more to re-ship after a crash,
/// never less.
fn round(s: &Sentinel, watched: &Mutex<BTreeMap<u16, Watched>>, ctrl: &Sender<Ctrl>) {
    let txs: Vec<Sender<DiskMsg>> = lock(watched).values().map(|w| w.tx.clone()).collect();
    if txs.is_empty() {
        return;
    }
    let old = s.flip();
    if let Err(e) = grace_period() {
        tracing::warn!("crash sentinel: membarrier: {e}; its bitmaps are not cleared");
        return;
    }
    if let Err(e) = barrier(ctrl, &txs) {
        tracing::debug!("crash sentinel: barrier: {e}; round skipped");
        return;
    }
    // Slots watched since the flip were cleared when they were watched.
    for w in lock(watched).values() {
        s.clear(w.watch.slot, old);
    }
}

/// Every change the tracker recorded before the call is written into its disk's log.
fn barrier(ctrl: &Sender<Ctrl>, txs: &[Sender<DiskMsg>]) -> Result<()> {
    let gone = || crate::error::Error::Stopped("tracker stopping".into());
    let (tx, rx) = bounded(1);
    ctrl.send(Ctrl::Sync(tx)).map_err(|_| gone())?;
    rx.recv_timeout(BARRIER_TIMEOUT).map_err(|_| gone())??;
    for d in txs {
        let (tx, rx) = bounded(1);
        d.send(DiskMsg::Commit(tx)).map_err(|_| gone())?;
        rx.recv_timeout(BARRIER_TIMEOUT).map_err(|_| gone())??;
    }
    Ok(())
}

/// The gap a start records (`why` the continuity check's reason: a crash, or writes while
/// no agent ran): scoped to what the sentinel says may be unlogged when it knows the device
/// (`watch` inherited from the agent before, for the same chain), else the whole disk.
pub(crate) fn gap_msg(
    guard: Option<&Guard>,
    watch: Option<&Watch>,
    info: &DeviceInfo,
    reason: hrl::GapReason,
    why: &str,
) -> DiskMsg {
    let known = guard.zip(watch).and_then(|(g, w)| g.suspect(w, info));
    match known {
        Some(Some(extents)) => {
            let bytes: u64 = extents.iter().map(Extent::len).sum();
            DiskMsg::GapExtents {
                reason,
                why: format!(
                    "{why}; the crash sentinel kept tracking: {} range(s), {bytes} bytes to re-ship, no resync",
                    extents.len()
                ),
                extents,
            }
        }
        Some(None) | None => DiskMsg::Gap {
            reason,
            why: why.to_string(),
        },
    }
}
