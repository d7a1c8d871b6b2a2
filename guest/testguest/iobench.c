#include "iobench.h"

#include "io.h"
#include "print.h"
#include "sys.h"
#include "virtio_mmio.h"
#include "virtq.h"
#include "vnet.h"

#define SECTOR 512
#define T_IN 0
#define T_OUT 1
#define S_OK 0
#define STATUS_PENDING 0xFF
#define BLK_DESCS 3 /* request k owns descriptors 3k..3k+2: header, data, status */
#define F_FLUSH 9
#define F_MAC 5
#define NET_HDR 12  /* virtio_net_hdr with num_buffers (VERSION_1) */
#define NET_BUFFER 2048
#define NET_TX_IDLE_RX 16 /* receive buffers kept posted during net-tx (the host's own chatter lands there) */
#define ETH_HEADER 14
#define TAG_OFFSET ETH_HEADER
#define COUNTER_OFFSET (ETH_HEADER + 4)
#define POOL_SIZE (2UL << 20)
#define STUCK_SECS 10        /* requests in flight and no completion for this long: the device is stuck */
#define FIRST_FRAME_SECS 30 /* net-rx: how long to wait for the host's first frame */

static const char *const kind_names[IOBENCH_KINDS] = {
	"off", "blk-seq-read", "blk-seq-write", "blk-rand-read", "blk-rand-write", "net-tx", "net-rx",
};

struct blk_header {
	u32 type;
	u32 reserved;
	u64 sector;
};

/* What a run measured; the timestamps are TSC values. */
struct result {
	u64 ops, bytes, errors, other;
	u64 start, end;
	u64 seq_first, seq_last; /* net-rx: the host counters of the first and last frame counted */
};

static struct virtio_mmio_dev devs[VIRTIO_MMIO_MAX_DEVICES];
static struct virtq main_q ALIGNED(4096); /* blk: the request queue; net: the transmit queue */
static struct virtq rx_q ALIGNED(4096);   /* net: the receive queue */
static u8 pool[POOL_SIZE] ALIGNED(4096);  /* request data (blk) or frame buffers (net) */
static struct blk_header headers[VIRTQ_MAX_SIZE / BLK_DESCS];
static volatile u8 statuses[VIRTQ_MAX_SIZE / BLK_DESCS];

static u32 kind;
static const char *kind_name;
static u64 tsc_khz;
static u64 duration_tsc;
static u32 depth;
static u64 request_bytes; /* blk: bytes per request; net: bytes per frame (Ethernet header on, no FCS) */

bool iobench_kind_parse(const char *value, usize len, u32 *out)
{
	for (u32 k = 1; k < IOBENCH_KINDS; k++) {
		if (strlen(kind_names[k]) == len && memcmp(kind_names[k], value, len) == 0) {
			*out = k;
			return true;
		}
	}
	return false;
}

const char *iobench_kind_name(u32 k) { return k < IOBENCH_KINDS ? kind_names[k] : "unknown"; }

static bool is_blk(void) { return kind >= IOBENCH_BLK_SEQ_READ && kind <= IOBENCH_BLK_RAND_WRITE; }

static NORETURN void fail(const char *what)
{
	struct line l;
	line_start(&l, "hsg: error iobench kind=");
	line_str(&l, kind_name);
	line_str(&l, ": ");
	line_str(&l, what);
	line_print(&l);
	sys_reset();
}

static void warn_depth(u32 asked, const char *why)
{
	struct line l;
	line_start(&l, "hsg: warning iobench_depth=");
	line_u64(&l, asked);
	line_str(&l, " reduced to ");
	line_u64(&l, depth);
	line_str(&l, why);
	line_print(&l);
}

static void limit_depth(u32 most, const char *why)
{
	if (depth <= most)
		return;
	u32 asked = depth;
	depth = most;
	warn_depth(asked, why);
}

static struct virtio_mmio_dev *find_device(const char *cmdline, u32 device_id)
{
	u32 bad;
	u32 n = virtio_mmio_discover(cmdline, devs, VIRTIO_MMIO_MAX_DEVICES, &bad);
	for (u32 i = 0; i < n; i++)
		if (virtio_mmio_usable(&devs[i]) && devs[i].device_id == device_id)
			return &devs[i];
	return NULL;
}

static void start_line(struct line *l, const struct virtio_mmio_dev *dev, u32 secs)
{
	line_start(l, "hsg: iobench-start kind=");
	line_str(l, kind_name);
	line_str(l, " addr=");
	line_hex(l, dev->base);
	line_str(l, " features=");
	line_hex(l, dev->features);
	line_kv(l, "queue", main_q.size);
	line_kv(l, "depth", depth);
	line_kv(l, "bs", request_bytes);
	line_kv(l, "secs", secs);
}

static u64 xorshift64(u64 *state)
{
	u64 x = *state;
	x ^= x << 13;
	x ^= x >> 7;
	x ^= x << 17;
	return *state = x;
}

/* A stuck device ends the run with an error rather than hanging the benchmark. */
static void check_stuck(u64 now, u64 last_progress)
{
	if (now - last_progress > STUCK_SECS * tsc_khz * 1000)
		fail("no completion for 10 s with requests in flight");
}

static void check_used_reads(const struct virtq *q, const char *which)
{
	if (!q->bad_used_idx)
		return;
	struct line l;
	line_start(&l, "hsg: warning iobench ");
	line_str(&l, which);
	line_str(&l, " queue: used.idx read");
	line_kv(&l, "times", q->bad_used_idx);
	line_str(&l, " as a value the device cannot have published (ignored and read again)");
	line_print(&l);
}

/* Keeps `depth` requests in flight on main_q until the deadline, then lets them drain: start = first submission,
 * end = last completion. `submit` posts the request in slot k; `complete` counts one used element and returns its
 * slot; `each_pass`, if any, runs on every pass of the polling loop. Inlined into each caller, so the callbacks are
 * direct calls. */
typedef u32 complete_fn(const struct virtq_used_elem *e, struct result *r);

static inline __attribute__((always_inline)) void keep_in_flight(struct result *r, void (*submit)(u32 k),
								   complete_fn *complete, void (*each_pass)(struct result *r))
{
	r->start = rdtsc();
	u64 deadline = r->start + duration_tsc, last_progress = r->start;
	for (u32 k = 0; k < depth; k++)
		submit(k);
	virtq_kick(&main_q);
	u32 in_flight = depth;
	while (in_flight) {
		if (each_pass)
			each_pass(r);
		struct virtq_used_elem e;
		if (!virtq_get_used(&main_q, &e)) {
			check_stuck(rdtsc(), last_progress);
			continue;
		}
		u64 now = rdtsc();
		do {
			u32 k = complete(&e, r);
			if (now < deadline)
				submit(k);
			else
				in_flight--;
		} while (virtq_get_used(&main_q, &e));
		r->end = last_progress = now;
		virtq_kick(&main_q);
	}
}

/* -- virtio-blk ------------------------------------------------------------------------------------------------- */
static u64 blk_blocks; /* request-sized blocks on the disk */
static u64 blk_next_block;
static u64 blk_rng = 0x9E3779B97F4A7C15UL;

static void blk_setup(struct virtio_mmio_dev *dev, u32 secs)
{
	/* FLUSH is negotiated though never sent: a driver without it must assume a write-through device, and QEMU then
	 * syncs every write (Linux negotiates it too, and flushes only when asked to). */
	const char *error = virtio_mmio_negotiate(dev, FEATURE(VIRTIO_F_EVENT_IDX) | FEATURE(F_FLUSH));
	if (!error)
		error = virtio_mmio_setup_queue(dev, 0, &main_q, VIRTQ_MAX_SIZE);
	if (error)
		fail(error);
	u64 capacity = virtio_mmio_config64(dev, 0) * SECTOR;
	if (request_bytes % SECTOR || request_bytes == 0 || request_bytes > POOL_SIZE)
		fail("iobench_bs must be a multiple of 512 bytes, at most 2 MiB");
	blk_blocks = capacity / request_bytes;
	if (blk_blocks == 0)
		fail("the disk is smaller than one request");
	limit_depth(main_q.size / BLK_DESCS, " (3 descriptors per request in the queue)");
	limit_depth((u32)(POOL_SIZE / request_bytes), " (2 MiB of request buffers)");
	bool read = kind == IOBENCH_BLK_SEQ_READ || kind == IOBENCH_BLK_RAND_READ;
	for (u32 k = 0; k < depth; k++) {
		u8 *data = pool + k * request_bytes;
		u16 first = (u16)(k * BLK_DESCS);
		headers[k] = (struct blk_header){.type = read ? T_IN : T_OUT};
		main_q.desc[first] = (struct virtq_desc){(u64)&headers[k], sizeof(headers[k]), VIRTQ_DESC_F_NEXT, first + 1};
		main_q.desc[first + 1] = (struct virtq_desc){(u64)data, (u32)request_bytes,
							     VIRTQ_DESC_F_NEXT | (read ? VIRTQ_DESC_F_WRITE : 0), first + 2};
		main_q.desc[first + 2] = (struct virtq_desc){(u64)&statuses[k], 1, VIRTQ_DESC_F_WRITE, 0};
	}
	u64 fill = 0x2545F4914F6CDD1DUL; /* written data: not zeros, so nothing can take a shortcut for them */
	for (u64 i = 0; i < depth * request_bytes / 8; i++)
		((u64 *)pool)[i] = xorshift64(&fill);
	virtio_mmio_driver_ok(dev);
	struct line l;
	start_line(&l, dev, secs);
	line_kv(&l, "capacity", capacity);
	line_print(&l);
}

static void blk_submit(u32 k)
{
	bool sequential = kind == IOBENCH_BLK_SEQ_READ || kind == IOBENCH_BLK_SEQ_WRITE;
	u64 block = sequential ? blk_next_block++ % blk_blocks : xorshift64(&blk_rng) % blk_blocks;
	headers[k].sector = block * (request_bytes / SECTOR);
	statuses[k] = STATUS_PENDING;
	virtq_post(&main_q, (u16)(k * BLK_DESCS));
}

static u32 blk_complete(const struct virtq_used_elem *e, struct result *r)
{
	u32 k = e->id / BLK_DESCS;
	if (e->id % BLK_DESCS || k >= depth)
		fail("the device returned an unknown request");
	if (statuses[k] == S_OK) {
		r->ops++;
		r->bytes += request_bytes;
	} else {
		r->errors++;
	}
	return k;
}

static void blk_run(struct result *r) { keep_in_flight(r, blk_submit, blk_complete, NULL); }

/* -- virtio-net ------------------------------------------------------------------------------------------------- */
static u8 mac[6];
static u64 frame_counter;

static u8 *rx_buffer(u32 i) { return pool + (u64)i * NET_BUFFER; }
static u8 *tx_buffer(u32 i) { return pool + (u64)(VIRTQ_MAX_SIZE + i) * NET_BUFFER; }

static void net_setup(struct virtio_mmio_dev *dev, u32 secs, u32 frame)
{
	const char *error = virtio_mmio_negotiate(dev, FEATURE(VIRTIO_F_EVENT_IDX) | FEATURE(F_MAC));
	if (!error)
		error = virtio_mmio_setup_queue(dev, 0, &rx_q, VIRTQ_MAX_SIZE);
	if (!error)
		error = virtio_mmio_setup_queue(dev, 1, &main_q, VIRTQ_MAX_SIZE);
	if (error)
		fail(error);
	vnet_mac(dev, mac);
	if (frame < IOBENCH_MIN_FRAME || frame > IOBENCH_MAX_FRAME)
		fail("iobench_frame must be 60..1514 bytes");
	request_bytes = frame;
	u32 rx_posted;
	if (kind == IOBENCH_NET_RX) {
		limit_depth(rx_q.size, " (receive queue size)");
		rx_posted = depth;
	} else {
		limit_depth(main_q.size, " (transmit queue size)");
		rx_posted = rx_q.size < NET_TX_IDLE_RX ? rx_q.size : NET_TX_IDLE_RX;
	}
	for (u16 i = 0; i < rx_posted; i++)
		rx_q.desc[i] = (struct virtq_desc){(u64)rx_buffer(i), NET_BUFFER, VIRTQ_DESC_F_WRITE, 0};
	for (u16 i = 0; i < depth && kind == IOBENCH_NET_TX; i++) {
		u8 *b = tx_buffer(i);
		memset(b, 0, NET_HDR + frame); /* a zero header: no checksum offload, no GSO */
		u8 *f = b + NET_HDR;
		memset(f, 0xFF, 6); /* broadcast */
		memcpy(f + 6, mac, 6);
		f[12] = 0x88; /* ethertype 0x88B5, IEEE local experimental */
		f[13] = 0xB5;
		memcpy(f + TAG_OFFSET, "HSB1", 4);
		main_q.desc[i] = (struct virtq_desc){(u64)b, NET_HDR + frame, 0, 0};
	}
	virtio_mmio_driver_ok(dev); /* buffers are made available only after DRIVER_OK (§3.1.1) */
	for (u16 i = 0; i < rx_posted; i++)
		virtq_post(&rx_q, i);
	virtq_kick(&rx_q);
	struct line l;
	start_line(&l, dev, secs);
	line_kv(&l, "rx_buffers", rx_posted);
	line_mac(&l, mac);
	line_print(&l);
}

static bool is_bench_frame(const u8 *buffer, u32 len)
{
	const u8 *f = buffer + NET_HDR;
	return len >= NET_HDR + COUNTER_OFFSET + 8 && f[12] == 0x88 && f[13] == 0xB5 &&
	       memcmp(f + TAG_OFFSET, "HSB1", 4) == 0;
}

static void tx_submit(u32 slot)
{
	store_le64(tx_buffer(slot) + NET_HDR + COUNTER_OFFSET, ++frame_counter);
	virtq_post(&main_q, (u16)slot);
}

/* Takes every received buffer back and reposts it; returns how many. `count` looks at each frame first. */
static u32 rx_recycle(void (*count)(const u8 *buffer, u32 len, void *ctx), void *ctx)
{
	u32 n = 0;
	struct virtq_used_elem e;
	while (virtq_get_used(&rx_q, &e)) {
		if (e.id >= rx_q.size)
			fail("the device returned an unknown receive buffer");
		count(rx_buffer(e.id), e.len <= NET_BUFFER ? e.len : 0, ctx);
		virtq_post(&rx_q, (u16)e.id);
		n++;
	}
	if (n)
		virtq_kick(&rx_q);
	return n;
}

static void count_other(const u8 *buffer, u32 len, void *ctx)
{
	(void)buffer;
	(void)len;
	((struct result *)ctx)->other++;
}

static u32 tx_complete(const struct virtq_used_elem *e, struct result *r)
{
	if (e->id >= depth)
		fail("the device returned an unknown transmit buffer");
	r->ops++;
	r->bytes += request_bytes;
	return e->id;
}

static void tx_pass(struct result *r) { rx_recycle(count_other, r); } /* the host's own chatter, counted as other */

/* Keeps `depth` frames in flight until the deadline, then lets them drain (as blk_run). */
static void net_tx_run(struct result *r) { keep_in_flight(r, tx_submit, tx_complete, tx_pass); }

struct rx_pass {
	struct result *r;
	u64 now;
	u64 deadline;
	bool started, done;
};

static void count_rx(const u8 *buffer, u32 len, void *ctx)
{
	struct rx_pass *p = ctx;
	struct result *r = p->r;
	if (!is_bench_frame(buffer, len)) {
		r->other++;
		return;
	}
	if (p->done)
		return;
	if (!p->started) { /* the window opens at the first frame: the wait for the host's flood is not counted */
		p->started = true;
		r->start = p->now;
		p->deadline = p->now + duration_tsc;
		r->seq_first = load_le64(buffer + NET_HDR + COUNTER_OFFSET);
	} else if (p->now >= p->deadline) {
		p->done = true;
		return;
	}
	r->ops++;
	r->bytes += len - NET_HDR;
	r->seq_last = load_le64(buffer + NET_HDR + COUNTER_OFFSET);
	r->end = p->now;
}

/* Counts the host's frames for `secs` from the first one: start = first frame, end = last frame counted. */
static void net_rx_run(struct result *r)
{
	struct rx_pass pass = {.r = r, .now = rdtsc()};
	u64 give_up = pass.now + FIRST_FRAME_SECS * tsc_khz * 1000;
	while (!pass.done) {
		pass.now = rdtsc();
		if (!pass.started && pass.now > give_up) {
			print_line("hsg: warning iobench net-rx: no frame from the host in 30 s");
			return;
		}
		if (pass.started && pass.now >= pass.deadline)
			pass.done = true;
		rx_recycle(count_rx, &pass);
	}
}

/* -- the result --------------------------------------------------------------------------------------------------- */
static void print_result(const struct result *r)
{
	u64 us = r->end > r->start ? (r->end - r->start) * 1000 / tsc_khz : 0;
	struct line l;
	line_start(&l, "hsg: iobench kind=");
	line_str(&l, kind_name);
	line_kv(&l, "ops", r->ops);
	line_kv(&l, "bytes", r->bytes);
	line_kv(&l, "secs_us", us);
	line_kv(&l, "iops", us ? r->ops * 1000000 / us : 0);
	u64 tenths = us ? r->bytes * 80 / us : 0; /* Mbit/s = bits per microsecond */
	line_kv(&l, "mbps", tenths / 10);
	line_str(&l, ".");
	line_u64(&l, tenths % 10);
	line_kv(&l, "depth", depth);
	line_kv(&l, "bs", request_bytes);
	line_kv(&l, "errors", r->errors);
	line_kv(&l, "notifies", main_q.notifies + rx_q.notifies);
	if (!is_blk())
		line_kv(&l, "other", r->other);
	if (kind == IOBENCH_NET_RX) {
		line_kv(&l, "seq_first", r->seq_first);
		line_kv(&l, "seq_last", r->seq_last);
	}
	line_print(&l);
}

NORETURN void iobench_run(const char *cmdline, const struct config *c, u64 khz)
{
	kind = c->iobench;
	kind_name = iobench_kind_name(kind);
	tsc_khz = khz;
	u32 secs = c->iobench_secs ? c->iobench_secs : IOBENCH_DEFAULT_SECS;
	duration_tsc = secs * tsc_khz * 1000;
	depth = c->iobench_depth ? c->iobench_depth : IOBENCH_DEFAULT_DEPTH;
	bool sequential = kind == IOBENCH_BLK_SEQ_READ || kind == IOBENCH_BLK_SEQ_WRITE;
	request_bytes = c->iobench_bs ? c->iobench_bs : sequential ? IOBENCH_SEQ_BS : IOBENCH_RAND_BS;

	struct virtio_mmio_dev *dev = find_device(cmdline, is_blk() ? VIRTIO_ID_BLK : VIRTIO_ID_NET);
	if (!dev)
		fail(is_blk() ? "no virtio-blk device (virtio_mmio.device=)" : "no virtio-net device (virtio_mmio.device=)");
	struct result r = {0};
	if (is_blk()) {
		blk_setup(dev, secs);
		blk_run(&r);
	} else {
		net_setup(dev, secs, c->iobench_frame ? c->iobench_frame : IOBENCH_DEFAULT_FRAME);
		if (kind == IOBENCH_NET_TX)
			net_tx_run(&r);
		else
			net_rx_run(&r);
		check_used_reads(&rx_q, "receive");
	}
	check_used_reads(&main_q, is_blk() ? "request" : "transmit");
	print_result(&r);
	print_line("hsg: exit");
	sys_reset();
}
