// SPDX-License-Identifier: (Apache-2.0 OR GPL-2.0)
/*
 * sitrep block change tracker.
 *
 * Observes every bio queued to a tracked device at block_bio_queue (fired once per bio, for
 * bio-based and blk-mq devices alike, before the I/O is issued — so every write that later
 * completes was seen here), classifies it by bi_opf, and pushes a sequence-numbered event
 * to a ring buffer. If the ring buffer is full the bio's range is set in a per-device coarse
 * bitmap instead, so an overflow loses no information. The write itself is never delayed.
 *
 * Only the few kernel fields read are declared below, with preserve_access_index: CO-RE
 * relocates them against the running kernel's BTF, and the REQ_OP_* / __REQ_* numbers
 * (which move between kernels) are resolved from BTF at load time too.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>

#include "tracker.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* --- the kernel types we read (CO-RE) --- */
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

enum req_op {
	REQ_OP_WRITE = 1,
	REQ_OP_DISCARD = 3,
	REQ_OP_SECURE_ERASE = 5,
	REQ_OP_WRITE_ZEROES = 9,
};

enum req_flag_bits {
	__REQ_FUA = 17,
	__REQ_PREFLUSH = 18,
};

#define REQ_OP_MASK 0xffu

/* --- configuration (set by the loader before load) --- */
const volatile __u32 exclude_tgid = 0; /* sitrep's own process: its log writes */

/* --- maps --- */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 24); /* resized by the loader */
} events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, TRK_MAX_DEVS);
	__type(key, __u32);
	__type(value, struct trk_dev_cfg);
} devices SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(max_entries, TRK_MAX_DEVS * TRK_BITMAP_WORDS);
	__type(key, __u32);
	__type(value, __u64);
} bitmap SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(max_entries, TRK_MAX_DEVS);
	__type(key, __u32);
	__type(value, __u64);
} overflow SEC(".maps");

/*
 * The fine write bitmap (one bit per 4 KiB by default) and its summary (one bit per fine
 * word). Sized by the loader; each device owns a 64-word-aligned region, so summary words
 * are never shared between devices.
 */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(max_entries, 64);
	__type(key, __u32);
	__type(value, __u64);
} fine SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} fine_summary SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct trk_stats);
} stats SEC(".maps");

static __always_inline int ring_fill_high(void)
{
	__u64 avail = bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA);
	__u64 size = bpf_ringbuf_query(&events, BPF_RB_RING_SIZE);

	return avail > size / 4;
}

static __always_inline void mark_overflow(__u32 slot)
{
	__u64 *o = bpf_map_lookup_elem(&overflow, &slot);
	if (o)
		__sync_fetch_and_or(o, 1);
}

/* Sets the bitmap bits covering [sector, sector + nsect) of the device in `slot`. */
static __always_inline void fallback(const struct trk_dev_cfg *cfg, __u64 sector, __u64 nsect,
				     struct trk_stats *st)
{
	__u64 g0, g1, w0, w1;
	__u64 last = (__u64)TRK_BITMAP_WORDS * 64 - 1;

	if (nsect == 0)
		return;
	g0 = sector >> cfg->granule_shift;
	g1 = (sector + nsect - 1) >> cfg->granule_shift;
	if (g0 > last)
		g0 = last;
	if (g1 > last)
		g1 = last;
	w0 = g0 / 64;
	w1 = g1 / 64;
	if (w1 - w0 >= TRK_MAX_WORD_LOOP) {
		mark_overflow(cfg->slot);
		st->overflows++;
		return;
	}
	for (int i = 0; i < TRK_MAX_WORD_LOOP; i++) {
		__u64 w = w0 + i;
		__u64 lo, hi, mask;
		__u32 idx;
		__u64 *word;

		if (w > w1)
			break;
		lo = (w == w0) ? (g0 % 64) : 0;
		hi = (w == w1) ? (g1 % 64) : 63;
		mask = (hi == 63 ? ~0ULL : ((1ULL << (hi + 1)) - 1)) & ~((1ULL << lo) - 1);
		idx = cfg->slot * TRK_BITMAP_WORDS + (__u32)w;
		word = bpf_map_lookup_elem(&bitmap, &idx);
		if (!word) {
			mark_overflow(cfg->slot);
			return;
		}
		__sync_fetch_and_or(word, mask);
		st->fallback_bits++;
	}
}

/*
 * Records a plain write in the fine bitmap: sets the fine bits, then the summary bit of each
 * touched word (after the fine bit, so a consumer that clears the summary first can never
 * miss a fine bit). Returns 0 if the write is not made of whole granules or spans too many
 * words; the caller then uses the ring, which records any range exactly.
 */
static __always_inline int mark_fine(const struct trk_dev_cfg *cfg, __u64 sector, __u64 nsect)
{
	__u64 g0, g1, w0, w1;

	/* Only whole granules: a partial one would log bytes that were not written. */
	if (nsect == 0 || ((sector | nsect) & ((1ULL << cfg->fine_shift) - 1)))
		return 0;
	g0 = sector >> cfg->fine_shift;
	g1 = (sector + nsect - 1) >> cfg->fine_shift;
	w0 = g0 / 64;
	w1 = g1 / 64;
	if (w1 - w0 >= TRK_FINE_MAX_WORDS || w1 >= cfg->fine_words)
		return 0;
	for (int i = 0; i < TRK_FINE_MAX_WORDS; i++) {
		__u64 w = w0 + i;
		__u64 lo, hi, mask, sbit;
		__u32 idx, sidx;
		__u64 *word, *sum;

		if (w > w1)
			break;
		lo = (w == w0) ? (g0 % 64) : 0;
		hi = (w == w1) ? (g1 % 64) : 63;
		mask = (hi == 63 ? ~0ULL : ((1ULL << (hi + 1)) - 1)) & ~((1ULL << lo) - 1);
		idx = cfg->fine_base + (__u32)w;
		word = bpf_map_lookup_elem(&fine, &idx);
		if (!word)
			return 0;
		if ((*word & mask) != mask)
			__sync_fetch_and_or(word, mask);
		sidx = idx / 64;
		sbit = 1ULL << (idx % 64);
		sum = bpf_map_lookup_elem(&fine_summary, &sidx);
		if (!sum)
			return 0;
		if (!(*sum & sbit))
			__sync_fetch_and_or(sum, sbit);
	}
	return 1;
}

/*
 * Fields are read directly for tp_btf (the verifier knows the pointer's BTF type, so plain
 * loads are allowed and cost nothing) and through bpf_probe_read_kernel (BPF_CORE_READ) for
 * the raw tracepoint. `direct` is a compile-time constant in each caller, so each program
 * keeps only its own branch.
 */
static __always_inline int handle(struct bio *bio, const int direct)
{
	__u32 zero = 0;
	__u32 dev = direct ? bio->bi_bdev->bd_dev : BPF_CORE_READ(bio, bi_bdev, bd_dev);
	struct trk_dev_cfg *cfg = bpf_map_lookup_elem(&devices, &dev);
	struct trk_stats *st;
	struct trk_event *e;
	__u32 opf, op, bytes;
	__u64 sector, seq;
	__u8 kind, flags = 0;

	if (!cfg)
		return 0;
	st = bpf_map_lookup_elem(&stats, &zero);
	if (!st)
		return 0; /* cannot happen (per-CPU array, key 0); keeps the verifier happy */
	opf = direct ? bio->bi_opf : BPF_CORE_READ(bio, bi_opf);
	op = opf & REQ_OP_MASK;
	bytes = direct ? bio->bi_iter.bi_size : BPF_CORE_READ(bio, bi_iter.bi_size);
	if (opf & (1u << bpf_core_enum_value(enum req_flag_bits, __REQ_FUA)))
		flags |= TRK_F_FUA;
	if (opf & (1u << bpf_core_enum_value(enum req_flag_bits, __REQ_PREFLUSH)))
		flags |= TRK_F_PREFLUSH;

	if (op == bpf_core_enum_value(enum req_op, REQ_OP_WRITE))
		kind = bytes == 0 ? TRK_OP_FLUSH : TRK_OP_WRITE;
	else if (op == bpf_core_enum_value(enum req_op, REQ_OP_DISCARD))
		kind = TRK_OP_DISCARD;
	else if (op == bpf_core_enum_value(enum req_op, REQ_OP_SECURE_ERASE))
		kind = TRK_OP_SECURE_ERASE;
	else if (op == bpf_core_enum_value(enum req_op, REQ_OP_WRITE_ZEROES))
		kind = TRK_OP_WRITE_ZEROES;
	else {
		st->ignored_ops++;
		return 0;
	}
	if (kind == TRK_OP_FLUSH && !(flags & TRK_F_PREFLUSH)) {
		st->ignored_ops++;
		return 0;
	}
	if (exclude_tgid && (bpf_get_current_pid_tgid() >> 32) == exclude_tgid) {
		st->excluded++;
		return 0;
	}

	/* block_bio_queue runs after partition remapping: make the sector device-relative. */
	sector = direct ? bio->bi_iter.bi_sector : BPF_CORE_READ(bio, bi_iter.bi_sector);
	if (sector >= cfg->start_sect)
		sector -= cfg->start_sect;

	/*
	 * Sequence numbers are per CPU (CPU id in the top 16 bits): no shared atomic on the
	 * hot path. Every number is either submitted (events) or dropped (drops), so per CPU
	 * seq == events + drops, and the consumer checks that it received all events.
	 */
	seq = ((__u64)bpf_get_smp_processor_id() << 48) | st->seq;
	st->seq++;
	/*
	 * Plain writes go to the fine bitmap when enabled: a few atomic ORs instead of a ring
	 * event. Replication in extents mode needs only *which* ranges changed (their order
	 * inside a cycle does not matter), so nothing is lost. Discards, write-zeroes, secure
	 * erases and flushes keep their own records through the ring.
	 */
	if (kind == TRK_OP_WRITE && (cfg->flags & TRK_CFG_WRITE_BITMAP) &&
	    mark_fine(cfg, sector, bytes >> 9)) {
		st->bitmap_writes++;
		st->bytes += bytes;
		return 0;
	}
	e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		st->drops++;
		fallback(cfg, sector, bytes >> 9, st);
		return 0;
	}
	e->seq = seq;
	e->sector = sector;
	e->bytes = bytes;
	e->dev = dev;
	e->slot = (__u16)cfg->slot;
	e->op = kind;
	e->flags = flags;
	e->_pad = 0;
	/*
	 * No wakeup per event: the consumer drains on a short timer. Waking it for every bio
	 * costs a context switch per write; only once the ring is a quarter full is it woken
	 * early, so a burst cannot overflow it while it sleeps.
	 */
	bpf_ringbuf_submit(e, ring_fill_high() ? BPF_RB_FORCE_WAKEUP : BPF_RB_NO_WAKEUP);
	st->events++;
	st->bytes += bytes;
	return 0;
}

SEC("tp_btf/block_bio_queue")
int BPF_PROG(on_bio_queue_btf, struct bio *bio)
{
	return handle(bio, 1);
}

/* Fallback for kernels without tp_btf: same logic, reads go through bpf_probe_read. */
SEC("raw_tp/block_bio_queue")
int BPF_PROG(on_bio_queue_raw, struct bio *bio)
{
	return handle(bio, 0);
}
