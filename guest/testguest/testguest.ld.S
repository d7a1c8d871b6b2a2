/* Linker script (run through the C preprocessor for layout.h). One RWX PT_LOAD at 1 MiB (p_paddr = p_vaddr),
 * the fixed-address ISR stubs and TSSs first, and a PT_NOTE for the PVH entry note. */
#include "layout.h"

OUTPUT_FORMAT("elf64-x86-64")
OUTPUT_ARCH(i386:x86-64)
ENTRY(pvh_entry)

PHDRS
{
	image PT_LOAD FLAGS(7);
	note PT_NOTE FLAGS(4);
}

SECTIONS
{
	. = ISR_BASE;
	.isr : { KEEP(*(.isr)) } :image
	. = TSS_BASE;
	.tss : { KEEP(*(.tss)) } :image
	.note.Xen : { KEEP(*(.note.Xen)) } :image :note
	.text : { *(.text.boot) *(.text .text.*) } :image
	.rodata : { *(.rodata .rodata.*) } :image
	.data : { *(.data .data.*) } :image
	.bss : { *(.bss .bss.*) *(COMMON) } :image
	. = ALIGN(4096);
	_end = .;
	/DISCARD/ : { *(.comment) *(.eh_frame) *(.note.GNU-stack) *(.note.gnu.*) }
}

ASSERT(isr_stubs == ISR_BASE, "ISR stubs must sit at ISR_BASE (the IDT is assembled from it)")
ASSERT(SIZEOF(.isr) == 256 * ISR_STUB_SIZE, "ISR stub table has the wrong size")
ASSERT(SIZEOF(.tss) == MAX_CPUS * TSS_STRIDE, "TSS array has the wrong size")
ASSERT(ADDR(.tss) + SIZEOF(.tss) <= ADDR(.note.Xen), "TSS array overlaps what follows")
ASSERT(_end < 0x40000000, "image must stay well inside the identity map")
