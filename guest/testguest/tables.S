/* Descriptor tables and page tables, all assembled into the image so that ring 0 builds nothing at boot. */
#include "layout.h"

#define PTE_P 0x01
#define PTE_RW 0x02
#define PTE_US 0x04
#define PTE_PWT 0x08
#define PTE_PCD 0x10
#define PTE_PS 0x80
#define PTE_TABLE (PTE_P | PTE_RW | PTE_US)

	.section .data.pagetables, "aw"
	.balign 4096
/* Identity map of the first 4 GiB with 2 MiB pages, all user-accessible (ring 3 touches RAM and the MMIO hole
 * alike). The last GiB (MMIO hole: devices, IOAPIC, LAPIC) is uncached. */
	.globl pml4
pml4:
	.quad pdpt + PTE_TABLE
	.fill 511, 8, 0
pdpt:
	.quad pd + 0x0000 + PTE_TABLE
	.quad pd + 0x1000 + PTE_TABLE
	.quad pd + 0x2000 + PTE_TABLE
	.quad pd + 0x3000 + PTE_TABLE
	.fill 508, 8, 0
pd:
	.set i, 0
	.rept 2048
	.if i < 1536
	.quad (i << 21) | PTE_P | PTE_RW | PTE_US | PTE_PS
	.else
	.quad (i << 21) | PTE_P | PTE_RW | PTE_US | PTE_PS | PTE_PCD | PTE_PWT
	.endif
	.set i, i + 1
	.endr

/* IDT: vector v -> ISR stub at ISR_BASE + v * ISR_STUB_SIZE (isr.S), 64-bit interrupt gates (IF cleared), DPL 0. */
	.section .data.idt, "aw"
	.balign 4096
	.globl idt
idt:
	.set v, 0
	.rept 256
	.word (ISR_BASE + v * ISR_STUB_SIZE) & 0xFFFF
	.word KCODE64_SEL
	.word 0x8E00
	.word ((ISR_BASE + v * ISR_STUB_SIZE) >> 16) & 0xFFFF
	.long 0
	.long 0
	.set v, v + 1
	.endr

	.section .data.gdt, "aw"
	.balign 16
	.globl gdt
gdt:
	.quad 0                  /* null */
	.quad 0x00CF9A000000FFFF /* 0x08 ring-0 code, 32-bit flat (PVH entry, AP trampoline) */
	.quad 0x00AF9A000000FFFF /* 0x10 ring-0 code, 64-bit */
	.quad 0x00CF92000000FFFF /* 0x18 ring-0 data */
	.quad 0x00CFF2000000FFFF /* 0x20 ring-3 data */
	.quad 0x00AFFA000000FFFF /* 0x28 ring-3 code, 64-bit */
	/* 0x30 + 16 * i: CPU i's 64-bit TSS (available, type 9) */
	.set c, 0
	.rept MAX_CPUS
	.word TSS_LIMIT
	.word (TSS_BASE + c * TSS_STRIDE) & 0xFFFF
	.byte ((TSS_BASE + c * TSS_STRIDE) >> 16) & 0xFF
	.byte 0x89
	.byte 0x00
	.byte ((TSS_BASE + c * TSS_STRIDE) >> 24) & 0xFF
	.long 0
	.long 0
	.set c, c + 1
	.endr
gdt_end:

	.balign 8
/* The 10-byte form serves lgdt in 32-bit mode too (it reads the low 4 bytes of the base). */
	.globl gdt_ptr
gdt_ptr:
	.word gdt_end - gdt - 1
	.quad gdt
	.balign 8
	.globl idt_ptr
idt_ptr:
	.word 256 * 16 - 1
	.quad idt

/* One TSS per CPU, at a fixed address; only RSP0 matters (the top of the CPU's ring-0 stack). */
	.section .tss, "aw"
	.set c, 0
	.rept MAX_CPUS
	.long 0
	.quad kcpus + c * KCPU_SIZE + KCPU_TICKS_OFFSET /* RSP0 */
	.fill 11, 8, 0 /* RSP1, RSP2, reserved, IST1-7, reserved */
	.word 0
	.word 104 /* I/O map base beyond the limit: no bitmap */
	.fill TSS_STRIDE - 104, 1, 0
	.set c, c + 1
	.endr
