#include "lapic.h"

#include "io.h"
#include "layout.h"
#include "tsc.h"

#define REG_ID 0x20
#define REG_TPR 0x80
#define REG_SVR 0xF0
#define REG_ICR_LOW 0x300
#define REG_ICR_HIGH 0x310
#define REG_LVT_TIMER 0x320
#define REG_LVT_LINT0 0x350
#define REG_LVT_ERROR 0x370
#define REG_TIMER_INITIAL 0x380
#define REG_TIMER_CURRENT 0x390
#define REG_TIMER_DIVIDE 0x3E0

#define SVR_ENABLE 0x100
#define LVT_MASKED 0x10000
#define LVT_PERIODIC 0x20000
#define ICR_INIT 0x500
#define ICR_STARTUP 0x600
#define ICR_LEVEL_ASSERT 0x4000
#define ICR_LEVEL_TRIGGER 0x8000
#define ICR_PENDING 0x1000
#define DIVIDE_BY_16 0x3
#define CALIBRATION_MS 10

static u32 lapic_read(u32 reg) { return mmio_read32(LAPIC_BASE + reg); }
static void lapic_write(u32 reg, u32 value) { mmio_write32(LAPIC_BASE + reg, value); }

u32 lapic_id(void) { return lapic_read(REG_ID) >> 24; }

void lapic_enable(void)
{
	lapic_write(REG_TPR, 0);
	lapic_write(REG_LVT_LINT0, LVT_MASKED);
	lapic_write(REG_LVT_ERROR, LVT_MASKED);
	lapic_write(REG_SVR, SVR_ENABLE | SPURIOUS_VECTOR);
}

static void send_ipi(u32 apic_id, u32 command)
{
	lapic_write(REG_ICR_HIGH, apic_id << 24);
	lapic_write(REG_ICR_LOW, command);
	for (u32 i = 0; i < 100000 && (lapic_read(REG_ICR_LOW) & ICR_PENDING); i++)
		cpu_relax();
}

void lapic_send_init(u32 apic_id)
{
	send_ipi(apic_id, ICR_INIT | ICR_LEVEL_ASSERT | ICR_LEVEL_TRIGGER);
	send_ipi(apic_id, ICR_INIT | ICR_LEVEL_TRIGGER); /* de-assert, as the MP spec's sequence has it */
}

void lapic_send_sipi(u32 apic_id, u32 vector_page) { send_ipi(apic_id, ICR_STARTUP | (vector_page & 0xFF)); }

u64 lapic_timer_hz(u64 tsc_khz)
{
	if (cpuid(0x40000000, 0).eax >= 0x40000010) {
		u32 bus_khz = cpuid(0x40000010, 0).ebx;
		if (bus_khz)
			return (u64)bus_khz * 1000 / 16;
	}
	lapic_write(REG_TIMER_DIVIDE, DIVIDE_BY_16);
	lapic_write(REG_LVT_TIMER, LVT_MASKED | TIMER_VECTOR);
	u64 t0 = rdtsc();
	lapic_write(REG_TIMER_INITIAL, 0xFFFFFFFF);
	u64 t1 = rdtsc();
	tsc_spin_until(t0 + tsc_khz * CALIBRATION_MS);
	u64 t2 = rdtsc();
	u32 current = lapic_read(REG_TIMER_CURRENT);
	u64 t3 = rdtsc();
	lapic_write(REG_TIMER_INITIAL, 0);
	u64 counted = 0xFFFFFFFFUL - current;
	u64 elapsed = (t2 + t3) / 2 - (t0 + t1) / 2;
	if (!counted || !elapsed)
		return 0;
	return counted * tsc_khz * 1000 / elapsed;
}

void lapic_timer_start(u64 timer_hz_counts, u32 ticks_per_second)
{
	if (!ticks_per_second || !timer_hz_counts)
		return;
	u64 period = timer_hz_counts / ticks_per_second;
	if (period == 0)
		period = 1;
	if (period > 0xFFFFFFFFUL)
		period = 0xFFFFFFFFUL;
	lapic_write(REG_TIMER_DIVIDE, DIVIDE_BY_16);
	lapic_write(REG_LVT_TIMER, LVT_PERIODIC | TIMER_VECTOR);
	lapic_write(REG_TIMER_INITIAL, (u32)period);
}
