#include "vrng.h"

#include "virtq.h"

#define QUEUE_SIZE 8

static struct virtq rng_vq ALIGNED(4096);
static u8 buffer[VRNG_REQUEST_BYTES] ALIGNED(64);
static bool running, outstanding, zero_printed;
static u64 bytes;

const char *vrng_start(struct virtio_mmio_dev *dev, u32 *queue_size)
{
	const char *error = virtio_mmio_negotiate(dev, FEATURE(VIRTIO_F_EVENT_IDX));
	if (!error)
		error = virtio_mmio_setup_queue(dev, 0, &rng_vq, QUEUE_SIZE);
	if (error)
		return error;
	/* One buffer, one descriptor, set once: a request only posts descriptor 0 again. */
	rng_vq.desc[0] = (struct virtq_desc){(u64)buffer, VRNG_REQUEST_BYTES, VIRTQ_DESC_F_WRITE, 0};
	virtio_mmio_driver_ok(dev);
	running = true;
	*queue_size = rng_vq.size;
	return NULL;
}

void vrng_request(void)
{
	if (!running || outstanding)
		return;
	memset(buffer, 0, sizeof(buffer)); /* so that a device that writes nothing shows as all zeros */
	outstanding = true;
	virtq_post(&rng_vq, 0);
	virtq_kick(&rng_vq);
}

static bool all_zero(const u8 *p, u32 n)
{
	for (u32 i = 0; i < n; i++)
		if (p[i])
			return false;
	return true;
}

u32 vrng_poll(void)
{
	struct virtq_used_elem e;
	if (!running || !virtq_get_used(&rng_vq, &e))
		return 0;
	if (e.id != 0 || !outstanding) {
		print_line("hsg: error virtio-rng returned an unknown buffer");
		running = false;
		return 1;
	}
	outstanding = false;
	u32 len = e.len < VRNG_REQUEST_BYTES ? e.len : VRNG_REQUEST_BYTES;
	if (len == 0 || all_zero(buffer, len)) { /* rejected: not counted */
		if (!zero_printed) {
			struct line l;
			line_start(&l, "hsg: warning rng returned no entropy");
			line_kv(&l, "len", e.len);
			line_print(&l);
			zero_printed = true;
		}
	} else {
		bytes += len;
	}
	return 1;
}

void vrng_stop(void) { running = false; }

bool vrng_running(void) { return running; }

void vrng_status(struct line *l) { line_kv(l, "rng_bytes", bytes); }

struct virtq *vrng_queue(void) { return &rng_vq; }
