/* The ring-3 workload: every CPU rewrites its share of the working set generation by generation, verifying each
 * page's previous content first. Each 8-byte word holds a value derived from (page frame, word index, generation). */
#ifndef HSG_WORKLOAD_H
#define HSG_WORKLOAD_H

#include "percpu.h"
#include "types.h"

struct integrity_failure {
	u32 cpu;
	u64 addr;
	u64 expected;
	u64 got;
};

/* Lays the working set out on usable RAM above the image and splits it across `cpu_count` CPUs (at least one
 * page each). Returns false if it does not fit; *available is the usable RAM in bytes either way. */
bool workload_plan(u64 ws_bytes, u32 cpu_count, u64 *available);

/* Rewrites the CPU's next page (one progress step); returns the TSC of that step. */
u64 workload_step(struct cpu *c);

bool workload_integrity_ok(void);
/* The first failure, once, for the bootstrap CPU to print. */
bool workload_take_failure(struct integrity_failure *out);

#endif
