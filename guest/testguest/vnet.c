#include "vnet.h"

#include "virtq.h"

#define F_MAC 5
#define RX_QUEUE 0
#define TX_QUEUE 1
#define RX_BUFFERS 64
#define TX_SLOTS 16
#define HDR_SIZE 12 /* struct virtio_net_hdr with num_buffers: always this size with VERSION_1 (§5.1.6) */
#define RX_BUFFER_SIZE 2048 /* header + a 1514-byte frame: what a device may send without MRG_RXBUF */
#define TX_BUFFER_SIZE 128
#define ETH_HEADER 14
#define ETH_MIN_FRAME 60 /* without the FCS */
#define ETHERTYPE_HI 0x88
#define ETHERTYPE_LO 0xB5
#define TAG_SIZE 4
#define PAYLOAD_SIZE (TAG_SIZE + 8)
#define RX_BUDGET 64 /* frames per poll, so the rest of the loop keeps running under a flood */

static struct virtq net_rxq ALIGNED(4096);
static struct virtq net_txq ALIGNED(4096);
static u8 rx_buffers[RX_BUFFERS][RX_BUFFER_SIZE] ALIGNED(4096);
static u8 tx_buffers[TX_SLOTS][TX_BUFFER_SIZE] ALIGNED(64);
static u16 tx_free[TX_SLOTS];
static u32 tx_free_count;
static u8 mac[6];
static bool running;

static u64 tx_sent, tx_done, rx_count, rx_last, rx_other;

bool vnet_mac(const struct virtio_mmio_dev *dev, u8 *out)
{
	bool have_mac = dev->features & FEATURE(F_MAC);
	for (u32 i = 0; i < 6; i++) /* without MAC: a fixed locally administered address */
		out[i] = have_mac ? virtio_mmio_config8(dev, i) : (u8)(i == 0 ? 0x02 : i == 5 ? 0x01 : 0);
	return have_mac;
}

const char *vnet_start(struct virtio_mmio_dev *dev, struct vnet_info *info)
{
	const char *error = virtio_mmio_negotiate(dev, FEATURE(VIRTIO_F_EVENT_IDX) | FEATURE(F_MAC));
	if (error)
		return error;
	bool have_mac = vnet_mac(dev, mac);
	error = virtio_mmio_setup_queue(dev, RX_QUEUE, &net_rxq, RX_BUFFERS);
	if (!error)
		error = virtio_mmio_setup_queue(dev, TX_QUEUE, &net_txq, TX_SLOTS);
	if (error)
		return error;
	for (u16 i = 0; i < net_rxq.size; i++)
		net_rxq.desc[i] = (struct virtq_desc){(u64)rx_buffers[i], RX_BUFFER_SIZE, VIRTQ_DESC_F_WRITE, 0};
	tx_free_count = 0;
	for (u16 i = 0; i < net_txq.size; i++) {
		net_txq.desc[i] = (struct virtq_desc){(u64)tx_buffers[i], HDR_SIZE + ETH_MIN_FRAME, 0, 0};
		tx_free[tx_free_count++] = i;
	}
	virtio_mmio_driver_ok(dev); /* buffers are made available only after DRIVER_OK (§3.1.1) */
	for (u16 i = 0; i < net_rxq.size; i++)
		virtq_post(&net_rxq, i);
	virtq_kick(&net_rxq);
	running = true;
	*info = (struct vnet_info){.mac_from_device = have_mac, .rx_buffers = net_rxq.size, .tx_slots = net_txq.size};
	memcpy(info->mac, mac, 6);
	return NULL;
}

static void receive(const u8 *buffer, u32 len)
{
	const u8 *frame = buffer + HDR_SIZE;
	if (len >= HDR_SIZE + ETH_HEADER + PAYLOAD_SIZE && frame[12] == ETHERTYPE_HI && frame[13] == ETHERTYPE_LO &&
	    memcmp(frame + ETH_HEADER, "HST1", TAG_SIZE) == 0) {
		rx_count++;
		rx_last = load_le64(frame + ETH_HEADER + TAG_SIZE);
	} else {
		rx_other++; /* the host kernel's own traffic (IPv6 neighbour discovery and the like) */
	}
}

u32 vnet_poll(void)
{
	if (!running)
		return 0;
	u32 handled = 0;
	struct virtq_used_elem e;
	while (handled < RX_BUDGET && virtq_get_used(&net_rxq, &e)) {
		if (e.id >= net_rxq.size) {
			print_line("hsg: error virtio-net returned an unknown receive buffer");
			running = false;
			return handled;
		}
		receive(rx_buffers[e.id], e.len <= RX_BUFFER_SIZE ? e.len : 0);
		virtq_post(&net_rxq, (u16)e.id); /* straight back to the device */
		handled++;
	}
	virtq_kick(&net_rxq);
	while (virtq_get_used(&net_txq, &e)) {
		if (e.id >= net_txq.size || tx_free_count == net_txq.size) {
			print_line("hsg: error virtio-net returned an unknown transmit buffer");
			running = false;
			return handled;
		}
		tx_free[tx_free_count++] = (u16)e.id;
		tx_done++;
		handled++;
	}
	return handled;
}

bool vnet_send(void)
{
	if (!running || tx_free_count == 0)
		return false;
	u16 slot = tx_free[--tx_free_count];
	u8 *b = tx_buffers[slot];
	memset(b, 0, HDR_SIZE + ETH_MIN_FRAME); /* a zero header: no checksum offload, no GSO */
	u8 *frame = b + HDR_SIZE;
	memset(frame, 0xFF, 6); /* broadcast */
	memcpy(frame + 6, mac, 6);
	frame[12] = ETHERTYPE_HI;
	frame[13] = ETHERTYPE_LO;
	memcpy(frame + ETH_HEADER, "HSG1", TAG_SIZE);
	store_le64(frame + ETH_HEADER + TAG_SIZE, ++tx_sent);
	virtq_post(&net_txq, slot);
	virtq_kick(&net_txq);
	return true;
}

void vnet_stop(void) { running = false; }

bool vnet_running(void) { return running; }

void vnet_status(struct line *l)
{
	line_kv(l, "net_tx", tx_done);
	line_kv(l, "net_rx", rx_count);
	line_kv(l, "net_rx_last", rx_last);
}

struct virtq *vnet_rx_queue(void) { return &net_rxq; }

struct virtq *vnet_tx_queue(void) { return &net_txq; }
