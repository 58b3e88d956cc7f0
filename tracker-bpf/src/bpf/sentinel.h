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

/* A watched device (value of `sen_devs`, keyed by the kernel dev_t). */
struct sen_dev {
	__u64 start_sect;    /* partition start, whole-disk sectors */
	__u64 nr_sects;      /* size in sectors */
	__u8 chain[16];      /* the disk id of the log chain it watches for */
	__u64 identity;      /* hash of the device's identity and diskseq, checked on adoption */
	__u32 slot;          /* 0..SEN_MAX_DEVS: its bitmaps */
	__u32 granule_shift; /* sectors per bit = 1 << granule_shift */
};

#endif
