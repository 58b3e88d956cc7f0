/* SPDX-License-Identifier: (Apache-2.0 OR GPL-2.0) */
/*
 * Layouts shared by the BPF program (tracker.bpf.c) and its Rust loader (src/event.rs).
 * Rust mirrors these with #[repr(C)] types and size assertions; change both together.
 */
#ifndef SITREP_TRACKER_H
#define SITREP_TRACKER_H

/* Devices tracked at once (slots); each has its own fallback bitmap. */
#define TRK_MAX_DEVS 64
/* Fallback bitmap words per device: 2048 x 64 = 131072 granules. */
#define TRK_BITMAP_WORDS 2048
/* A bio covering more bitmap words than this marks its whole device dirty instead. */
#define TRK_MAX_WORD_LOOP 64

/* Fine write bitmap: a bio spanning more words than this goes through the ring instead. */
#define TRK_FINE_MAX_WORDS 4

/*
 * Direct-indexed device table: TRK_DEV_INDEX entries, indexed by trk_dev_index(dev_t), each
 * 0 (no tracked device), slot + 1, or TRK_INDEX_SHARED (two tracked devices share the index:
 * look in the `devices` hash). An array lookup is inlined by the verifier; a hash lookup is a
 * helper call, and every bio and request on the system pays for this lookup.
 */
#define TRK_DEV_INDEX 4096
#define TRK_INDEX_SHARED 0xffffffffu
/* dev_t is major << 20 | minor; mirrored in src/poller.rs (dev_index). */
#define trk_dev_index(dev) ((((dev) & 0xfffffu) + ((dev) >> 20) * 257u) & (TRK_DEV_INDEX - 1))

/* A request completion spanning devices, or a non-contiguous (multi-range) discard, is
 * walked bio by bio, at most this many bios; a longer one marks its device(s) dirty. */
#define TRK_RQ_WALK 8

/* trk_dev_cfg.flags */
#define TRK_CFG_WRITE_BITMAP 1 /* plain writes set bits in the fine bitmap, no ring event */
#define TRK_CFG_BIO_BASED 2    /* no request queue (device-mapper, md): completion is seen at
				* block_bio_complete, with the range remembered at queue time */
#define TRK_CFG_QUEUE_MARK 4   /* also record changes when they are queued (comparison only) */

/* Event kinds (sitrep's own numbering; the kernel's REQ_OP_* are resolved from BTF). */
#define TRK_OP_WRITE 1
#define TRK_OP_DISCARD 2
#define TRK_OP_SECURE_ERASE 3
#define TRK_OP_WRITE_ZEROES 4
#define TRK_OP_FLUSH 5 /* an empty write carrying PREFLUSH */

/* Event flags. */
#define TRK_F_FUA 1
#define TRK_F_PREFLUSH 2

/* One block-layer change on a tracked device: 32 bytes in the ring buffer. */
struct trk_event {
	__u64 seq;    /* CPU << 48 | per-CPU count of tracked bios (incl. those that fell back) */
	__u64 sector; /* relative to the tracked device (partition start removed), 512 B units */
	__u32 bytes;  /* bio size in bytes (0 for a flush) */
	__u32 dev;    /* kernel dev_t: major << 20 | minor */
	__u16 slot;   /* the device's slot, as configured by userspace */
	__u8 op;      /* TRK_OP_* */
	__u8 flags;   /* TRK_F_* */
	__u32 _pad;
};

/* Per-device configuration, keyed by kernel dev_t in the `devices` map. */
struct trk_dev_cfg {
	__u64 start_sect; /* partition start on its disk (0 for a whole disk) */
	__u64 nr_sects;   /* device size in 512 B sectors */
	__u32 slot;       /* index into the fallback bitmap and overflow array */
	__u32 granule_shift; /* log2 of sectors per bitmap bit */
	__u32 fine_base;  /* first word of this device's region of the fine bitmap (64-aligned) */
	__u32 fine_words; /* words in that region */
	__u32 fine_shift; /* log2 of sectors per fine bit */
	__u32 flags;      /* TRK_CFG_* */
	__u32 dev;        /* kernel dev_t, to confirm a direct-index hit */
	__u32 _pad;
};

/* Per-CPU counters. */
struct trk_stats {
	__u64 events;        /* events submitted to the ring buffer */
	__u64 bytes;         /* bytes covered by those events */
	__u64 drops;         /* ring buffer reservations that failed (each fell back) */
	__u64 fallback_bits; /* bitmap words touched by fallbacks */
	__u64 overflows;     /* fallbacks that marked a whole device dirty */
	__u64 excluded;      /* bios from sitrep's own process, not tracked */
	__u64 ignored_ops;   /* tracked-device bios that are not changes (reads, ...) */
	__u64 seq;           /* sequence numbers handed out on this CPU (= events + drops
			      * + bitmap_writes + coarse) */
	__u64 bitmap_writes; /* writes recorded in the fine bitmap instead of the ring */
	__u64 coarse;        /* ranges of a walked request set straight in the coarse bitmap */
	__u64 late;          /* bio-based completions with no queue-time entry (recorded from
			      * the bio's own iterator) */
	__u64 inflight_full; /* bio-based bios that found the in-flight table full (their
			      * device was marked dirty instead) */
};

/* What block_bio_queue remembers of a bio on a bio-based device until it completes. */
struct trk_inflight {
	__u64 sector; /* relative to the tracked device */
	__u32 bytes;
	__u32 dev;    /* kernel dev_t of the tracked device */
	__u8 op;      /* TRK_OP_*, or 0: sitrep's own bio, not to be recorded */
	__u8 flags;
	__u16 _pad;
	__u32 _pad2;
};

#endif
