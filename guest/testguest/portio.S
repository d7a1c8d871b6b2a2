/* Byte port I/O as out-of-line functions, so that the instruction that faults in ring 3 sits at a known address:
 * the #GP handler (isr.S) recognises these two RIPs and does the access in a handful of ring-0 instructions,
 * instead of decoding in C (measured here: ~2.5 us per emulated ring-0 instruction). In ring 0 they simply run. */
	.text
	.code64

/* void port_outb(u16 port, u8 value) */
	.globl port_outb
port_outb:
	movl %esi, %eax
	movl %edi, %edx
	.globl port_outb_insn
port_outb_insn:
	outb %al, %dx
	ret

/* u8 port_inb(u16 port) */
	.globl port_inb
port_inb:
	movl %edi, %edx
	xorl %eax, %eax
	.globl port_inb_insn
port_inb_insn:
	inb %dx, %al
	ret
