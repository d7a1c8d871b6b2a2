/* Which CPUs to run on, and starting the application processors. */
#ifndef HSG_SMP_H
#define HSG_SMP_H

#include "types.h"

/* The APIC ids to use, bootstrap CPU first: the MP table, else the ACPI MADT, else just this CPU; `requested`
 * (cmdline cpus=N, 0 = not given) then truncates or extends the list. *source names where it came from. */
u32 smp_discover(u32 requested, u64 rsdp_paddr, u32 bsp_apic_id, u32 *apic_ids, const char **source);

/* Copies the real-mode trampoline below 1 MiB; once, before smp_start_ap. */
void smp_install_trampoline(void);

/* INIT-SIPI-SIPI; true once the AP runs ring-3 code as CPU `index` (ap_main). */
bool smp_start_ap(u32 index, u32 apic_id, u64 tsc_khz);

#endif
