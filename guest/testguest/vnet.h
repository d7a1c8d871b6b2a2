/* virtio-net driver (virtio 1.x §5.1): one test frame out per status line, and a count of the host's test frames
 * in. Frames are Ethernet with ethertype 0x88B5 (IEEE local experimental); the payload is a 4-byte tag and a
 * little-endian u64 counter: "HSG1" from the guest, "HST1" from the host (docs/test-guest.md). */
#ifndef HSG_VNET_H
#define HSG_VNET_H

#include "print.h"
#include "types.h"
#include "virtio_mmio.h"

struct vnet_info {
	u8 mac[6];
	bool mac_from_device;
	u32 rx_buffers;
	u32 tx_slots;
};

/* After negotiation: the device's MAC address if it offers one (F_MAC, true), else the fixed locally administered
 * 02:00:00:00:00:01 (false). */
bool vnet_mac(const struct virtio_mmio_dev *dev, u8 *mac);

/* Negotiates, sets up both queues and posts every receive buffer. NULL on success, else what went wrong. */
const char *vnet_start(struct virtio_mmio_dev *dev, struct vnet_info *info);

/* Counts received frames and reposts their buffers, reclaims transmitted ones; returns the frames handled. */
u32 vnet_poll(void);

/* Queues the next "HSG1" frame; false if every transmit slot is still in flight. */
bool vnet_send(void);

void vnet_stop(void);
bool vnet_running(void);
void vnet_status(struct line *l); /* " net_tx=.. net_rx=.. net_rx_last=.." */
struct virtq *vnet_rx_queue(void);
struct virtq *vnet_tx_queue(void);

#endif
