/* The virtio devices of the machine: discovery from the command line, one driver per kind (the first device of
 * each kind; any more are listed and left alone), polling from the bootstrap CPU's main loop, status keys. */
#ifndef HSG_VDEV_H
#define HSG_VDEV_H

#include "config.h"
#include "print.h"
#include "types.h"

/* Finds the devices, starts the drivers the config allows and prints one "hsg: virtio ..." line per entry. */
void vdev_setup(const char *cmdline, const struct config *config, u64 tsc_khz);

/* Runs every driver once; returns the I/O requests completed (each one a progress step for the caller). */
u32 vdev_poll(u64 now);

/* Once per status line: one frame out, one entropy request, and a look at each device's status register
 * (DEVICE_NEEDS_RESET stops its driver, with an error line). */
void vdev_status_tick(void);

/* Appends the running drivers' keys to a status line. */
void vdev_status_keys(struct line *l);

/* microbench=1: the cost of a queue notification and of a register read. */
void vdev_microbench(u64 tsc_khz);

#endif
