/* Fixed addresses, selectors and sizes shared by the C code, the assembly and the linker script.
 * Keep this file free of C-only syntax: boot.S, tables.S and testguest.ld.S include it too. */
#ifndef HSG_LAYOUT_H
#define HSG_LAYOUT_H

#define IMAGE_BASE 0x100000 /* PVH loads us at p_paddr = 1 MiB */

/* The ISR stubs and the TSS array sit at fixed addresses so that the IDT and the GDT's TSS descriptors can be
 * assembled as constants: no ring-0 code has to build tables at boot (ring 0 runs at ~1 MIPS here). */
#define ISR_BASE IMAGE_BASE        /* 256 stubs of ISR_STUB_SIZE bytes */
#define ISR_STUB_SIZE 16
#define TSS_BASE (IMAGE_BASE + 0x1000) /* MAX_CPUS TSSs of TSS_STRIDE bytes */
#define TSS_STRIDE 128
#define TSS_LIMIT 103 /* a 64-bit TSS is 104 bytes; no I/O bitmap */

#define MAX_CPUS 64

/* AP real-mode trampoline: below 1 MiB, 4 KiB aligned, clear of hotswap's boot structures (hotswap/layout.py puts
 * them at 0x500..0xEFFF, the cmdline at 0x20000..0x2FFFF and the MP table at 0x9FC00). */
#define TRAMPOLINE_ADDR 0x70000

/* GDT selectors */
#define KCODE32_SEL 0x08
#define KCODE64_SEL 0x10
#define KDATA_SEL 0x18
#define UDATA_SEL 0x23 /* descriptor 0x20, RPL 3 */
#define UCODE64_SEL 0x2B /* descriptor 0x28, RPL 3 */
#define TSS0_SEL 0x30 /* CPU i uses TSS0_SEL + 16 * i */
#define GDT_ENTRIES (6 + 2 * MAX_CPUS)

/* Per-CPU stacks. The ring-0 stack's top holds the CPU's timer tick counter, right above the interrupt frame:
 * an interrupt from ring 3 always starts at RSP0, so the timer ISR finds its counter at a fixed offset. */
#define KCPU_SIZE 4096
#define KCPU_TICKS_OFFSET (KCPU_SIZE - 64) /* = RSP0; 16-byte aligned */
#define USTACK_SIZE 16384

/* Interrupt vectors */
#define TIMER_VECTOR 0x20
#define SPURIOUS_VECTOR 0xFF

/* Local APIC (xAPIC MMIO) */
#define LAPIC_BASE 0xFEE00000
#define LAPIC_EOI_ADDR (LAPIC_BASE + 0xB0)

/* Ring-3 -> ring-0 calls: `ud2` with the call number in rax (int n and syscall do not work on this host). */
#define SYS_RESET 1

#define RING3_RFLAGS 0x202 /* IF=1, IOPL=0: port I/O from ring 3 faults (#GP) and is emulated */

#endif
