/* virtio-blk driver (virtio 1.x §5.2): the disk journal of docs/test-guest.md. Writes go in batches; each batch
 * is followed by a FLUSH and counts as acknowledged only when the flush has completed; then one previously
 * acknowledged block is read back and verified. One request phase at a time, so a read never races a write. */
#ifndef HSG_VBLK_H
#define HSG_VBLK_H

#include "print.h"
#include "types.h"
#include "virtio_mmio.h"

#define VBLK_MAX_UNACKED 8 /* writes in flight beyond the acknowledged seq, at most (the batch size) */

struct vblk_info {
	u64 blocks;
	u32 queue_size;
	u32 batch;
	bool flush;
};

/* Negotiates, sets up the queue and starts the journal: `max_blocks` caps its length (0 = whole disk), `rate`
 * writes per second (0 = as fast as possible). NULL on success, else what went wrong. */
const char *vblk_start(struct virtio_mmio_dev *dev, u64 max_blocks, u32 rate, u64 tsc_khz, struct vblk_info *info);

/* Collects completions and issues the next requests; returns the number of requests completed. */
u32 vblk_poll(u64 now);

void vblk_stop(void);
bool vblk_running(void);
void vblk_status(struct line *l); /* " blk_acked=.. blk_read=.. blk_bad=.." */
struct virtq *vblk_queue(void);

#endif
