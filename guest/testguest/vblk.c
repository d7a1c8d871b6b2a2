#include "vblk.h"

#include "journal.h"
#include "virtq.h"

#define F_FLUSH 9
#define T_IN 0
#define T_OUT 1
#define T_FLUSH 4
#define S_OK 0
#define SECTORS_PER_BLOCK (JOURNAL_BLOCK_SIZE / 512)
#define QUEUE_SIZE 32
#define SLOTS (VBLK_MAX_UNACKED + 2) /* the writes of a batch, then the flush, then the read-back */
#define FLUSH_SLOT VBLK_MAX_UNACKED
#define READ_SLOT (VBLK_MAX_UNACKED + 1)
#define DESCS_PER_SLOT 3 /* slot k owns descriptors 3k..3k+2: header, data, status */
#define STATUS_PENDING 0xFF
#define RETRY_DELAY_US 10000

struct request_header {
	u32 type;
	u32 reserved;
	u64 sector;
};

enum phase { IDLE, WRITING, FLUSHING, READING, STOPPED };

static struct virtq blk_vq ALIGNED(4096);
static u8 write_buffers[VBLK_MAX_UNACKED][JOURNAL_BLOCK_SIZE] ALIGNED(4096);
static u8 read_buffer[JOURNAL_BLOCK_SIZE] ALIGNED(4096);
static struct request_header headers[SLOTS];
static volatile u8 statuses[SLOTS];

static enum phase phase = STOPPED;
static bool flush;
static u64 blocks;
static u32 batch_max;
static u64 interval_tsc; /* between writes; 0 = no pacing */
static u64 next_write_tsc;
static u64 retry_delay_tsc;
static u64 retry_at; /* a failed batch is written again (same seqs) from then on; 0 = no retry pending */
static u64 last_now;

static u64 next_seq = 1; /* first seq of the batch being written (or of the next one) */
static u32 batch;        /* writes in that batch */
static u32 pending;      /* completions still expected in this phase */
static bool phase_failed;
static u64 read_block, read_expected, read_cursor;

static u64 acked, reads, bad;
static bool failure_printed, retry_printed;

static void set_slot(u32 slot, u32 type, u64 sector)
{
	headers[slot] = (struct request_header){.type = type, .sector = sector};
	statuses[slot] = STATUS_PENDING;
	virtq_post(&blk_vq, (u16)(slot * DESCS_PER_SLOT));
}

/* Descriptors never change after set-up: only the headers and the avail ring do. */
static void build_descriptors(void)
{
	for (u32 slot = 0; slot < SLOTS; slot++) {
		struct virtq_desc *d = &blk_vq.desc[slot * DESCS_PER_SLOT];
		u16 first = (u16)(slot * DESCS_PER_SLOT);
		d[0] = (struct virtq_desc){(u64)&headers[slot], sizeof(headers[slot]), VIRTQ_DESC_F_NEXT, first + 1};
		d[2] = (struct virtq_desc){(u64)&statuses[slot], 1, VIRTQ_DESC_F_WRITE, 0};
		if (slot == FLUSH_SLOT) { /* header -> status */
			d[0].next = first + 2;
			d[1] = (struct virtq_desc){0, 0, 0, 0};
		} else if (slot == READ_SLOT) {
			d[1] = (struct virtq_desc){(u64)read_buffer, JOURNAL_BLOCK_SIZE,
						   VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT, first + 2};
		} else {
			d[1] = (struct virtq_desc){(u64)write_buffers[slot], JOURNAL_BLOCK_SIZE, VIRTQ_DESC_F_NEXT, first + 2};
		}
	}
}

const char *vblk_start(struct virtio_mmio_dev *dev, u64 max_blocks, u32 rate, u64 tsc_khz, struct vblk_info *info)
{
	const char *error = virtio_mmio_negotiate(dev, FEATURE(VIRTIO_F_EVENT_IDX) | FEATURE(F_FLUSH));
	if (error)
		return error;
	blocks = virtio_mmio_config64(dev, 0) / SECTORS_PER_BLOCK; /* capacity: 512-byte sectors */
	if (max_blocks && max_blocks < blocks)
		blocks = max_blocks;
	if (blocks == 0) {
		virtio_mmio_fail(dev);
		return "disk smaller than one 4 KiB block";
	}
	error = virtio_mmio_setup_queue(dev, 0, &blk_vq, QUEUE_SIZE);
	if (error)
		return error;
	if (blk_vq.size < DESCS_PER_SLOT * 3) {
		virtio_mmio_fail(dev);
		return "queue smaller than 9 entries";
	}
	batch_max = blk_vq.size / DESCS_PER_SLOT - 2;
	if (batch_max > VBLK_MAX_UNACKED)
		batch_max = VBLK_MAX_UNACKED;
	flush = dev->features & FEATURE(F_FLUSH);
	journal_init();
	build_descriptors();
	virtio_mmio_driver_ok(dev);
	interval_tsc = rate ? tsc_khz * 1000 / rate : 0;
	retry_delay_tsc = tsc_khz * RETRY_DELAY_US / 1000;
	next_write_tsc = 0;
	phase = IDLE;
	*info = (struct vblk_info){.blocks = blocks, .queue_size = blk_vq.size, .batch = batch_max, .flush = flush};
	return NULL;
}

/* Writes due now under the rate limit; a backlog after a stall is dropped, not made up in a burst. */
static u32 writes_due(u64 now)
{
	if (!interval_tsc)
		return batch_max;
	if (now < next_write_tsc)
		return 0;
	u64 due = 1 + (now - next_write_tsc) / interval_tsc;
	u32 n = due < batch_max ? (u32)due : batch_max;
	next_write_tsc = due > batch_max ? now + interval_tsc : next_write_tsc + n * interval_tsc;
	return n;
}

static void submit_writes(u32 n)
{
	for (u32 i = 0; i < n; i++) {
		u64 seq = next_seq + i;
		u64 block = (seq - 1) % blocks;
		journal_fill(write_buffers[i], block, seq);
		set_slot(i, T_OUT, block * SECTORS_PER_BLOCK);
	}
	batch = pending = n;
	phase_failed = false;
	phase = WRITING;
	virtq_kick(&blk_vq);
}

static void submit_flush(void)
{
	set_slot(FLUSH_SLOT, T_FLUSH, 0);
	pending = 1;
	phase_failed = false;
	phase = FLUSHING;
	virtq_kick(&blk_vq);
}

/* Read back an acknowledged block, cycling over all of them; it must hold the last acknowledged write to it. */
static void submit_read(void)
{
	u64 written = acked < blocks ? acked : blocks;
	read_block = read_cursor++ % written;
	read_expected = read_block + 1 + (acked - (read_block + 1)) / blocks * blocks;
	set_slot(READ_SLOT, T_IN, read_block * SECTORS_PER_BLOCK);
	pending = 1;
	phase = READING;
	virtq_kick(&blk_vq);
}

static void acknowledge(void)
{
	acked = next_seq + batch - 1;
	next_seq += batch;
	submit_read();
}

static void retry_batch(u32 status)
{
	if (!retry_printed) {
		struct line l;
		line_start(&l, "hsg: warning blk request failed");
		line_kv(&l, "status", status);
		line_kv(&l, "seq", next_seq);
		line_str(&l, ", retrying the batch");
		line_print(&l);
		retry_printed = true;
	}
	retry_at = last_now + retry_delay_tsc; /* a device that keeps failing is not hammered */
	phase = IDLE;
}

static void print_failure(const char *what, u64 got_index, u64 got_seq)
{
	if (failure_printed)
		return;
	failure_printed = true;
	struct line l;
	line_start(&l, "hsg: blk FAIL");
	line_kv(&l, "block", read_block);
	line_kv(&l, "expected_seq", read_expected);
	line_kv(&l, "got_block", got_index);
	line_kv(&l, "got_seq", got_seq);
	line_str(&l, " what=");
	line_str(&l, what);
	line_print(&l);
}

static void read_done(u8 status)
{
	reads++;
	if (status != S_OK) {
		bad++;
		print_failure("status", 0, 0);
		return;
	}
	u64 got_index, got_seq;
	enum journal_check check = journal_verify(read_buffer, read_block, read_expected, &got_index, &got_seq);
	if (check != JOURNAL_OK) {
		bad++;
		print_failure(journal_check_name(check), got_index, got_seq);
	}
}

static void device_error(const char *what, u64 value)
{
	struct line l;
	line_start(&l, "hsg: error virtio-blk ");
	line_str(&l, what);
	line_u64(&l, value);
	line_print(&l);
	phase = STOPPED;
}

/* One completion: which slot it was, and whether the phase is over. */
static void complete(u32 id)
{
	u32 slot = id / DESCS_PER_SLOT;
	if (id % DESCS_PER_SLOT || slot >= SLOTS || pending == 0) {
		device_error("returned an unknown request id=", id);
		return;
	}
	u8 status = statuses[slot];
	if (status != S_OK)
		phase_failed = true;
	if (--pending)
		return;
	if (phase == WRITING) {
		if (phase_failed)
			retry_batch(status);
		else if (flush)
			submit_flush();
		else
			acknowledge(); /* no FLUSH offered: the device writes through, completion is durability */
	} else if (phase == FLUSHING) {
		if (phase_failed)
			retry_batch(status);
		else
			acknowledge();
	} else if (phase == READING) {
		read_done(status);
		phase = IDLE;
	}
}

u32 vblk_poll(u64 now)
{
	if (phase == STOPPED)
		return 0;
	u32 completed = 0;
	last_now = now;
	struct virtq_used_elem e;
	while (phase != STOPPED && virtq_get_used(&blk_vq, &e)) {
		completed++;
		complete(e.id);
	}
	if (phase == IDLE && retry_at) {
		if (now >= retry_at) {
			retry_at = 0;
			submit_writes(batch);
		}
	} else if (phase == IDLE) {
		u32 n = writes_due(now);
		if (n)
			submit_writes(n);
	}
	return completed;
}

void vblk_stop(void) { phase = STOPPED; }

bool vblk_running(void) { return phase != STOPPED; }

void vblk_status(struct line *l)
{
	line_kv(l, "blk_acked", acked);
	line_kv(l, "blk_read", reads);
	line_kv(l, "blk_bad", bad);
}

struct virtq *vblk_queue(void) { return &blk_vq; }
