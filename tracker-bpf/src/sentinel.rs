//! The crash sentinel: a second BPF tracker, pinned in bpffs, that outlives the agent.
//!
//! The main tracker's state (ring, bitmaps, what the log threads hold) dies with the agent;
//! without more, a restart after a crash must assume anything changed: a whole-disk gap and
//! a checksum resync. The sentinel (`src/bpf/sentinel.bpf.c`) marks, per watched device and
//! granule, every change at queue time and at completion into the bitmap of the current
//! *generation*. Its programs and maps are pinned under a directory of bpffs owned by one
//! agent (one per state directory), so they keep running when that agent dies.
//!
//! **The round** ([`Sentinel::flip`] … [`Sentinel::clear`], driven by `tracker.rs` every
//! second): flip the generation; wait for every program run that may have read the old one
//! ([`grace_period`]: `membarrier(MEMBARRIER_CMD_GLOBAL)`, an RCU grace period — tracepoint
//! programs run inside one); make the main tracker write into its logs everything it saw
//! until then (drain, then a commit barrier on every log thread); only then clear the old
//! generation. Invariant: a change not yet written into a log has its granule set in one of
//! the two generations — it was marked at completion (or at queue time) after the flip, or
//! before it, and then the main tracker recorded it before the grace period ended and logged
//! it before the clear.
//!
//! **After a crash** the next agent adopts the pinned sentinel (no reload: it never stopped),
//! finds the device's entry for the same log chain, and starts the new log with a tracking gap
//! scoped to the granules set in either generation instead of the whole disk
//! (`tracker.rs`). A clean stop removes the device's entry, and the last one unpins the
//! sentinel. A reboot empties bpffs: nothing to adopt (a clean reboot is `continuity.rs`'s).

use std::mem::MaybeUninit;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use hrl::Extent;
use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use libbpf_rs::{MapCore, MapFlags, MapHandle};

use crate::device::DeviceInfo;
use crate::error::{Error, Result};
use crate::skel::sentinel::{SentinelSkelBuilder, types::sen_dev};
use crate::words::MappedWords;

/// Devices one sentinel watches (`SEN_MAX_DEVS`).
pub const MAX_DEVICES: u32 = 64;
/// Bitmap words per device and generation (`SEN_WORDS`).
const WORDS: usize = 2048;
const BITS: u64 = WORDS as u64 * 64;

const MAPS: [&str; 5] = ["sen_devs", "sen_bits", "sen_all", "sen_gen", "sen_flight"];

/// `sen_dev.flags`: a bio-based device (`SEN_BIO_BASED`).
const BIO_BASED: u32 = 1;
const LINKS: [&str; 3] = ["sen_bio_queue", "sen_rq_complete", "sen_bio_complete"];

/// The pinned sentinel of one agent.
pub struct Sentinel {
    dir: PathBuf,
    devs: MapHandle,
    /// Bio-based devices' changes in flight (`sen_flight`).
    flight: MapHandle,
    bits: MappedWords,
    all: MappedWords,
    generation: MappedWords,
    /// Found pinned (an earlier agent's, still running) rather than loaded now.
    adopted: bool,
}

/// A device's place in the sentinel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Watch {
    /// Its bitmaps.
    pub slot: u32,
    /// Sectors per bit: `1 << granule_shift`.
    pub granule_shift: u32,
    /// The entry was there already, for the same log chain: the sentinel has been marking
    /// this device's changes since before this agent started.
    pub inherited: bool,
}

impl Sentinel {
    /// Adopts the sentinel pinned in `dir` (a directory of bpffs), or loads, attaches and
    /// pins a new one there.
    ///
    /// # Errors
    /// No bpffs at `dir`'s parent, no BTF-typed tracepoints, or BPF refused.
    pub fn open(dir: &Path) -> Result<Self> {
        let pinned = MAPS.iter().chain(&LINKS).all(|n| dir.join(n).exists());
        let adopted = pinned && Self::adopt(dir).is_ok();
        if !adopted {
            remove_pins(dir);
            load_and_pin(dir)?;
        }
        let mut s = Self::adopt(dir)?;
        s.adopted = adopted;
        Ok(s)
    }

    fn adopt(dir: &Path) -> Result<Self> {
        let map = |n: &str| {
            MapHandle::from_pinned_path(dir.join(n))
                .map_err(|e| Error::Bpf(format!("sentinel map {n} in {}: {e}", dir.display())))
        };
        let devs = map("sen_devs")?;
        if devs.value_size() as usize != size_of::<sen_dev>() || devs.max_entries() != MAX_DEVICES {
            return Err(Error::Bpf(format!(
                "the sentinel pinned in {} has another layout",
                dir.display()
            )));
        }
        let bits = map("sen_bits")?;
        let all = map("sen_all")?;
        let generation = map("sen_gen")?;
        let flight = map("sen_flight")?;
        let n = MAX_DEVICES as usize * 2;
        Ok(Self {
            dir: dir.to_owned(),
            devs,
            flight,
            bits: MappedWords::new(&bits, n * WORDS)?,
            all: MappedWords::new(&all, n)?,
            generation: MappedWords::new(&generation, 1)?,
            adopted: true,
        })
    }

    /// Whether this sentinel was found running (an earlier agent's) rather than loaded.
    #[must_use]
    pub fn adopted(&self) -> bool {
        self.adopted
    }

    /// The bpffs directory it is pinned in.
    #[must_use]
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Watches `dev` for the log chain `chain`: its existing entry if it is for the same
    /// chain (`inherited`), else a fresh one with both generations cleared.
    ///
    /// # Errors
    /// Every slot is taken, or the map update failed.
    pub fn watch(&self, dev: &DeviceInfo, chain: [u8; 16]) -> Result<Watch> {
        let key = dev.kernel_dev().to_ne_bytes();
        let nr_sects = dev.size / 512;
        // The same dev_t may now be another device, or the same one re-attached (a loop
        // device detached and attached again: its backing file may have been written
        // meanwhile, where no tracepoint sees): the identity and the kernel's diskseq (new
        // at every attach) must match too.
        let identity = fnv1a(format!("{:?}#{:?}", dev.identity(), dev.diskseq()).as_bytes());
        let flags = if dev.bio_based { BIO_BASED } else { 0 };
        if let Some(d) = self.entry(&key)
            && d.chain == chain
            && d.identity == identity
            && d.flags == flags
            && (d.start_sect, d.nr_sects) == (dev.start_sect, nr_sects)
        {
            return Ok(Watch {
                slot: d.slot,
                granule_shift: d.granule_shift,
                inherited: true,
            });
        }
        let used: Vec<u32> = self.entries().iter().map(|(_, d)| d.slot).collect();
        let slot = (0..MAX_DEVICES)
            .find(|s| !used.contains(s))
            .ok_or_else(|| Error::Invalid(format!("the sentinel watches {MAX_DEVICES} devices")))?;
        for g in 0..2 {
            self.clear(slot, g);
        }
        let d = sen_dev {
            start_sect: dev.start_sect,
            nr_sects,
            chain,
            identity,
            slot,
            granule_shift: granule_shift(nr_sects),
            flags,
            pad: 0,
        };
        self.devs
            .update(&key, as_bytes(&d), MapFlags::ANY)
            .map_err(|e| Error::Bpf(format!("sentinel: watching {}: {e}", dev.path.display())))?;
        Ok(Watch {
            slot,
            granule_shift: d.granule_shift,
            inherited: false,
        })
    }

    /// Stops watching `dev` (a clean stop: the continuity record vouches instead).
    pub fn unwatch(&self, dev: &DeviceInfo) {
        let _ = self.devs.delete(&dev.kernel_dev().to_ne_bytes());
    }

    /// How many devices are watched.
    #[must_use]
    pub fn watched(&self) -> usize {
        self.entries().len()
    }

    /// Flips the generation; returns the old one, to [`clear`](Self::clear) once everything
    /// marked in it is logged.
    pub fn flip(&self) -> u32 {
        let g = &self.generation.words()[0];
        u32::try_from(g.fetch_xor(1, Ordering::SeqCst) & 1).unwrap_or(0)
    }

    /// Clears generation `which` of `slot`.
    pub fn clear(&self, slot: u32, which: u32) {
        let i = (slot as usize * 2 + which as usize) & (MAX_DEVICES as usize * 2 - 1);
        self.all.words()[i].store(0, Ordering::SeqCst);
        for w in &self.bits.words()[i * WORDS..(i + 1) * WORDS] {
            if w.load(Ordering::Relaxed) != 0 {
                w.store(0, Ordering::SeqCst);
            }
        }
    }

    /// The slots of every watched device.
    #[must_use]
    pub fn slots(&self) -> Vec<u32> {
        self.entries().iter().map(|(_, d)| d.slot).collect()
    }

    /// What device `dev` (watched as `w`) may have changed without being logged: its changes
    /// still in flight (a bio-based device's, as queued) and the granules set in either
    /// generation, as byte extents; `None` for the whole device. The bios in flight are read
    /// first: one completing meanwhile has marked its granules before leaving the table.
    #[must_use]
    pub fn suspect(&self, w: &Watch, dev: &DeviceInfo) -> Option<Vec<Extent>> {
        let size = dev.size;
        let granule = 512u64 << w.granule_shift;
        let mut flying = self.in_flight(dev)?;
        let base = |g: u32| (w.slot as usize * 2 + g as usize) & (MAX_DEVICES as usize * 2 - 1);
        if (0..2).any(|g| self.all.words()[base(g)].load(Ordering::SeqCst) != 0) {
            return None;
        }
        let mut out: Vec<Extent> = Vec::new();
        for word in 0..WORDS {
            let bits = (0..2).fold(0u64, |acc, g| {
                acc | self.bits.words()[base(g) * WORDS + word].load(Ordering::SeqCst)
            });
            for b in 0..64u64 {
                if bits & (1 << b) == 0 {
                    continue;
                }
                let start = (word as u64 * 64 + b) * granule;
                if start >= size {
                    continue;
                }
                out.push(Extent::new(start, granule.min(size - start))?);
            }
        }
        out.append(&mut flying);
        Some(merge(out))
    }

    /// The byte ranges of `dev`'s changes in flight (bio-based devices; empty otherwise),
    /// clipped to the device; `None` if the table cannot be read (the whole device, then).
    fn in_flight(&self, dev: &DeviceInfo) -> Option<Vec<Extent>> {
        if !dev.bio_based {
            return Some(Vec::new());
        }
        let want = dev.kernel_dev();
        let mut out = Vec::new();
        for k in self.flight.keys() {
            let Ok(Some(v)) = self.flight.lookup(&k, MapFlags::ANY) else {
                continue; // completed meanwhile: its granules are marked
            };
            let (sector, nsect, kdev) = flight_entry(&v)?;
            if kdev != want {
                continue;
            }
            let lo = sector.saturating_sub(dev.start_sect).saturating_mul(512);
            let hi = (sector.saturating_add(nsect))
                .saturating_sub(dev.start_sect)
                .saturating_mul(512)
                .min(dev.size);
            if hi > lo {
                out.push(Extent::new(lo, hi - lo)?);
            }
        }
        Some(out)
    }

    /// Unpins everything (the last device stopped cleanly): the programs detach, and the
    /// maps go with the last handle.
    pub fn unpin(&self) {
        remove_pins(&self.dir);
    }

    fn entry(&self, key: &[u8]) -> Option<sen_dev> {
        let v = self.devs.lookup(key, MapFlags::ANY).ok()??;
        from_bytes(&v)
    }

    fn entries(&self) -> Vec<(Vec<u8>, sen_dev)> {
        self.devs
            .keys()
            .filter_map(|k| self.entry(&k).map(|d| (k, d)))
            .collect()
    }
}

/// Where the agent with state directory `state` pins its sentinel in the bpffs mounted at
/// `bpffs` (normally `/sys/fs/bpf`): `BPFFS/sitrep-<64-bit FNV-1a of the canonical path,
/// hex>` — one per agent, so two agents on one host (tests do that) never share or remove
/// each other's.
#[must_use]
pub fn dir_for(bpffs: &Path, state: &Path) -> PathBuf {
    let canon = std::fs::canonicalize(state).unwrap_or_else(|_| state.to_owned());
    let h = fnv1a(canon.as_os_str().as_encoded_bytes());
    bpffs.join(format!("sitrep-{h:016x}"))
}

/// 64-bit FNV-1a (names and identities, not security).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Waits for an RCU grace period: every BPF tracepoint program that started before the call
/// has finished (`membarrier(MEMBARRIER_CMD_GLOBAL)` is `synchronize_rcu()`).
///
/// # Errors
/// The kernel refused (nohz_full CPUs): the caller must not clear anything.
pub fn grace_period() -> std::io::Result<()> {
    const MEMBARRIER_CMD_GLOBAL: libc::c_long = 1;
    // SAFETY: membarrier takes no pointers; with CMD_GLOBAL and flags 0 it only waits.
    let rc = unsafe { libc::syscall(libc::SYS_membarrier, MEMBARRIER_CMD_GLOBAL, 0, 0) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// The granule for a device of `nr_sects` sectors: at least 8 sectors (4 KiB), and at most
/// [`BITS`] granules over the device.
fn granule_shift(nr_sects: u64) -> u32 {
    let mut s = 3;
    // Granules needed, rounded up: the last, partial one needs its bit too.
    while s < 40 && nr_sects.div_ceil(1 << s) > BITS {
        s += 1;
    }
    s
}

/// Mounts a bpffs at `at` unless one is there (systemd mounts `/sys/fs/bpf` at boot; a host
/// without it gets one, which outlives the agent as the pins must).
fn ensure_bpffs(at: &Path) -> Result<()> {
    const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
    // f_type is a signed word holding an unsigned 32-bit magic: compare its low 32 bits.
    let is_bpffs = nix::sys::statfs::statfs(at)
        .is_ok_and(|s| (s.filesystem_type().0 & 0xffff_ffff) == BPF_FS_MAGIC);
    if is_bpffs {
        return Ok(());
    }
    nix::mount::mount(
        Some("bpf"),
        at,
        Some("bpf"),
        nix::mount::MsFlags::empty(),
        Some("mode=0700"),
    )
    .map_err(|e| {
        Error::Bpf(format!(
            "sentinel: no bpffs at {} and mounting one: {e}",
            at.display()
        ))
    })
}

fn load_and_pin(dir: &Path) -> Result<()> {
    let bpf = |what: &str, e: libbpf_rs::Error| Error::Bpf(format!("sentinel: {what}: {e}"));
    if let Some(parent) = dir.parent() {
        ensure_bpffs(parent)?;
    }
    std::fs::create_dir_all(dir)
        .map_err(|e| Error::Bpf(format!("sentinel: {}: {e}", dir.display())))?;
    let mut obj = MaybeUninit::uninit();
    let open = SentinelSkelBuilder::default()
        .open(&mut obj)
        .map_err(|e| bpf("open", e))?;
    let mut skel = open.load().map_err(|e| bpf("load", e))?;
    let mut links = [
        skel.progs
            .sen_bio_queue
            .attach()
            .map_err(|e| bpf("attach", e))?,
        skel.progs
            .sen_rq_complete
            .attach()
            .map_err(|e| bpf("attach", e))?,
        skel.progs
            .sen_bio_complete
            .attach()
            .map_err(|e| bpf("attach", e))?,
    ];
    let pin = |r: libbpf_rs::Result<()>| r.map_err(|e| bpf("pin", e));
    pin(skel.maps.sen_devs.pin(dir.join("sen_devs")))?;
    pin(skel.maps.sen_bits.pin(dir.join("sen_bits")))?;
    pin(skel.maps.sen_all.pin(dir.join("sen_all")))?;
    pin(skel.maps.sen_gen.pin(dir.join("sen_gen")))?;
    pin(skel.maps.sen_flight.pin(dir.join("sen_flight")))?;
    for (l, n) in links.iter_mut().zip(LINKS) {
        pin(l.pin(dir.join(n)))?;
    }
    Ok(())
}

/// Unpins every object in `dir` (pinned links go, so the programs detach) and the directory.
fn remove_pins(dir: &Path) {
    for n in MAPS.iter().chain(&LINKS) {
        let _ = std::fs::remove_file(dir.join(n));
    }
    let _ = std::fs::remove_dir(dir);
}

/// Extents sorted and merged where they touch or overlap.
fn merge(mut v: Vec<Extent>) -> Vec<Extent> {
    v.sort_by_key(Extent::offset);
    let mut out: Vec<Extent> = Vec::with_capacity(v.len());
    for e in v {
        match out.last_mut() {
            Some(l) if e.offset() <= l.offset() + l.len() => {
                let end = (l.offset() + l.len()).max(e.offset() + e.len());
                if let Some(m) = Extent::new(l.offset(), end - l.offset()) {
                    *l = m;
                }
            }
            _ => out.push(e),
        }
    }
    out
}

/// A `sen_flight` value: (sector, sectors, dev_t); `None` if it has another size.
fn flight_entry(v: &[u8]) -> Option<(u64, u64, u32)> {
    if v.len() != 24 {
        return None;
    }
    let u64_at = |i: usize| v.get(i..i + 8)?.try_into().ok().map(u64::from_ne_bytes);
    let dev = v.get(16..20)?.try_into().ok().map(u32::from_ne_bytes)?;
    Some((u64_at(0)?, u64_at(8)?, dev))
}

fn as_bytes(d: &sen_dev) -> &[u8] {
    // SAFETY: sen_dev is a #[repr(C)] struct of integers and a byte array with no padding
    // (8 + 8 + 16 + 8 + 4 × 4 bytes); viewing it as bytes reads only initialised memory.
    unsafe { std::slice::from_raw_parts(std::ptr::from_ref(d).cast(), size_of::<sen_dev>()) }
}

fn from_bytes(b: &[u8]) -> Option<sen_dev> {
    if b.len() != size_of::<sen_dev>() {
        return None;
    }
    // SAFETY: the length matches, every bit pattern is a valid sen_dev (integers and bytes),
    // and read_unaligned does not need the slice to be aligned.
    Some(unsafe { std::ptr::read_unaligned(b.as_ptr().cast::<sen_dev>()) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn granules_cover_any_device_with_the_bits_there_are() {
        assert_eq!(granule_shift(1 << 10), 3);
        assert_eq!(granule_shift(BITS << 3), 3);
        assert_eq!(granule_shift((BITS << 3) + 1), 4);
        for nr in [1u64 << 20, (1 << 31) + 7, 1 << 40, (1 << 40) - 1] {
            let s = granule_shift(nr);
            assert!(nr.div_ceil(1 << s) <= BITS, "{nr}: shift {s}");
        }
        assert_eq!(size_of::<sen_dev>(), 56);
    }
}
