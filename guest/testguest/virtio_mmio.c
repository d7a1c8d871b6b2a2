#include "virtio_mmio.h"

#include "cmdline.h"
#include "io.h"
#include "virtq.h"

/* Register offsets (§4.2.2) */
#define REG_MAGIC 0x000
#define REG_VERSION 0x004
#define REG_DEVICE_ID 0x008
#define REG_DEVICE_FEATURES 0x010
#define REG_DEVICE_FEATURES_SEL 0x014
#define REG_DRIVER_FEATURES 0x020
#define REG_DRIVER_FEATURES_SEL 0x024
#define REG_QUEUE_SEL 0x030
#define REG_QUEUE_NUM_MAX 0x034
#define REG_QUEUE_NUM 0x038
#define REG_QUEUE_READY 0x044
#define REG_QUEUE_NOTIFY 0x050
#define REG_STATUS 0x070
#define REG_QUEUE_DESC_LOW 0x080
#define REG_QUEUE_DESC_HIGH 0x084
#define REG_QUEUE_DRIVER_LOW 0x090
#define REG_QUEUE_DRIVER_HIGH 0x094
#define REG_QUEUE_DEVICE_LOW 0x0A0
#define REG_QUEUE_DEVICE_HIGH 0x0A4
#define REG_CONFIG_GENERATION 0x0FC
#define REG_CONFIG 0x100

#define MAGIC_VIRT 0x74726976 /* "virt" */
#define RESET_POLLS 1000000
#define IDENTITY_MAP_END (1UL << 32)

static u32 reg_read(const struct virtio_mmio_dev *dev, u32 reg) { return mmio_read32(dev->base + reg); }
static void reg_write(const struct virtio_mmio_dev *dev, u32 reg, u32 value) { mmio_write32(dev->base + reg, value); }

/* `<size>@<addr>:<irq>[:<id>]` as Linux's virtio_mmio.device= takes it (size with an optional K/M/G suffix). */
static bool parse_entry(const char *s, usize len, struct virtio_mmio_dev *dev)
{
	usize at = 0, colon;
	while (at < len && s[at] != '@')
		at++;
	colon = at;
	while (colon < len && s[colon] != ':')
		colon++;
	if (at == 0 || at >= len || colon >= len || colon == at + 1)
		return false;
	usize irq_end = colon + 1;
	while (irq_end < len && s[irq_end] != ':')
		irq_end++; /* a trailing :<platform device id> is allowed and ignored */
	u64 size, base, irq;
	if (!parse_u64(s, at, true, &size) || !parse_u64(s + at + 1, colon - at - 1, true, &base) ||
	    !parse_u64(s + colon + 1, irq_end - colon - 1, false, &irq))
		return false;
	/* The drivers reach the registers through the identity map (first 4 GiB) and need the whole register file. */
	if (size < REG_CONFIG || base == 0 || base + size > IDENTITY_MAP_END || base % 4 || irq > 0xFFFFFFFFUL)
		return false;
	*dev = (struct virtio_mmio_dev){.base = base, .size = size, .irq = (u32)irq};
	return true;
}

u32 virtio_mmio_discover(const char *cmdline, struct virtio_mmio_dev *out, u32 max, u32 *bad)
{
	const char *pos = cmdline, *value;
	usize len;
	u32 n = 0;
	*bad = 0;
	while (n < max && cmdline_next(&pos, "virtio_mmio.device", &value, &len)) {
		struct virtio_mmio_dev *dev = &out[n];
		if (!parse_entry(value, len, dev)) {
			(*bad)++;
			continue;
		}
		dev->magic = reg_read(dev, REG_MAGIC);
		if (dev->magic == MAGIC_VIRT) {
			dev->version = reg_read(dev, REG_VERSION);
			dev->device_id = reg_read(dev, REG_DEVICE_ID);
		}
		n++;
	}
	return n;
}

bool virtio_mmio_usable(const struct virtio_mmio_dev *dev)
{
	return dev->magic == MAGIC_VIRT && dev->version == 2 && dev->device_id != VIRTIO_ID_NONE;
}

u32 virtio_mmio_status(const struct virtio_mmio_dev *dev) { return reg_read(dev, REG_STATUS); }

static void set_status(struct virtio_mmio_dev *dev, u32 bits)
{
	reg_write(dev, REG_STATUS, reg_read(dev, REG_STATUS) | bits);
}

void virtio_mmio_fail(struct virtio_mmio_dev *dev) { set_status(dev, VIRTIO_STATUS_FAILED); }

void virtio_mmio_driver_ok(struct virtio_mmio_dev *dev) { set_status(dev, VIRTIO_STATUS_DRIVER_OK); }

static u64 read_features(const struct virtio_mmio_dev *dev)
{
	reg_write(dev, REG_DEVICE_FEATURES_SEL, 1);
	u64 high = reg_read(dev, REG_DEVICE_FEATURES);
	reg_write(dev, REG_DEVICE_FEATURES_SEL, 0);
	return high << 32 | reg_read(dev, REG_DEVICE_FEATURES);
}

const char *virtio_mmio_negotiate(struct virtio_mmio_dev *dev, u64 wanted)
{
	reg_write(dev, REG_STATUS, 0);
	u32 polls = 0;
	while (reg_read(dev, REG_STATUS) != 0) /* the reset is complete when Status reads back 0 */
		if (++polls == RESET_POLLS)
			return "reset did not complete";
	set_status(dev, VIRTIO_STATUS_ACKNOWLEDGE);
	set_status(dev, VIRTIO_STATUS_DRIVER);
	u64 offered = read_features(dev);
	if (!(offered & FEATURE(VIRTIO_F_VERSION_1))) {
		virtio_mmio_fail(dev);
		return "VERSION_1 not offered";
	}
	dev->features = offered & (wanted | FEATURE(VIRTIO_F_VERSION_1));
	reg_write(dev, REG_DRIVER_FEATURES_SEL, 1);
	reg_write(dev, REG_DRIVER_FEATURES, (u32)(dev->features >> 32));
	reg_write(dev, REG_DRIVER_FEATURES_SEL, 0);
	reg_write(dev, REG_DRIVER_FEATURES, (u32)dev->features);
	set_status(dev, VIRTIO_STATUS_FEATURES_OK);
	if (!(reg_read(dev, REG_STATUS) & VIRTIO_STATUS_FEATURES_OK)) {
		virtio_mmio_fail(dev);
		return "FEATURES_OK refused";
	}
	return NULL;
}

const char *virtio_mmio_setup_queue(struct virtio_mmio_dev *dev, u32 index, struct virtq *q, u32 max_size)
{
	reg_write(dev, REG_QUEUE_SEL, index);
	if (reg_read(dev, REG_QUEUE_READY) != 0) {
		virtio_mmio_fail(dev);
		return "queue already in use";
	}
	u32 num_max = reg_read(dev, REG_QUEUE_NUM_MAX);
	u32 size = 1;
	while (size * 2 <= num_max && size * 2 <= max_size)
		size *= 2;
	if (num_max == 0 || size > VIRTQ_MAX_SIZE) {
		virtio_mmio_fail(dev);
		return "queue not available";
	}
	virtq_init(q, (u16)size, index, virtio_mmio_notify_addr(dev), dev->features & FEATURE(VIRTIO_F_EVENT_IDX));
	reg_write(dev, REG_QUEUE_NUM, size);
	u64 desc = (u64)q->desc, driver = (u64)&q->avail, device = (u64)&q->used;
	reg_write(dev, REG_QUEUE_DESC_LOW, (u32)desc);
	reg_write(dev, REG_QUEUE_DESC_HIGH, (u32)(desc >> 32));
	reg_write(dev, REG_QUEUE_DRIVER_LOW, (u32)driver);
	reg_write(dev, REG_QUEUE_DRIVER_HIGH, (u32)(driver >> 32));
	reg_write(dev, REG_QUEUE_DEVICE_LOW, (u32)device);
	reg_write(dev, REG_QUEUE_DEVICE_HIGH, (u32)(device >> 32));
	reg_write(dev, REG_QUEUE_READY, 1);
	return NULL;
}

u8 virtio_mmio_config8(const struct virtio_mmio_dev *dev, u32 offset)
{
	if (REG_CONFIG + offset + 1 > dev->size)
		return 0;
	u32 generation;
	u8 value;
	do {
		generation = reg_read(dev, REG_CONFIG_GENERATION);
		value = mmio_read8(dev->base + REG_CONFIG + offset);
	} while (generation != reg_read(dev, REG_CONFIG_GENERATION));
	return value;
}

u64 virtio_mmio_config64(const struct virtio_mmio_dev *dev, u32 offset)
{
	if (REG_CONFIG + offset + 8 > dev->size)
		return 0;
	u32 generation;
	u64 value;
	do {
		generation = reg_read(dev, REG_CONFIG_GENERATION);
		value = reg_read(dev, REG_CONFIG + offset) | (u64)reg_read(dev, REG_CONFIG + offset + 4) << 32;
	} while (generation != reg_read(dev, REG_CONFIG_GENERATION));
	return value;
}

u64 virtio_mmio_notify_addr(const struct virtio_mmio_dev *dev) { return dev->base + REG_QUEUE_NOTIFY; }

u32 virtio_mmio_read_magic(const struct virtio_mmio_dev *dev) { return reg_read(dev, REG_MAGIC); }
