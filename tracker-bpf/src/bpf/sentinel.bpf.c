// SPDX-License-Identifier: (Apache-2.0 OR GPL-2.0)
/*
 * sitrep crash sentinel: a second, tiny tracker that outlives the agent.
 *
 * Its programs and maps are pinned in bpffs, so they keep running when the agent dies
 * (kill -9, OOM, a panic). For every watched device it sets a bit per granule changed, at
 * queue time and again at completion, in the bitmap of the current generation (`sen_gen`).
 * The agent flips the generation, waits for every program run that read the old one
 * (membarrier: an RCU grace period), makes sure every change its own tracker saw until then is
 * written into its log, and only then clears the old generation's bits. So at any instant the
 * two generations together cover every change the agent may not have logged yet; a new agent
 * after a crash logs exactly those granules instead of a whole-disk gap (src/sentinel.rs,
 * docs/tracking.md "Agent crash").
 *
 * It never delays an I/O, never fails one, and only sets bits.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>

#include "sentinel.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

typedef __u64 sector_t;
typedef __u32 dev_t;

struct bvec_iter {
	sector_t bi_sector;
	unsigned int bi_size;
} __attribute__((preserve_access_index));

struct block_device {
	dev_t bd_dev;
} __attribute__((preserve_access_index));

struct bio {
	struct block_device *bi_bdev;
	unsigned int bi_opf;
	struct bvec_iter bi_iter;
} __attribute__((preserve_access_index));

struct request {
	sector_t __sector;
	struct bio *bio;
	struct bio *biotail;
} __attribute__((preserve_access_index));

struct request_queue;

enum req_op {
	REQ_OP_WRITE = 1,
	REQ_OP_DISCARD = 3,
	REQ_OP_SECURE_ERASE = 5,
	REQ_OP_WRITE_ZEROES = 9,
};

#define REQ_OP_MASK 0xffu

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, SEN_MAX_DEVS);
	__type(key, __u32);
	__type(value, struct sen_dev);
} sen_devs SEC(".maps");

/* (slot * 2 + generation) * SEN_WORDS + word */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(max_entries, SEN_MAX_DEVS * 2 * SEN_WORDS);
	__type(key, __u32);
	__type(value, __u64);
} sen_bits SEC(".maps");

/* slot * 2 + generation: the whole device changed (a change too large or too scattered). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(max_entries, SEN_MAX_DEVS * 2);
	__type(key, __u32);
	__type(value, __u64);
} sen_all SEC(".maps");

/* [0]: the current generation (0 or 1). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} sen_gen SEC(".maps");

/* Bio-based devices' changes in flight, by the bio's address: queued here, marked whole and
 * removed at completion. Full: the device is marked whole (a gap, never silence). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, SEN_MAX_FLIGHT);
	__type(key, __u64);
	__type(value, struct sen_flight);
} sen_flight SEC(".maps");

static __always_inline int is_change(__u32 opf, __u64 bytes)
{
	__u32 op = opf & REQ_OP_MASK;

	if (op == bpf_core_enum_value(enum req_op, REQ_OP_WRITE))
		return bytes != 0;
	return op == bpf_core_enum_value(enum req_op, REQ_OP_DISCARD) ||
	       op == bpf_core_enum_value(enum req_op, REQ_OP_SECURE_ERASE) ||
	       op == bpf_core_enum_value(enum req_op, REQ_OP_WRITE_ZEROES);
}

static __always_inline __u32 generation(void)
{
	__u32 zero = 0;
	__u64 *g = bpf_map_lookup_elem(&sen_gen, &zero);

	return g ? (__u32)(*g & 1) : 0;
}

static __always_inline void mark_all(const struct sen_dev *d, __u32 gen)
{
	__u32 idx = d->slot * 2 + gen;
	__u64 *a = bpf_map_lookup_elem(&sen_all, &idx);

	if (a)
		__sync_fetch_and_or(a, 1);
}

/* Marks [sector, + nsect) — whole-disk sectors — of device `d`, clipped to it. */
__noinline int sen_mark(const struct sen_dev *d, __u64 sector, __u64 nsect)
{
	__u32 gen = generation();
	__u64 lo, hi, g0, g1, w0, w1, last = (__u64)SEN_WORDS * 64 - 1;
	__u32 shift;

	if (!d || nsect == 0 || d->slot >= SEN_MAX_DEVS)
		return 0;
	shift = d->granule_shift;
	if (shift > 63)
		return 0;
	lo = sector > d->start_sect ? sector - d->start_sect : 0;
	hi = sector + nsect - d->start_sect;
	if (sector + nsect <= d->start_sect || lo >= d->nr_sects)
		return 0;
	if (hi > d->nr_sects)
		hi = d->nr_sects;
	g0 = lo >> shift;
	g1 = (hi - 1) >> shift;
	if (g0 > last)
		g0 = last;
	if (g1 > last)
		g1 = last;
	w0 = g0 / 64;
	w1 = g1 / 64;
	if (w1 - w0 >= SEN_MAX_WORD_LOOP) {
		mark_all(d, gen);
		return 0;
	}
	for (int i = 0; i < SEN_MAX_WORD_LOOP; i++) {
		__u64 w = w0 + i, b0, b1, mask;
		__u32 idx;
		__u64 *word;

		if (w > w1)
			break;
		b0 = (w == w0) ? (g0 % 64) : 0;
		b1 = (w == w1) ? (g1 % 64) : 63;
		mask = (b1 == 63 ? ~0ULL : ((1ULL << (b1 + 1)) - 1)) & ~((1ULL << b0) - 1);
		idx = (d->slot * 2 + gen) * SEN_WORDS + (__u32)w;
		word = bpf_map_lookup_elem(&sen_bits, &idx);
		if (!word) {
			mark_all(d, gen);
			return 0;
		}
		if ((*word & mask) != mask)
			__sync_fetch_and_or(word, mask);
	}
	return 0;
}

static __always_inline const struct sen_dev *watched(struct bio *bio)
{
	__u32 dev;

	if (!bio)
		return 0;
	dev = bio->bi_bdev->bd_dev;
	return bpf_map_lookup_elem(&sen_devs, &dev);
}

SEC("tp_btf/block_bio_queue")
int BPF_PROG(sen_bio_queue, struct bio *bio)
{
	const struct sen_dev *d = watched(bio);
	struct sen_flight f = {};
	__u64 bytes, key = (__u64)bio;

	if (!d)
		return 0;
	bytes = bio->bi_iter.bi_size;
	if (!is_change(bio->bi_opf, bytes))
		return 0;
	sen_mark(d, bio->bi_iter.bi_sector, bytes >> 9);
	if (d->flags & SEN_BIO_BASED) {
		f.sector = bio->bi_iter.bi_sector;
		f.nsect = bytes >> 9;
		f.dev = bio->bi_bdev->bd_dev;
		if (bpf_map_update_elem(&sen_flight, &key, &f, BPF_ANY))
			mark_all(d, generation());
	}
	return 0;
}

SEC("tp_btf/block_rq_complete")
int BPF_PROG(sen_rq_complete, struct request *rq, int error, unsigned int nr_bytes)
{
	struct bio *bio = rq->bio, *last;
	const struct sen_dev *d;

	if (!bio || !is_change(bio->bi_opf, nr_bytes))
		return 0;
	last = rq->biotail;
	d = watched(bio);
	if (last != bio) {
		/*
		 * Several bios: a multi-range discard, or bios of adjacent partitions. Their ranges
		 * are not one span from __sector: mark every watched device among them whole.
		 */
		__u32 op = bio->bi_opf & REQ_OP_MASK;

		if (op != bpf_core_enum_value(enum req_op, REQ_OP_WRITE) ||
		    last->bi_bdev->bd_dev != bio->bi_bdev->bd_dev) {
			const struct sen_dev *e = watched(last);

			if (d)
				mark_all(d, generation());
			if (e)
				mark_all(e, generation());
			return 0;
		}
	}
	if (d)
		sen_mark(d, rq->__sector, nr_bytes >> 9);
	return 0;
}

SEC("tp_btf/block_bio_complete")
int BPF_PROG(sen_bio_complete, struct request_queue *q, struct bio *bio)
{
	const struct sen_dev *d = watched(bio);
	struct sen_flight *f;
	__u64 bytes, key = (__u64)bio;

	if (!d)
		return 0;
	/* Bio-based devices: the iterator may hold only the tail by now (device-mapper trims a
	 * split bio to its remainder); the range as queued is in sen_flight. */
	f = bpf_map_lookup_elem(&sen_flight, &key);
	if (f) {
		if (f->dev == bio->bi_bdev->bd_dev)
			sen_mark(d, f->sector, f->nsect);
		else
			mark_all(d, generation());
		bpf_map_delete_elem(&sen_flight, &key);
		return 0;
	}
	bytes = bio->bi_iter.bi_size;
	if (!is_change(bio->bi_opf, bytes))
		return 0;
	if (d->flags & SEN_BIO_BASED)
		/* Queued before the device was watched, or not remembered (sen_flight full). */
		mark_all(d, generation());
	else
		sen_mark(d, bio->bi_iter.bi_sector, bytes >> 9);
	return 0;
}
