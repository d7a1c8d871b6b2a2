/* The console lines tests and benchmarks parse (format in docs/test-guest.md). */
#ifndef HSG_STATUS_H
#define HSG_STATUS_H

#include "config.h"
#include "types.h"

struct boot_report {
	u32 cpus;
	u64 ws_bytes;
	u64 tsc_khz;
	const char *tsc_source;
	const char *cpu_source;
	bool uart_mmio;
	u32 timer_hz;
};

/* "hsg: boot ..." and one "hsg: cpu <i> apic=<id> online" per CPU. */
void status_print_boot(const struct boot_report *report);

/* Any integrity failure line, then "hsg: status seq=<seq> ...". */
void status_print(u64 seq, u64 tsc_khz);

#endif
