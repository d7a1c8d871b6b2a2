/* Per-CPU state of the ring-3 workload, shared between the CPU that owns it and the bootstrap CPU's status line. */
#ifndef HSG_PERCPU_H
#define HSG_PERCPU_H

#include "layout.h"
#include "types.h"

struct cpu {
	u32 index;
	u32 apic_id;
	volatile u32 online; /* set by the CPU itself once it runs ring-3 C code */

	/* Its share of the working set: pages [first_page, first_page + page_count) of the workload's page list. */
	u64 first_page;
	u64 page_count;
	u64 next_page;   /* offset in its share */
	u64 generation;  /* the generation being written */

	/* Read by the bootstrap CPU for the status line. */
	u64 steps;  /* pages rewritten */
	u64 passes; /* completed generations */

	/* Gaps between consecutive progress steps, in TSC ticks (progress.h). */
	u64 last_step_tsc;
	u64 gap_since_status; /* exchanged with 0 by the status line */
	u64 gap_max;          /* since the workload started */
} ALIGNED(128);

extern struct cpu cpus[MAX_CPUS];
extern u32 cpu_count;

/* Timer ticks counted by the ring-0 timer ISR at the top of the CPU's ring-0 stack (layout.h, isr.S). */
extern u8 kcpus[];
static inline u64 cpu_ticks(u32 index)
{
	return *(volatile u64 *)(kcpus + (u64)index * KCPU_SIZE + KCPU_TICKS_OFFSET);
}

#endif
