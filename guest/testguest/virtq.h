/* Split virtqueues (virtio 1.x §2.7) from the driver's side, with event-index notification suppression
 * (VIRTIO_F_EVENT_IDX, §2.7.7-2.7.10).
 *
 * The drivers poll the used ring from ring 3 instead of taking interrupts, so they ask never to be interrupted:
 * used_event (the driver area's last field) always trails the used entries consumed by one, which puts the next
 * interrupt 65535 completions away. Notifications go the other way only when the device asked for them: after
 * publishing new available entries the driver reads avail_event (the device area's last field) and stores the
 * queue index to QueueNotify only if the new entries cross it. */
#ifndef HSG_VIRTQ_H
#define HSG_VIRTQ_H

#include "types.h"

#define VIRTQ_MAX_SIZE 64

#define VIRTQ_DESC_F_NEXT 1
#define VIRTQ_DESC_F_WRITE 2 /* device-writable */
#define VIRTQ_USED_F_NO_NOTIFY 1

struct virtq_desc {
	u64 addr;
	u32 len;
	u16 flags;
	u16 next;
};

struct virtq_used_elem {
	u32 id;
	u32 len;
};

/* The rings of one queue, sized for VIRTQ_MAX_SIZE; a smaller queue uses the start of each array and finds
 * used_event at avail.ring[size] and avail_event right after used.ring[size - 1]. */
struct virtq {
	struct virtq_desc desc[VIRTQ_MAX_SIZE] ALIGNED(16); /* descriptor area: 16-byte aligned */
	struct {
		u16 flags;
		u16 idx;
		u16 ring[VIRTQ_MAX_SIZE + 1]; /* + used_event */
	} avail ALIGNED(2);                   /* driver area: 2-byte aligned */
	struct {
		u16 flags;
		u16 idx;
		struct virtq_used_elem ring[VIRTQ_MAX_SIZE];
		u16 avail_event;
	} used ALIGNED(4); /* device area: 4-byte aligned */

	/* Driver bookkeeping (never read by the device). */
	u16 size;
	u16 next_avail;   /* avail.idx once the posted entries are published */
	u16 kicked_avail; /* avail.idx at the last publish */
	u16 last_used;    /* used entries consumed */
	u32 index;
	bool event_idx;
	u64 notify_addr;
	u64 notifies; /* QueueNotify stores made */
	u64 kicks;    /* publishes (notifications made or suppressed) */

	/* used.idx read as a value the device cannot have published (more completions than requests outstanding):
	 * a device bug, e.g. a store that passes through 0. Such a read is ignored and retried; the first one is kept
	 * for a warning line. */
	u64 bad_used_idx;
	u16 bad_idx, bad_last_used, bad_outstanding;
};

/* Empties the rings; called before the queue is handed to the device. */
void virtq_init(struct virtq *q, u16 size, u32 index, u64 notify_addr, bool event_idx);

/* Makes the chain starting at descriptor `head` available (not yet visible to the device). */
void virtq_post(struct virtq *q, u16 head);

/* Publishes the posted chains and notifies the device if it asked for it. */
void virtq_kick(struct virtq *q);

/* Takes the next used element; false if the device has returned nothing new (or used.idx made no sense). */
bool virtq_get_used(struct virtq *q, struct virtq_used_elem *out);

/* Stores the queue index to QueueNotify unconditionally (microbench). */
void virtq_notify(struct virtq *q);

#endif
