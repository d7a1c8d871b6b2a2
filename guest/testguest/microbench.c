#include "microbench.h"

#include "io.h"
#include "layout.h"
#include "print.h"

#define ROUNDS 200
#define COM1_SCRATCH 0x3FF
#define COM1_LSR 0x3FD
#define UART_SCRATCH_OFFSET 7
#define UART_LSR_OFFSET 5

static void report(const char *name, u64 ticks, u64 tsc_khz)
{
	struct line l;
	line_start(&l, "hsg: microbench ");
	line_str(&l, name);
	line_str(&l, "_ns=");
	line_u64(&l, ticks * 1000000 / tsc_khz / ROUNDS);
	line_print(&l);
}

void microbench_run(u64 tsc_khz, u64 uart_mmio)
{
	u64 t = rdtsc();
	for (u32 i = 0; i < ROUNDS; i++)
		outb(COM1_SCRATCH, (u8)i); /* #GP -> ring-0 fast path -> port exit */
	report("port_out", rdtsc() - t, tsc_khz);
	t = rdtsc();
	for (u32 i = 0; i < ROUNDS; i++)
		(void)inb(COM1_LSR);
	report("port_in", rdtsc() - t, tsc_khz);
	if (uart_mmio) {
		t = rdtsc();
		for (u32 i = 0; i < ROUNDS; i++)
			mmio_write8(uart_mmio + UART_SCRATCH_OFFSET, (u8)i); /* straight MMIO exit, no ring 0 */
		report("mmio_write", rdtsc() - t, tsc_khz);
		t = rdtsc();
		for (u32 i = 0; i < ROUNDS; i++)
			(void)mmio_read8(uart_mmio + UART_SCRATCH_OFFSET);
		report("mmio_read", rdtsc() - t, tsc_khz);
		t = rdtsc();
		for (u32 i = 0; i < ROUNDS; i++)
			(void)mmio_read8(uart_mmio + UART_LSR_OFFSET); /* the status poll of every print */
		report("uart_status", rdtsc() - t, tsc_khz);
	}
	t = rdtsc();
	for (u32 i = 0; i < ROUNDS; i++)
		(void)mmio_read32(LAPIC_BASE + 0x20); /* in-kernel LAPIC */
	report("lapic_read", rdtsc() - t, tsc_khz);
	t = rdtsc();
	for (u32 i = 0; i < ROUNDS; i++)
		(void)cpuid(0, 0);
	report("cpuid", rdtsc() - t, tsc_khz);
}
