/* Progress steps: each page the workload rewrites and each byte the guest prints. The longest interval between
 * two consecutive steps is what a VMM upgrade must keep small: the guest-visible stall. */
#ifndef HSG_PROGRESS_H
#define HSG_PROGRESS_H

#include "io.h"
#include "percpu.h"

/* Start measuring (earlier boot work is not part of the steady state). */
static inline void progress_begin(struct cpu *c)
{
	c->gap_since_status = 0;
	c->gap_max = 0;
	c->last_step_tsc = rdtsc();
}

static inline u64 progress_step(struct cpu *c)
{
	u64 now = rdtsc();
	u64 gap = now - c->last_step_tsc;
	c->last_step_tsc = now;
	if (gap > c->gap_max)
		WRITE_ONCE(c->gap_max, gap);
	u64 seen = __atomic_load_n(&c->gap_since_status, __ATOMIC_RELAXED);
	while (gap > seen && /* release: gap_max is never seen older than gap_since_status */
	       !__atomic_compare_exchange_n(&c->gap_since_status, &seen, gap, false, __ATOMIC_RELEASE,
					    __ATOMIC_RELAXED))
		;
	return now;
}

/* The bootstrap CPU takes a CPU's longest gap since the previous status line. */
static inline u64 progress_take_gap(struct cpu *c)
{
	return __atomic_exchange_n(&c->gap_since_status, 0, __ATOMIC_ACQ_REL);
}

#endif
