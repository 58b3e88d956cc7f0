//! Loading the BPF object and attaching its programs: `tp_btf` first, raw tracepoints as
//! the fallback.

use std::mem::MaybeUninit;

use libbpf_rs::Link;
use libbpf_rs::skel::{OpenSkel, SkelBuilder};

use crate::attach::{AttachMode, Attached, PollerConfig};
use crate::error::{Error, Result};
use crate::skel::{OpenTrackerSkel, TrackerSkel, TrackerSkelBuilder};

pub(crate) type Loaded<'obj> = (TrackerSkel<'obj>, Attached, Vec<Link>);

pub(crate) fn load<'obj>(
    cfg: &PollerConfig,
    obj: &'obj mut MaybeUninit<libbpf_rs::OpenObject>,
) -> Result<Loaded<'obj>> {
    let order: &[Attached] = match cfg.attach {
        AttachMode::Auto => &[Attached::TpBtf, Attached::RawTp],
        AttachMode::TpBtf => &[Attached::TpBtf],
        AttachMode::RawTp => &[Attached::RawTp],
    };
    let mut errors = Vec::new();
    // Each attempt needs a fresh object: a failed load consumes it.
    let obj: *mut MaybeUninit<libbpf_rs::OpenObject> = obj;
    for kind in order {
        // `obj` outlives 'obj (it is the caller's storage). Only one attempt's skeleton is
        // alive at a time: a failed attempt's skeleton is dropped (dropping the object it
        // initialised) before the next attempt writes the storage again.
        // SAFETY: as above — a unique, live, caller-owned storage slot.
        let storage = unsafe { &mut *obj };
        match try_load(cfg, *kind, storage) {
            Ok((skel, links)) => return Ok((skel, *kind, links)),
            Err(e) => errors.push(format!("{kind:?}: {e}")),
        }
    }
    Err(Error::Bpf(format!(
        "could not attach to the block tracepoints ({}); sitrep needs root, CONFIG_BPF_SYSCALL and \
         BTF (/sys/kernel/btf/vmlinux)",
        errors.join("; ")
    )))
}

fn try_load<'obj>(
    cfg: &PollerConfig,
    kind: Attached,
    obj: &'obj mut MaybeUninit<libbpf_rs::OpenObject>,
) -> std::result::Result<(TrackerSkel<'obj>, Vec<Link>), libbpf_rs::Error> {
    let mut open: OpenTrackerSkel<'obj> = TrackerSkelBuilder::default().open(obj)?;
    open.maps.events.set_max_entries(cfg.ring_bytes)?;
    let fine_words = cfg.fine_words.max(64);
    open.maps.fine.set_max_entries(fine_words)?;
    open.maps.fine_summary.set_max_entries(fine_words / 64)?;
    if let Some(ro) = open.maps.rodata_data.as_deref_mut() {
        ro.exclude_tgid = cfg.exclude_tgid;
        ro.test_seams = u32::from(cfg.skip_completions.is_some());
    }
    let (btf, raw) = (kind == Attached::TpBtf, kind == Attached::RawTp);
    open.progs.on_bio_queue_btf.set_autoload(btf);
    open.progs.on_rq_complete_btf.set_autoload(btf);
    open.progs.on_bio_complete_btf.set_autoload(btf);
    open.progs.on_bio_queue_raw.set_autoload(raw);
    open.progs.on_rq_complete_raw.set_autoload(raw);
    open.progs.on_bio_complete_raw.set_autoload(raw);
    let skel = open.load()?;
    // Completions first: a bio-based bio remembered at queue time is then always taken out
    // again when it completes. The queue hook last: `run` detaches it while not needed.
    let links = match kind {
        Attached::TpBtf => vec![
            skel.progs.on_rq_complete_btf.attach()?,
            skel.progs.on_bio_complete_btf.attach()?,
            skel.progs.on_bio_queue_btf.attach()?,
        ],
        Attached::RawTp => vec![
            skel.progs.on_rq_complete_raw.attach()?,
            skel.progs.on_bio_complete_raw.attach()?,
            skel.progs.on_bio_queue_raw.attach()?,
        ],
    };
    Ok((skel, links))
}
