/* Opt-in (cmdline microbench=1) measurements of what the guest's I/O costs on the VMM it runs on. */
#ifndef HSG_MICROBENCH_H
#define HSG_MICROBENCH_H

#include "types.h"

/* Prints "hsg: microbench <name>_ns=<n>" lines: mean cost of one operation, in nanoseconds. */
void microbench_run(u64 tsc_khz, u64 uart_mmio);

#endif
