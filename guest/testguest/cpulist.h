/* Discovering the CPUs (their local APIC ids) from firmware tables. */
#ifndef HSG_CPULIST_H
#define HSG_CPULIST_H

#include "types.h"

/* Each returns the number of enabled CPUs found (0 if the table is absent or invalid), the bootstrap CPU first
 * when the table marks it. */
u32 mptable_cpus(u32 *apic_ids, u32 max);
u32 madt_cpus(u64 rsdp_paddr, u32 *apic_ids, u32 max);

bool checksum_ok(const void *p, usize len);

#endif
