#include "vdev.h"

#include "io.h"
#include "vblk.h"
#include "virtio_mmio.h"
#include "virtq.h"
#include "vnet.h"
#include "vrng.h"

#define MICROBENCH_ROUNDS 200

enum kind { BLK, NET, RNG, KINDS };

static const char *const kind_names[KINDS] = {"blk", "net", "rng"};

static struct virtio_mmio_dev devs[VIRTIO_MMIO_MAX_DEVICES];
static u32 dev_count;
static struct virtio_mmio_dev *driven[KINDS]; /* the device each driver runs, if it started */

static bool warned_bad_idx[KINDS][2];

static bool (*const running[KINDS])(void) = {vblk_running, vnet_running, vrng_running};
static void (*const stop[KINDS])(void) = {vblk_stop, vnet_stop, vrng_stop};

static int kind_of(u32 device_id)
{
	switch (device_id) {
	case VIRTIO_ID_BLK: return BLK;
	case VIRTIO_ID_NET: return NET;
	case VIRTIO_ID_RNG: return RNG;
	default: return -1;
	}
}

static const char *start_driver(enum kind kind, struct virtio_mmio_dev *dev, const struct config *c, u64 tsc_khz,
				 struct line *l)
{
	const char *error;
	if (kind == BLK) {
		struct vblk_info info;
		error = vblk_start(dev, c->blk_blocks, c->blk_rate, tsc_khz, &info);
		if (!error) {
			line_kv(l, "queue", info.queue_size);
			line_kv(l, "blocks", info.blocks);
			line_kv(l, "batch", info.batch);
			line_kv(l, "flush", info.flush);
		}
	} else if (kind == NET) {
		struct vnet_info info;
		error = vnet_start(dev, &info);
		if (!error) {
			line_kv(l, "queue", info.rx_buffers);
			line_kv(l, "tx_queue", info.tx_slots);
			line_mac(l, info.mac);
			line_kv(l, "mac_from_device", info.mac_from_device);
		}
	} else {
		u32 queue_size;
		error = vrng_start(dev, &queue_size);
		if (!error)
			line_kv(l, "queue", queue_size);
	}
	return error;
}

static bool enabled(enum kind kind, const struct config *c)
{
	return kind == BLK ? c->blk : kind == NET ? c->net : c->rng;
}

static void print_error(const struct virtio_mmio_dev *dev, int kind, const char *what)
{
	struct line l;
	line_start(&l, "hsg: error virtio addr=");
	line_hex(&l, dev->base);
	line_str(&l, ": ");
	if (kind >= 0) {
		line_str(&l, kind_names[kind]);
		line_str(&l, ": ");
	}
	line_str(&l, what);
	line_print(&l);
}

void vdev_setup(const char *cmdline, const struct config *c, u64 tsc_khz)
{
	u32 bad;
	dev_count = virtio_mmio_discover(cmdline, devs, VIRTIO_MMIO_MAX_DEVICES, &bad);
	for (u32 i = 0; i < bad; i++)
		print_line("hsg: warning bad virtio_mmio.device= entry, ignored");
	for (u32 i = 0; i < dev_count; i++) {
		struct virtio_mmio_dev *dev = &devs[i];
		struct line l;
		line_start(&l, "hsg: virtio addr=");
		line_hex(&l, dev->base);
		line_kv(&l, "size", dev->size);
		line_kv(&l, "irq", dev->irq);
		line_kv(&l, "version", dev->version);
		line_kv(&l, "id", dev->device_id);
		int kind = kind_of(dev->device_id);
		const char *problem = NULL;
		if (!virtio_mmio_usable(dev) || kind < 0) {
			line_str(&l, " driver=none");
			if (dev->version == 1)
				problem = "legacy (version 1) device, not driven";
		} else if (!enabled((enum kind)kind, c)) {
			line_str(&l, " driver=off");
		} else if (driven[kind]) {
			line_str(&l, " driver=ignored");
		} else {
			struct line details;
			line_start(&details, "");
			problem = start_driver((enum kind)kind, dev, c, tsc_khz, &details);
			line_str(&l, " driver=");
			line_str(&l, problem ? "failed" : kind_names[kind]);
			if (!problem) {
				driven[kind] = dev;
				line_str(&l, " features=");
				line_hex(&l, dev->features);
				line_cat(&l, &details);
			}
		}
		line_print(&l);
		if (problem)
			print_error(dev, kind, problem);
	}
}

u32 vdev_poll(u64 now)
{
	u32 done = 0;
	if (driven[BLK])
		done += vblk_poll(now);
	if (driven[NET])
		done += vnet_poll();
	if (driven[RNG])
		done += vrng_poll();
	return done;
}

static struct virtq *queue_of(u32 kind, u32 index)
{
	if (kind == BLK)
		return index ? NULL : vblk_queue();
	if (kind == NET)
		return index ? vnet_tx_queue() : vnet_rx_queue();
	return index ? NULL : vrng_queue();
}

static void warn_bad_used_idx(u32 kind)
{
	for (u32 i = 0; i < 2; i++) {
		struct virtq *q = queue_of(kind, i);
		if (!q || !q->bad_used_idx || warned_bad_idx[kind][i])
			continue;
		warned_bad_idx[kind][i] = true;
		struct line l;
		line_start(&l, "hsg: warning virtio addr=");
		line_hex(&l, driven[kind]->base);
		line_str(&l, " driver=");
		line_str(&l, kind_names[kind]);
		line_kv(&l, "queue", i);
		line_str(&l, ": read used.idx=");
		line_u64(&l, q->bad_idx);
		line_kv(&l, "last_used", q->bad_last_used);
		line_kv(&l, "outstanding", q->bad_outstanding);
		line_str(&l, " (a device bug; ignored and read again)");
		line_print(&l);
	}
}

void vdev_status_tick(void)
{
	for (u32 k = 0; k < KINDS; k++) {
		if (!driven[k] || !running[k]())
			continue;
		warn_bad_used_idx(k);
		if (virtio_mmio_status(driven[k]) & VIRTIO_STATUS_NEEDS_RESET) {
			stop[k]();
			struct line l;
			line_start(&l, "hsg: error virtio addr=");
			line_hex(&l, driven[k]->base);
			line_str(&l, " driver=");
			line_str(&l, kind_names[k]);
			line_str(&l, ": device needs reset");
			line_print(&l);
		}
	}
	if (driven[NET])
		vnet_send();
	if (driven[RNG])
		vrng_request();
}

void vdev_status_keys(struct line *l)
{
	if (driven[BLK])
		vblk_status(l);
	if (driven[NET])
		vnet_status(l);
	if (driven[RNG])
		vrng_status(l);
}

static void report(const char *name, u64 ticks, u64 tsc_khz)
{
	struct line l;
	line_start(&l, "hsg: microbench ");
	line_str(&l, name);
	line_str(&l, "_ns=");
	line_u64(&l, ticks * 1000000 / tsc_khz / MICROBENCH_ROUNDS);
	line_print(&l);
}

void vdev_microbench(u64 tsc_khz)
{
	struct virtq *q = driven[RNG] ? vrng_queue() : driven[BLK] ? vblk_queue() : driven[NET] ? vnet_tx_queue() : NULL;
	struct virtio_mmio_dev *dev = driven[RNG] ? driven[RNG] : driven[BLK] ? driven[BLK] : driven[NET];
	if (!q)
		return;
	u64 t = rdtsc();
	for (u32 i = 0; i < MICROBENCH_ROUNDS; i++)
		virtq_notify(q); /* nothing new on the queue: the device looks and finds nothing */
	report("virtio_notify", rdtsc() - t, tsc_khz);
	t = rdtsc();
	for (u32 i = 0; i < MICROBENCH_ROUNDS; i++)
		(void)virtio_mmio_read_magic(dev);
	report("virtio_reg_read", rdtsc() - t, tsc_khz);
}
