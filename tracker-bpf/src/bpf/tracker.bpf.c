// SPDX-License-Identifier: (Apache-2.0 OR GPL-2.0)
/*
 * sitrep block change tracker.
 *
 * Records every change (write, discard, write-zeroes, secure erase) to a tracked device when
 * it COMPLETES, so that a log sealed while a write is still in flight never stands for that
 * write alone: the write appears in the log that is current when it completes (or a later
 * one), and the agent, which reads a sealed log's extents after the seal, reads its data.
 *
 * - blk-mq devices (loop, nvme, virtio, ublk, null_blk): block_rq_complete, which fires at
 *   the start of blk_update_request / blk_complete_request with the request's bios still
 *   attached. The range is [rq->__sector, + nr_bytes) and the device is the first bio's
 *   bi_bdev (a partition; rq->part is only set with iostats on).
 * - bio-based devices (device-mapper, md): block_bio_complete, fired by bio_endio. The bio's
 *   iterator is not reliable by then (a split leaves only the tail in it), so block_bio_queue
 *   remembers the range in `inflight`, keyed by the bio's address, and the completion takes
 *   it from there.
 * block_bio_queue also decides which bios are sitrep's own (exclude_tgid): the completion
 *   runs in whatever context the driver completes in.
 *
 * A change is classified by bi_opf, then recorded in the fine write bitmap (plain writes),
 * or as a sequence-numbered ring event, or — ring full — in the per-device coarse bitmap, so
 * an overflow loses no information. The I/O itself is never delayed.
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
	struct bio *bi_next;
	struct block_device *bi_bdev;
	unsigned int bi_opf;
	struct bvec_iter bi_iter;
} __attribute__((preserve_access_index));

struct request {
	unsigned int __data_len;
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

enum req_flag_bits {
	__REQ_FUA = 17,
	__REQ_PREFLUSH = 18,
};

#define REQ_OP_MASK 0xffu

/* --- configuration (set by the loader before load) --- */
const volatile __u32 exclude_tgid = 0; /* sitrep's own process: its log writes */
/* Test seams (tests only): 0 in production, which lets the verifier drop their code. */
const volatile __u32 test_seams = 0;
/* With test_seams: the next this-many tracked change completions are ignored entirely, as
 * if block_rq_complete had not fired for them (what the 6.18 host kernel does, rarely). */
__s64 test_skip_completions = 0;

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

/* The direct-indexed device table (see tracker.h) and the per-slot configurations. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, TRK_DEV_INDEX);
	__type(key, __u32);
	__type(value, __u32);
} dev_index SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, TRK_MAX_DEVS);
	__type(key, __u32);
	__type(value, struct trk_dev_cfg);
} slot_cfg SEC(".maps");

/* Bios of bio-based devices between queue and completion (see the top of the file). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1 << 16);
	__type(key, __u64);
	__type(value, struct trk_inflight);
} inflight SEC(".maps");

/*
 * sitrep's own bios to blk-mq devices, queued and not yet completed, keyed by address, and
 * how many there are: completions look only when some are pending.
 */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1 << 14);
	__type(key, __u64);
	__type(value, __u8);
} own_bios SEC(".maps");

__u64 own_pending = 0;

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct trk_stats);
} stats SEC(".maps");

/*
 * Per slot, per CPU: sectors of change requests (write, discard, secure erase, write-zeroes)
 * whose completion block_rq_complete reported, counted the way the kernel's own iostats count
 * them (every completed byte, charged to the request's first bio's device). The poller
 * compares the sum with /sys/dev/block/M:m/stat: a kernel count that grows faster means
 * completions the program never saw (see docs/tracking.md, "Missed completions").
 */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, TRK_MAX_DEVS);
	__type(key, __u32);
	__type(value, __u64);
} done_sectors SEC(".maps");

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

/*
 * Sets the coarse bitmap bits covering [sector, sector + nsect) of the device in `slot`.
 * A global (separately verified) function with scalar arguments: it is called from loops,
 * and inlining its own 64-step loop there would exceed the verifier's budget.
 */
__noinline int mark_coarse(__u32 slot, __u32 granule_shift, __u64 sector, __u64 nsect)
{
	__u32 zero = 0;
	struct trk_stats *st = bpf_map_lookup_elem(&stats, &zero);
	__u64 g0, g1, w0, w1;
	__u64 last = (__u64)TRK_BITMAP_WORDS * 64 - 1;

	if (nsect == 0 || granule_shift > 63 || slot >= TRK_MAX_DEVS)
		return 0;
	g0 = sector >> granule_shift;
	g1 = (sector + nsect - 1) >> granule_shift;
	if (g0 > last)
		g0 = last;
	if (g1 > last)
		g1 = last;
	w0 = g0 / 64;
	w1 = g1 / 64;
	if (w1 - w0 >= TRK_MAX_WORD_LOOP) {
		mark_overflow(slot);
		if (st)
			st->overflows++;
		return 0;
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
		idx = slot * TRK_BITMAP_WORDS + (__u32)w;
		word = bpf_map_lookup_elem(&bitmap, &idx);
		if (!word) {
			mark_overflow(slot);
			return 0;
		}
		__sync_fetch_and_or(word, mask);
		if (st)
			st->fallback_bits++;
	}
	return 0;
}

static __always_inline void fallback(const struct trk_dev_cfg *cfg, __u64 sector, __u64 nsect,
				     struct trk_stats *st)
{
	mark_coarse(cfg->slot, cfg->granule_shift, sector, nsect);
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

/* Reads `field` of `ptr`: a plain load for tp_btf, bpf_probe_read_kernel for raw_tp. */
#define RD(direct, ptr, f) ((direct) ? (ptr)->f : BPF_CORE_READ(ptr, f))
/* The same through one pointer: ptr->a->b. */
#define RD2(direct, ptr, a, b) ((direct) ? (ptr)->a->b : BPF_CORE_READ(ptr, a, b))

/*
 * Sorts a change into a TRK_OP_* kind and TRK_F_* flags from bi_opf and its size; returns 0
 * for what changes nothing (reads, plain empty writes, ...).
 */
static __always_inline __u8 classify(__u32 opf, __u32 bytes, __u8 *flags)
{
	__u32 op = opf & REQ_OP_MASK;

	*flags = 0;
	if (opf & (1u << bpf_core_enum_value(enum req_flag_bits, __REQ_FUA)))
		*flags |= TRK_F_FUA;
	if (opf & (1u << bpf_core_enum_value(enum req_flag_bits, __REQ_PREFLUSH)))
		*flags |= TRK_F_PREFLUSH;
	if (op == bpf_core_enum_value(enum req_op, REQ_OP_WRITE)) {
		if (bytes)
			return TRK_OP_WRITE;
		return (*flags & TRK_F_PREFLUSH) ? TRK_OP_FLUSH : 0;
	}
	if (op == bpf_core_enum_value(enum req_op, REQ_OP_DISCARD))
		return TRK_OP_DISCARD;
	if (op == bpf_core_enum_value(enum req_op, REQ_OP_SECURE_ERASE))
		return TRK_OP_SECURE_ERASE;
	if (op == bpf_core_enum_value(enum req_op, REQ_OP_WRITE_ZEROES))
		return TRK_OP_WRITE_ZEROES;
	return 0;
}

/*
 * Clips [*sector, + *bytes) — whole-disk sectors for a partition — to the tracked device and
 * makes it device-relative. A request can merge bios of adjacent partitions, so its range can
 * run past the device. Returns 0 if nothing is left.
 */
static __always_inline int clip(const struct trk_dev_cfg *cfg, __u64 *sector, __u64 *bytes)
{
	__u64 s = *sector, e = *sector + (*bytes >> 9);
	__u64 lo = cfg->start_sect, hi = cfg->start_sect + cfg->nr_sects;

	if (s < lo)
		s = lo;
	if (e > hi)
		e = hi;
	if (s >= e)
		return 0;
	*sector = s - lo;
	*bytes = (e - s) << 9;
	return 1;
}

/* The tracked device with kernel dev_t `dev`, or NULL. */
static __always_inline struct trk_dev_cfg *find_dev(__u32 dev)
{
	__u32 h = trk_dev_index(dev), slot;
	__u32 *v = bpf_map_lookup_elem(&dev_index, &h);
	struct trk_dev_cfg *c;

	if (!v || !*v)
		return 0;
	if (*v == TRK_INDEX_SHARED)
		return bpf_map_lookup_elem(&devices, &dev);
	slot = *v - 1;
	c = bpf_map_lookup_elem(&slot_cfg, &slot);
	if (!c || c->dev != dev)
		return 0;
	return c;
}

static __always_inline struct trk_stats *stats_here(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&stats, &zero);
}

/*
 * Records one change (device-relative sector): in the fine bitmap for a plain write made of
 * whole granules, else as a ring event, else (ring full) in the coarse bitmap.
 *
 * Sequence numbers are per CPU (CPU id in the top 16 bits): no shared atomic on the hot path.
 * Every number ends up as an event, a drop or a fine-bitmap write, so per CPU
 * seq == events + drops + bitmap_writes (+ coarse), and the consumer checks that it received
 * all events.
 */
static __always_inline void record(const struct trk_dev_cfg *cfg, struct trk_stats *st, __u32 dev,
				   __u64 sector, __u32 bytes, __u8 kind, __u8 flags)
{
	struct trk_event *e;
	__u64 seq = ((__u64)bpf_get_smp_processor_id() << 48) | st->seq;

	st->seq++;
	/*
	 * Replication in extents mode needs only *which* ranges changed (their order inside a
	 * cycle does not matter), so a bit per granule loses nothing.
	 */
	if (kind == TRK_OP_WRITE && (cfg->flags & TRK_CFG_WRITE_BITMAP) &&
	    mark_fine(cfg, sector, bytes >> 9)) {
		st->bitmap_writes++;
		return;
	}
	e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		st->drops++;
		fallback(cfg, sector, bytes >> 9, st);
		return;
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
}

/* Records a whole-disk range, clipped to the device, in the coarse bitmap (walked requests). */
static __always_inline void record_coarse(const struct trk_dev_cfg *cfg, struct trk_stats *st,
					  __u64 sector, __u64 bytes)
{
	if (!clip(cfg, &sector, &bytes))
		return;
	st->seq++;
	st->coarse++;
	fallback(cfg, sector, bytes >> 9, st);
}

static __always_inline int is_own(void)
{
	return exclude_tgid && (bpf_get_current_pid_tgid() >> 32) == exclude_tgid;
}

/* block_bio_queue: remembers bio-based bios and sitrep's own bios; see the top of the file. */
static __always_inline int on_queue(struct bio *bio, const int direct)
{
	__u32 dev = RD2(direct, bio, bi_bdev, bd_dev);
	struct trk_dev_cfg *cfg = find_dev(dev);
	struct trk_stats *st;
	__u64 key = (__u64)(unsigned long)bio, sector, bytes;
	__u8 kind, flags;
	int own;

	if (!cfg)
		return 0;
	/* A blk-mq device with nothing to remember at queue time: done. */
	if (!exclude_tgid && !own_pending && !(cfg->flags & (TRK_CFG_BIO_BASED | TRK_CFG_QUEUE_MARK)))
		return 0;
	st = stats_here();
	if (!st)
		return 0; /* cannot happen (per-CPU array, key 0); keeps the verifier happy */
	bytes = RD(direct, bio, bi_iter.bi_size);
	kind = classify(RD(direct, bio, bi_opf), bytes, &flags);
	if (!kind) {
		st->ignored_ops++;
		return 0;
	}
	own = is_own();
	if (own)
		st->excluded++;
	sector = RD(direct, bio, bi_iter.bi_sector);
	if (kind != TRK_OP_FLUSH && !clip(cfg, &sector, &bytes))
		return 0;
	if (cfg->flags & TRK_CFG_BIO_BASED) {
		struct trk_inflight v = {
			.sector = sector,
			.bytes = (__u32)bytes,
			.dev = dev,
			.op = own ? 0 : kind,
			.flags = flags,
		};

		if (bpf_map_update_elem(&inflight, &key, &v, BPF_ANY)) {
			/* Cannot follow it to completion: the whole device is suspect. */
			st->inflight_full++;
			mark_overflow(cfg->slot);
			return 0;
		}
		/*
		 * Also now: should a driver ever complete this bio without block_bio_complete,
		 * the change is at least in the log current at its submission.
		 */
		if (!own && kind != TRK_OP_FLUSH)
			record(cfg, st, dev, sector, (__u32)bytes, kind, flags);
		return 0;
	}
	if (own) {
		/* If the table is full the bio is simply recorded at completion, as any other. */
		if (!bpf_map_update_elem(&own_bios, &key, &kind, BPF_ANY))
			__sync_fetch_and_add(&own_pending, 1);
		return 0;
	}
	/* A freed own bio's address reused for this one must not make it look like ours. */
	if (own_pending && !bpf_map_delete_elem(&own_bios, &key))
		__sync_fetch_and_sub(&own_pending, 1);
	if ((cfg->flags & TRK_CFG_QUEUE_MARK) && kind != TRK_OP_FLUSH)
		record(cfg, st, dev, sector, (__u32)bytes, kind, flags);
	return 0;
}

/*
 * A request whose bios belong to different devices (adjacent partitions merged, a partition
 * and its whole-disk node) or are not contiguous (a multi-range discard): each bio's part of
 * the completed bytes goes to the coarse bitmap of its own device.
 */
static __always_inline void walk_request(struct bio *bio, __u64 left, struct trk_stats *st,
					 const int direct)
{
	struct trk_dev_cfg *cfg = 0;
	__u32 cur = 0;

	for (int i = 0; i < TRK_RQ_WALK; i++) {
		__u32 dev, size;
		__u64 take;

		if (!bio || !left)
			return;
		dev = RD2(direct, bio, bi_bdev, bd_dev);
		size = RD(direct, bio, bi_iter.bi_size);
		take = size < left ? size : left;
		if (!cfg || dev != cur) {
			cfg = find_dev(dev);
			cur = dev;
		}
		if (cfg)
			record_coarse(cfg, st, RD(direct, bio, bi_iter.bi_sector), take);
		left -= take;
		bio = RD(direct, bio, bi_next);
	}
	if (bio && left && cfg) {
		/* More bios than we walk: the rest cannot be placed, mark the device dirty. */
		mark_overflow(cfg->slot);
		st->overflows++;
	}
}

/* Counts a completed change request's bytes against its device (see `done_sectors`). */
static __always_inline void count_done(__u32 slot, __u32 nr_bytes)
{
	__u64 *d = bpf_map_lookup_elem(&done_sectors, &slot);

	if (d)
		*d += nr_bytes >> 9;
}

/* The test seam: whether to ignore this completion entirely. */
static __always_inline int test_skip(void)
{
	if (!test_seams || test_skip_completions <= 0)
		return 0;
	if (__sync_fetch_and_add(&test_skip_completions, -1) > 0)
		return 1;
	__sync_fetch_and_add(&test_skip_completions, 1);
	return 0;
}

/* block_rq_complete: blk-mq devices. */
static __always_inline int on_rq_complete(struct request *rq, __u32 nr_bytes, const int direct)
{
	struct bio *bio = RD(direct, rq, bio);
	struct bio *last;
	struct trk_dev_cfg *cfg;
	struct trk_stats *st;
	__u64 key = (__u64)(unsigned long)bio, sector, bytes = nr_bytes;
	__u32 dev;
	__u8 kind, flags;

	if (!bio)
		return 0; /* a flush sequence's own flush request, or nothing left */
	dev = RD2(direct, bio, bi_bdev, bd_dev);
	last = RD(direct, rq, biotail);
	if (last != bio && RD2(direct, last, bi_bdev, bd_dev) != dev) {
		kind = classify(RD(direct, bio, bi_opf), nr_bytes, &flags);
		st = stats_here();
		if (kind && kind != TRK_OP_FLUSH && st)
			walk_request(bio, nr_bytes, st, direct);
		/* The kernel charges the whole request to its first bio's device. */
		cfg = find_dev(dev);
		if (kind && cfg)
			count_done(cfg->slot, nr_bytes);
		return 0;
	}
	cfg = find_dev(dev);
	if (!cfg)
		return 0;
	st = stats_here();
	if (!st)
		return 0;
	/* The op and PREFLUSH from the bio: the flush machinery clears them in cmd_flags. */
	kind = classify(RD(direct, bio, bi_opf), nr_bytes, &flags);
	if (!kind)
		return 0;
	if (test_skip())
		return 0;
	count_done(cfg->slot, nr_bytes);
	if (own_pending && !bpf_map_delete_elem(&own_bios, &key)) {
		__sync_fetch_and_sub(&own_pending, 1);
		if (last == bio)
			return 0; /* sitrep's own write, alone in its request */
	}
	if (kind == TRK_OP_DISCARD && last != bio) {
		/* Discards of several ranges share one request without being contiguous. */
		walk_request(bio, nr_bytes, st, direct);
		return 0;
	}
	sector = RD(direct, rq, __sector);
	if (kind != TRK_OP_FLUSH && !clip(cfg, &sector, &bytes))
		return 0;
	record(cfg, st, dev, sector, (__u32)bytes, kind, flags);
	return 0;
}

/* block_bio_complete: bio-based devices. */
static __always_inline int on_bio_complete(struct bio *bio, const int direct)
{
	__u64 key = (__u64)(unsigned long)bio, sector, bytes;
	struct trk_inflight *v = bpf_map_lookup_elem(&inflight, &key);
	struct trk_dev_cfg *cfg;
	struct trk_stats *st;
	__u32 dev;
	__u8 kind, flags;

	if (v) {
		struct trk_inflight c = *v;

		bpf_map_delete_elem(&inflight, &key);
		if (!c.op)
			return 0; /* sitrep's own */
		cfg = find_dev(c.dev);
		st = stats_here();
		if (cfg && st)
			record(cfg, st, c.dev, c.sector, c.bytes, c.op, c.flags);
		return 0;
	}
	/*
	 * Queued before tracking (or before this device was added): the bio's own iterator is
	 * the best there is. Also the rare blk-mq bio ended before it became a request.
	 */
	dev = RD2(direct, bio, bi_bdev, bd_dev);
	cfg = find_dev(dev);
	if (!cfg)
		return 0;
	st = stats_here();
	if (!st)
		return 0;
	bytes = RD(direct, bio, bi_iter.bi_size);
	kind = classify(RD(direct, bio, bi_opf), bytes, &flags);
	if (!kind || !(cfg->flags & TRK_CFG_BIO_BASED))
		return 0;
	sector = RD(direct, bio, bi_iter.bi_sector);
	if (kind != TRK_OP_FLUSH && !clip(cfg, &sector, &bytes))
		return 0;
	st->late++;
	record(cfg, st, dev, sector, (__u32)bytes, kind, flags);
	return 0;
}

SEC("tp_btf/block_bio_queue")
int BPF_PROG(on_bio_queue_btf, struct bio *bio)
{
	return on_queue(bio, 1);
}

SEC("tp_btf/block_rq_complete")
int BPF_PROG(on_rq_complete_btf, struct request *rq, int error, unsigned int nr_bytes)
{
	return on_rq_complete(rq, nr_bytes, 1);
}

SEC("tp_btf/block_bio_complete")
int BPF_PROG(on_bio_complete_btf, struct request_queue *q, struct bio *bio)
{
	return on_bio_complete(bio, 1);
}

/* Fallbacks for kernels without tp_btf: same logic, reads go through bpf_probe_read. */
SEC("raw_tp/block_bio_queue")
int BPF_PROG(on_bio_queue_raw, struct bio *bio)
{
	return on_queue(bio, 0);
}

SEC("raw_tp/block_rq_complete")
int BPF_PROG(on_rq_complete_raw, struct request *rq, int error, unsigned int nr_bytes)
{
	return on_rq_complete(rq, nr_bytes, 0);
}

SEC("raw_tp/block_bio_complete")
int BPF_PROG(on_bio_complete_raw, struct request_queue *q, struct bio *bio)
{
	return on_bio_complete(bio, 0);
}
