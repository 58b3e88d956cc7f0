//! The poller thread: it owns the loaded BPF object, drains the ring buffer and the
//! fallback bitmaps, routes events to the disks' log threads, and accounts for every
//! sequence number the program handed out.
//!
//! Owning the BPF object in one thread (rather than behind a lock) follows the skeleton's
//! lifetime rules and keeps the hot loop free of synchronisation: control requests
//! (add/remove device, stop) arrive on a channel between polls.

use std::collections::BTreeMap;
use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use libbpf_rs::{Link, MapCore, MapFlags, RingBufferBuilder};

pub(crate) use crate::attach::{AttachMode, Attached, PollerConfig};
pub(crate) use crate::ctrl::{CompletionCheck, Ctrl, SlotCfg};
use crate::device::IoCounters;
use crate::disk::DiskMsg;
use crate::error::{Error, Result};
use crate::event::Event;
use crate::fine;
use crate::kernel_stats::{KernelStats, prog_info, programs, read_stats, seen_sectors};
use crate::load::load;
use crate::skel::{TrackerSkel, types};
pub(crate) use crate::words::{BITMAP_WORDS, granule_shift_for};
use crate::words::{MappedWords, drain_words};

/// Devices tracked at once (`TRK_MAX_DEVS`).
pub const MAX_DEVICES: usize = 64;
/// How often completions are checked against the kernel's counts (also at every cut).
const COMPLETION_CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// How often the fine write bitmap is drained into the log.
const FINE_DRAIN_INTERVAL: Duration = Duration::from_millis(50);
/// The poll timeout while control messages keep coming (see [`BUSY_WINDOW`]): events are
/// submitted without wakeups, so the poll is mostly a sleep, and a control message waits
/// for its end. An agent making a point cuts and tags in quick succession (a converging
/// series of cuts), each a round trip through this thread: at the idle timeout (10 ms) the
/// round trips alone made a round last ~40 ms and the series could not converge.
const BUSY_POLL: Duration = Duration::from_millis(1);
/// How long after a control message the poller keeps the short timeout.
const BUSY_WINDOW: Duration = Duration::from_millis(250);
const TRK_CFG_WRITE_BITMAP: u32 = 1;
const TRK_CFG_BIO_BASED: u32 = 2;
const TRK_CFG_QUEUE_MARK: u32 = 4;

/// Runs the poller until `Ctrl::Stop` or the control channel closes. Reports readiness (or
/// the load/attach error) once on `ready`.
pub(crate) fn run(
    cfg: PollerConfig,
    ctrl: Receiver<Ctrl>,
    ready: Sender<Result<Attached>>,
    stats: Arc<Mutex<KernelStats>>,
) {
    let mut obj = MaybeUninit::uninit();
    let (mut skel, attached, mut links) = match load(&cfg, &mut obj) {
        Ok(v) => v,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let mut p = match Poller::new(&skel, stats, cfg.fine_words, cfg.mark_at_queue) {
        Ok(p) => p,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    // The queue hook was attached only to prove it can be: it runs for every bio on the
    // system, so it stays attached only while something needs it (see `queue_hook_needed`).
    p.queue_link = links.pop();
    p.attached = attached;
    let _ = p.update_queue_hook(&skel, false);
    let inbox = Arc::new(Mutex::new(Vec::<Event>::new()));
    let bad = Arc::new(AtomicU64::new(0));
    let ring = match build_ring(&skel.maps.events, &inbox, &bad) {
        Ok(r) => r,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let _ = ready.send(Ok(attached));
    let mut last_fine = Instant::now();
    let mut last_ctrl: Option<Instant> = None;
    loop {
        loop {
            match ctrl.try_recv() {
                Ok(Ctrl::Stop) | Err(crossbeam_channel::TryRecvError::Disconnected) => return,
                Err(crossbeam_channel::TryRecvError::Empty) => break,
                Ok(msg) => {
                    p.handle(&skel, &ring, &inbox, &bad, msg);
                    last_ctrl = Some(Instant::now());
                }
            }
        }
        let poll = if last_ctrl.is_some_and(|t| t.elapsed() < BUSY_WINDOW) {
            BUSY_POLL.min(cfg.poll)
        } else {
            cfg.poll
        };
        let paused = cfg
            .pause
            .as_ref()
            .is_some_and(|f| f.load(Ordering::Relaxed));
        if paused {
            std::thread::sleep(poll);
            // Events wait in the ring on purpose: not a loss. Restart the grace period.
            p.checkpoint = (p.checkpoint.0, Instant::now());
            continue;
        } else {
            // Events are submitted without wakeups (see tracker.bpf.c), so the poll mostly
            // times out: consume explicitly after it.
            let _ = ring.poll(poll);
            let _ = ring.consume();
        }
        skip_completions(&cfg, skel.maps.bss_data.as_deref_mut());
        p.bad_events += bad.swap(0, Ordering::Relaxed);
        p.route(&inbox);
        // The fine write bitmap coalesces rewrites by itself: draining it less often
        // means fewer, larger log commits. The ring fallback bitmap is drained every poll.
        let fine_due = last_fine.elapsed() >= FINE_DRAIN_INTERVAL;
        if fine_due {
            last_fine = Instant::now();
        }
        p.drain_bitmaps(fine_due);
        p.account(&skel, attached);
    }
}

/// The ring buffer of events: each parsed event goes to `inbox`, an unparsable one counts
/// in `bad`.
fn build_ring<'a>(
    events: &'a libbpf_rs::MapMut<'_>,
    inbox: &Arc<Mutex<Vec<Event>>>,
    bad: &Arc<AtomicU64>,
) -> Result<libbpf_rs::RingBuffer<'a>> {
    let sink = inbox.clone();
    let bad_cb = bad.clone();
    let mut rb = RingBufferBuilder::new();
    let ring_err = |e: libbpf_rs::Error| Error::Bpf(format!("ring buffer: {e}"));
    rb.add(events, move |data: &[u8]| {
        match Event::parse(data) {
            Some(e) => {
                if let Ok(mut v) = sink.lock() {
                    v.push(e);
                }
            }
            None => {
                bad_cb.fetch_add(1, Ordering::Relaxed);
            }
        }
        0
    })
    .map_err(ring_err)?;
    rb.build().map_err(ring_err)
}

/// Test seam (`TrackerConfig::skip_completions`): hands the program completions to ignore.
fn skip_completions(cfg: &PollerConfig, bss: Option<&mut types::bss>) {
    if let Some(n) = cfg
        .skip_completions
        .as_ref()
        .map(|n| n.swap(0, Ordering::Relaxed))
        && n != 0
        && let Some(bss) = bss
    {
        // The program decrements it concurrently: add atomically.
        // SAFETY: the field is an aligned i64 in the mmapped .bss, shared with the
        // program, which only ever updates it atomically.
        let cell = unsafe { AtomicI64::from_ptr(&raw mut bss.test_skip_completions) };
        cell.fetch_add(n, Ordering::SeqCst);
    }
}

struct Poller {
    slots: BTreeMap<u16, SlotCfg>,
    bitmap: MappedWords,
    overflow: MappedWords,
    fine: MappedWords,
    fine_summary: MappedWords,
    fine_alloc: Option<fine::Allocator>,
    stats: Arc<Mutex<KernelStats>>,
    received: u64,
    bad_events: u64,
    orphans: u64,
    unaccounted: u64,
    recursion_misses: u64,
    mark_at_queue: bool,
    /// sitrep's own log writes can reach a tracked device.
    own_logs: bool,
    /// The `block_bio_queue` link while attached.
    queue_link: Option<Link>,
    attached: Attached,
    /// (seq handed out at the previous check, when): everything below it must be received
    /// or dropped by the next check.
    checkpoint: (u64, Instant),
    /// When completions were last checked against the kernel's counts.
    last_completion_check: Instant,
}

impl Poller {
    fn new(
        skel: &TrackerSkel<'_>,
        stats: Arc<Mutex<KernelStats>>,
        fine_words: u32,
        mark_at_queue: bool,
    ) -> Result<Self> {
        // Per-CPU counters only grow; a fresh load starts them at zero.
        let mapped = fine_words.max(64) as usize;
        Ok(Self {
            slots: BTreeMap::new(),
            bitmap: MappedWords::new(&skel.maps.bitmap, MAX_DEVICES * BITMAP_WORDS)?,
            overflow: MappedWords::new(&skel.maps.overflow, MAX_DEVICES)?,
            fine: MappedWords::new(&skel.maps.fine, mapped)?,
            fine_summary: MappedWords::new(&skel.maps.fine_summary, mapped / 64)?,
            fine_alloc: (fine_words >= 64).then(|| fine::Allocator::new(fine_words)),
            stats,
            received: 0,
            bad_events: 0,
            orphans: 0,
            unaccounted: 0,
            recursion_misses: 0,
            mark_at_queue,
            own_logs: false,
            queue_link: None,
            attached: Attached::TpBtf,
            checkpoint: (0, Instant::now()),
            last_completion_check: Instant::now(),
        })
    }

    /// Whether `block_bio_queue` has work: remembering bio-based bios until they complete,
    /// recognising sitrep's own bios, or recording at queue time.
    fn queue_hook_needed(&self) -> bool {
        self.mark_at_queue
            || self.own_logs
            || self.slots.values().any(|c| c.bio_based || c.queue_mark)
    }

    /// Attaches or detaches the queue hook to match [`Self::queue_hook_needed`] (or `also`).
    fn update_queue_hook(&mut self, skel: &TrackerSkel<'_>, also: bool) -> Result<()> {
        let need = also || self.queue_hook_needed();
        if !need {
            self.queue_link = None;
            return Ok(());
        }
        if self.queue_link.is_some() {
            return Ok(());
        }
        let progs = &skel.progs;
        let link = match self.attached {
            Attached::TpBtf => progs.on_bio_queue_btf.attach(),
            Attached::RawTp => progs.on_bio_queue_raw.attach(),
        };
        let link = link.map_err(|e| Error::Bpf(format!("attaching block_bio_queue: {e}")))?;
        self.queue_link = Some(link);
        Ok(())
    }

    fn add(&mut self, skel: &TrackerSkel<'_>, slot: u16, mut c: SlotCfg) -> Result<()> {
        self.update_queue_hook(skel, c.bio_based || c.queue_mark)?;
        c.marked_since = self.mark_at_queue.then(Instant::now);
        c.marked_from_add = self.mark_at_queue;
        c.fine = self.fine_alloc.as_mut().and_then(|a| a.alloc(c.nr_sects));
        if let Some(r) = c.fine {
            fine::clear(self.fine.words(), self.fine_summary.words(), r);
        }
        let base = usize::from(slot) * BITMAP_WORDS;
        for w in &self.bitmap.words()[base..base + BITMAP_WORDS] {
            w.store(0, Ordering::Relaxed);
        }
        if let Some(o) = self.overflow.words().get(usize::from(slot)) {
            o.store(0, Ordering::Relaxed);
        }
        let v = dev_cfg(slot, &c, self.mark_at_queue);
        // SAFETY: trk_dev_cfg is a plain #[repr(C)] struct of integers; viewing it as bytes
        // to hand to the map is what libbpf expects.
        let bytes = unsafe {
            std::slice::from_raw_parts((&raw const v).cast::<u8>(), size_of::<types::trk_dev_cfg>())
        };
        if let Err(e) = skel
            .maps
            .devices
            .update(&c.dev.to_ne_bytes(), bytes, MapFlags::NO_EXIST)
        {
            if let (Some(a), Some(r)) = (self.fine_alloc.as_mut(), c.fine) {
                a.free(r);
            }
            return Err(Error::Bpf(format!("registering device: {e}")));
        }
        // The slot's configuration before the index entry that leads to it.
        let key = u32::from(slot).to_ne_bytes();
        let dev = c.dev;
        self.slots.insert(slot, c);
        let indexed = skel
            .maps
            .slot_cfg
            .update(&key, bytes, MapFlags::ANY)
            .and_then(|()| self.set_index(skel, dev_index(dev), None));
        if let Err(e) = indexed {
            let _ = skel.maps.devices.delete(&dev.to_ne_bytes());
            if let Some(r) = self.slots.remove(&slot).and_then(|c| c.fine)
                && let Some(a) = self.fine_alloc.as_mut()
            {
                a.free(r);
            }
            return Err(Error::Bpf(format!("registering device: {e}")));
        }
        // The baseline: counts from before (a device written before tracking, an earlier
        // use of the slot) are not misses.
        let _ = self.check_slot(skel, slot);
        Ok(())
    }

    /// Checks every slot's completions against the kernel's counts (see
    /// [`crate::completions`]) and tells the disk thread of any shortfall, ahead of whatever
    /// is sent to it next.
    fn check_completions(&mut self, skel: &TrackerSkel<'_>) {
        self.last_completion_check = Instant::now();
        let slots: Vec<u16> = self.slots.keys().copied().collect();
        for slot in slots {
            let missed = self.check_slot(skel, slot);
            let Some(c) = self.slots.get(&slot) else {
                continue;
            };
            if missed == 0 {
                continue;
            }
            let partitions = c.check.as_ref().is_some_and(|k| k.partitions);
            let _ = c.tx.send(DiskMsg::Missed {
                sectors: missed,
                carry: c.marks_cover() && !partitions,
            });
        }
    }

    /// Two readings of one slot (the higher counts; see [`MissCheck`]): the sectors proven
    /// missed since the last check.
    fn check_slot(&mut self, skel: &TrackerSkel<'_>, slot: u16) -> u64 {
        let Some(chk) = self.slots.get_mut(&slot).and_then(|c| c.check.as_mut()) else {
            return 0;
        };
        let mut missed = 0u64;
        for _ in 0..2 {
            // The kernel's count first (see MissCheck).
            let Some(kernel) = std::fs::read_to_string(&chk.stat)
                .ok()
                .and_then(|t| IoCounters::parse(&t))
                .map(|k| k.write_sectors.saturating_add(k.discard_sectors))
            else {
                return missed;
            };
            let Some(seen) = seen_sectors(skel, slot) else {
                return missed;
            };
            missed = missed.saturating_add(chk.miss.observe(kernel, seen));
        }
        missed
    }

    /// Turns recording at queue time on or off for one slot (both copies of its configuration:
    /// the hash by device and the array by slot).
    fn set_queue_mark(&mut self, skel: &TrackerSkel<'_>, slot: u16, on: bool) -> Result<()> {
        if !self.slots.contains_key(&slot) {
            return Err(Error::Invalid(format!("slot {slot} is not tracked")));
        }
        // The hook before the flag that needs it; after the flag that no longer does.
        if on {
            self.update_queue_hook(skel, true)?;
        }
        let c = self
            .slots
            .get_mut(&slot)
            .ok_or_else(|| Error::Invalid(format!("slot {slot} is not tracked")))?;
        c.queue_mark = on;
        if self.mark_at_queue || on {
            c.marked_since = c.marked_since.or_else(|| Some(Instant::now()));
        } else {
            c.marked_since = None;
            c.marked_from_add = false;
        }
        let v = dev_cfg(slot, c, self.mark_at_queue || on);
        // SAFETY: as in `add` — a plain #[repr(C)] struct of integers viewed as bytes.
        let bytes = unsafe {
            std::slice::from_raw_parts((&raw const v).cast::<u8>(), size_of::<types::trk_dev_cfg>())
        };
        let updated = skel
            .maps
            .devices
            .update(&c.dev.to_ne_bytes(), bytes, MapFlags::EXIST)
            .and_then(|()| {
                skel.maps
                    .slot_cfg
                    .update(&u32::from(slot).to_ne_bytes(), bytes, MapFlags::ANY)
            })
            .map_err(|e| Error::Bpf(format!("updating device configuration: {e}")));
        let _ = self.update_queue_hook(skel, false);
        updated
    }

    /// Points the direct index entry `h` at the one tracked slot (other than `except`) whose
    /// device maps to it, at nothing, or — two or more — at the hash (`TRK_INDEX_SHARED`).
    fn set_index(
        &self,
        skel: &TrackerSkel<'_>,
        h: u32,
        except: Option<u16>,
    ) -> std::result::Result<(), libbpf_rs::Error> {
        let mut hits = self
            .slots
            .iter()
            .filter(|(s, c)| Some(**s) != except && dev_index(c.dev) == h)
            .map(|(s, _)| u32::from(*s) + 1);
        let v = match (hits.next(), hits.next()) {
            (None, _) => 0,
            (Some(one), None) => one,
            (Some(_), Some(_)) => INDEX_SHARED,
        };
        skel.maps
            .dev_index
            .update(&h.to_ne_bytes(), &v.to_ne_bytes(), MapFlags::ANY)
    }

    fn remove(
        &mut self,
        skel: &TrackerSkel<'_>,
        slot: u16,
        mut consume: impl FnMut(),
        inbox: &Mutex<Vec<Event>>,
    ) -> Result<()> {
        let Some(dev) = self.slots.get(&slot).map(|c| c.dev) else {
            return Err(Error::Invalid(format!("slot {slot} is not tracked")));
        };
        // Misses up to now go into the last log, before it is sealed.
        self.check_completions(skel);
        self.set_index(skel, dev_index(dev), Some(slot))
            .map_err(|e| Error::Bpf(format!("unregistering device: {e}")))?;
        skel.maps
            .devices
            .delete(&dev.to_ne_bytes())
            .map_err(|e| Error::Bpf(format!("unregistering device: {e}")))?;
        // Every sequence number handed out before the delete is either in the ring, or was
        // dropped into the bitmap. Wait (bounded) until all are accounted for.
        let target = read_stats(skel).map_or(0, |k| k.seq);
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            consume();
            self.route(inbox);
            if self.received + self.kernel_drops(skel) >= target || Instant::now() > deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        self.drain_bitmaps(true);
        if let Some(c) = self.slots.remove(&slot)
            && let (Some(a), Some(r)) = (self.fine_alloc.as_mut(), c.fine)
        {
            a.free(r);
        }
        let _ = self.update_queue_hook(skel, false);
        Ok(())
    }

    fn route(&mut self, inbox: &Mutex<Vec<Event>>) {
        let events = match inbox.lock() {
            Ok(mut v) => std::mem::take(&mut *v),
            Err(_) => return,
        };
        if events.is_empty() {
            return;
        }
        self.received += events.len() as u64;
        let mut per: BTreeMap<u16, Vec<Event>> = BTreeMap::new();
        for e in events {
            match self.slots.get(&e.slot) {
                Some(c) if c.dev == e.dev => per.entry(e.slot).or_default().push(e),
                _ => self.orphans += 1,
            }
        }
        for (slot, evs) in per {
            if let Some(c) = self.slots.get(&slot) {
                // Blocking send: a slow log thread stalls the ring, which then falls back
                // to the bitmap in the kernel. Backpressure never reaches the application.
                let _ = c.tx.send(DiskMsg::Events(evs));
            }
        }
    }

    fn drain_bitmaps(&mut self, fine_too: bool) {
        for (&slot, c) in &self.slots {
            let base = usize::from(slot) * BITMAP_WORDS;
            let words = &self.bitmap.words()[base..base + BITMAP_WORDS];
            let whole = self
                .overflow
                .words()
                .get(usize::from(slot))
                .is_some_and(|o| {
                    o.load(Ordering::Relaxed) != 0 && o.swap(0, Ordering::AcqRel) != 0
                });
            let extents = drain_words(words, c.granule_shift, c.nr_sects);
            if whole || !extents.is_empty() {
                let _ = c.tx.send(DiskMsg::Fallback { extents, whole });
            }
            if let Some(r) = c.fine.filter(|_| fine_too) {
                let (extents, granules) =
                    fine::drain(self.fine.words(), self.fine_summary.words(), r, c.nr_sects);
                if !extents.is_empty() {
                    let _ = c.tx.send(DiskMsg::Written { extents, granules });
                }
            }
        }
    }

    /// Sequence numbers accounted for without the ring: dropped into the coarse bitmap or
    /// recorded in the fine write bitmap.
    fn kernel_drops(&self, skel: &TrackerSkel<'_>) -> u64 {
        read_stats(skel).map_or(0, |s| s.drops + s.bitmap_writes + s.coarse)
    }

    fn account(&mut self, skel: &TrackerSkel<'_>, attached: Attached) {
        if self.last_completion_check.elapsed() >= COMPLETION_CHECK_INTERVAL {
            self.check_completions(skel);
        }
        let mut k = read_stats(skel).unwrap_or_default();
        // The kernel silently skips a tracing program that would recurse on a CPU where it
        // is already running: such a bio or request is not seen at all. Its only trace is
        // the program's recursion-miss counter, so any increase is a loss.
        let progs = programs(skel, attached);
        let mut misses = 0;
        for (i, prog) in progs.iter().enumerate() {
            let Some(info) = prog_info(*prog) else {
                continue;
            };
            misses += info.recursion_misses;
            k.prog_run_ns += info.run_time_ns;
            k.prog_runs = k.prog_runs.max(info.run_cnt);
            if i == 0 {
                (k.queue_runs, k.queue_run_ns) = (info.run_cnt, info.run_time_ns);
            } else {
                k.complete_runs += info.run_cnt;
                k.complete_run_ns += info.run_time_ns;
            }
        }
        if misses > self.recursion_misses {
            let lost = misses - self.recursion_misses;
            self.recursion_misses = misses;
            self.unaccounted += lost;
            self.gap_all(&format!(
                "{lost} block-layer events skipped by the kernel (BPF recursion)"
            ));
        }
        let seq = k.seq;
        let accounted = self.received + k.drops + k.bitmap_writes + k.coarse + self.bad_events;
        let (prev, when) = self.checkpoint;
        if when.elapsed() >= Duration::from_secs(1) {
            // Sequence numbers handed out a second ago must all have arrived by now.
            if accounted + self.unaccounted < prev {
                let lost = prev - accounted - self.unaccounted;
                self.unaccounted += lost;
                self.gap_all(&format!("{lost} tracker events unaccounted for"));
            }
            self.checkpoint = (seq, Instant::now());
        }
        k.received = self.received;
        k.unaccounted = self.unaccounted + self.bad_events;
        k.orphans = self.orphans;
        if let Ok(mut s) = self.stats.lock() {
            *s = k;
        }
    }
}

impl Poller {
    /// Handles one control request between polls (`Stop` is the caller's).
    fn handle(
        &mut self,
        skel: &TrackerSkel<'_>,
        ring: &libbpf_rs::RingBuffer<'_>,
        inbox: &Mutex<Vec<Event>>,
        bad: &AtomicU64,
        msg: Ctrl,
    ) {
        match msg {
            Ctrl::Add(slot, c, reply) => {
                let _ = reply.send(self.add(skel, slot, c));
            }
            Ctrl::Remove(slot, reply) => {
                let consume = || {
                    let _ = ring.consume();
                };
                let _ = reply.send(self.remove(skel, slot, consume, inbox));
            }
            Ctrl::Sync(reply) => {
                let _ = ring.consume();
                self.bad_events += bad.swap(0, Ordering::Relaxed);
                self.route(inbox);
                self.drain_bitmaps(true);
                self.check_completions(skel);
                let _ = reply.send(Ok(()));
            }
            Ctrl::OwnLogs(on, reply) => {
                self.own_logs = on;
                let _ = reply.send(self.update_queue_hook(skel, false));
            }
            Ctrl::QueueMark(slot, on, reply) => {
                let _ = reply.send(self.set_queue_mark(skel, slot, on));
            }
            Ctrl::Cut(cut, reply) => {
                let mut txs = Vec::with_capacity(cut.len());
                for (slot, sealed) in cut {
                    let Some(tx) = self.slots.get(&slot).map(|c| c.tx.clone()) else {
                        let _ =
                            reply.send(Err(Error::Invalid(format!("slot {slot} is not tracked"))));
                        return;
                    };
                    txs.push((tx, sealed));
                }
                // Time first, then the count: a change reported complete before `time` ran
                // its hook (count, then bitmap bit or ring event) before the count is read,
                // so the drain below finds it.
                let time = hrl_now_ns();
                let before = read_stats(skel).map(|k| k.seq);
                let _ = ring.consume();
                self.bad_events += bad.swap(0, Ordering::Relaxed);
                self.route(inbox);
                self.drain_bitmaps(true);
                self.check_completions(skel);
                let after = read_stats(skel).map(|k| k.seq);
                let exact = before.is_some() && before == after;
                // Every slot's rotate is queued before the next drain can route anything:
                // the sealed logs end at the same instant.
                for (tx, sealed) in txs {
                    let _ = tx.send(DiskMsg::Rotate(sealed));
                }
                let _ = reply.send(Ok((time, exact)));
            }
            Ctrl::Stop => {}
        }
    }

    fn gap_all(&self, why: &str) {
        tracing::error!(why, "tracker lost events; recording whole-disk gaps");
        for c in self.slots.values() {
            let _ = c.tx.send(DiskMsg::Gap {
                reason: hrl::GapReason::EventsLost,
                why: why.to_owned(),
            });
        }
    }
}

/// Entries of the direct device index (`TRK_DEV_INDEX`).
const DEV_INDEX: u32 = 4096;
/// `TRK_INDEX_SHARED`: two tracked devices share an index entry.
const INDEX_SHARED: u32 = u32::MAX;

/// `trk_dev_index()` of tracker.h: where a kernel dev_t sits in the direct device index.
fn dev_index(dev: u32) -> u32 {
    ((dev & 0xf_ffff) + (dev >> 20) * 257) & (DEV_INDEX - 1)
}

fn flag(on: bool, bit: u32) -> u32 {
    if on { bit } else { 0 }
}

fn dev_cfg(slot: u16, c: &SlotCfg, queue_mark: bool) -> types::trk_dev_cfg {
    types::trk_dev_cfg {
        start_sect: c.start_sect,
        nr_sects: c.nr_sects,
        slot: u32::from(slot),
        granule_shift: c.granule_shift,
        fine_base: c.fine.map_or(0, |r| r.base),
        fine_words: c.fine.map_or(0, |r| r.words),
        fine_shift: c.fine.map_or(0, |r| r.shift),
        flags: flag(c.fine.is_some(), TRK_CFG_WRITE_BITMAP)
            | flag(c.bio_based, TRK_CFG_BIO_BASED)
            | flag(queue_mark, TRK_CFG_QUEUE_MARK),
        dev: c.dev,
        _pad: 0,
    }
}

fn hrl_now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dev_index_matches_the_c_macro_and_spreads_common_devices() {
        // loop0..loop255 (major 7) all land on distinct entries.
        let loops: std::collections::BTreeSet<u32> = (0..256)
            .map(|m| dev_index(crate::device::kernel_dev(7, m)))
            .collect();
        assert_eq!(loops.len(), 256);
        // (7 << 20 | 3): 3 + 7 * 257 = 1802; (259 << 20 | 5): (5 + 259 * 257) & 4095.
        assert_eq!(dev_index(crate::device::kernel_dev(7, 3)), 1802);
        assert_eq!(
            dev_index(crate::device::kernel_dev(259, 5)),
            (5 + 259 * 257) & 4095
        );
        assert!(dev_index(u32::MAX) < DEV_INDEX);
    }
}
