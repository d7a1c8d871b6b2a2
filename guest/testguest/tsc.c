#include "tsc.h"

#include "io.h"

#define PIT_HZ 1193182UL
#define PIT_CH0 0x40
#define PIT_COMMAND 0x43
#define PIT_CH0_LOHI_MODE0 0x30 /* one-shot: one IRQ0 (masked) at terminal count, then nothing */
#define PIT_LATCH_CH0 0x00
#define PIT_CALIBRATION_TICKS (PIT_HZ * 25 / 1000) /* 25 ms */
#define PIT_GIVE_UP_TSC 20000000000UL          /* ~5 s at any plausible TSC rate: no PIT */

void tsc_spin_until(u64 tsc)
{
	while (rdtsc() < tsc)
		cpu_relax();
}

u64 tsc_to_us(u64 ticks, u64 khz)
{
	return khz ? ticks / khz * 1000 + ticks % khz * 1000 / khz : 0;
}

/* Latch channel 0 and note the TSC around the latch command; the middle of that bracket is when the count was
 * taken (each port access is a trip through the emulated #GP handler, tens of microseconds). */
static u16 pit_sample(u64 *tsc)
{
	u64 before = rdtsc();
	outb(PIT_COMMAND, PIT_LATCH_CH0);
	u64 after = rdtsc();
	u8 lo = inb(PIT_CH0);
	u8 hi = inb(PIT_CH0);
	*tsc = before + (after - before) / 2;
	return (u16)(lo | (hi << 8));
}

/* Count the PIT's 1.193182 MHz down by PIT_CALIBRATION_TICKS (reading the counter back; QEMU microvm has no port
 * 0x61 gate to poll). */
static u64 pit_calibrate(void)
{
	outb(PIT_COMMAND, PIT_CH0_LOHI_MODE0);
	outb(PIT_CH0, 0xFF);
	outb(PIT_CH0, 0xFF);
	u64 t0, t1;
	u16 c0 = pit_sample(&t0);
	for (;;) {
		u16 c1 = pit_sample(&t1);
		u16 elapsed = (u16)(c0 - c1);
		if (elapsed >= PIT_CALIBRATION_TICKS && elapsed < 0xF000)
			return (t1 - t0) * PIT_HZ / ((u64)elapsed * 1000);
		if (t1 - t0 > PIT_GIVE_UP_TSC)
			return 0;
	}
}

u64 tsc_detect_khz(u64 cmdline_khz, enum tsc_source *source)
{
	if (cmdline_khz) {
		*source = TSC_FROM_CMDLINE;
		return cmdline_khz;
	}
	if (cpuid(0x40000000, 0).eax >= 0x40000010) {
		u32 khz = cpuid(0x40000010, 0).eax;
		if (khz) {
			*source = TSC_FROM_CPUID;
			return khz;
		}
	}
	u64 khz = pit_calibrate();
	*source = khz ? TSC_FROM_PIT : TSC_UNKNOWN;
	return khz;
}

const char *tsc_source_name(enum tsc_source source)
{
	switch (source) {
	case TSC_FROM_CMDLINE: return "cmdline";
	case TSC_FROM_CPUID: return "cpuid";
	case TSC_FROM_PIT: return "pit";
	default: return "none";
	}
}
