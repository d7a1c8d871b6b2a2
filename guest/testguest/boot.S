/* Boot: the PVH entry (bootstrap CPU), the AP entry (after trampoline.S) and the path both share into ring 3.
 * Everything here runs in ring 0, which this host emulates at ~1M instructions/s, so it is kept short: the page
 * tables, GDT, IDT and TSSs are prepared in the image (tables.S) and the C code runs in ring 3. */
#include "layout.h"

#define CR0_PE (1 << 0)
#define CR0_NW (1 << 29)
#define CR0_CD (1 << 30)
#define CR0_PG (1 << 31)
#define CR4_PAE (1 << 5)
#define MSR_EFER 0xC0000080
#define EFER_LME (1 << 8)

/* PVH: an ELF note XEN_ELFNOTE_PHYS32_ENTRY (18), name "Xen", giving the 32-bit physical entry point. The value is
 * 8 bytes wide, as in Linux's vmlinux, so loaders reading either 4 or 8 bytes agree. */
	.section .note.Xen, "a"
	.balign 4
	.long 4f - 3f /* namesz */
	.long 6f - 5f /* descsz */
	.long 18 /* XEN_ELFNOTE_PHYS32_ENTRY */
3:	.asciz "Xen"
4:	.balign 4
5:	.quad pvh_entry
6:	.balign 4

	.section .text.boot, "ax"
	.code32

/* PVH entry: 32-bit protected mode, paging off, EBX = struct hvm_start_info. No stack is needed before
 * cpu_enter_ring3 sets one. */
	.globl pvh_entry
pvh_entry:
	cli
	cld
	movl %ebx, pvh_start_info_paddr
	rdtsc
	movl %eax, boot_tsc
	movl %edx, boot_tsc + 4
	movb $0xFF, %al /* mask both 8259s now: ring 3 runs with IF=1 and firmware may have left the PIT ticking */
	outb %al, $0x21
	outb %al, $0xA1
	lgdt gdt_ptr
	ljmp $KCODE32_SEL, $1f
1:	xorl %edi, %edi /* CPU index 0 */
	movl $bsp_main, %esi
	jmp enter_long_mode

/* AP entry, reached from the real-mode trampoline with our GDT loaded and CS = KCODE32_SEL. */
	.globl ap_entry32
ap_entry32:
	movl $KDATA_SEL, %eax /* DS still has its real-mode 64 KiB limit */
	movl %eax, %ds
	movl ap_boot_index, %edi
	movl $ap_main, %esi
	/* fall through */

/* EDI = CPU index, ESI = ring-3 entry point (both survive to cpu_enter_ring3). */
enter_long_mode:
	movl $KDATA_SEL, %eax
	movl %eax, %ds
	movl %eax, %es
	movl %eax, %ss
	movl %cr4, %eax
	orl $CR4_PAE, %eax
	movl %eax, %cr4
	movl $pml4, %eax
	movl %eax, %cr3
	movl $MSR_EFER, %ecx
	rdmsr
	orl $EFER_LME, %eax
	wrmsr
	movl %cr0, %eax
	andl $~(CR0_CD | CR0_NW), %eax /* an AP leaves INIT with caches "disabled" */
	orl $(CR0_PG | CR0_PE), %eax
	movl %eax, %cr0
	ljmp $KCODE64_SEL, $cpu_enter_ring3

	.code64
/* Load this CPU's IDT and TSS and iretq into its ring-3 entry point with its own user stack; the ring-0 stack
 * is only used from now on by traps and interrupts (RSP0 in the TSS). */
cpu_enter_ring3:
	xorl %eax, %eax
	movl %eax, %fs
	movl %eax, %gs
	lidt idt_ptr
	movl %edi, %eax
	shll $4, %eax
	addl $TSS0_SEL, %eax
	ltr %ax
	movl %edi, %eax
	imull $KCPU_SIZE, %eax
	leaq kcpus + KCPU_TICKS_OFFSET(%rax), %rsp
	movl %edi, %ecx
	incl %ecx
	imull $USTACK_SIZE, %ecx
	leaq ustacks - 8(%rcx), %rcx /* as if a call had pushed a return address */
	pushq $UDATA_SEL
	pushq %rcx
	pushq $RING3_RFLAGS
	pushq $UCODE64_SEL
	pushq %rsi
	iretq /* EDI = CPU index is the C entry's first argument */

	.section .bss
	.balign 4096
	.globl kcpus
kcpus:
	.skip KCPU_SIZE * MAX_CPUS
	.globl ustacks
ustacks:
	.skip USTACK_SIZE * MAX_CPUS

	.section .data
	.balign 8
	.globl boot_tsc
boot_tsc:
	.quad 0
	.globl pvh_start_info_paddr
pvh_start_info_paddr:
	.long 0
	.globl ap_boot_index
ap_boot_index:
	.long 0
