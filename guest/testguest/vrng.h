/* virtio-rng driver (virtio 1.x §5.4): 64 bytes of entropy per request, one request per status line. */
#ifndef HSG_VRNG_H
#define HSG_VRNG_H

#include "print.h"
#include "types.h"
#include "virtio_mmio.h"

#define VRNG_REQUEST_BYTES 64

const char *vrng_start(struct virtio_mmio_dev *dev, u32 *queue_size);

/* Asks for VRNG_REQUEST_BYTES more, unless the previous request is still outstanding. */
void vrng_request(void);

/* Collects a completed request; returns 1 if one completed. */
u32 vrng_poll(void);

void vrng_stop(void);
bool vrng_running(void);
void vrng_status(struct line *l); /* " rng_bytes=.." */
struct virtq *vrng_queue(void);

#endif
