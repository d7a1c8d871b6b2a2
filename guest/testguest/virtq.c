#include "virtq.h"

#include "io.h"

/* A store followed by a load of another location needs a full fence on x86 (the only reordering TSO allows). */
static inline void full_barrier(void) { __asm__ volatile("mfence" ::: "memory"); }

/* vring_need_event (§2.7.10): has the index crossed `event` going from old to new? */
static inline bool need_event(u16 event, u16 new_idx, u16 old_idx)
{
	return (u16)(new_idx - event - 1) < (u16)(new_idx - old_idx);
}

static volatile u16 *used_event(struct virtq *q) { return &q->avail.ring[q->size]; }
static volatile u16 *avail_event(struct virtq *q) { return (volatile u16 *)&q->used.ring[q->size]; }

void virtq_init(struct virtq *q, u16 size, u32 index, u64 notify_addr, bool event_idx)
{
	memset(&q->avail, 0, sizeof(q->avail));
	memset(&q->used, 0, sizeof(q->used));
	q->size = size;
	q->next_avail = q->kicked_avail = q->last_used = 0;
	q->index = index;
	q->event_idx = event_idx;
	q->notify_addr = notify_addr;
	q->notifies = q->kicks = 0;
	q->bad_used_idx = 0;
	*used_event(q) = (u16)(q->last_used - 1); /* no interrupts: see virtq.h */
}

void virtq_post(struct virtq *q, u16 head)
{
	q->avail.ring[q->next_avail % q->size] = head;
	q->next_avail++;
}

void virtq_notify(struct virtq *q)
{
	mmio_write32(q->notify_addr, q->index);
	q->notifies++;
}

void virtq_kick(struct virtq *q)
{
	u16 old = q->kicked_avail, new_idx = q->next_avail;
	if (old == new_idx)
		return;
	compiler_barrier(); /* ring entries before the index that publishes them (store -> store: in order on x86) */
	WRITE_ONCE(q->avail.idx, new_idx);
	q->kicked_avail = new_idx;
	q->kicks++;
	full_barrier(); /* the index store must be visible before we read the device's suppression fields */
	bool notify = q->event_idx ? need_event(*avail_event(q), new_idx, old)
				   : !(READ_ONCE(q->used.flags) & VIRTQ_USED_F_NO_NOTIFY);
	if (notify)
		virtq_notify(q);
}

bool virtq_get_used(struct virtq *q, struct virtq_used_elem *out)
{
	u16 idx = READ_ONCE(q->used.idx);
	if (q->last_used == idx)
		return false;
	u16 outstanding = (u16)(q->kicked_avail - q->last_used);
	if ((u16)(idx - q->last_used) > outstanding) {
		if (!q->bad_used_idx++) {
			q->bad_idx = idx;
			q->bad_last_used = q->last_used;
			q->bad_outstanding = outstanding;
		}
		return false;
	}
	compiler_barrier(); /* the element after the index that published it (load -> load: in order on x86) */
	const volatile struct virtq_used_elem *e = &q->used.ring[q->last_used % q->size];
	out->id = e->id;
	out->len = e->len;
	q->last_used++;
	if (q->event_idx)
		*used_event(q) = (u16)(q->last_used - 1);
	return true;
}
