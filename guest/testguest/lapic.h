/* The local APIC (xAPIC MMIO), programmed from ring 3: the identity map makes its page user-accessible and KVM's
 * in-kernel LAPIC serves the accesses, so no ring-0 code is needed for it (the timer ISR's EOI aside). */
#ifndef HSG_LAPIC_H
#define HSG_LAPIC_H

#include "types.h"

u32 lapic_id(void);
void lapic_enable(void); /* software-enable, spurious vector, LINT0 (legacy PIC) masked */
void lapic_send_init(u32 apic_id);
void lapic_send_sipi(u32 apic_id, u32 vector_page);

/* Timer counts per second at the divider used (from CPUID 0x40000010 EBX when the VMM publishes the bus
 * frequency, else measured against the TSC); returns 0 if it cannot be measured. */
u64 lapic_timer_hz(u64 tsc_khz);
void lapic_timer_start(u64 timer_hz_counts, u32 ticks_per_second); /* periodic; 0 ticks_per_second = off */

#endif
