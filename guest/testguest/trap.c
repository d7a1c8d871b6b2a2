/* Ring-0 trap handlers: emulate port I/O for ring 3 (#GP), serve ring-3 calls (ud2), report anything else.
 * Ring 0 is emulated at ~1M instructions/s on this host: the common paths here stay a few dozen instructions. */
#include "trap.h"

#include "io.h"
#include "layout.h"

#define VEC_UD 6
#define VEC_GP 13
#define VEC_PF 14

#define COM1 0x3F8
#define UART_LSR 5
#define LSR_THRE 0x20
#define I8042_COMMAND 0x64
#define I8042_RESET 0xFE

u64 panic_uart_mmio_base;
static volatile u32 panicking;

/* Emulate the `in`/`out` instruction at the faulting RIP: ring 3 cannot do port I/O on this host, even with IOPL 3.
 * Returns false if the instruction is not one of them. */
static bool emulate_port_io(struct trap_frame *f)
{
	const u8 *ip = (const u8 *)f->rip;
	u64 length = 1;
	u32 size = 4;
	u8 op = ip[0];
	if (op == 0x66) {
		size = 2;
		op = ip[1];
		length = 2;
	}
	u16 port;
	if (op >= 0xE4 && op <= 0xE7) {
		port = ip[length];
		length += 1;
	} else if (op >= 0xEC && op <= 0xEF) {
		port = (u16)f->rdx;
	} else {
		return false;
	}
	if (!(op & 1))
		size = 1;
	if (op & 2) {
		if (size == 1)
			outb(port, (u8)f->rax);
		else if (size == 2)
			outw(port, (u16)f->rax);
		else
			outl(port, (u32)f->rax);
	} else if (size == 1) {
		f->rax = (f->rax & ~0xFFUL) | inb(port);
	} else if (size == 2) {
		f->rax = (f->rax & ~0xFFFFUL) | inw(port);
	} else {
		f->rax = inl(port); /* a 32-bit result zero-extends */
	}
	f->rip += length;
	return true;
}

static void spin_ms(u32 ms)
{
	/* No TSC frequency in ring 0: assume at most 4 GHz; only used to give the VMM time on the way out. */
	u64 end = rdtsc() + (u64)ms * 4000000;
	while (rdtsc() < end)
		;
}

/* Reset through the i8042 (what the VMM watches for); if the machine has none (QEMU microvm), a triple fault:
 * an empty IDT turns the next exception into a shutdown. The exception is a #GP from a non-canonical load, one
 * the instruction emulator raises itself (it fails on int3). */
static NORETURN void machine_reset(void)
{
	outb(I8042_COMMAND, I8042_RESET);
	spin_ms(10);
	static const struct {
		u16 limit;
		u64 base;
	} __attribute__((packed)) empty_idt = {0, 0};
	__asm__ volatile("lidt %0; movq (%1), %%rax" : : "m"(empty_idt), "r"(1UL << 63) : "rax");
	for (;;)
		__asm__ volatile("cli; hlt");
}

static void panic_putc(char c)
{
	if (panic_uart_mmio_base) {
		for (u32 i = 0; i < 100000 && !(mmio_read8(panic_uart_mmio_base + UART_LSR) & LSR_THRE); i++)
			;
		mmio_write8(panic_uart_mmio_base, (u8)c);
	} else {
		for (u32 i = 0; i < 100000 && !(inb(COM1 + UART_LSR) & LSR_THRE); i++)
			;
		outb(COM1, (u8)c);
	}
}

static void panic_puts(const char *s)
{
	while (*s)
		panic_putc(*s++);
}

static void panic_hex(const char *key, u64 value)
{
	panic_puts(key);
	panic_puts("=0x");
	bool started = false;
	for (int shift = 60; shift >= 0; shift -= 4) {
		u32 digit = (value >> shift) & 0xF;
		if (digit || started || shift == 0) {
			panic_putc("0123456789abcdef"[digit]);
			started = true;
		}
	}
}

static const char *const exception_names[32] = {
	"#DE", "#DB", "#NMI", "#BP", "#OF", "#BR", "#UD", "#NM", "#DF", "#CSO", "#TS", "#NP", "#SS", "#GP", "#PF", "#15",
	"#MF", "#AC", "#MC", "#XM", "#VE", "#CP", "#22", "#23", "#24", "#25", "#26", "#27", "#HV", "#VC", "#SX", "#31",
};

static NORETURN void panic_trap(const struct trap_frame *f)
{
	if (__atomic_exchange_n(&panicking, 1, __ATOMIC_SEQ_CST))
		for (;;) /* another CPU is already reporting */
			__asm__ volatile("cli; hlt");
	panic_puts("\r\nhsg: panic ");
	panic_puts(f->vector < 32 ? exception_names[f->vector] : "interrupt");
	panic_hex(" rip", f->rip);
	panic_hex(" vector", f->vector);
	panic_hex(" err", f->error);
	panic_hex(" rsp", f->rsp);
	panic_hex(" cs", f->cs);
	if (f->vector == VEC_PF) {
		u64 cr2;
		__asm__ volatile("mov %%cr2, %0" : "=r"(cr2));
		panic_hex(" cr2", cr2);
	}
	panic_hex(" apic", mmio_read32(LAPIC_BASE + 0x20) >> 24);
	panic_puts("\r\n");
	machine_reset();
}

static bool ring3_call(struct trap_frame *f)
{
	const u8 *ip = (const u8 *)f->rip;
	if (ip[0] != 0x0F || ip[1] != 0x0B)
		return false;
	if (f->rax == SYS_RESET)
		machine_reset();
	return false;
}

void trap_dispatch(struct trap_frame *f)
{
	bool from_ring3 = (f->cs & 3) == 3;
	if (f->vector == VEC_GP && from_ring3 && emulate_port_io(f))
		return;
	if (f->vector == VEC_UD && from_ring3 && ring3_call(f))
		return;
	if (f->vector == SPURIOUS_VECTOR)
		return; /* no EOI for a spurious interrupt */
	panic_trap(f);
}
