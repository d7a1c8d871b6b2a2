/* The AP startup trampoline. The bootstrap CPU copies [ap_trampoline, ap_trampoline_end) to TRAMPOLINE_ADDR and
 * sends INIT-SIPI-SIPI with vector TRAMPOLINE_ADDR >> 12: the AP starts here in real mode with CS = the page.
 * It loads the image's GDT, enables protection and jumps into the image (boot.S: ap_entry32). */
#include "layout.h"

	.section .rodata.trampoline, "a"
	.code16
	.globl ap_trampoline
ap_trampoline:
	cli
	cld
	lgdtl %cs:(gdt_ptr16 - ap_trampoline)
	movl %cr0, %eax
	orl $1, %eax
	movl %eax, %cr0
	ljmpl $KCODE32_SEL, $ap_entry32
	.balign 8
gdt_ptr16:
	.word GDT_ENTRIES * 8 - 1
	.long gdt
	.globl ap_trampoline_end
ap_trampoline_end:
	.code64
