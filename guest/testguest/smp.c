#include "smp.h"

#include "cpulist.h"
#include "io.h"
#include "lapic.h"
#include "layout.h"
#include "percpu.h"
#include "tsc.h"

extern const u8 ap_trampoline[], ap_trampoline_end[]; /* trampoline.S */
extern u32 ap_boot_index;                             /* boot.S: which CPU index the next AP takes */

static void put_bsp_first(u32 bsp, u32 *ids, u32 *n)
{
	u32 at = *n;
	for (u32 i = 0; i < *n; i++)
		if (ids[i] == bsp)
			at = i;
	if (at == *n && *n == MAX_CPUS)
		at = *n - 1; /* the table is full without us: drop its last entry */
	else if (at == *n)
		(*n)++;
	for (u32 i = at; i > 0; i--)
		ids[i] = ids[i - 1];
	ids[0] = bsp;
}

static bool contains(const u32 *ids, u32 n, u32 id)
{
	for (u32 i = 0; i < n; i++)
		if (ids[i] == id)
			return true;
	return false;
}

u32 smp_discover(u32 requested, u64 rsdp_paddr, u32 bsp, u32 *ids, const char **source)
{
	u32 n = mptable_cpus(ids, MAX_CPUS);
	*source = "mptable";
	if (!n) {
		n = madt_cpus(rsdp_paddr, ids, MAX_CPUS);
		*source = "madt";
	}
	if (!n)
		*source = "none";
	put_bsp_first(bsp, ids, &n);
	if (requested) {
		*source = "cmdline";
		if (requested > MAX_CPUS)
			requested = MAX_CPUS;
		/* More than the tables list: assume the usual dense APIC ids for the rest. */
		for (u32 id = 0; n < requested && id < 256; id++)
			if (!contains(ids, n, id))
				ids[n++] = id;
		n = requested < n ? requested : n;
	}
	return n;
}

void smp_install_trampoline(void)
{
	memcpy((void *)TRAMPOLINE_ADDR, ap_trampoline, (usize)(ap_trampoline_end - ap_trampoline));
}

static bool wait_online(u32 index, u64 tsc_khz, u64 us)
{
	u64 deadline = rdtsc() + tsc_khz * us / 1000;
	while (rdtsc() < deadline)
		if (READ_ONCE(cpus[index].online))
			return true;
	return false;
}

bool smp_start_ap(u32 index, u32 apic_id, u64 tsc_khz)
{
	cpus[index].index = index;
	cpus[index].apic_id = apic_id;
	__atomic_store_n(&ap_boot_index, index, __ATOMIC_RELEASE);
	lapic_send_init(apic_id);
	/* The MP spec's 10 ms INIT settle time is for real hardware; a hypervisor needs none (Linux skips it too). */
	if (!(cpuid(1, 0).ecx & (1U << 31)))
		tsc_spin_until(rdtsc() + tsc_khz * 10);
	lapic_send_sipi(apic_id, TRAMPOLINE_ADDR >> 12);
	if (wait_online(index, tsc_khz, 200))
		return true;
	/* The second SIPI, 200 us on as the MP spec has it (a CPU that already started ignores it). */
	lapic_send_sipi(apic_id, TRAMPOLINE_ADDR >> 12);
	return wait_online(index, tsc_khz, 2000000);
}
