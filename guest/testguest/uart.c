/* 16550 output. Each register access in port mode costs a #GP round trip through emulated ring 0 (~45 us), so
 * the transmitter is polled once per FIFO-full (16 bytes) rather than before every byte. */
#include "uart.h"

#include "io.h"
#include "trap.h"

#define COM1 0x3F8
#define REG_THR 0
#define REG_DLL 0
#define REG_IER 1
#define REG_DLM 1
#define REG_FCR 2
#define REG_LCR 3
#define REG_MCR 4
#define REG_LSR 5
#define LCR_DLAB 0x80
#define LCR_8N1 0x03
#define FCR_ENABLE_CLEAR 0x07
#define MCR_DTR_RTS 0x03
#define LSR_THRE 0x20
#define FIFO_SIZE 16
#define THRE_TIMEOUT_TSC 50000000UL /* ~20 ms at 2.5 GHz: a UART that never empties is treated as absent */

static u64 mmio_base;
static u32 bytes_since_poll = FIFO_SIZE;
static bool thre_stuck; /* once a poll timed out, stop polling: the guest must not crawl without a UART */
static void (*byte_hook)(void);

static void reg_write(u32 reg, u8 value)
{
	if (mmio_base)
		mmio_write8(mmio_base + reg, value);
	else
		outb((u16)(COM1 + reg), value);
}

static u8 reg_read(u32 reg) { return mmio_base ? mmio_read8(mmio_base + reg) : inb((u16)(COM1 + reg)); }

void uart_init(u64 base)
{
	mmio_base = base;
	panic_uart_mmio_base = base;
	reg_write(REG_IER, 0);
	reg_write(REG_LCR, LCR_DLAB);
	reg_write(REG_DLL, 1); /* 115200 baud; meaningless to a virtual UART but keeps real ones sane */
	reg_write(REG_DLM, 0);
	reg_write(REG_LCR, LCR_8N1);
	reg_write(REG_FCR, FCR_ENABLE_CLEAR);
	reg_write(REG_MCR, MCR_DTR_RTS);
}

bool uart_is_mmio(void) { return mmio_base != 0; }

void uart_set_byte_hook(void (*hook)(void)) { byte_hook = hook; }

void uart_write(const char *s, usize n)
{
	for (usize i = 0; i < n; i++) {
		if (bytes_since_poll >= FIFO_SIZE && !thre_stuck) {
			u64 start = rdtsc();
			while (!(reg_read(REG_LSR) & LSR_THRE)) {
				if (rdtsc() - start > THRE_TIMEOUT_TSC) {
					thre_stuck = true;
					break;
				}
				cpu_relax();
			}
			bytes_since_poll = 0;
		}
		reg_write(REG_THR, (u8)s[i]);
		bytes_since_poll++;
		if (byte_hook)
			byte_hook();
	}
}
