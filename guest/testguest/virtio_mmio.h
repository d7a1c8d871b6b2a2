/* virtio-mmio version 2 (virtio 1.x §4.2.2) from the driver's side: finding devices from the kernel command line,
 * the device status sequence, feature negotiation and queue set-up. Register accesses are 32-bit MMIO from ring 3:
 * each one exits straight to the VMM. */
#ifndef HSG_VIRTIO_MMIO_H
#define HSG_VIRTIO_MMIO_H

#include "types.h"

#define VIRTIO_MMIO_MAX_DEVICES 16

/* DeviceID values (§5) */
#define VIRTIO_ID_NONE 0
#define VIRTIO_ID_NET 1
#define VIRTIO_ID_BLK 2
#define VIRTIO_ID_RNG 4

/* Feature bits (§6) */
#define VIRTIO_F_EVENT_IDX 29
#define VIRTIO_F_VERSION_1 32
#define FEATURE(bit) (1UL << (bit))

/* Device status bits (§2.1) */
#define VIRTIO_STATUS_ACKNOWLEDGE 1
#define VIRTIO_STATUS_DRIVER 2
#define VIRTIO_STATUS_DRIVER_OK 4
#define VIRTIO_STATUS_FEATURES_OK 8
#define VIRTIO_STATUS_NEEDS_RESET 64
#define VIRTIO_STATUS_FAILED 128

struct virtq;

/* One `virtio_mmio.device=<size>@<addr>:<irq>` entry and what its registers said. */
struct virtio_mmio_dev {
	u64 base;
	u64 size;
	u32 irq;       /* as given; the drivers poll and never use it */
	u32 magic;     /* MagicValue, "virt" = 0x74726976 on a device */
	u32 version;   /* 2 = virtio 1.x; 1 = legacy (not driven) */
	u32 device_id; /* 0 = an empty transport */
	u64 features;  /* negotiated (after virtio_mmio_negotiate) */
};

/* Parses the entries on the command line (at most `max`, in order), probing each one's MagicValue, Version and
 * DeviceID. Entries that do not parse are skipped and counted in *bad. */
u32 virtio_mmio_discover(const char *cmdline, struct virtio_mmio_dev *out, u32 max, u32 *bad);

/* Is this a virtio 1.x device with something behind it? */
bool virtio_mmio_usable(const struct virtio_mmio_dev *dev);

/* Reset, ACKNOWLEDGE, DRIVER, then accept offered & (wanted | VERSION_1), FEATURES_OK and read it back. Returns
 * NULL on success, else what went wrong (the device is left FAILED). */
const char *virtio_mmio_negotiate(struct virtio_mmio_dev *dev, u64 wanted);

/* Sizes queue `index` (the largest power of two <= min(QueueNumMax, max_size)), gives it the rings in `q` and
 * sets QueueReady. Returns NULL on success, else what went wrong. */
const char *virtio_mmio_setup_queue(struct virtio_mmio_dev *dev, u32 index, struct virtq *q, u32 max_size);

void virtio_mmio_driver_ok(struct virtio_mmio_dev *dev);
void virtio_mmio_fail(struct virtio_mmio_dev *dev); /* sets FAILED: the driver gave up on the device */
u32 virtio_mmio_status(const struct virtio_mmio_dev *dev);

/* Device configuration space (offset from 0x100), read with accesses of the field's own width, retried until
 * ConfigGeneration is stable (a 64-bit field takes two reads). */
u8 virtio_mmio_config8(const struct virtio_mmio_dev *dev, u32 offset);
u64 virtio_mmio_config64(const struct virtio_mmio_dev *dev, u32 offset);

/* The address a driver stores a queue index to for a notification. */
u64 virtio_mmio_notify_addr(const struct virtio_mmio_dev *dev);

/* One register read (for microbench=1): the cost of a full exit to the VMM. */
u32 virtio_mmio_read_magic(const struct virtio_mmio_dev *dev);

#endif
