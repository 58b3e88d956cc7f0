/* SPDX-License-Identifier: (Apache-2.0 OR GPL-2.0) */
/*
 * Layouts shared by the crash sentinel (sentinel.bpf.c) and its loader (src/sentinel.rs).
 * The Rust side mirrors them with #[repr(C)] types and checks their sizes.
 */
#ifndef SITREP_SENTINEL_H
#define SITREP_SENTINEL_H

/* Devices the sentinel can watch at once. */
#define SEN_MAX_DEVS 64
/* Bitmap words per device and generation: 131072 granules. */
#define SEN_WORDS 2048
/* Most words one change may touch before the device is marked whole. */
#define SEN_MAX_WORD_LOOP 16

/* Bios of bio-based devices in flight (`sen_flight`). */
#define SEN_MAX_FLIGHT 65536

/* sen_dev.flags: a bio-based device (device-mapper, md): its bios are remembered in
 * `sen_flight` from queue to completion, whose iterator may hold only the tail. */
#define SEN_BIO_BASED 1

/* A watched device (value of `sen_devs`, keyed by the kernel dev_t). */
struct sen_dev {
	__u64 start_sect;    /* partition start, whole-disk sectors */
	__u64 nr_sects;      /* size in sectors */
	__u8 chain[16];      /* the disk id of the log chain it watches for */
	__u64 identity;      /* hash of the device's identity and diskseq, checked on adoption */
	__u32 slot;          /* 0..SEN_MAX_DEVS: its bitmaps */
	__u32 granule_shift; /* sectors per bit = 1 << granule_shift */
	__u32 flags;         /* SEN_BIO_BASED */
	__u32 pad;
};

/* A bio-based device's change in flight (value of `sen_flight`, keyed by the bio's
 * address): its whole range as queued. */
struct sen_flight {
	__u64 sector; /* whole-disk sectors, as the bio was queued */
	__u64 nsect;
	__u32 dev;    /* the kernel dev_t */
	__u32 pad;
};

#endif
