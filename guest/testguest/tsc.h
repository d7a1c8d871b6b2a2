/* The TSC: the guest's clock for gaps, status intervals and uptime. */
#ifndef HSG_TSC_H
#define HSG_TSC_H

#include "types.h"

enum tsc_source { TSC_FROM_CMDLINE, TSC_FROM_CPUID, TSC_FROM_PIT, TSC_UNKNOWN };

/* cmdline tsc_khz (if non-zero), else CPUID 0x40000010 EAX when the hypervisor leaf goes that far, else the PIT.
 * Returns 0 (TSC_UNKNOWN) if every source fails. */
u64 tsc_detect_khz(u64 cmdline_khz, enum tsc_source *source);
const char *tsc_source_name(enum tsc_source source);

void tsc_spin_until(u64 tsc);
u64 tsc_to_us(u64 ticks, u64 tsc_khz);

#endif
