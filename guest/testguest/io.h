/* Port I/O, MMIO and CPU instructions. The same helpers serve both rings: in ring 3 `in`/`out` raise #GP and
 * the ring-0 handler (trap.c) performs them, so callers need not care which ring they run in. */
#ifndef HSG_IO_H
#define HSG_IO_H

#include "types.h"

/* Byte accesses go through portio.S, whose faulting instructions the #GP handler fast-paths. */
void port_outb(u16 port, u8 value);
u8 port_inb(u16 port);
static inline void outb(u16 port, u8 value) { port_outb(port, value); }
static inline u8 inb(u16 port) { return port_inb(port); }

static inline void outw(u16 port, u16 value) { __asm__ volatile("outw %0, %1" : : "a"(value), "Nd"(port)); }

static inline u16 inw(u16 port)
{
	u16 value;
	__asm__ volatile("inw %1, %0" : "=a"(value) : "Nd"(port));
	return value;
}

static inline void outl(u16 port, u32 value) { __asm__ volatile("outl %0, %1" : : "a"(value), "Nd"(port)); }

static inline u32 inl(u16 port)
{
	u32 value;
	__asm__ volatile("inl %1, %0" : "=a"(value) : "Nd"(port));
	return value;
}

static inline void mmio_write8(u64 addr, u8 value) { *(volatile u8 *)addr = value; }
static inline u8 mmio_read8(u64 addr) { return *(volatile u8 *)addr; }
static inline void mmio_write32(u64 addr, u32 value) { *(volatile u32 *)addr = value; }
static inline u32 mmio_read32(u64 addr) { return *(volatile u32 *)addr; }

static inline u64 rdtsc(void)
{
	u32 lo, hi;
	__asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
	return ((u64)hi << 32) | lo;
}

struct cpuid_regs {
	u32 eax, ebx, ecx, edx;
};

static inline struct cpuid_regs cpuid(u32 leaf, u32 subleaf)
{
	struct cpuid_regs r;
	__asm__ volatile("cpuid" : "=a"(r.eax), "=b"(r.ebx), "=c"(r.ecx), "=d"(r.edx) : "a"(leaf), "c"(subleaf));
	return r;
}

static inline void cpu_relax(void) { __asm__ volatile("pause" ::: "memory"); }
static inline void compiler_barrier(void) { __asm__ volatile("" ::: "memory"); }

#endif
